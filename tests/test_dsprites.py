"""dSprites plugins: the grid layout, the procedural renderer and its cache, the npz reader.

The procedural cache lives under the data root ($DISENTBENCH_DATA or
~/.cache/disentbench); the first run renders it once (about 10-20 s), later
runs memory-map it.
"""

from __future__ import annotations

import io
import os
import pickle
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pydantic
import pytest
import torch
from helpers import header_only, metadata, npy_bytes, write_npz

from disentbench.core.data.ground_truth import GroundTruthData
from disentbench.core.paths import DatasetNotFoundError, data_root
from disentbench.plugins.datasets import dsprites
from disentbench.plugins.datasets.dsprites import (
    DSprites,
    DSpritesConfig,
    DSpritesProcedural,
    DSpritesProceduralConfig,
)

SHAPE_SQUARE, SHAPE_ELLIPSE, SHAPE_HEART = 0, 1, 2
TOP_SCALE = 5


@pytest.fixture(scope="session")
def procedural() -> DSpritesProcedural:
    data = DSpritesProcedural()
    data.ensure_cache()
    return data


def image_at(data, shape, scale, orientation, pos_x, pos_y) -> np.ndarray:
    """One (64, 64) uint8 image by factor values."""
    return np.asarray(data.images[data.index_of([shape, scale, orientation, pos_x, pos_y]), 0])


def centre_of_mass(image: np.ndarray) -> tuple[float, float]:
    """(row, column) centre of the lit pixels."""
    rows, cols = np.nonzero(image)
    return rows.mean(), cols.mean()


# -- paths ----------------------------------------------------------------------


def test_data_root_honours_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("DISENTBENCH_DATA", str(tmp_path))
    assert data_root() == tmp_path
    assert DSpritesProcedural().path == tmp_path / "dsprites_procedural" / "dsprites_procedural_v1.npy"
    assert DSprites().path == tmp_path / "dsprites" / "dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz"
    monkeypatch.delenv("DISENTBENCH_DATA")
    assert data_root() == Path.home() / ".cache" / "disentbench"


# -- registration and configs -----------------------------------------------------


def test_registers_both_plugins_with_strict_configs(registry, tmp_path):
    registered = {r.name: r for r in registry.all("dataset") if r.factory.__module__ == dsprites.__name__}
    assert set(registered) == {"dsprites", "dsprites_procedural"}
    for name, registration in registered.items():
        config_class, factory, description = registration.config, registration.factory, registration.description
        assert registration.source == "disentbench"
        assert description and "\n" not in description
        data = factory(config_class(path=tmp_path / "x"))
        assert isinstance(data, GroundTruthData)
        assert data.name == name
        assert data.factor_names == ("shape", "scale", "orientation", "pos_x", "pos_y")
        assert data.factor_sizes == (3, 6, 40, 32, 32)
        assert data.observation_shape == (1, 64, 64)  # known without loading pixels
        with pytest.raises(pydantic.ValidationError):
            config_class(pathh="typo")
    assert DSpritesConfig.model_fields["path"].description
    assert DSpritesProceduralConfig.model_fields["path"].description


def test_factor_values_match_the_deepmind_grid():
    values = dsprites.factor_values()
    assert tuple(len(v) for v in values) == (3, 6, 40, 32, 32)
    assert values[1][0] == 0.5 and values[1][-1] == 1.0
    assert values[2][0] == 0.0 and values[2][-1] == pytest.approx(2 * np.pi)  # DeepMind's inclusive grid
    assert values[3][0] == 0.0 and values[3][-1] == 1.0


# -- grid layout ----------------------------------------------------------------------


def test_grid_size_and_shape(procedural):
    assert procedural.num_observations == 737_280
    assert procedural.images.shape == (737_280, 1, 64, 64)
    assert procedural.images.dtype == np.uint8
    assert procedural.pixel_scale == 1.0


def test_index_round_trip_and_mixed_radix_order(procedural):
    rs = np.random.RandomState(0)
    factors = procedural.sample_factors(1000, rs)
    index = procedural.index_of(factors)
    np.testing.assert_array_equal(procedural.factors_of(index), factors)
    shape, scale, orientation, pos_x, pos_y = factors.T
    np.testing.assert_array_equal(index, (((shape * 6 + scale) * 40 + orientation) * 32 + pos_x) * 32 + pos_y)
    assert procedural.index_of([2, 5, 39, 31, 31]) == 737_279


def test_consecutive_indices_shift_the_sprite_down_by_a_pixel_or_two(procedural):
    rs = np.random.RandomState(1)
    for _ in range(20):
        factors = [rs.randint(3), rs.randint(6), rs.randint(40), rs.randint(8, 24), rs.randint(8, 23)]
        index = procedural.index_of(factors)
        here, below = procedural.images[index, 0], procedural.images[index + 1, 0]
        assert procedural.factors_of(index + 1)[4] == factors[4] + 1
        assert not np.array_equal(here, below)
        assert any(np.array_equal(np.roll(here, shift, axis=0), below) for shift in (1, 2))


# -- what the sprites look like ---------------------------------------------------------


def test_images_are_binary(procedural):
    index = np.random.RandomState(2).randint(procedural.num_observations, size=20_000)
    values = np.unique(procedural.images[np.sort(index)])
    np.testing.assert_array_equal(values, [0, 1])


def test_sprites_grow_with_scale(procedural):
    for shape in range(3):
        counts = [image_at(procedural, shape, scale, 0, 16, 16).sum() for scale in range(6)]
        assert np.all(np.diff(counts) > 0), counts


def test_sprite_size_at_scale_one(procedural):
    square = image_at(procedural, SHAPE_SQUARE, TOP_SCALE, 0, 16, 16)
    width = np.count_nonzero(square.any(axis=0))
    assert 64 / 3 - 1 <= width <= 64 * 2 / 5, width


def test_sprites_move_with_position(procedural):
    """pos_x moves the sprite along columns (axis 1), pos_y along rows (axis 0), without clipping."""
    for shape in range(3):
        along_x = [centre_of_mass(image_at(procedural, shape, TOP_SCALE, 0, x, 16)) for x in range(32)]
        along_y = [centre_of_mass(image_at(procedural, shape, TOP_SCALE, 0, 16, y)) for y in range(32)]
        assert np.all(np.diff([col for _, col in along_x]) > 0)
        assert np.ptp([row for row, _ in along_x]) < 1e-9
        assert np.all(np.diff([row for row, _ in along_y]) > 0)
        assert np.ptp([col for _, col in along_y]) < 1e-9
        counts = [image_at(procedural, shape, TOP_SCALE, 0, x, y).sum() for x, y in [(0, 0), (31, 31), (16, 16)]]
        assert len(set(counts)) == 1  # unrotated sprites at scale 1 are never clipped
    # The centre sweeps over about two thirds of the image.
    first = centre_of_mass(image_at(procedural, SHAPE_SQUARE, TOP_SCALE, 0, 0, 0))
    last = centre_of_mass(image_at(procedural, SHAPE_SQUARE, TOP_SCALE, 0, 31, 31))
    assert 0.6 * 64 <= last[1] - first[1] <= 0.75 * 64


def test_shapes_differ(procedural):
    images = [image_at(procedural, shape, TOP_SCALE, 0, 16, 16).astype(bool) for shape in range(3)]
    for a in range(3):
        for b in range(a + 1, 3):
            assert np.count_nonzero(images[a] ^ images[b]) > 50


def test_rotation_keeps_the_square_area(procedural):
    quarter_turn = int(np.argmin(np.abs(dsprites.ORIENTATIONS - np.pi / 2)))
    upright = image_at(procedural, SHAPE_SQUARE, TOP_SCALE, 0, 16, 16)
    turned = image_at(procedural, SHAPE_SQUARE, TOP_SCALE, quarter_turn, 16, 16)
    assert abs(int(turned.sum()) - int(upright.sum())) <= 0.05 * upright.sum()
    for axis in (0, 1):  # about a quarter turn of a square is nearly the upright square again
        assert abs(np.count_nonzero(turned.any(axis=axis)) - np.count_nonzero(upright.any(axis=axis))) <= 2
    # Orientation 2*pi (the last value) draws the same sprite as orientation 0.
    np.testing.assert_array_equal(image_at(procedural, SHAPE_HEART, 3, 39, 5, 9), image_at(procedural, SHAPE_HEART, 3, 0, 5, 9))
    ellipse = [image_at(procedural, SHAPE_ELLIPSE, TOP_SCALE, o, 16, 16) for o in (0, quarter_turn)]
    assert np.count_nonzero(ellipse[0].any(axis=0)) > 1.5 * np.count_nonzero(ellipse[1].any(axis=0))


# -- cache ------------------------------------------------------------------------------


def test_cache_reload_and_fresh_render_give_identical_bytes(procedural):
    index = np.sort(np.random.RandomState(3).choice(procedural.num_observations, size=2048, replace=False))
    reloaded = DSpritesProcedural()
    assert reloaded.path == procedural.path
    np.testing.assert_array_equal(reloaded.images[index], procedural.images[index])
    np.testing.assert_array_equal(dsprites.render_images(procedural.factors_of(index[:64])), procedural.images[index[:64]])


def test_cache_is_copy_on_write(procedural):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        torch.from_numpy(procedural.images)
    scratch = DSpritesProcedural()
    before = scratch.images[0].copy()
    scratch.images[0] = 7  # private to this process
    np.testing.assert_array_equal(DSpritesProcedural().images[0], before)


def test_interrupted_generation_leaves_no_cache(monkeypatch, tmp_path):
    def interrupted(out):
        out[:10] = 1
        raise KeyboardInterrupt

    monkeypatch.setattr(dsprites, "render_grid", interrupted)
    target = tmp_path / "cache" / "grid.npy"
    with pytest.raises(KeyboardInterrupt):
        dsprites.write_procedural_cache(target)
    assert list(target.parent.iterdir()) == []


def test_bad_cache_file_is_reported(tmp_path):
    path = tmp_path / "bad.npy"
    np.save(path, np.zeros((3, 1, 64, 64), dtype=np.uint8))
    with pytest.raises(ValueError, match="delete it"):
        DSpritesProcedural(DSpritesProceduralConfig(path=path)).images


def test_pickles_without_pixels(procedural):
    procedural.images  # loaded in the parent
    clone = pickle.loads(pickle.dumps(procedural))
    assert len(pickle.dumps(procedural)) < 10_000
    np.testing.assert_array_equal(clone.images[:3], procedural.images[:3])


# -- sampling ---------------------------------------------------------------------------------


def test_sample_factors_and_observations(procedural):
    rs = np.random.RandomState(4)
    factors = procedural.sample_factors(100, rs)
    assert factors.shape == (100, 5)
    assert np.all((factors >= 0) & (factors < np.array(procedural.factor_sizes)))
    observations = procedural.sample_observations_from_factors(factors, rs)
    assert observations.shape == (100, 1, 64, 64)
    assert observations.dtype == np.float32
    assert set(np.unique(observations)) <= {0.0, 1.0}
    assert observations.max() == 1.0


def test_sample_batch_on_device_is_reproducible(procedural):
    def batch(seed):
        generator = torch.Generator().manual_seed(seed)
        return procedural.sample_batch_on_device(32, generator, "cpu")

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        first = batch(0)
    assert first.dtype == torch.float32 and first.shape == (32, 1, 64, 64)
    assert first.min() >= 0 and first.max() == 1
    assert torch.equal(first, batch(0))
    assert not torch.equal(first, batch(1))


# -- DeepMind npz reader ------------------------------------------------------------------------










def test_missing_dsprites_file_raises_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("DISENTBENCH_DATA", str(tmp_path))
    data = DSprites()  # lazy: constructing never touches the file
    with pytest.raises(DatasetNotFoundError) as error:
        data.images
    message = str(error.value)
    assert isinstance(error.value, FileNotFoundError)
    assert "\n" not in message
    assert str(tmp_path / "dsprites" / dsprites.DSPRITES_FILENAME) in message
    assert "dsprites_procedural" in message


@pytest.mark.parametrize(
    ("members", "match"),
    [
        ({"imgs.npy": header_only((737_280, 64, 64))}, "lacks the key"),
        ({"imgs.npy": header_only((10, 64, 64)), "metadata.npy": npy_bytes(metadata((1, 3, 6, 40, 32)))}, "latents_sizes"),
        ({"imgs.npy": header_only((10, 64, 64)), "metadata.npy": npy_bytes(metadata())}, r"imgs.*\(10, 64, 64\)"),
        ({"imgs.npy": header_only((737_280, 64, 64), np.float32), "metadata.npy": npy_bytes(metadata())}, "float32"),
        ({"imgs.npy": header_only((737_280, 64, 64)), "metadata.npy": npy_bytes(np.zeros(3))}, "pickled dict"),
        (
            {"imgs.npy": header_only((737_280, 64, 64)), "metadata.npy": npy_bytes(np.array([os.getcwd], dtype=object))},
            "cannot read `metadata` safely",
        ),
    ],
    ids=["missing-key", "wrong-latents-sizes", "wrong-shape", "wrong-dtype", "no-pickle", "unsafe-pickle"],
)
def test_dsprites_file_validation_errors(tmp_path, members, match):
    path = write_npz(tmp_path / "bad.npz", members)
    with pytest.raises(ValueError, match=match):
        DSprites(DSpritesConfig(path=path)).images


def test_not_an_npz_is_rejected(tmp_path):
    path = tmp_path / "bad.npz"
    path.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not an npz"):
        DSprites(DSpritesConfig(path=path)).check()


def test_real_layout_passes_the_checks(tmp_path):
    path = write_npz(tmp_path / "ok.npz", {"imgs.npy": header_only((737_280, 64, 64)), "metadata.npy": npy_bytes(metadata())})
    DSprites(DSpritesConfig(path=path)).check()  # headers and metadata only; no pixels read


def test_metadata_pickled_by_older_numpy_is_accepted(tmp_path):
    """DeepMind's file predates numpy 2: its pickle names numpy.core, not numpy._core."""
    payload = pickle.dumps(metadata(), protocol=2).replace(b"numpy._core.", b"numpy.core.")
    assert b"numpy.core.multiarray" in payload
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "|O", "fortran_order": False, "shape": ()})
    members = {"imgs.npy": header_only((737_280, 64, 64)), "metadata.npy": header.getvalue() + payload}
    DSprites(DSpritesConfig(path=write_npz(tmp_path / "old.npz", members))).check()


@pytest.mark.slow
def test_loads_a_full_size_npz(tmp_path):
    """A real-layout file of zeros (3 GB once decompressed, a few MB on disk)."""
    path = tmp_path / dsprites.DSPRITES_FILENAME
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        archive.writestr("metadata.npy", npy_bytes(metadata()))
        with archive.open("imgs.npy", "w", force_zip64=True) as handle:
            handle.write(header_only((737_280, 64, 64)))
            chunk = bytes(64 * 1024 * 1024)
            remaining = 737_280 * 64 * 64
            while remaining:
                handle.write(chunk[: min(len(chunk), remaining)])
                remaining -= min(len(chunk), remaining)
    data = DSprites(DSpritesConfig(path=path))
    assert not data.is_prepared()
    assert data.images.shape == (737_280, 1, 64, 64) and data.images.dtype == np.uint8
    assert data.is_prepared() and data.prepared_path.is_file()
    observations = data.sample_observations(8, np.random.RandomState(0))
    assert observations.shape == (8, 1, 64, 64) and observations.dtype == np.float32
    again = DSprites(DSpritesConfig(path=path)).images  # now a memory map of the prepared cache
    assert isinstance(again, np.memmap) and again.shape == (737_280, 1, 64, 64)


def test_truncated_imgs_is_reported_and_leaves_no_cache(tmp_path):
    path = write_npz(
        tmp_path / "cut.npz",
        {"imgs.npy": header_only((737_280, 64, 64)) + bytes(4096 * 3), "metadata.npy": npy_bytes(metadata())},
    )
    data = DSprites(DSpritesConfig(path=path))
    with pytest.raises(ValueError, match=r"cut.npz: `imgs` is truncated after 12288 of"):
        data.images
    assert not data.is_prepared()
    assert not list((tmp_path / "prepared").glob("*"))
