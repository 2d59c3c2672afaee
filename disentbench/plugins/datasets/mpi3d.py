"""MPI3D (Gondal et al. 2019): toy, realistic and real variants (not in the study; spec/study.md section 3).

Factors, in file order (last varying fastest)::

    object_color 6, object_shape 6, object_size 2, camera_height 3,
    background_color 3, horizontal_axis 40, vertical_axis 40

= 1,036,800 colour 64x64 images per variant, from ``<data_root>/mpi3d_toy/mpi3d_toy.npz``,
``mpi3d_realistic/mpi3d_realistic.npz`` and ``mpi3d_real/mpi3d_real.npz``
(key ``images``, uint8 ``(1036800, 64, 64, 3)``, or with the seven factor
dimensions leading).

Factor sizes: the study's code lists ``[4, 4, 2, 3, 3, 40, 40]`` for toy and
realistic and ``[6, 6, 2, 3, 3, 40, 40]`` for real, yet gives all three
1,036,800 images, which only 6 x 6 x 2 x 3 x 3 x 40 x 40 equals; the published
files hold 6 colours and 6 shapes. So every variant uses ``[6, 6, 2, 3, 3, 40,
40]``, and a file of any other size is refused rather than indexed with the
wrong bases.

The files carry no labels, so the grid order is the published one and cannot
be verified from the file itself; the image count, shape and dtype are.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from disentbench import hookimpl
from disentbench.core.contracts import PluginConfig
from disentbench.core.data.ground_truth import DatasetFormatError, PreparedData, iter_npz_rows, npz_member_header
from disentbench.core.paths import data_root

FACTOR_NAMES = (
    "object_color",
    "object_shape",
    "object_size",
    "camera_height",
    "background_color",
    "horizontal_axis",
    "vertical_axis",
)
VARIANTS = ("toy", "realistic", "real")
MPI3D_URL = "https://github.com/rr-learning/disentanglement_dataset"
IMAGE_SIZE = 64
CHUNK = 4096


@dataclass(frozen=True)
class MPI3DLayout:
    """What the file must contain. Tests pass a tiny one; the plugins' is always :data:`MPI3D`."""

    sizes: tuple[int, ...] = (6, 6, 2, 3, 3, 40, 40)


MPI3D = MPI3DLayout()


class MPI3DConfig(PluginConfig):
    path: Path | None = Field(
        None,
        description=(
            "The variant's npz (mpi3d_<variant>.npz); default <data_root>/mpi3d_<variant>/mpi3d_<variant>.npz, "
            "where data_root is $DISENTBENCH_DATA or ~/.cache/disentbench. Read once into "
            "<data_root>/mpi3d_<variant>/prepared/."
        ),
    )


class MPI3DData(PreparedData):
    """One MPI3D variant; images kept uint8 (the real variant is 12.7 GB as uint8).

    Any variant by keyword; the plugins are the one-variant subclasses below.
    """

    factor_names = FACTOR_NAMES
    image_shape = (3, IMAGE_SIZE, IMAGE_SIZE)
    config_class = MPI3DConfig

    def __init__(self, config: MPI3DConfig | None = None, *, variant: str = "toy", _layout: MPI3DLayout = MPI3D):
        # _layout is a test hook (tiny fixture grids), deliberately not a config field.
        if variant not in VARIANTS:
            raise ValueError(f"unknown MPI3D variant {variant!r}; choose one of {', '.join(VARIANTS)}")
        self.variant = variant
        self.name = f"mpi3d_{variant}"
        self.config = config or MPI3DConfig()
        self.layout = _layout
        self.factor_sizes = tuple(_layout.sizes)
        default = data_root() / self.name / f"{self.name}.npz"
        self.location = Path(self.config.path).expanduser() if self.config.path else default
        super().__init__()

    def _file(self, source: Path | None) -> Path:
        location = Path(source) if source is not None else self.location
        return location / f"{self.name}.npz" if location.is_dir() else location

    def expected_files(self, source: Path | None = None) -> list[Path]:
        return [self._file(source)]

    def not_found_message(self, missing: list[Path], source: Path | None = None) -> str:
        path = self._file(source)
        return (
            f"MPI3D-{self.variant} file not found: {path}; download {self.name}.npz ({MPI3D_URL}) "
            "and put it there, or set $DISENTBENCH_DATA or the dataset's `path`"
        )

    def check_files(self, source: Path | None = None) -> None:
        """The ``images`` header: uint8, the full grid's image count, 64x64x3 (no pixels read)."""
        (path,) = self.files_in(source)
        shape, dtype = npz_member_header(path, "images")
        image = (IMAGE_SIZE, IMAGE_SIZE, 3)
        allowed = ((self.num_images,) + image, tuple(self.factor_sizes) + image)
        if dtype != np.uint8 or shape not in allowed:
            raise DatasetFormatError(
                f"{path}: `images` is {dtype} {shape}, expected uint8 {allowed[0]} "
                f"(factor grid {'x'.join(map(str, self.factor_sizes))})",
                path,
            )

    def write_images(self, out: np.ndarray, source: Path | None = None) -> dict[str, Any]:
        (path,) = self.files_in(source)
        for start, rows in iter_npz_rows(path, "images", CHUNK, row_ndim=3):
            out[start : start + len(rows)] = rows.transpose(0, 3, 1, 2)
            self._progress(start + len(rows), self.num_images)
        return {
            "factor_values": {name: list(range(size)) for name, size in zip(self.factor_names, self.factor_sizes)},
            "order": "file order (the published grid order; the file has no labels to verify it)",
        }


def _description(variant: str) -> str:
    return (
        f"MPI3D-{variant} (npz): object colour/shape/size, camera height, background colour, "
        "horizontal and vertical axis; 1,036,800 colour 64x64 images"
    )


class _MPI3DVariant(MPI3DData):
    """One registered variant: the class fixes the variant, so it is its own factory, ``cls(config)``."""

    variant: str  # set by each variant class; MPI3DData stores it per instance

    def __init__(self, config: MPI3DConfig | None = None):
        super().__init__(config, variant=self.variant)


class MPI3DToy(_MPI3DVariant):
    variant = "toy"
    name = "mpi3d_toy"
    description = _description(variant)


class MPI3DRealistic(_MPI3DVariant):
    variant = "realistic"
    name = "mpi3d_realistic"
    description = _description(variant)


class MPI3DReal(_MPI3DVariant):
    variant = "real"
    name = "mpi3d_real"
    description = _description(variant)


@hookimpl
def register_datasets(register):
    register(MPI3DToy)
    register(MPI3DRealistic)
    register(MPI3DReal)
