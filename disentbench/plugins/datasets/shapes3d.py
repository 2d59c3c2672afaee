"""Shapes3D (Burgess & Kim 2018, DeepMind "3dshapes"), as used by the study (spec/study.md section 3).

Factors: floor hue 10, wall hue 10, object hue 10, scale 8, shape 4, azimuth 15
(DeepMind calls the last one "orientation"): 480,000 colour 64x64 images.

Files under ``<data_root>/3dshapes/`` (the first found is used, or the dataset's ``path``):

* ``3dshapes.h5``, the published file: ``images`` uint8 ``(480000, 64, 64, 3)``
  and ``labels`` float64 ``(480000, 6)`` (factor values). Read with h5py.
* ``look-at-object-room_floor-hueXwall-hueXobj-hueXobj-sizeXobj-shapeXview-azi.npz``,
  the layout the study's code expects: keys ``images`` (either ``(480000, 64,
  64, 3)`` or with the six factor dimensions leading) and ``labels``.

The image order is built from ``labels`` (each column's distinct values,
sorted, give the factor index), not assumed from the file order, and must be
the full grid once. Pixels stay uint8 throughout (the study converted the
whole array to float32, about 23.6 GB); the prepared cache is read in
streamed chunks, so preparing needs well under 1 GB of RAM.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from disentbench import hookimpl
from disentbench.core.contracts import PluginConfig
from disentbench.core.data.ground_truth import (
    DatasetFormatError,
    PreparedData,
    grid_index_from_factors,
    iter_npz_rows,
    npz_member_header,
)
from disentbench.core.paths import data_root

FOLDER = "3dshapes"
H5_NAME = "3dshapes.h5"
NPZ_NAME = "look-at-object-room_floor-hueXwall-hueXobj-hueXobj-sizeXobj-shapeXview-azi.npz"
SHAPES3D_URL = "https://github.com/google-deepmind/3d-shapes"
FACTOR_NAMES = ("floor_hue", "wall_hue", "object_hue", "scale", "shape", "azimuth")
IMAGE_SIZE = 64
CHUNK = 4096
#: Labels are rounded to this many decimals before distinct values are counted,
#: so float noise in a re-saved file cannot split one grid value in two.
LABEL_DECIMALS = 6


@dataclass(frozen=True)
class Shapes3DLayout:
    """What the file must contain. Tests pass a tiny one; the plugin's is always :data:`SHAPES3D`."""

    sizes: tuple[int, ...] = (10, 10, 10, 8, 4, 15)


SHAPES3D = Shapes3DLayout()


class _Arrays:
    """``images`` and ``labels`` of an h5 or npz file: headers, labels, streamed image rows."""

    def __init__(self, path: Path):
        self.path = path
        self.kind = "npz" if path.suffix == ".npz" else "h5"
        self._file: Any = None  # an open h5py.File (untyped) for h5 files, after __enter__

    def __enter__(self):
        if self.kind == "h5":
            try:
                import h5py
            except ImportError:
                raise DatasetFormatError(
                    f"{self.path}: reading HDF5 needs h5py (pip install h5py), or convert it to the npz layout",
                    self.path,
                ) from None
            try:
                self._file = h5py.File(self.path, "r")
            except OSError as exc:
                raise DatasetFormatError(
                    f"{self.path}: not a readable HDF5 file (damaged, truncated or another format: {exc})", self.path
                ) from None
            found = sorted(self._file.keys())
            missing = [key for key in ("images", "labels") if key not in found or not isinstance(self._file[key], h5py.Dataset)]
            if missing:
                self._file.close()
                raise DatasetFormatError(
                    f"{self.path}: no `{'`, `'.join(missing)}` array (found: {', '.join(found) or 'none'})", self.path
                )
        return self

    def __exit__(self, *exc):
        if self._file is not None:
            self._file.close()

    def header(self, key: str) -> tuple[tuple[int, ...], np.dtype]:
        if self.kind == "npz":
            return npz_member_header(self.path, key)
        dataset = self._file[key]
        return tuple(int(n) for n in dataset.shape), np.dtype(dataset.dtype)

    def _h5_read(self, key: str, selection):
        try:
            return np.asarray(self._file[key][selection])
        except Exception as exc:  # truncated or corrupted chunks surface only when read
            raise DatasetFormatError(
                f"{self.path}: cannot read `{key}` ({type(exc).__name__}: {exc}); the file is damaged", self.path
            ) from None

    def labels(self) -> np.ndarray:
        if self.kind == "npz":
            return np.concatenate([rows for _, rows in iter_npz_rows(self.path, "labels", 1 << 20, row_ndim=1)])
        labels = self._h5_read("labels", ())
        return labels.reshape(-1, labels.shape[-1])

    def image_rows(self, count: int):
        if self.kind == "npz":
            yield from iter_npz_rows(self.path, "images", CHUNK, row_ndim=3)
            return
        for start in range(0, count, CHUNK):
            yield start, self._h5_read("images", slice(start, min(start + CHUNK, count)))


class Shapes3DConfig(PluginConfig):
    path: Path | None = Field(
        None,
        description=(
            f"The published {H5_NAME} or the study's npz ({NPZ_NAME}); default: whichever of the two is in "
            f"<data_root>/{FOLDER} ({H5_NAME} first), where data_root is $DISENTBENCH_DATA or "
            "~/.cache/disentbench. Read once into <data_root>/shapes3d/prepared/."
        ),
    )


class Shapes3D(PreparedData):
    """Shapes3D: floor hue, wall hue, object hue, scale, shape, azimuth; all images uint8."""

    name = "shapes3d"
    description = (
        "Shapes3D (DeepMind 3dshapes.h5 or the study's npz): floor/wall/object hue, scale, shape, azimuth; "
        "480,000 colour 64x64 images"
    )
    config_class = Shapes3DConfig
    factor_names = FACTOR_NAMES
    image_shape = (3, IMAGE_SIZE, IMAGE_SIZE)

    def __init__(self, config: Shapes3DConfig | None = None, *, _layout: Shapes3DLayout = SHAPES3D):
        # _layout is a test hook (tiny fixture grids), deliberately not a config field.
        self.config = config or Shapes3DConfig()
        self.layout = _layout
        self.location = Path(self.config.path).expanduser() if self.config.path else data_root() / FOLDER
        self.factor_sizes = tuple(_layout.sizes)
        super().__init__()

    # -- files ---------------------------------------------------------------------
    def _file(self, source: Path | None) -> Path:
        location = Path(source) if source is not None else self.location
        if location.is_file() or location.suffix in (".h5", ".hdf5", ".npz"):
            return location
        for name in (H5_NAME, NPZ_NAME):
            if (location / name).is_file():
                return location / name
        return location / H5_NAME

    def expected_files(self, source: Path | None = None) -> list[Path]:
        return [self._file(source)]

    def not_found_message(self, missing: list[Path], source: Path | None = None) -> str:
        path = self._file(source)
        return (
            f"Shapes3D file not found: {path}; download {H5_NAME} from {SHAPES3D_URL} (or use the npz "
            f"{NPZ_NAME}) and put it in {path.parent}, or set $DISENTBENCH_DATA or the dataset's `path`"
        )

    def _check_headers(self, arrays: _Arrays) -> None:
        sizes, path = self.factor_sizes, arrays.path
        count = int(np.prod(sizes))
        shape, dtype = arrays.header("images")
        image = (IMAGE_SIZE, IMAGE_SIZE, 3)
        allowed = [(count,) + image] + ([tuple(sizes) + image] if arrays.kind == "npz" else [])
        if dtype != np.uint8 or shape not in allowed:
            raise DatasetFormatError(f"{path}: `images` is {dtype} {shape}, expected uint8 {(count,) + image}", path)
        shape, dtype = arrays.header("labels")
        allowed = [(count, len(sizes))] + ([tuple(sizes) + (len(sizes),)] if arrays.kind == "npz" else [])
        if dtype.kind != "f" or shape not in allowed:
            raise DatasetFormatError(
                f"{path}: `labels` is {dtype} {shape}, expected float {(count, len(sizes))} (factor values)", path
            )

    def check_files(self, source: Path | None = None) -> None:
        """Keys, shapes and dtypes of ``images`` and ``labels`` (no pixels read)."""
        (path,) = self.files_in(source)
        with _Arrays(path) as arrays:
            self._check_headers(arrays)

    # -- preparing -------------------------------------------------------------------
    def _factor_index(self, labels: np.ndarray, path: Path) -> tuple[np.ndarray, dict[str, list[float]]]:
        if not np.isfinite(labels).all():
            raise DatasetFormatError(f"{path}: `labels` contains NaN or infinite values", path)
        rounded = np.round(labels.astype(np.float64), LABEL_DECIMALS)
        factors = np.zeros(rounded.shape, dtype=np.int64)
        values: dict[str, list[float]] = {}
        for column, (name, size) in enumerate(zip(self.factor_names, self.factor_sizes)):
            distinct = np.unique(rounded[:, column])
            if len(distinct) != size:
                raise DatasetFormatError(
                    f"{path}: `labels` column {column} ({name}) has {len(distinct)} distinct values, expected {size}",
                    path,
                )
            factors[:, column] = np.searchsorted(distinct, rounded[:, column])
            values[name] = distinct.tolist()
        return grid_index_from_factors(factors, self.factor_sizes, "`labels`", path), values

    def write_images(self, out: np.ndarray, source: Path | None = None) -> dict[str, Any]:
        (path,) = self.files_in(source)
        with _Arrays(path) as arrays:
            self._check_headers(arrays)
            index, values = self._factor_index(arrays.labels(), path)
            in_order = bool((index == np.arange(len(index))).all())
            for start, rows in arrays.image_rows(self.num_images):
                stop = start + len(rows)
                target = slice(start, stop) if in_order else index[start:stop]
                out[target] = rows.transpose(0, 3, 1, 2)
                self._progress(stop, self.num_images)
        return {"factor_values": values, "source_format": arrays.kind, "file_in_grid_order": in_order}


@hookimpl
def register_datasets(register):
    register(Shapes3D)
