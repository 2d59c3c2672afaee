"""dSprites (Matthey et al. 2017), as used by the study (spec/study.md section 3).

Two dataset plugins share one factor grid, 737,280 binary 64x64 images::

    shape 3 (square, ellipse, heart), scale 6, orientation 40, pos_x 32, pos_y 32

in the DeepMind file's index order (pos_y varies fastest). The colour factor of
the original file has a single value and is dropped.

* ``dsprites`` reads DeepMind's ``dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz``.
* ``dsprites_procedural`` renders the same grid itself (no download), caches
  it once as a ``.npy`` and memory-maps it afterwards. It is a stand-in that
  looks like dSprites, not a pixel-exact copy of the DeepMind images.

Image axes: observations are ``(1, H, W)``; ``pos_x`` moves the sprite along
the column (W) axis, to the right as displayed, and ``pos_y`` along the row (H)
axis, downwards as displayed (row index grows with ``pos_y``).
"""

from __future__ import annotations

import importlib
import os
import pickle
import tempfile
import zipfile
from functools import cached_property
from pathlib import Path

import numpy as np
from pydantic import Field

from disentbench import hookimpl
from disentbench.core.contracts import PluginConfig
from disentbench.core.data.ground_truth import DatasetFormatError, GroundTruthData
from disentbench.core.paths import DatasetNotFoundError, data_root

FACTOR_NAMES = ("shape", "scale", "orientation", "pos_x", "pos_y")
FACTOR_SIZES = (3, 6, 40, 32, 32)
NUM_IMAGES = int(np.prod(FACTOR_SIZES))  # 737,280
IMAGE_SIZE = 64
IMAGE_SHAPE = (1, IMAGE_SIZE, IMAGE_SIZE)

SHAPE_NAMES = ("square", "ellipse", "heart")
SCALES = np.linspace(0.5, 1.0, 6)
#: DeepMind's grid: 40 values from 0 to 2*pi *inclusive*, so the first and last
#: orientation draw the same sprite. Kept so that factor values (and therefore
#: continuous-factor metrics) agree with the original file.
ORIENTATIONS = np.linspace(0.0, 2.0 * np.pi, 40)
POSITIONS = np.linspace(0.0, 1.0, 32)

DSPRITES_FILENAME = "dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz"
DSPRITES_URL = "https://github.com/google-deepmind/dsprites-dataset"
#: latents_sizes in the DeepMind metadata: colour, shape, scale, orientation, posX, posY.
DSPRITES_LATENTS_SIZES = (1,) + FACTOR_SIZES

#: Bump when the rendering changes, so stale caches are never reused.
PROCEDURAL_VERSION = 1
PROCEDURAL_FILENAME = f"dsprites_procedural_v{PROCEDURAL_VERSION}.npy"

# -- procedural geometry (pixel units; the image spans [0, 64] in each axis) --
#: Width of every shape at scale 1 and orientation 0 (square side, ellipse major
#: axis, heart width): about 0.34 of the image, as in dSprites.
SPRITE_SIZE = 22.0
#: The sprite centre moves over this many pixels as a position goes 0 -> 1,
#: centred in the image (centres 11 .. 53): the unrotated sprite at scale 1
#: just touches the border at the extreme positions and is never clipped;
#: rotated corners of the largest squares and hearts may be clipped there.
POSITION_SPAN = IMAGE_SIZE - SPRITE_SIZE
#: Each sprite is rasterised once on a PATCH x PATCH grid centred on the sprite
#: centre; 40 holds any rotation at scale 1 (the square's diagonal is 31 px).
PATCH = 40
#: Samples per pixel along each axis; a pixel is on when at least half of its
#: SUPERSAMPLE**2 sample points fall inside the shape.
SUPERSAMPLE = 4
#: Ellipse semi-minor axis relative to the semi-major one.
ELLIPSE_ASPECT = 0.5
#: Bounding box of the heart curve (u^2 + v^2 - 1)^3 - u^2 v^3 <= 0, measured
#: numerically: |u| <= 1.1384, -1 <= v <= 1.2360.
HEART_HALF_WIDTH = 1.1384
HEART_V_CENTRE = (1.2360 - 1.0) / 2.0


def factor_values() -> tuple[np.ndarray, ...]:
    """The value of each factor index, in factor order (as DeepMind's ``latents_possible_values``).

    Shape is labelled 1, 2, 3 like the original file; scale, orientation (radians)
    and positions are the continuous grid values.
    """
    return (np.arange(1.0, 4.0), SCALES.copy(), ORIENTATIONS.copy(), POSITIONS.copy(), POSITIONS.copy())


# -----------------------------------------------------------------------------
# Procedural rendering
# -----------------------------------------------------------------------------


def _inside(shape: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Point-in-shape test in the shape's own frame, where the shape is 1 unit wide."""
    if shape == 0:  # square
        return (np.abs(u) <= 0.5) & (np.abs(v) <= 0.5)
    if shape == 1:  # ellipse, major axis along u
        return (u / 0.5) ** 2 + (v / (0.5 * ELLIPSE_ASPECT)) ** 2 <= 1.0
    if shape == 2:  # heart, lobes towards +v, centred on its bounding box
        a = u * (2.0 * HEART_HALF_WIDTH)
        b = v * (2.0 * HEART_HALF_WIDTH) + HEART_V_CENTRE
        r = a * a + b * b - 1.0
        return r * r * r - a * a * b * b * b <= 0.0
    raise ValueError(f"shape index must be 0, 1 or 2, got {shape}")


def rasterise_sprites(shape: int, scale_index: int) -> np.ndarray:
    """Binary ``(40, PATCH, PATCH)`` uint8 sprites of one shape and scale, one per orientation.

    The sprite centre sits at the patch centre (a pixel corner, PATCH is even).
    A positive orientation turns the sprite counter-clockwise as displayed.
    """
    # Supersampled pixel-centre coordinates relative to the patch centre;
    # x grows along columns, y grows upwards (against the row index).
    offsets = (np.arange(PATCH * SUPERSAMPLE) + 0.5) / SUPERSAMPLE - PATCH / 2.0
    x = offsets[None, :]
    y = -offsets[:, None]
    size = SPRITE_SIZE * SCALES[scale_index]
    cos = np.cos(ORIENTATIONS)[:, None, None]
    sin = np.sin(ORIENTATIONS)[:, None, None]
    # Rotate sample points by -theta into the shape frame (same as rotating the shape by +theta).
    u = (cos * x + sin * y) / size
    v = (-sin * x + cos * y) / size
    inside = _inside(shape, u, v)
    coverage = inside.reshape(len(ORIENTATIONS), PATCH, SUPERSAMPLE, PATCH, SUPERSAMPLE).mean(axis=(2, 4))
    return (coverage >= 0.5).astype(np.uint8)


def position_offsets() -> np.ndarray:
    """Integer pixel shift of the sprite centre from the image centre, per position index.

    Sprites are placed by slicing, so the continuous centre ``32 + span * (p - 0.5)``
    is rounded to whole pixels: consecutive positions are 1 or 2 pixels apart.
    """
    return np.rint(POSITION_SPAN * (POSITIONS - 0.5)).astype(np.int64)


class _Placer:
    """Places one sprite patch at every (pos_x, pos_y) offset with one strided gather."""

    def __init__(self):
        offsets = position_offsets()
        self.margin = int(np.abs(offsets).max())
        frame_size = IMAGE_SIZE + 2 * self.margin
        self.frame = np.zeros((frame_size, frame_size), dtype=np.uint8)
        self.corner = IMAGE_SIZE // 2 + self.margin - PATCH // 2
        # In the frame the sprite centre is at 32 + margin; the image window for
        # a shift d starts at margin - d, putting the centre at image pixel 32 + d.
        self.starts = self.margin - offsets
        self.windows = np.lib.stride_tricks.sliding_window_view(self.frame, (IMAGE_SIZE, IMAGE_SIZE))

    def _load(self, sprite: np.ndarray) -> None:
        self.frame[self.corner : self.corner + PATCH, self.corner : self.corner + PATCH] = sprite

    def all_positions(self, sprite: np.ndarray) -> np.ndarray:
        """``(32 * 32, 64, 64)`` images, pos_x major and pos_y minor (grid order)."""
        self._load(sprite)
        block = self.windows[self.starts[None, :], self.starts[:, None]]  # [x, y, H, W]
        return block.reshape(-1, IMAGE_SIZE, IMAGE_SIZE)

    def one(self, sprite: np.ndarray, pos_x: int, pos_y: int) -> np.ndarray:
        self._load(sprite)
        return self.windows[self.starts[pos_y], self.starts[pos_x]].copy()


def render_grid(out: np.ndarray) -> np.ndarray:
    """Render all 737,280 images into ``out`` (uint8, ``(N, 1, 64, 64)``, e.g. a memmap)."""
    if tuple(out.shape) != (NUM_IMAGES,) + IMAGE_SHAPE or out.dtype != np.uint8:
        raise ValueError(f"out must be uint8 {(NUM_IMAGES,) + IMAGE_SHAPE}, got {out.dtype} {tuple(out.shape)}")
    placer = _Placer()
    per_sprite = FACTOR_SIZES[3] * FACTOR_SIZES[4]
    start = 0
    for shape in range(FACTOR_SIZES[0]):
        for scale_index in range(FACTOR_SIZES[1]):
            for sprite in rasterise_sprites(shape, scale_index):
                out[start : start + per_sprite, 0] = placer.all_positions(sprite)
                start += per_sprite
    return out


def render_images(factors: np.ndarray) -> np.ndarray:
    """Render only the given factor vectors (rows): uint8 ``(n, 1, 64, 64)``.

    Same pixels as :func:`render_grid`; for checks and for peeking without the cache.
    """
    factors = np.atleast_2d(np.asarray(factors, dtype=np.int64))
    images = np.zeros((len(factors),) + IMAGE_SHAPE, dtype=np.uint8)
    placer = _Placer()
    sprites: dict[tuple[int, int], np.ndarray] = {}
    for row, (shape, scale_index, orientation, pos_x, pos_y) in enumerate(factors):
        key = (int(shape), int(scale_index))
        if key not in sprites:
            sprites[key] = rasterise_sprites(*key)
        images[row, 0] = placer.one(sprites[key][orientation], pos_x, pos_y)
    return images


def write_procedural_cache(path: Path) -> Path:
    """Render the grid into ``path`` (a ``.npy``), atomically.

    The pixels go to a unique temporary file in the same directory, which is
    renamed over ``path`` only once complete and synced, so an interrupted run
    never leaves a truncated cache (at worst a stray ``*.tmp`` file), and
    concurrent writers simply race to put identical bytes in place.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(NUM_IMAGES,) + IMAGE_SHAPE)
        render_grid(out)
        out.flush()
        del out
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; the cache may be shared
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


# -----------------------------------------------------------------------------
# Reading DeepMind's npz without trusting it
# -----------------------------------------------------------------------------

#: The only globals the metadata pickle may name: numpy array and scalar
#: reconstruction (numpy 1 and numpy 2 module paths; DeepMind's file was
#: written by Python 2, hence latin1 and numpy.core). Anything else is refused.
_PICKLE_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),  # how Python 3 writes bytes in protocol-2 pickles
}


class _MetadataUnpickler(pickle.Unpickler):
    """Unpickles the npz ``metadata`` entry (a dict of arrays and strings) and nothing more.

    The file comes from outside, and ``np.load(allow_pickle=True)`` would run any
    code a crafted pickle names.
    """

    def find_class(self, module, name):
        if (module, name) not in _PICKLE_ALLOWED:
            raise pickle.UnpicklingError(f"metadata refers to {module}.{name}, which is not allowed")
        if module.startswith("numpy.core."):  # numpy >= 2 moved numpy.core to numpy._core
            try:
                return getattr(importlib.import_module("numpy._core." + module[len("numpy.core.") :]), name)
            except (ImportError, AttributeError):
                pass
        return super().find_class(module, name)


def _read_npy_header(handle) -> tuple[tuple[int, ...], np.dtype]:
    version = np.lib.format.read_magic(handle)
    if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(handle)
    else:
        shape, _, dtype = np.lib.format.read_array_header_2_0(handle)
    return tuple(shape), dtype


def _metadata_value(metadata: dict, key: str):
    for candidate in (key, key.encode()):  # a Python 2 pickle may keep bytes keys
        if candidate in metadata:
            return metadata[candidate]
    raise KeyError(key)


def check_dsprites_npz(path: Path) -> None:
    """Check that ``path`` is DeepMind's dSprites npz without decompressing the pixels.

    Reads only the ``imgs`` array header and the small ``metadata`` entry.
    Raises :class:`DatasetNotFoundError` or ``ValueError`` with a one-line reason.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetNotFoundError(
            f"dSprites file not found at {path}: download {DSPRITES_FILENAME} from {DSPRITES_URL} "
            f"and put it there (or set $DISENTBENCH_DATA or the dataset's `path`), "
            f"or use the `dsprites_procedural` dataset, which needs no download",
            path,
        )
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path} is not an npz archive; expected DeepMind's {DSPRITES_FILENAME}")
    with zipfile.ZipFile(path) as archive:
        members = set(archive.namelist())
        missing = [key for key in ("imgs", "metadata") if f"{key}.npy" not in members]
        if missing:
            found = ", ".join(sorted(name.removesuffix(".npy") for name in members)) or "none"
            raise ValueError(f"{path} lacks the key(s) {', '.join(missing)} of the dSprites npz (found: {found})")
        with archive.open("metadata.npy") as handle:
            _, dtype = _read_npy_header(handle)
            if not dtype.hasobject:
                raise ValueError(f"{path}: `metadata` is not a pickled dict as in DeepMind's dSprites npz")
            try:
                metadata = _MetadataUnpickler(handle, encoding="latin1").load()
            except Exception as exc:
                raise ValueError(f"{path}: cannot read `metadata` safely: {exc}") from None
        if isinstance(metadata, np.ndarray) and metadata.shape == ():
            metadata = metadata.item()
        try:
            sizes = tuple(int(size) for size in np.asarray(_metadata_value(metadata, "latents_sizes")).ravel())
        except (KeyError, TypeError, AttributeError, ValueError):
            raise ValueError(f"{path}: `metadata` has no `latents_sizes` entry") from None
        if sizes != DSPRITES_LATENTS_SIZES:
            raise ValueError(
                f"{path}: metadata latents_sizes is {list(sizes)}, expected {list(DSPRITES_LATENTS_SIZES)} "
                "(colour, shape, scale, orientation, posX, posY)"
            )
        with archive.open("imgs.npy") as handle:
            shape, dtype = _read_npy_header(handle)
        expected = (NUM_IMAGES, IMAGE_SIZE, IMAGE_SIZE)
        if shape != expected or dtype != np.uint8:
            raise ValueError(f"{path}: `imgs` is {dtype} {shape}, expected uint8 {expected}")


# -----------------------------------------------------------------------------
# The datasets
# -----------------------------------------------------------------------------


class _DSpritesGrid(GroundTruthData):
    """What both dSprites plugins share: the factor grid, binary pixels, lazy images."""

    factor_names = FACTOR_NAMES
    factor_sizes = FACTOR_SIZES
    pixel_scale = 1.0  # pixels are already 0/1

    @property
    def observation_shape(self) -> tuple[int, int, int]:
        return IMAGE_SHAPE  # known without loading 3 GB of pixels

    @property
    def factor_values(self) -> tuple[np.ndarray, ...]:
        return factor_values()

    def __getstate__(self):
        # Send workers the recipe, not 3 GB of pixels: they load lazily themselves.
        state = dict(self.__dict__)
        state.pop("images", None)
        state.pop("_device_images", None)
        return state


class DSpritesConfig(PluginConfig):
    path: Path | None = Field(
        None,
        description=(
            f"DeepMind's {DSPRITES_FILENAME}; default <data_root>/dsprites/{DSPRITES_FILENAME}, "
            "where data_root is $DISENTBENCH_DATA or ~/.cache/disentbench."
        ),
    )


class DSprites(_DSpritesGrid):
    """DeepMind's dSprites file. Decompressed into RAM (3 GB uint8) on first use of ``images``."""

    name = "dsprites"
    description = "dSprites (DeepMind npz): shape, scale, orientation, pos_x, pos_y; 737,280 binary 64x64 images"
    config_class = DSpritesConfig

    def __init__(self, config: DSpritesConfig | None = None):
        self.config = config or DSpritesConfig()
        default = data_root() / "dsprites" / DSPRITES_FILENAME
        self.path = Path(self.config.path).expanduser() if self.config.path else default

    def check(self) -> None:
        """Validate the file (presence, keys, latents_sizes, ``imgs`` header) without reading pixels."""
        check_dsprites_npz(self.path)

    @property
    def prepared_path(self) -> Path:
        """The decompressed, memory-mappable copy of ``imgs`` (beside the npz, in ``prepared/``)."""
        return self.path.parent / "prepared" / "dsprites_images.npy"

    def is_prepared(self) -> bool:
        cache = self.prepared_path
        if not cache.is_file() or not self.path.is_file():
            return False
        if cache.stat().st_mtime < self.path.stat().st_mtime:
            return False  # the npz changed since
        try:
            with open(cache, "rb") as handle:
                shape, dtype = _read_npy_header(handle)
        except (OSError, ValueError):
            return False
        return shape == (NUM_IMAGES,) + IMAGE_SHAPE and dtype == np.uint8

    def prepare(self, source: Path | None = None) -> Path:
        """Decompress ``imgs`` once into a uint8 .npy cache, streamed (never 3 GB in RAM), atomically."""
        if source is not None:
            self.path = Path(source).expanduser()
        self.check()
        target = self.prepared_path
        target.parent.mkdir(parents=True, exist_ok=True)
        handle, tmp_name = tempfile.mkstemp(prefix=".dsprites_images.", suffix=".npy.tmp", dir=target.parent)
        os.close(handle)
        try:
            out = np.lib.format.open_memmap(tmp_name, mode="w+", dtype=np.uint8, shape=(NUM_IMAGES,) + IMAGE_SHAPE)
            flat = out.reshape(-1)
            with zipfile.ZipFile(self.path) as archive, archive.open("imgs.npy") as member:
                _read_npy_header(member)
                position, chunk = 0, 1 << 26
                while position < flat.size:
                    data = member.read(min(chunk, flat.size - position))
                    if not data:
                        raise ValueError(f"{self.path}: `imgs` is truncated after {position} of {flat.size} bytes")
                    flat[position : position + len(data)] = np.frombuffer(data, dtype=np.uint8)
                    position += len(data)
            out.flush()
            del out, flat
            os.replace(tmp_name, target)
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise
        return target.parent

    @cached_property
    def images(self) -> np.ndarray:
        if not self.is_prepared():
            self.prepare()
        # copy-on-write map: loads in milliseconds, pages come in on demand
        return np.load(self.prepared_path, mmap_mode="c", allow_pickle=False)


class DSpritesProceduralConfig(PluginConfig):
    path: Path | None = Field(
        None,
        description=(
            f"Cache file of the rendered grid (.npy, about 3 GB); default "
            f"<data_root>/dsprites_procedural/{PROCEDURAL_FILENAME}, where data_root is "
            "$DISENTBENCH_DATA or ~/.cache/disentbench. Rendered there on first use."
        ),
    )


class DSpritesProcedural(_DSpritesGrid):
    """dSprites rendered locally: same factors, values and index order as the original.

    The grid is rendered once (about 10 s) into a ``.npy`` cache and afterwards
    memory-mapped copy-on-write, so opening it costs nothing and pages are read
    on demand.
    """

    name = "dsprites_procedural"
    description = "dSprites grid rendered locally (no download), cached as .npy; same factors and index order"
    config_class = DSpritesProceduralConfig

    def __init__(self, config: DSpritesProceduralConfig | None = None):
        self.config = config or DSpritesProceduralConfig()
        self.path = (
            Path(self.config.path).expanduser()
            if self.config.path
            else data_root() / "dsprites_procedural" / PROCEDURAL_FILENAME
        )

    def check(self) -> None:
        """An existing cache must be a whole uint8 ``.npy`` of the grid (header and size only); none is fine.

        Checked before a study writes anything, so a damaged or foreign cache is
        bad input naming the file (exit 2), not a failure of every run.
        """
        if not self.path.exists():
            return  # rendered on first use
        expected = (NUM_IMAGES,) + IMAGE_SHAPE
        fix = "delete it to re-render (or point `path` elsewhere)"
        if not self.path.is_file():
            raise DatasetFormatError(f"dsprites_procedural cache {self.path} is not a file; {fix}", self.path)
        try:
            with open(self.path, "rb") as handle:
                version = np.lib.format.read_magic(handle)
                read_header = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
                if version not in read_header:
                    raise ValueError(f"unsupported .npy version {version}")
                shape, fortran, dtype = read_header[version](handle)
                offset = handle.tell()
            size = self.path.stat().st_size
        except (OSError, ValueError) as exc:
            raise DatasetFormatError(
                f"dsprites_procedural cache {self.path} is not a readable .npy ({exc}); {fix}", self.path
            ) from None
        if tuple(shape) != expected or fortran or dtype != np.uint8:
            raise DatasetFormatError(
                f"dsprites_procedural cache {self.path} is {dtype} {tuple(shape)}, expected uint8 {expected}; {fix}",
                self.path,
            )
        if size != offset + int(np.prod(expected)):
            raise DatasetFormatError(
                f"dsprites_procedural cache {self.path} is truncated or padded ({size:,} bytes, expected "
                f"{offset + int(np.prod(expected)):,}); {fix}",
                self.path,
            )

    def ensure_cache(self) -> Path:
        """Render the cache file unless it exists; returns its path."""
        if not self.path.is_file():
            write_procedural_cache(self.path)
        return self.path

    @cached_property
    def images(self) -> np.ndarray:
        self.ensure_cache()
        expected = (NUM_IMAGES,) + IMAGE_SHAPE
        try:
            # "c" (copy-on-write) rather than "r": the array is writable, so
            # torch.from_numpy accepts it silently; writes never reach the file.
            images = np.load(self.path, mmap_mode="c", allow_pickle=False)
        except ValueError as exc:
            raise ValueError(
                f"cannot read the dsprites_procedural cache {self.path} ({exc}); delete it to re-render"
            ) from None
        if tuple(images.shape) != expected or images.dtype != np.uint8:
            raise ValueError(
                f"dsprites_procedural cache {self.path} is {images.dtype} {tuple(images.shape)}, "
                f"expected uint8 {expected}; delete it to re-render"
            )
        return images


@hookimpl
def register_datasets(register):
    register(DSprites)
    register(DSpritesProcedural)
