"""Colour, noisy and scream dSprites (spec/study.md section 3), as used by the study.

Six dataset plugins share the dSprites factor grid (shape 3, scale 6,
orientation 40, pos_x 32, pos_y 32, same index order) and give 3-channel
observations ``(3, 64, 64)``; the binary sprite is kept as uint8 ``(N, 1, 64, 64)``
and the nuisance randomness is applied in :meth:`to_float`, fresh for every
observation drawn. It is *not* a ground-truth factor.

* ``color_dsprites``:  x = mask * c, with one colour c ~ U(0.5, 1)^3 per image;
  the background stays black.
* ``noisy_dsprites``:  x = min(mask + u, 1), u ~ U(0, 1) i.i.d. per pixel and
  channel: a white sprite on uniform noise.
* ``scream_dsprites``: a random 64x64 crop of Munch's *The Scream*, averaged
  with a random colour U(0, 1)^3, is the background b = (crop + c) / 2; where
  the sprite is, the pixel is 1 - b.

``color_dsprites``, ``noisy_dsprites`` and ``scream_dsprites`` read DeepMind's
npz (the ``dsprites`` plugin); the ``*_procedural`` plugins are built on the
locally rendered ``dsprites_procedural`` grid instead.

Randomness. On the host (evaluation: numpy images with a
``numpy.random.RandomState``) the draws follow the study's code for a batch of
``n`` images, so the same RandomState gives the study's numbers: colour is one
``uniform(0.5, 1, [n, 1, 1, 3])`` call, noise one ``uniform(0, 1, [n, 64, 64, 3])``
call (both drawn NHWC, as the study's arrays were, then transposed to NCHW), and
scream draws, image after image, ``randint(0, H - 64)`` (row offset),
``randint(0, W - 64)`` (column offset), ``uniform(0, 1, size=3)``. On the training
device (torch tensors with a ``torch.Generator``) the same distributions are
drawn with ``torch.rand``/``torch.randint`` on the tensor's device: for scream
first all row offsets, then all column offsets, then the ``(n, 3)`` colours. Crops
are one gather from the painting, kept once per device as a float32 tensor.

The painting. ``<data_root>/scream/scream.jpg`` (Wikimedia's "The_Scream.jpg"),
or the config's ``scream_path``, opened with Pillow and shrunk in place with
``thumbnail((350, 274))`` (aspect ratio kept, never enlarged) and divided by 255.
The study's code relied on Pillow's old ``ANTIALIAS`` filter, which Pillow 10
removed; it was the Lanczos filter, so ``Image.Resampling.LANCZOS`` is passed
explicitly (pixels may still differ in the last bits from 2019's Pillow, whose
JPEG draft decoding and rounding were different). A missing painting is an error;
``scream_dsprites_procedural`` can instead use a named procedural texture
(``texture: plasma``), but only when the config says so, never as a silent
fallback, so one config always means one dataset.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cached_property
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import Field, model_validator

from disentbench import hookimpl
from disentbench.core.paths import DatasetNotFoundError, data_root
from disentbench.plugins.datasets.dsprites import (
    IMAGE_SIZE,
    DSprites,
    DSpritesConfig,
    DSpritesProcedural,
    DSpritesProceduralConfig,
)

NUM_CHANNELS = 3
OBSERVATION_SHAPE = (NUM_CHANNELS, IMAGE_SIZE, IMAGE_SIZE)

#: Colour dSprites: each channel of the sprite colour is drawn from U(COLOR_LOW, COLOR_HIGH).
COLOR_LOW, COLOR_HIGH = 0.5, 1.0

SCREAM_FILENAME = "scream.jpg"
SCREAM_SOURCE = 'Wikimedia\'s "The_Scream.jpg" (https://commons.wikimedia.org/wiki/File:The_Scream.jpg)'
#: Pillow ``thumbnail`` box, (width, height), as in the study.
SCREAM_THUMBNAIL_BOX = (350, 274)
#: (H, W) of procedural textures: the thumbnail box.
TEXTURE_SHAPE = (SCREAM_THUMBNAIL_BOX[1], SCREAM_THUMBNAIL_BOX[0])
#: Images per chunk of the host-side scream computation (float64 temporaries, ~25 MB).
_HOST_CHUNK = 256


def default_scream_path() -> Path:
    """``<data_root>/scream/scream.jpg``; data_root is read at call time."""
    return data_root() / "scream" / SCREAM_FILENAME


# -----------------------------------------------------------------------------
# Procedural textures (explicit stand-ins for the painting)
# -----------------------------------------------------------------------------


def _smooth_upsample(grid: np.ndarray, height: int, width: int) -> np.ndarray:
    """Interpolate a ``(gh, gw, C)`` lattice to ``(height, width, C)`` with smoothstep weights."""

    def axis(size: int, cells: int):
        position = np.linspace(0.0, cells - 1, size)
        low = np.minimum(np.floor(position).astype(np.int64), cells - 2)
        t = position - low
        return low, t * t * (3.0 - 2.0 * t)  # smoothstep: no creases at lattice lines

    rows, tr = axis(height, grid.shape[0])
    cols, tc = axis(width, grid.shape[1])
    tr, tc = tr[:, None, None], tc[None, :, None]
    top = grid[rows][:, cols] * (1 - tc) + grid[rows][:, cols + 1] * tc
    bottom = grid[rows + 1][:, cols] * (1 - tc) + grid[rows + 1][:, cols + 1] * tc
    return top * (1 - tr) + bottom * tr


def plasma_texture(seed: int = 0, shape: tuple[int, int] = TEXTURE_SHAPE) -> np.ndarray:
    """A colourful smooth-noise image, float64 ``(H, W, 3)`` in [0, 1], deterministic in ``seed``.

    Six octaves of value noise (lattices 3 to 96 cells across, amplitude
    halving-ish per octave), drawn independently per channel, each channel then
    stretched to span [0, 1]: large soft colour blobs with some fine detail, so
    that 64x64 crops differ from each other as crops of a painting do.
    """
    rng = np.random.default_rng(seed)
    height, width = shape
    out = np.zeros((height, width, NUM_CHANNELS))
    for octave in range(6):
        cells = 3 * 2**octave
        lattice = rng.random((cells + 1, cells + 1, NUM_CHANNELS))
        out += 0.55**octave * _smooth_upsample(lattice, height, width)
    low = out.min(axis=(0, 1), keepdims=True)
    high = out.max(axis=(0, 1), keepdims=True)
    return (out - low) / (high - low)


#: Named procedural textures for ``texture:``; each maps a seed to an ``(H, W, 3)`` image in [0, 1].
TEXTURES: dict[str, Callable[[int], np.ndarray]] = {"plasma": plasma_texture}


# -----------------------------------------------------------------------------
# The painting
# -----------------------------------------------------------------------------


def _thumbnail_size(width: int, height: int) -> tuple[int, int]:
    """Approximately the size Pillow's ``thumbnail(SCREAM_THUMBNAIL_BOX)`` gives (for the checks)."""
    scale = min(1.0, SCREAM_THUMBNAIL_BOX[0] / width, SCREAM_THUMBNAIL_BOX[1] / height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def _missing_painting_error(path: Path, alternative: str) -> DatasetNotFoundError:
    return DatasetNotFoundError(
        f"Scream painting not found at {path}: download {SCREAM_SOURCE} and save it there "
        f"(or set the dataset's `scream_path`), {alternative}",
        path,
    )


def check_painting(path: Path, alternative: str) -> None:
    """Check that ``path`` is an image usable as the scream painting, reading only its header.

    ``alternative`` ends the missing-file message (what else the user can do).
    """
    from PIL import Image, UnidentifiedImageError  # Pillow ships with matplotlib

    path = Path(path)
    if not path.is_file():
        raise _missing_painting_error(path, alternative)
    try:
        with Image.open(path) as image:  # lazy: parses the header, decodes no pixels
            width, height = image.size
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"{path} is not an image Pillow can read ({exc}); expected {SCREAM_SOURCE}") from None
    thumb_width, thumb_height = _thumbnail_size(width, height)
    if min(thumb_width, thumb_height) <= IMAGE_SIZE:
        raise ValueError(
            f"scream painting {path} is {width}x{height}, about {thumb_width}x{thumb_height} after "
            f"thumbnail({SCREAM_THUMBNAIL_BOX}); 64x64 crops need more than {IMAGE_SIZE} pixels on each side"
        )


def load_painting(path: Path, alternative: str) -> np.ndarray:
    """The painting as float64 ``(H, W, 3)`` in [0, 1]: ``thumbnail((350, 274))`` (Lanczos), / 255."""
    from PIL import Image

    check_painting(path, alternative)
    with Image.open(path) as opened:
        image: Image.Image = opened
        # Thumbnail first, as the study did (lets Pillow use JPEG draft decoding), then RGB.
        image.thumbnail(SCREAM_THUMBNAIL_BOX, Image.Resampling.LANCZOS)
        if image.mode != "RGB":
            image = image.convert("RGB")
        painting = np.asarray(image, dtype=np.float64) / 255.0
    if painting.shape[0] <= IMAGE_SIZE or painting.shape[1] <= IMAGE_SIZE:
        raise ValueError(f"scream painting {path} is {painting.shape[:2]} after thumbnail; too small for 64x64 crops")
    return painting


# -----------------------------------------------------------------------------
# Nuisance randomness (mixins placed before a dSprites class)
# -----------------------------------------------------------------------------


def _host_randint(random_state, high: int) -> int:
    """One integer in [0, high) from a RandomState (the study) or a numpy Generator."""
    if isinstance(random_state, np.random.RandomState):
        return int(random_state.randint(0, high))
    return int(random_state.integers(0, high))


class _ThreeChannelVariant:
    """Dispatches ``to_float`` to the host (numpy) or device (torch) nuisance implementation."""

    @property
    def observation_shape(self) -> tuple[int, int, int]:
        return OBSERVATION_SHAPE

    def to_float(self, images, random_state):
        """uint8 ``(n, 1, 64, 64)`` sprites -> float32 ``(n, 3, 64, 64)`` with fresh nuisance.

        numpy images need a ``numpy.random.RandomState`` (or ``Generator``); torch
        tensors a ``torch.Generator`` on the tensor's device.
        """
        mask = super().to_float(images, random_state)  # binary 0/1 float32, (n, 1, 64, 64)
        if isinstance(images, torch.Tensor):
            if not isinstance(random_state, torch.Generator):
                raise TypeError(f"{self.name}: torch images need a torch.Generator, got {type(random_state).__name__}")
            return self._device_nuisance(mask, random_state)
        if not isinstance(random_state, (np.random.RandomState, np.random.Generator)):
            raise TypeError(f"{self.name}: numpy images need a numpy RandomState, got {type(random_state).__name__}")
        return self._host_nuisance(mask, random_state)

    def _host_nuisance(self, mask: np.ndarray, random_state) -> np.ndarray:
        raise NotImplementedError

    def _device_nuisance(self, mask: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        raise NotImplementedError


class _ColorNuisance(_ThreeChannelVariant):
    def _host_nuisance(self, mask, random_state):
        colour = random_state.uniform(COLOR_LOW, COLOR_HIGH, [len(mask), 1, 1, NUM_CHANNELS])  # NHWC, as the study
        return (mask * colour.transpose(0, 3, 1, 2).astype(np.float32)).astype(np.float32)

    def _device_nuisance(self, mask, generator):
        colour = torch.rand((len(mask), NUM_CHANNELS, 1, 1), generator=generator, device=mask.device)
        return mask * (COLOR_LOW + (COLOR_HIGH - COLOR_LOW) * colour)


class _NoisyNuisance(_ThreeChannelVariant):
    def _host_nuisance(self, mask, random_state):
        noise = random_state.uniform(0.0, 1.0, [len(mask), IMAGE_SIZE, IMAGE_SIZE, NUM_CHANNELS])  # NHWC
        return np.minimum(mask + noise.transpose(0, 3, 1, 2).astype(np.float32), np.float32(1.0))

    def _device_nuisance(self, mask, generator):
        noise = torch.rand((len(mask), NUM_CHANNELS, IMAGE_SIZE, IMAGE_SIZE), generator=generator, device=mask.device)
        return torch.clamp_max(mask + noise, 1.0)


class _ScreamNuisance(_ThreeChannelVariant):
    """Needs ``scream_path``, ``texture`` and ``texture_seed`` attributes and ``_painting_alternative``."""

    scream_path: Path
    texture: str | None = None
    texture_seed: int = 0
    _painting_alternative = ""

    def check_painting(self) -> None:
        """Validate the painting file (header only); nothing to check for a procedural texture."""
        if self.texture is None:
            check_painting(self.scream_path, self._painting_alternative)

    @cached_property
    def painting(self) -> np.ndarray:
        """float64 ``(H, W, 3)`` in [0, 1]: the thumbnailed painting, or the configured texture."""
        if self.texture is not None:
            return TEXTURES[self.texture](self.texture_seed)
        return load_painting(self.scream_path, self._painting_alternative)

    def device_painting(self, device) -> torch.Tensor:
        """The painting as float32 ``(3, H * W)`` on ``device`` (cached per device), for gathers."""
        device = torch.device(device)
        cache = self.__dict__.setdefault("_device_painting", {})
        key = str(device)
        if key not in cache:
            channels_first = np.ascontiguousarray(self.painting.transpose(2, 0, 1).reshape(NUM_CHANNELS, -1))
            cache[key] = torch.from_numpy(channels_first.astype(np.float32)).to(device)
        return cache[key]

    def _host_nuisance(self, mask, random_state):
        painting = self.painting
        height, width = painting.shape[:2]
        count = len(mask)
        # The study's draw order: per image, row offset, column offset, colour.
        rows = np.empty(count, dtype=np.int64)
        cols = np.empty(count, dtype=np.int64)
        colours = np.empty((count, NUM_CHANNELS))
        for i in range(count):
            rows[i] = _host_randint(random_state, height - IMAGE_SIZE)
            cols[i] = _host_randint(random_state, width - IMAGE_SIZE)
            colours[i] = random_state.uniform(0.0, 1.0, size=NUM_CHANNELS)
        out = np.empty((count,) + OBSERVATION_SHAPE, dtype=np.float32)
        pixel = np.arange(IMAGE_SIZE)
        # float64 arithmetic, as the study, then one rounding to float32.
        for start in range(0, count, _HOST_CHUNK):
            part = slice(start, start + _HOST_CHUNK)
            crop_rows = (rows[part, None] + pixel)[:, :, None]
            crop_cols = (cols[part, None] + pixel)[:, None, :]
            background = (painting[crop_rows, crop_cols] + colours[part, None, None, :]) / 2.0  # NHWC
            sprite = mask[part, 0, :, :, None] > 0.5
            out[part] = np.where(sprite, 1.0 - background, background).transpose(0, 3, 1, 2)
        return out

    def _device_nuisance(self, mask, generator):
        device = mask.device
        painting = self.device_painting(device)
        height, width = self.painting.shape[:2]
        count = len(mask)
        rows = torch.randint(0, height - IMAGE_SIZE, (count,), generator=generator, device=device)
        cols = torch.randint(0, width - IMAGE_SIZE, (count,), generator=generator, device=device)
        colours = torch.rand((count, NUM_CHANNELS, 1, 1), generator=generator, device=device)
        pixel = torch.arange(IMAGE_SIZE, device=device)
        flat = (rows[:, None, None] + pixel[None, :, None]) * width + (cols[:, None, None] + pixel[None, None, :])
        crops = painting[:, flat].transpose(0, 1)  # (n, 3, 64, 64), one gather for the batch
        background = (crops + colours) / 2.0
        return torch.where(mask > 0.5, 1.0 - background, background)

    def __getstate__(self):
        state = super().__getstate__()
        state.pop("painting", None)  # workers reload it (or regenerate the texture) themselves
        state.pop("_device_painting", None)
        return state


# -----------------------------------------------------------------------------
# Configs
# -----------------------------------------------------------------------------


class ColorDSpritesConfig(DSpritesConfig):
    """Colour dSprites from DeepMind's npz."""


class NoisyDSpritesConfig(DSpritesConfig):
    """Noisy dSprites from DeepMind's npz."""


_SCREAM_PATH_DESCRIPTION = (
    f"The painting, {SCREAM_SOURCE}; default <data_root>/scream/{SCREAM_FILENAME}, where data_root is "
    "$DISENTBENCH_DATA or ~/.cache/disentbench. Shrunk with thumbnail((350, 274)), Lanczos filter."
)


class ScreamDSpritesConfig(DSpritesConfig):
    """Scream dSprites from DeepMind's npz and the painting file."""

    scream_path: Path | None = Field(None, description=_SCREAM_PATH_DESCRIPTION)


class ColorDSpritesProceduralConfig(DSpritesProceduralConfig):
    """Colour dSprites on the locally rendered grid."""


class NoisyDSpritesProceduralConfig(DSpritesProceduralConfig):
    """Noisy dSprites on the locally rendered grid."""


class ScreamDSpritesProceduralConfig(DSpritesProceduralConfig):
    """Scream dSprites on the locally rendered grid; the painting file, or an explicit procedural texture."""

    scream_path: Path | None = Field(None, description=_SCREAM_PATH_DESCRIPTION + " Not used with `texture`.")
    texture: Literal["plasma"] | None = Field(
        None,
        description=(
            "Use this named procedural texture (a seeded colourful smooth-noise image, 274x350) instead "
            "of the painting. Off by default: without it a missing painting is an error, never a silent substitute."
        ),
    )
    # Not rejected without `texture`: the grid re-validates dumped configs, defaults included.
    texture_seed: int = Field(0, ge=0, description="Seed of the procedural texture (used only with `texture`).")

    @model_validator(mode="after")
    def _one_background_source(self):
        if self.texture is not None and self.scream_path is not None:
            raise ValueError("set either `scream_path` (the painting) or `texture` (a procedural stand-in), not both")
        return self


# -----------------------------------------------------------------------------
# The datasets
# -----------------------------------------------------------------------------


class ColorDSprites(_ColorNuisance, DSprites):
    """dSprites (DeepMind npz) in a random colour per observation, on black."""

    name = "color_dsprites"
    description = "dSprites npz, sprite in a random colour U(0.5,1)^3 on black"
    config_class = ColorDSpritesConfig

    def __init__(self, config: ColorDSpritesConfig | None = None):
        super().__init__(config or ColorDSpritesConfig())


class NoisyDSprites(_NoisyNuisance, DSprites):
    """White dSprites (DeepMind npz) on fresh uniform noise per observation."""

    name = "noisy_dsprites"
    description = "dSprites npz, white sprite on fresh U(0,1) pixel noise"
    config_class = NoisyDSpritesConfig

    def __init__(self, config: NoisyDSpritesConfig | None = None):
        super().__init__(config or NoisyDSpritesConfig())


class ScreamDSprites(_ScreamNuisance, DSprites):
    """dSprites (DeepMind npz) cut out of random crops of *The Scream*."""

    name = "scream_dsprites"
    description = "dSprites npz over random tinted crops of The Scream, inverted"
    config_class = ScreamDSpritesConfig
    config: ScreamDSpritesConfig

    _painting_alternative = (
        "or use the `scream_dsprites_procedural` dataset with `texture: plasma` for a procedural stand-in"
    )

    def __init__(self, config: ScreamDSpritesConfig | None = None):
        super().__init__(config or ScreamDSpritesConfig())
        scream_path = self.config.scream_path
        self.scream_path = Path(scream_path).expanduser() if scream_path else default_scream_path()

    def check(self) -> None:
        """Validate the npz and the painting, reading headers only."""
        super().check()
        self.check_painting()


class ColorDSpritesProcedural(_ColorNuisance, DSpritesProcedural):
    """Colour dSprites on the locally rendered grid."""

    name = "color_dsprites_procedural"
    description = "color_dsprites on the locally rendered grid (no download)"
    config_class = ColorDSpritesProceduralConfig

    def __init__(self, config: ColorDSpritesProceduralConfig | None = None):
        super().__init__(config or ColorDSpritesProceduralConfig())


class NoisyDSpritesProcedural(_NoisyNuisance, DSpritesProcedural):
    """Noisy dSprites on the locally rendered grid."""

    name = "noisy_dsprites_procedural"
    description = "noisy_dsprites on the locally rendered grid (no download)"
    config_class = NoisyDSpritesProceduralConfig

    def __init__(self, config: NoisyDSpritesProceduralConfig | None = None):
        super().__init__(config or NoisyDSpritesProceduralConfig())


class ScreamDSpritesProcedural(_ScreamNuisance, DSpritesProcedural):
    """Scream dSprites on the locally rendered grid; the painting, or an explicitly chosen texture."""

    name = "scream_dsprites_procedural"
    description = "scream_dsprites, local grid; painting or explicit `texture`"
    config_class = ScreamDSpritesProceduralConfig
    config: ScreamDSpritesProceduralConfig

    _painting_alternative = "or set `texture: plasma` to use a procedural stand-in texture"

    def __init__(self, config: ScreamDSpritesProceduralConfig | None = None):
        super().__init__(config or ScreamDSpritesProceduralConfig())
        scream_path = self.config.scream_path
        self.scream_path = Path(scream_path).expanduser() if scream_path else default_scream_path()
        self.texture = self.config.texture
        self.texture_seed = self.config.texture_seed

    def check(self) -> None:
        """Validate the painting (header only) unless a procedural texture is configured."""
        super().check()
        self.check_painting()


@hookimpl
def register_datasets(register):
    register(ColorDSprites)
    register(NoisyDSprites)
    register(ScreamDSprites)
    register(ColorDSpritesProcedural)
    register(NoisyDSpritesProcedural)
    register(ScreamDSpritesProcedural)
