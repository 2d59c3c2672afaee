"""Cars3D (Reed et al. 2015, "Deep Visual Analogy-Making"), as used by the study (spec/study.md section 3).

Factors: elevation 4, azimuth 24, object 183 (17,568 colour 64x64 images), in
that order, object varying fastest.

Files: ``<data_root>/cars/*.mat``, one per car model, from the authors'
``nips2015-analogy-data.tar.gz`` (its ``data/cars/`` folder). Each holds a
uint8 array ``im`` of shape ``(H, W, 3, 24, 4)``: height, width, RGB, azimuth,
elevation (the study permutes it ``abcde -> deabc`` into ``[24 azimuth,
4 elevation, H, W, 3]``). Every image is shrunk to 64x64 with PIL
``thumbnail((64, 64), LANCZOS)`` (the study's ``ANTIALIAS``, removed in Pillow
10, was an alias of LANCZOS), stored as uint8 and scaled /255 per batch.

Deviation from the study: objects are numbered in **sorted file-name order**.
The study took the order of an unsorted directory listing, which depends on
the filesystem, so its object index was not reproducible across machines;
the order used is recorded in the prepared cache's ``info.json`` (``objects``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from disentbench import hookimpl
from disentbench.core.contracts import PluginConfig
from disentbench.core.data.ground_truth import DatasetFormatError, PreparedData
from disentbench.core.paths import data_root

FOLDER = "cars"
IMAGE_SIZE = 64


@dataclass(frozen=True)
class CarsLayout:
    """What the files must contain. Tests pass a tiny one; the plugin's is always :data:`CARS3D`."""

    elevations: int = 4
    azimuths: int = 24
    objects: int = 183


CARS3D = CarsLayout()


def thumbnail_64(image: np.ndarray) -> np.ndarray:
    """One uint8 (H, W, 3) image to (64, 64, 3) with PIL ``thumbnail`` and LANCZOS (the study's ANTIALIAS)."""
    from PIL import Image

    picture = Image.fromarray(np.ascontiguousarray(image))
    picture.thumbnail((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.LANCZOS)
    return np.asarray(picture)


class Cars3DConfig(PluginConfig):
    path: Path | None = Field(
        None,
        description=(
            f"Folder of the 183 car .mat files; default <data_root>/{FOLDER}, where data_root is "
            "$DISENTBENCH_DATA or ~/.cache/disentbench. Read once into <data_root>/cars3d/prepared/."
        ),
    )


class Cars3D(PreparedData):
    """Cars3D: elevation, azimuth, object; objects in sorted file-name order."""

    name = "cars3d"
    description = "Cars3D (Reed et al. 2015 .mat files): elevation, azimuth, object; 17,568 colour 64x64 images"
    config_class = Cars3DConfig
    factor_names = ("elevation", "azimuth", "object")
    image_shape = (3, IMAGE_SIZE, IMAGE_SIZE)

    def __init__(self, config: Cars3DConfig | None = None, *, _layout: CarsLayout = CARS3D):
        # _layout is a test hook (tiny fixture grids), deliberately not a config field.
        self.config = config or Cars3DConfig()
        self.layout = _layout
        self.folder = Path(self.config.path).expanduser() if self.config.path else data_root() / FOLDER
        self.factor_sizes = (_layout.elevations, _layout.azimuths, _layout.objects)
        super().__init__()

    # -- files ---------------------------------------------------------------------
    def _folder(self, source: Path | None) -> Path:
        if source is None:
            return self.folder
        source = Path(source)
        return source.parent if source.is_file() else source  # a file names its folder

    def expected_files(self, source: Path | None = None) -> list[Path]:
        folder = self._folder(source)
        if not folder.is_dir():
            return []
        return sorted((p for p in folder.iterdir() if p.suffix == ".mat" and p.is_file()), key=lambda p: p.name)

    def not_found_message(self, missing: list[Path], source: Path | None = None) -> str:
        return (
            f"Cars3D .mat files not found in {self._folder(source)}: extract the authors' "
            "nips2015-analogy-data.tar.gz and put its data/cars/*.mat files there "
            "(or set $DISENTBENCH_DATA or the dataset's `path`)"
        )

    def _expected_shape(self, path: Path, shape: tuple[int, ...], dtype: str) -> None:
        layout = self.layout
        if (
            len(shape) != 5
            or shape[2:] != (3, layout.azimuths, layout.elevations)
            or shape[0] != shape[1]
            or shape[0] < IMAGE_SIZE
            or dtype != "uint8"
        ):
            raise DatasetFormatError(
                f"{path}: `im` is {dtype} {tuple(shape)}, expected uint8 (H, H, 3, {layout.azimuths}, "
                f"{layout.elevations}) with H >= {IMAGE_SIZE} (height, width, RGB, azimuth, elevation)",
                path,
            )

    def check_files(self, source: Path | None = None) -> None:
        """File count, and each file's ``im`` shape and class from the MATLAB headers."""
        import scipy.io

        files = self.files_in(source)
        if len(files) != self.layout.objects:
            raise DatasetFormatError(
                f"{self._folder(source)}: {len(files)} .mat files, expected {self.layout.objects} (one per car model)",
                self._folder(source),
            )
        for path in files:
            try:
                variables = {name: (tuple(shape), cls) for name, shape, cls in scipy.io.whosmat(str(path))}
            except Exception as exc:
                raise DatasetFormatError(
                    f"{path}: not a readable MATLAB file ({type(exc).__name__}: {exc})", path
                ) from None
            if "im" not in variables:
                raise DatasetFormatError(
                    f"{path}: no `im` array (found: {', '.join(sorted(variables)) or 'none'})", path
                )
            self._expected_shape(path, *variables["im"])

    # -- preparing -------------------------------------------------------------------
    def write_images(self, out: np.ndarray, source: Path | None = None) -> dict[str, Any]:
        import scipy.io

        layout = self.layout
        files = self.files_in(source)
        elevation, azimuth = np.meshgrid(np.arange(layout.elevations), np.arange(layout.azimuths), indexing="ij")
        done = 0
        for obj, path in enumerate(files):
            try:
                im = scipy.io.loadmat(str(path))["im"]
            except Exception as exc:
                raise DatasetFormatError(
                    f"{path}: cannot read `im` ({type(exc).__name__}: {exc}); the file is damaged", path
                ) from None
            self._expected_shape(path, im.shape, im.dtype.name)
            factors = np.stack([elevation.ravel(), azimuth.ravel(), np.full(elevation.size, obj)], axis=1)
            index = self.index_of(factors)
            for i, (el, az, _) in enumerate(factors):
                small = thumbnail_64(im[:, :, :, az, el])
                if small.shape != (IMAGE_SIZE, IMAGE_SIZE, 3):
                    raise DatasetFormatError(f"{path}: image shrinks to {small.shape}, not 64x64x3", path)
                out[index[i]] = small.transpose(2, 0, 1)
            done += len(factors)
            self._progress(done, self.num_images)
        return {
            "factor_values": {
                "elevation": list(range(layout.elevations)),
                "azimuth": list(range(layout.azimuths)),
                "object": list(range(layout.objects)),
            },
            "objects": [p.name for p in files],
            "object_order": "sorted file names (the study used an unsorted, filesystem-dependent listing)",
            "resize": "PIL thumbnail((64, 64), LANCZOS)",
        }


@hookimpl
def register_datasets(register):
    register(Cars3D)
