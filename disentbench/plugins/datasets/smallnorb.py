"""smallNORB (LeCun et al. 2004), as used by the study (spec/study.md section 3).

Ground-truth factors: category 5, elevation 9, azimuth 18, lighting 6. The
object instance (10 per category: 5 in the training files, 5 in the testing
files, which are concatenated) is a nuisance: every observation of a factor
vector shows a uniformly drawn instance (``PreparedData.latent_dims``).

Files (the published ``.mat`` names, gunzipped or still ``.mat.gz``) under
``<data_root>/small_norb/``::

    smallnorb-5x46789x9x18x6x2x96x96-training-{dat,cat,info}.mat
    smallnorb-5x01235x9x18x6x2x96x96-testing-{dat,cat,info}.mat

NORB binary matrix format (little-endian): int32 magic (0x1E3D4C55 = uint8
matrix, 0x1E3D4C54 = int32 matrix), int32 ``ndim``, ``max(ndim, 3)`` int32
dimensions (only the first ``ndim`` count), then the data in C order.

* ``dat``: uint8 ``(24300, 2, 96, 96)``, a stereo pair per row; camera 0 is used.
* ``cat``: int32 ``(24300,)``, the category 0..4.
* ``info``: int32 ``(24300, 4)``: instance, elevation 0..8, azimuth 0, 2, ..., 34
  (halved to 0..17), lighting 0..5.

The image order is built from these labels (``[category, instance, elevation,
azimuth // 2, lighting]``, last fastest), never from the file order, and every
file must form its part of the full grid exactly once.

Pixels: camera 0 resized 96 -> 64 with PIL ``Image.Resampling.LANCZOS``, stored
as uint8 and scaled /255 per batch. The study used ``Image.ANTIALIAS``, which
Pillow had made an alias of LANCZOS and removed in Pillow 10, so the filter is
the same; resampling arithmetic of other Pillow versions may differ by one grey
level in a few pixels.
"""

from __future__ import annotations

import gzip
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from disentbench import hookimpl
from disentbench.core.contracts import PluginConfig
from disentbench.core.data.ground_truth import DatasetFormatError, PreparedData, grid_index_from_factors
from disentbench.core.paths import data_root

FOLDER = "small_norb"
SPLIT_FILES = {
    "training": "smallnorb-5x46789x9x18x6x2x96x96-training-{}.mat",
    "testing": "smallnorb-5x01235x9x18x6x2x96x96-testing-{}.mat",
}
KINDS = ("dat", "cat", "info")
SMALLNORB_URL = "https://cs.nyu.edu/~ylclab/data/norb-v1.0-small/"
CATEGORY_NAMES = ("animal", "human", "airplane", "truck", "car")
IMAGE_SIZE = 64

UINT8_MAGIC = 0x1E3D4C55
INT32_MAGIC = 0x1E3D4C54
_MAGIC_DTYPES: dict[int, np.dtype] = {UINT8_MAGIC: np.dtype(np.uint8), INT32_MAGIC: np.dtype("<i4")}
#: Other NORB element types: recognised, so the error can say what the file holds.
_OTHER_MAGICS = {0x1E3D4C51: "float32", 0x1E3D4C53: "float64", 0x1E3D4C56: "int16"}


@dataclass(frozen=True)
class NorbLayout:
    """What the files must contain. Tests pass a tiny one; the plugin's is always :data:`SMALLNORB`."""

    categories: int = 5
    training_instances: tuple[int, ...] = (4, 6, 7, 8, 9)
    testing_instances: tuple[int, ...] = (0, 1, 2, 3, 5)
    elevations: int = 9
    azimuths: int = 18  # stored as 0, 2, ..., 2 * (azimuths - 1)
    lightings: int = 6
    source_size: int = 96

    @property
    def instances(self) -> int:
        return len(self.training_instances) + len(self.testing_instances)

    def split_instances(self, split: str) -> tuple[int, ...]:
        return self.training_instances if split == "training" else self.testing_instances

    def split_rows(self, split: str) -> int:
        return self.categories * len(self.split_instances(split)) * self.elevations * self.azimuths * self.lightings


SMALLNORB = NorbLayout()


# -----------------------------------------------------------------------------
# The NORB matrix format
# -----------------------------------------------------------------------------


@dataclass(frozen=True)
class NorbMatrix:
    path: Path
    dtype: np.dtype
    shape: tuple[int, ...]
    offset: int  # bytes before the data

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize

    def describe(self) -> str:
        article = "an" if self.dtype.name.startswith("int") else "a"
        return f"{article} {self.dtype.name} {'x'.join(map(str, self.shape))} matrix"


def _open(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def read_norb_header(path: Path) -> NorbMatrix:
    """Parse a NORB matrix header; a bad one raises :class:`DatasetFormatError` naming the file."""
    path = Path(path)
    try:
        with _open(path) as handle:
            head = handle.read(8)
            if len(head) < 8:
                raise DatasetFormatError(f"{path}: {len(head)} bytes, too short for a NORB matrix header", path)
            magic, ndim = struct.unpack("<ii", head)
            magic &= 0xFFFFFFFF
            if magic not in _MAGIC_DTYPES:
                if magic in _OTHER_MAGICS:
                    raise DatasetFormatError(
                        f"{path}: holds a {_OTHER_MAGICS[magic]} NORB matrix; smallNORB files are uint8 or int32", path
                    )
                raise DatasetFormatError(
                    f"{path}: not a NORB matrix file (header magic 0x{magic:08X}; corrupted header?)", path
                )
            if not 1 <= ndim <= 16:
                raise DatasetFormatError(f"{path}: corrupted NORB header (ndim = {ndim})", path)
            count = max(ndim, 3)
            raw = handle.read(4 * count)
            if len(raw) < 4 * count:
                raise DatasetFormatError(f"{path}: truncated NORB header", path)
    except DatasetFormatError:
        raise
    except (OSError, EOFError) as exc:
        raise DatasetFormatError(f"{path}: cannot read the NORB header ({type(exc).__name__}: {exc})", path) from None
    dims = struct.unpack(f"<{count}i", raw)[:ndim]
    if any(d <= 0 for d in dims):
        raise DatasetFormatError(f"{path}: corrupted NORB header (dimensions {list(dims)})", path)
    return NorbMatrix(path, _MAGIC_DTYPES[magic], tuple(dims), 8 + 4 * count)


def check_norb_matrix(path: Path, dtype, shape: tuple[int, ...]) -> NorbMatrix:
    """Header must declare ``dtype`` and ``shape``; an uncompressed file must hold exactly that many bytes."""
    matrix = read_norb_header(path)
    expected = NorbMatrix(path, np.dtype(dtype), tuple(shape), matrix.offset)
    if matrix.dtype != expected.dtype or matrix.shape != expected.shape:
        raise DatasetFormatError(f"{path}: {matrix.describe()}, expected {expected.describe()}", path)
    if path.suffix != ".gz":
        size, wanted = path.stat().st_size, matrix.offset + matrix.nbytes
        if size < wanted:
            raise DatasetFormatError(
                f"{path}: truncated, {size:,} bytes where {matrix.describe()} needs {wanted:,}", path
            )
        if size > wanted:
            raise DatasetFormatError(
                f"{path}: {size - wanted:,} bytes beyond {matrix.describe()} that its header declares", path
            )
    return matrix


def _read_exact(handle, count: int, matrix: NorbMatrix) -> bytes:
    try:
        data = handle.read(count)
    except (OSError, EOFError) as exc:
        raise DatasetFormatError(f"{matrix.path}: cannot read the data ({type(exc).__name__}: {exc})", matrix.path) from None
    if len(data) != count:
        raise DatasetFormatError(f"{matrix.path}: truncated, the {matrix.describe()} ends early", matrix.path)
    return data


def read_norb_matrix(matrix: NorbMatrix) -> np.ndarray:
    """The whole (small) matrix as an array."""
    with _open(matrix.path) as handle:
        _read_exact(handle, matrix.offset, matrix)
        data = _read_exact(handle, matrix.nbytes, matrix)
    return np.frombuffer(data, dtype=matrix.dtype).reshape(matrix.shape)


def iter_norb_rows(matrix: NorbMatrix, rows_per_chunk: int):
    """``(first_row, rows)`` chunks along axis 0, read sequentially (gzip streams too)."""
    row_shape = matrix.shape[1:]
    row_bytes = int(np.prod(row_shape, dtype=np.int64)) * matrix.dtype.itemsize
    with _open(matrix.path) as handle:
        _read_exact(handle, matrix.offset, matrix)
        for start in range(0, matrix.shape[0], rows_per_chunk):
            count = min(rows_per_chunk, matrix.shape[0] - start)
            data = _read_exact(handle, count * row_bytes, matrix)
            yield start, np.frombuffer(data, dtype=matrix.dtype).reshape((count,) + row_shape)


def resize_to_64(image: np.ndarray) -> np.ndarray:
    """One uint8 (H, W) image to (64, 64) with PIL LANCZOS (the study's ANTIALIAS)."""
    from PIL import Image

    return np.asarray(Image.fromarray(image).resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.LANCZOS))


# -----------------------------------------------------------------------------
# The dataset
# -----------------------------------------------------------------------------


class SmallNORBConfig(PluginConfig):
    path: Path | None = Field(
        None,
        description=(
            "Folder holding the six smallnorb-*-{dat,cat,info}.mat files (gunzipped, or the .mat.gz downloads); "
            f"default <data_root>/{FOLDER}, where data_root is $DISENTBENCH_DATA or ~/.cache/disentbench. "
            "Read once into <data_root>/smallnorb/prepared/."
        ),
    )


class SmallNORB(PreparedData):
    """smallNORB: category, elevation, azimuth, lighting; the instance is drawn at random per observation."""

    name = "smallnorb"
    description = (
        "smallNORB (NORB .mat files): category, elevation, azimuth, lighting (instance drawn at random); "
        "48,600 grey 64x64 images"
    )
    config_class = SmallNORBConfig
    image_shape = (1, IMAGE_SIZE, IMAGE_SIZE)

    def __init__(self, config: SmallNORBConfig | None = None, *, _layout: NorbLayout = SMALLNORB):
        # _layout is a test hook (tiny fixture grids); it is not a config field,
        # so real data is always validated against the published layout.
        self.config = config or SmallNORBConfig()
        self.layout = _layout
        self.folder = Path(self.config.path).expanduser() if self.config.path else data_root() / FOLDER
        layout = self.layout
        self.grid_names = ("category", "instance", "elevation", "azimuth", "lighting")
        self.grid_sizes = (layout.categories, layout.instances, layout.elevations, layout.azimuths, layout.lightings)
        self.latent_dims = (0, 2, 3, 4)
        self.factor_names = tuple(self.grid_names[d] for d in self.latent_dims)
        self.factor_sizes = tuple(self.grid_sizes[d] for d in self.latent_dims)
        if sorted(layout.training_instances + layout.testing_instances) != list(range(layout.instances)):
            raise ValueError("smallNORB layout: the two splits' instances must be 0..n-1 exactly once")
        super().__init__()

    # -- files ---------------------------------------------------------------------
    def _folder(self, source: Path | None) -> Path:
        if source is None:
            return self.folder
        source = Path(source)
        return source.parent if source.is_file() else source  # a file names its folder

    def _file(self, folder: Path, split: str, kind: str) -> Path:
        path = folder / SPLIT_FILES[split].format(kind)
        gzipped = path.with_name(path.name + ".gz")
        return gzipped if not path.is_file() and gzipped.is_file() else path

    def expected_files(self, source: Path | None = None) -> list[Path]:
        folder = self._folder(source)
        return [self._file(folder, split, kind) for split in SPLIT_FILES for kind in KINDS]

    def not_found_message(self, missing: list[Path], source: Path | None = None) -> str:
        names = ", ".join(p.name for p in missing)
        return (
            f"smallNORB file(s) not found in {self._folder(source)}: {names}; download the six "
            f"smallnorb-*.mat.gz files from {SMALLNORB_URL} into that folder (gunzipped or not), "
            "or set $DISENTBENCH_DATA or the dataset's `path`"
        )

    def _matrices(self, source: Path | None) -> dict[str, dict[str, NorbMatrix]]:
        folder, layout = self._folder(source), self.layout
        matrices: dict[str, dict[str, NorbMatrix]] = {}
        for split in SPLIT_FILES:
            rows = layout.split_rows(split)
            size = layout.source_size
            matrices[split] = {
                "dat": check_norb_matrix(self._file(folder, split, "dat"), np.uint8, (rows, 2, size, size)),
                "cat": check_norb_matrix(self._file(folder, split, "cat"), "<i4", (rows,)),
                "info": check_norb_matrix(self._file(folder, split, "info"), "<i4", (rows, 4)),
            }
        return matrices

    def check_files(self, source: Path | None = None) -> None:
        """Headers and byte sizes of all six files (no pixels read)."""
        self.files_in(source)
        self._matrices(source)

    # -- preparing -------------------------------------------------------------------
    def _features(self, split: str, cat: NorbMatrix, info: NorbMatrix) -> np.ndarray:
        """``[category, instance, elevation, azimuth // 2, lighting]`` per row, every value validated."""
        layout = self.layout
        categories = read_norb_matrix(cat).astype(np.int64)
        labels = read_norb_matrix(info).astype(np.int64)
        instance, elevation, azimuth, lighting = labels.T
        bad = np.flatnonzero((categories < 0) | (categories >= layout.categories))
        if bad.size:
            raise DatasetFormatError(
                f"{cat.path}: row {bad[0]} has category {categories[bad[0]]}, expected 0..{layout.categories - 1}",
                cat.path,
            )
        allowed = layout.split_instances(split)
        checks = (
            ("instance", instance, ~np.isin(instance, allowed), f"one of {list(allowed)} in the {split} files"),
            ("elevation", elevation, (elevation < 0) | (elevation >= layout.elevations), f"0..{layout.elevations - 1}"),
            (
                "azimuth",
                azimuth,
                (azimuth < 0) | (azimuth >= 2 * layout.azimuths) | (azimuth % 2 != 0),
                f"0, 2, ..., {2 * (layout.azimuths - 1)}",
            ),
            ("lighting", lighting, (lighting < 0) | (lighting >= layout.lightings), f"0..{layout.lightings - 1}"),
        )
        for what, values, wrong, expected in checks:
            bad = np.flatnonzero(wrong)
            if bad.size:
                raise DatasetFormatError(
                    f"{info.path}: row {bad[0]} has {what} {values[bad[0]]}, expected {expected}", info.path
                )
        features = np.stack([categories, instance, elevation, azimuth // 2, lighting], axis=1)
        # This split must be its part of the grid exactly once (instances renumbered within the split).
        local = features.copy()
        local[:, 1] = np.searchsorted(np.sort(allowed), instance)
        split_sizes = (layout.categories, len(allowed), layout.elevations, layout.azimuths, layout.lightings)
        grid_index_from_factors(local, split_sizes, "labels (cat + info)", info.path)
        return features

    def write_images(self, out: np.ndarray, source: Path | None = None) -> dict[str, Any]:
        matrices = self._matrices(source)
        done, total = 0, self.num_images
        for split, files in matrices.items():
            index = self.index_of(self._features(split, files["cat"], files["info"]))
            for start, rows in iter_norb_rows(files["dat"], rows_per_chunk=1024):
                resized = np.stack([resize_to_64(image) for image in rows[:, 0]])  # camera 0
                out[index[start : start + len(rows)], 0] = resized
                done += len(rows)
                self._progress(done, total)
        layout = self.layout
        return {
            "factor_values": {
                "category": list(range(layout.categories)),
                "elevation": [30 + 5 * i for i in range(layout.elevations)],  # degrees
                "azimuth": [20 * i for i in range(layout.azimuths)],  # degrees
                "lighting": list(range(layout.lightings)),
            },
            "category_names": list(CATEGORY_NAMES[: layout.categories]),
            "nuisance": "instance: drawn uniformly per observation",
            "resize": "camera 0, PIL LANCZOS 96->64",
        }


@hookimpl
def register_datasets(register):
    register(SmallNORB)
