"""Colour, noisy and scream dSprites: nuisance randomness on host and device, the painting, the texture.

Uses the procedural variants (the DeepMind npz is not needed) on the shared
procedural cache, and small synthetic paintings written to tmp_path.
"""

from __future__ import annotations

import pickle
import warnings

import numpy as np
import pydantic
import pytest
import torch
from PIL import Image

from disentbench.core.data.ground_truth import GroundTruthData
from disentbench.core.paths import DatasetNotFoundError
from disentbench.plugins.datasets import dsprites_variants as variants
from disentbench.plugins.datasets.dsprites import DSpritesProcedural
from disentbench.plugins.datasets.dsprites_variants import (
    ColorDSpritesProcedural,
    ColorDSpritesProceduralConfig,
    NoisyDSpritesProcedural,
    NoisyDSpritesProceduralConfig,
    ScreamDSprites,
    ScreamDSpritesConfig,
    ScreamDSpritesProcedural,
    ScreamDSpritesProceduralConfig,
)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(scope="session")
def cache_path():
    return DSpritesProcedural().ensure_cache()


@pytest.fixture(scope="session")
def base(cache_path):
    return DSpritesProcedural(variants.DSpritesProceduralConfig(path=cache_path))


@pytest.fixture(scope="session")
def color(cache_path):
    return ColorDSpritesProcedural(ColorDSpritesProceduralConfig(path=cache_path))


@pytest.fixture(scope="session")
def noisy(cache_path):
    return NoisyDSpritesProcedural(NoisyDSpritesProceduralConfig(path=cache_path))


@pytest.fixture(scope="session")
def painting_file(tmp_path_factory):
    """A small random RGB painting (PNG: lossless), 150 rows x 180 columns (below the thumbnail box)."""
    path = tmp_path_factory.mktemp("scream") / "painting.png"
    pixels = np.random.RandomState(123).randint(0, 256, size=(150, 180, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


@pytest.fixture(scope="session")
def scream(cache_path, painting_file):
    return ScreamDSpritesProcedural(ScreamDSpritesProceduralConfig(path=cache_path, scream_path=painting_file))


@pytest.fixture(scope="session")
def plasma(cache_path):
    return ScreamDSpritesProcedural(ScreamDSpritesProceduralConfig(path=cache_path, texture="plasma"))


def host_batch(data, seed, num=16):
    """(factors, uint8 sprites (n, 1, 64, 64), float observations) from a RandomState(seed)."""
    rs = np.random.RandomState(seed)
    factors = data.sample_factors(num, rs)
    sprites = np.asarray(data.images[data.index_of(factors)])
    observations = data.sample_observations_from_factors(factors, rs)
    return factors, sprites, observations


def device_batch(data, seed, device, num=16):
    """(uint8 sprites, float observations) drawn with a torch.Generator on ``device``."""
    generator = torch.Generator(device=device).manual_seed(seed)
    images = data.device_images(device)
    index = torch.randint(images.shape[0], (num,), generator=generator, device=device)
    sprites = images[index]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        observations = data.to_float(sprites, generator)
    assert observations.device.type == torch.device(device).type
    return sprites.cpu().numpy(), observations.cpu().numpy()


def check_range(observations, num):
    assert observations.shape == (num, 3, 64, 64)
    assert observations.dtype == np.float32
    assert observations.min() >= 0.0 and observations.max() <= 1.0


# -- registration, configs, factors ---------------------------------------------------------------


def test_registers_six_plugins_with_strict_configs(registry, tmp_path):
    registered = {r.name: r for r in registry.all("dataset") if r.factory.__module__ == variants.__name__}
    assert set(registered) == {
        "color_dsprites",
        "noisy_dsprites",
        "scream_dsprites",
        "color_dsprites_procedural",
        "noisy_dsprites_procedural",
        "scream_dsprites_procedural",
    }
    for name, registration in registered.items():
        config_class, factory, description = registration.config, registration.factory, registration.description
        assert registration.source == "disentbench"
        assert description and "\n" not in description
        data = factory(config_class(path=tmp_path / "x"))  # lazy: no file touched
        assert isinstance(data, GroundTruthData)
        assert data.name == name
        assert data.factor_names == ("shape", "scale", "orientation", "pos_x", "pos_y")
        assert data.factor_sizes == (3, 6, 40, 32, 32)
        assert data.observation_shape == (3, 64, 64)
        with pytest.raises(pydantic.ValidationError):
            config_class(pathh="typo")
        for field in config_class.model_fields.values():
            assert field.description


def test_plugins_are_built_in(registry):
    for name in ("color_dsprites", "noisy_dsprites", "scream_dsprites", "scream_dsprites_procedural"):
        assert registry.get("dataset", name).source == "disentbench"


def test_scream_procedural_config_rules(tmp_path):
    with pytest.raises(pydantic.ValidationError, match="not both"):
        ScreamDSpritesProceduralConfig(texture="plasma", scream_path=tmp_path / "s.jpg")
    with pytest.raises(pydantic.ValidationError):
        ScreamDSpritesProceduralConfig(texture="marble")
    with pytest.raises(pydantic.ValidationError):
        ScreamDSpritesConfig(texture="plasma")  # the study's dataset takes no stand-in
    # The grid re-validates dumped configs, defaults included.
    dumped = ScreamDSpritesProceduralConfig().model_dump(mode="json")
    assert ScreamDSpritesProceduralConfig.model_validate(dumped).texture is None


def test_factors_behave_as_dsprites(base, color, noisy, scream):
    reference_factors, _, _ = host_batch(base, 5, num=32)
    for data in (color, noisy, scream):
        assert data.num_observations == base.num_observations
        factors, sprites, observations = host_batch(data, 5, num=32)
        np.testing.assert_array_equal(factors, reference_factors)  # same draws, same order
        np.testing.assert_array_equal(data.index_of(factors), base.index_of(factors))
        np.testing.assert_array_equal(sprites, base.images[base.index_of(factors)])
    # The sprite is recoverable from colour observations: exactly the lit pixels.
    factors, sprites, observations = host_batch(color, 6, num=32)
    np.testing.assert_array_equal(observations.max(axis=1) > 0, sprites[:, 0] == 1)


# -- colour ---------------------------------------------------------------------------------------------


def test_color_host_matches_the_study_draws(color):
    _, sprites, observations = host_batch(color, 7)
    check_range(observations, 16)
    # Replay: factors (5 randint calls), then one uniform(0.5, 1, [n, 1, 1, 3]) in NHWC.
    rs = np.random.RandomState(7)
    color.sample_factors(16, rs)
    colours = rs.uniform(0.5, 1, [16, 1, 1, 3]).transpose(0, 3, 1, 2).astype(np.float32)
    np.testing.assert_array_equal(observations, sprites * colours)


@pytest.mark.parametrize("device", DEVICES)
def test_color_background_black_sprite_one_colour(color, device):
    sprites, observations = device_batch(color, 0, device, num=64)
    check_range(observations, 64)
    for source in (observations, host_batch(color, 8, num=64)[2]):
        assert source.min() == 0.0
    mask = sprites[:, 0] == 1
    assert np.all(observations[:, :, ~mask.any(axis=0)] == 0)
    for image, lit in zip(observations, mask):
        assert np.all(image[:, ~lit] == 0.0)  # background exactly black
        pixels = image[:, lit]  # (3, lit pixels)
        assert pixels.shape[1] > 0
        np.testing.assert_array_equal(pixels, pixels[:, :1].repeat(pixels.shape[1], axis=1))
        assert np.all((pixels[:, 0] >= 0.5) & (pixels[:, 0] <= 1.0))
    colours = np.stack([image[:, lit][:, 0] for image, lit in zip(observations, mask)])
    assert len(np.unique(colours[:, 0])) == 64  # a fresh colour per observation
    assert abs(colours.mean() - 0.75) < 0.05


# -- noisy -----------------------------------------------------------------------------------------------


def test_noisy_host_matches_the_study_draws(noisy):
    _, sprites, observations = host_batch(noisy, 9)
    check_range(observations, 16)
    rs = np.random.RandomState(9)
    noisy.sample_factors(16, rs)
    noise = rs.uniform(0, 1, [16, 64, 64, 3]).transpose(0, 3, 1, 2).astype(np.float32)
    np.testing.assert_array_equal(observations, np.where(sprites == 1, np.float32(1), noise))


@pytest.mark.parametrize("device", [*DEVICES, "host"])
def test_noisy_background_uniform_sprite_white(noisy, device):
    if device == "host":
        _, sprites, observations = host_batch(noisy, 10, num=64)
    else:
        sprites, observations = device_batch(noisy, 10, device, num=64)
    check_range(observations, 64)
    mask = np.broadcast_to(sprites == 1, observations.shape)
    assert np.all(observations[mask] == 1.0)
    background = observations[~mask].astype(np.float64)
    assert background.size > 500_000
    assert abs(background.mean() - 0.5) < 0.005
    assert abs(background.var() - 1 / 12) < 0.002
    assert abs(np.corrcoef(observations[:, 0][~mask[:, 0]], observations[:, 1][~mask[:, 1]])[0, 1]) < 0.01


# -- scream ----------------------------------------------------------------------------------------------


def test_painting_small_file_is_kept_as_is(scream, painting_file):
    expected = np.asarray(Image.open(painting_file), dtype=np.float64) / 255.0
    np.testing.assert_array_equal(scream.painting, expected)  # thumbnail never enlarges


@pytest.mark.parametrize("suffix", ["png", "jpg"])
def test_painting_is_thumbnailed_with_lanczos(cache_path, tmp_path, suffix):
    path = tmp_path / f"big.{suffix}"
    rows, cols = np.mgrid[0:400, 0:500]
    pixels = np.stack([rows % 256, cols % 256, (rows * cols) % 256], axis=-1).astype(np.uint8)
    Image.fromarray(pixels).save(path)
    data = ScreamDSpritesProcedural(ScreamDSpritesProceduralConfig(path=cache_path, scream_path=path))
    data.check()
    with Image.open(path) as image:
        image.thumbnail((350, 274), Image.Resampling.LANCZOS)
        expected = np.asarray(image.convert("RGB"), dtype=np.float64) / 255.0
    assert data.painting.shape == expected.shape == (274, 342, 3)  # aspect kept, fits 350x274
    np.testing.assert_array_equal(data.painting, expected)


def test_grayscale_painting_becomes_rgb(cache_path, tmp_path):
    path = tmp_path / "grey.png"
    Image.fromarray(np.random.RandomState(0).randint(0, 256, (100, 120), dtype=np.uint8)).save(path)
    data = ScreamDSpritesProcedural(ScreamDSpritesProceduralConfig(path=cache_path, scream_path=path))
    assert data.painting.shape == (100, 120, 3)


def test_scream_host_matches_a_recomputation(scream):
    num = 300  # more than one host chunk
    _, sprites, observations = host_batch(scream, 11, num=num)
    check_range(observations, num)
    painting = scream.painting
    rs = np.random.RandomState(11)
    scream.sample_factors(num, rs)
    for i in range(num):  # the study's per-image draws: row offset, column offset, colour
        row = rs.randint(0, painting.shape[0] - 64)
        col = rs.randint(0, painting.shape[1] - 64)
        background = (painting[row : row + 64, col : col + 64] + rs.uniform(0, 1, size=3)) / 2.0
        lit = sprites[i, 0, :, :, None] == 1
        expected = np.where(lit, 1.0 - background, background).transpose(2, 0, 1).astype(np.float32)
        np.testing.assert_array_equal(observations[i], expected)


def recover_crops(painting: np.ndarray, sprites: np.ndarray, observations: np.ndarray):
    """For each observation, the crop offset and colour that explain it, found by exhaustive search.

    Undo the sprite inversion (b = 1 - x where lit), then 2 b - crop must be one
    constant colour. Every offset is scored on a 4x4 lattice of probe pixels
    (cheap), the best one is then verified on all 64x64 pixels.
    """
    height, width = painting.shape[:2]
    probes = (0, 21, 42, 63)
    # (H - 63, W - 63, 16, 3): the probe pixels of every candidate crop.
    probed = np.stack(
        [painting[r : r + height - 63, c : c + width - 63] for r in probes for c in probes], axis=2
    )
    found = []
    for sprite, image in zip(sprites, observations.astype(np.float64)):
        background = np.where(sprite == 1, 1.0 - image, image)  # (3, 64, 64)
        target = np.stack([background[:, r, c] for r in probes for c in probes])  # (16, 3)
        residual = 2.0 * target - probed
        spread = (residual.max(axis=2) - residual.min(axis=2)).max(axis=-1)
        row, col = np.unravel_index(np.argmin(spread), spread.shape)
        colour = 2.0 * background - painting[row : row + 64, col : col + 64].transpose(2, 0, 1)
        assert np.ptp(colour, axis=(1, 2)).max() < 1e-5, "no crop of the painting explains the observation"
        assert row < height - 64 and col < width - 64  # randint's exclusive upper bound
        found.append((row, col, colour[:, 0, 0]))
    return found


@pytest.mark.parametrize("device", DEVICES)
def test_scream_device_is_a_crop_with_a_colour_and_inverted_sprite(scream, device):
    sprites, observations = device_batch(scream, 12, device, num=12)
    check_range(observations, 12)
    found = recover_crops(scream.painting, sprites, observations)
    offsets = {(row, col) for row, col, _ in found}
    assert len(offsets) == 12  # fresh crop per observation
    for _, _, colour in found:
        assert np.all((colour > -1e-5) & (colour < 1 + 1e-5))


def test_scream_host_statistics(scream):
    _, sprites, observations = host_batch(scream, 13, num=12)
    found = recover_crops(scream.painting, sprites, observations)
    colours = np.array([colour for _, _, colour in found])
    assert len(np.unique(colours[:, 0])) == 12


def test_missing_painting_is_a_clear_error(monkeypatch, tmp_path, cache_path):
    monkeypatch.setenv("DISENTBENCH_DATA", str(tmp_path))
    expected_path = tmp_path / "scream" / "scream.jpg"
    data = ScreamDSpritesProcedural(ScreamDSpritesProceduralConfig(path=cache_path))
    assert data.scream_path == expected_path
    for action in (data.check, lambda: data.painting, lambda: data.sample(2, np.random.RandomState(0))):
        with pytest.raises(DatasetNotFoundError) as error:
            action()
        message = str(error.value)
        assert isinstance(error.value, FileNotFoundError)
        assert "\n" not in message
        assert str(expected_path) in message
        assert "The_Scream.jpg" in message
        assert "texture: plasma" in message
    # The npz-based study dataset points to the procedural stand-in instead.
    study = ScreamDSprites(ScreamDSpritesConfig(scream_path=tmp_path / "elsewhere.jpg"))
    with pytest.raises(DatasetNotFoundError, match="elsewhere.jpg.*scream_dsprites_procedural"):
        study.painting
    with pytest.raises(DatasetNotFoundError):
        study.check()  # npz and painting both missing: fails on the first


def test_bad_painting_files_are_rejected(cache_path, tmp_path):
    not_an_image = tmp_path / "scream.jpg"
    not_an_image.write_text("hello")
    tiny = tmp_path / "tiny.png"
    Image.fromarray(np.zeros((64, 200, 3), dtype=np.uint8)).save(tiny)
    for path, match in ((not_an_image, "not an image"), (tiny, "64x64 crops")):
        data = ScreamDSpritesProcedural(ScreamDSpritesProceduralConfig(path=cache_path, scream_path=path))
        with pytest.raises(ValueError, match=match):
            data.check()


# -- procedural texture -------------------------------------------------------------------------------------


def test_plasma_texture_is_explicit_deterministic_and_smooth(plasma, cache_path, monkeypatch, tmp_path):
    monkeypatch.setenv("DISENTBENCH_DATA", str(tmp_path))  # no painting anywhere
    plasma.check()  # nothing to check: the texture needs no file
    texture = plasma.painting
    assert texture.shape == (274, 350, 3)
    assert texture.min() == 0.0 and texture.max() == 1.0
    again = ScreamDSpritesProcedural(ScreamDSpritesProceduralConfig(path=cache_path, texture="plasma"))
    np.testing.assert_array_equal(again.painting, texture)
    other = ScreamDSpritesProcedural(ScreamDSpritesProceduralConfig(path=cache_path, texture="plasma", texture_seed=1))
    assert not np.allclose(other.painting, texture)
    # Smooth: neighbouring pixels differ far less than independent pixels would (~0.4).
    assert np.abs(np.diff(texture, axis=0)).mean() < 0.05
    assert np.abs(np.diff(texture, axis=1)).mean() < 0.05
    # Colourful: the channels are not copies of each other.
    assert abs(np.corrcoef(texture[..., 0].ravel(), texture[..., 1].ravel())[0, 1]) < 0.9
    _, sprites, observations = host_batch(plasma, 14, num=6)
    check_range(observations, 6)
    recover_crops(texture, sprites, observations)


# -- reproducibility, pickling -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["color", "noisy", "scream", "plasma"])
def test_same_seed_same_batch_other_seed_other_batch(request, name):
    data = request.getfixturevalue(name)
    first = host_batch(data, 20, num=8)[2]
    np.testing.assert_array_equal(first, host_batch(data, 20, num=8)[2])
    assert not np.array_equal(first, host_batch(data, 21, num=8)[2])
    for device in DEVICES:

        def batch(seed):
            generator = torch.Generator(device=device).manual_seed(seed)
            return data.sample_batch_on_device(8, generator, device)

        first = batch(0)
        assert first.dtype == torch.float32 and first.shape == (8, 3, 64, 64)
        assert torch.equal(first, batch(0))
        assert not torch.equal(first, batch(1))


def test_same_sprites_different_nuisance_each_draw(noisy):
    sprites = np.asarray(noisy.images[:4])
    rs = np.random.RandomState(0)
    assert not np.array_equal(noisy.to_float(sprites, rs), noisy.to_float(sprites, rs))


def test_wrong_random_state_type_is_refused(color):
    with pytest.raises(TypeError, match="RandomState"):
        color.to_float(np.asarray(color.images[:2]), torch.Generator())
    with pytest.raises(TypeError, match="torch.Generator"):
        color.to_float(torch.zeros(2, 1, 64, 64, dtype=torch.uint8), np.random.RandomState(0))


def test_pickles_without_pixels_or_painting(scream):
    scream.painting
    scream.device_painting("cpu")
    payload = pickle.dumps(scream)
    assert len(payload) < 10_000
    clone = pickle.loads(payload)
    np.testing.assert_array_equal(host_batch(clone, 3, num=4)[2], host_batch(scream, 3, num=4)[2])
