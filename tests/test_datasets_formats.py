"""Dataset readers for the published formats: smallNORB, Cars3D, Shapes3D, MPI3D.

Every test writes its own small fixture files in the exact original format
(NORB binary matrices, MATLAB .mat, HDF5, npz) over tiny factor grids, passing
the plugins' internal ``_layout`` test hook; real files are always validated
against the published layout. Pixels are random per grid cell and compared
with what PIL gives for that cell, so index order, camera choice and resizing
are all checked.
"""

from __future__ import annotations

import pickle
import struct
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.io
import scipy.stats
import torch
from helpers import (
    CAR_NAMES,
    SHAPES_VALUES,
    TINY_CARS,
    TINY_MPI3D,
    TINY_NORB,
    TINY_SHAPES,
    make_cars,
    make_norb,
    mpi3d_grid,
    norb_path,
    shapes_grid,
    write_mpi3d,
    write_norb,
    write_shapes_h5,
)
from PIL import Image

from disentbench.core.data.ground_truth import ChecksumWarning, DatasetFormatError, PreparedData, sha256_of
from disentbench.core.paths import DatasetNotFoundError
from disentbench.plugins.datasets import mpi3d, shapes3d
from disentbench.plugins.datasets.cars3d import Cars3D, Cars3DConfig
from disentbench.plugins.datasets.mpi3d import MPI3DConfig, MPI3DData
from disentbench.plugins.datasets.shapes3d import Shapes3D, Shapes3DConfig
from disentbench.plugins.datasets.smallnorb import SmallNORB, SmallNORBConfig


@pytest.fixture(autouse=True)
def data_root_in_tmp(monkeypatch, tmp_path):
    monkeypatch.setenv("DISENTBENCH_DATA", str(tmp_path / "root"))


# =============================================================================
# Fixture writers: the original formats, written from their descriptions
# =============================================================================









def pil_resize_64(image: np.ndarray) -> np.ndarray:
    return np.asarray(Image.fromarray(image).resize((64, 64), Image.Resampling.LANCZOS))


def pil_thumbnail_64(image: np.ndarray) -> np.ndarray:
    picture = Image.fromarray(np.ascontiguousarray(image))
    picture.thumbnail((64, 64), Image.Resampling.LANCZOS)
    return np.asarray(picture)
















def tiny_norb(folder: Path) -> SmallNORB:
    return SmallNORB(SmallNORBConfig(path=folder), _layout=TINY_NORB)


def tiny_cars(folder: Path) -> Cars3D:
    return Cars3D(Cars3DConfig(path=folder), _layout=TINY_CARS)


def tiny_shapes(path: Path) -> Shapes3D:
    return Shapes3D(Shapes3DConfig(path=path), _layout=TINY_SHAPES)


def tiny_mpi3d(path: Path, variant: str = "toy") -> MPI3DData:
    return MPI3DData(MPI3DConfig(path=path), variant=variant, _layout=TINY_MPI3D)


def chi_square_uniform_ok(values: np.ndarray, size: int) -> bool:
    """Chi-square goodness of fit to uniform at the 0.1% level (deterministic seeds: never flaky)."""
    counts = np.bincount(values, minlength=size)
    statistic = scipy.stats.chisquare(counts).statistic
    return len(counts) == size and statistic < scipy.stats.chi2.ppf(0.999, size - 1)


# =============================================================================
# smallNORB
# =============================================================================


@pytest.fixture
def norb_files(tmp_path):
    folder = tmp_path / "small_norb"
    return folder, make_norb(folder)


def test_norb_reads_grid_from_labels_camera0_resized(norb_files, capsys):
    folder, expected = norb_files
    data = tiny_norb(folder)
    data.check()
    assert data.factor_names == ("category", "elevation", "azimuth", "lighting")
    assert data.factor_sizes == (2, 2, 3, 2)
    assert data.grid_sizes == (2, 2, 2, 3, 2) and data.latent_dims == (0, 2, 3, 4)
    assert data.observation_shape == (1, 64, 64)
    assert not data.is_prepared()
    images = data.images  # prepares on first use
    assert "preparing" in capsys.readouterr().err
    assert images.shape == (48, 1, 64, 64) and images.dtype == np.uint8
    for (category, instance, elevation, azimuth, lighting), pair in expected.items():
        index = data.index_of([category, instance, elevation, azimuth, lighting])
        np.testing.assert_array_equal(images[index, 0], pil_resize_64(pair[0]))  # camera 0, LANCZOS
    assert data.factors_of(data.index_of([1, 0, 1, 2, 1])).tolist() == [1, 1, 2, 1]
    values = data.factor_values
    assert list(values[1]) == [30, 35] and list(values[2]) == [0, 20, 40]


def test_norb_gzipped_files_read_the_same(tmp_path, norb_files):
    folder, _ = norb_files
    gz_folder = tmp_path / "gz"
    make_norb(gz_folder, gz=True)
    plain = np.asarray(tiny_norb(folder).images).copy()
    gz_data = SmallNORB(SmallNORBConfig(path=gz_folder), _layout=TINY_NORB)
    gz_data.prepared_dir = tmp_path / "gz_prepared"
    assert all(p.suffix == ".gz" for p in gz_data.source_files())
    np.testing.assert_array_equal(np.asarray(gz_data.images), plain)


def test_norb_instance_is_a_nuisance_drawn_uniformly(norb_files):
    folder, expected = norb_files
    data = tiny_norb(folder)
    factors = np.tile([[1, 1, 2, 0]], (400, 1))  # category, elevation, azimuth, lighting
    first = data.sample_observations_from_factors(factors, np.random.RandomState(3))
    again = data.sample_observations_from_factors(factors, np.random.RandomState(3))
    np.testing.assert_array_equal(first, again)
    assert first.dtype == np.float32 and first.shape == (400, 1, 64, 64)
    # Each observation is one of the instances of that factor vector, chosen at random.
    candidates = np.stack([pil_resize_64(expected[(1, i, 1, 2, 0)][0]) / 255.0 for i in range(2)])
    matches = np.array([[np.allclose(obs[0], c, atol=1e-6) for c in candidates] for obs in first])
    assert matches.sum(axis=1).tolist() == [1] * 400
    assert chi_square_uniform_ok(matches.argmax(axis=1), 2)
    # Same draws as the study: the nuisance is one randint over its size after the factors.
    rs = np.random.RandomState(3)
    assert (matches.argmax(axis=1) == rs.randint(2, size=400)).all()


def test_norb_sampling_uniform_and_reproducible(norb_files):
    folder, _ = norb_files
    data = tiny_norb(folder)
    factors = data.sample_factors(6000, np.random.RandomState(0))
    np.testing.assert_array_equal(factors, data.sample_factors(6000, np.random.RandomState(0)))
    for column, size in enumerate(data.factor_sizes):
        assert chi_square_uniform_ok(factors[:, column], size)
    generator = torch.Generator().manual_seed(1)
    batch = data.sample_batch_on_device(64, generator, "cpu")
    again = data.sample_batch_on_device(64, torch.Generator().manual_seed(1), "cpu")
    assert batch.shape == (64, 1, 64, 64) and torch.equal(batch, again)


def test_norb_real_layout_refuses_tiny_files(norb_files):
    folder, _ = norb_files
    data = SmallNORB(SmallNORBConfig(path=folder))  # the plugin as registered
    with pytest.raises(DatasetFormatError, match=r"training-dat\.mat: a uint8 24x2x96x96 matrix, expected a uint8 24300x2x96x96"):
        data.check()


def _corrupt(folder: Path, split: str, kind: str, edit) -> Path:
    path = norb_path(folder, split, kind)
    path.write_bytes(edit(path.read_bytes()))
    return path


def _replace_matrix(folder: Path, split: str, kind: str, transform, magic=None) -> Path:
    path = norb_path(folder, split, kind)
    data = path.read_bytes()
    ndim = struct.unpack("<i", data[4:8])[0]
    dims = struct.unpack(f"<{max(ndim, 3)}i", data[8 : 8 + 4 * max(ndim, 3)])[:ndim]
    offset = 8 + 4 * max(ndim, 3)
    dtype = np.uint8 if kind == "dat" else np.dtype("<i4")
    array = np.frombuffer(data[offset:], dtype=dtype).reshape(dims).copy()
    return write_norb(path, transform(array), magic)


def _with_row(array, row, values):
    array[row] = values
    return array


NORB_BAD_FILES = {
    "truncated": (
        lambda f: _corrupt(f, "training", "dat", lambda b: b[:-100]),
        r"training-dat\.mat: truncated, 442,292 bytes where a uint8 24x2x96x96 matrix needs 442,392",
    ),
    "trailing bytes": (
        lambda f: _corrupt(f, "testing", "info", lambda b: b + b"\0" * 8),
        r"testing-info\.mat: 8 bytes beyond an int32 24x4 matrix that its header declares",
    ),
    "corrupted header": (
        lambda f: _corrupt(f, "testing", "cat", lambda b: b"\x00\x01\x02\x03" + b[4:]),
        r"testing-cat\.mat: not a NORB matrix file \(header magic 0x03020100; corrupted header\?\)",
    ),
    "bad ndim": (
        lambda f: _corrupt(f, "testing", "cat", lambda b: b[:4] + struct.pack("<i", -3) + b[8:]),
        r"testing-cat\.mat: corrupted NORB header \(ndim = -3\)",
    ),
    "empty": (lambda f: _corrupt(f, "training", "info", lambda b: b""), r"training-info\.mat: 0 bytes, too short"),
    "wrong dtype": (
        lambda f: _replace_matrix(f, "training", "cat", lambda a: a.astype(np.uint8)),
        r"training-cat\.mat: a uint8 24 matrix, expected an int32 24 matrix",
    ),
    "float matrix": (
        lambda f: _corrupt(f, "training", "cat", lambda b: struct.pack("<I", 0x1E3D4C51) + b[4:]),
        r"training-cat\.mat: holds a float32 NORB matrix",
    ),
    "wrong shape": (
        lambda f: _replace_matrix(f, "testing", "dat", lambda a: a[:, :, :64, :64]),
        r"testing-dat\.mat: a uint8 24x2x64x64 matrix, expected a uint8 24x2x96x96 matrix",
    ),
    "repeated grid cell": (
        lambda f: _replace_matrix(f, "training", "info", lambda a: np.concatenate([a[:1], a[:1], a[2:]])),
        r"training-info\.mat: labels \(cat \+ info\): not the full 2x1x2x3x2 factor grid "
        r"\(24 rows, 1 combinations missing, 1 repeated\)",
    ),
    "odd azimuth": (
        lambda f: _replace_matrix(f, "training", "info", lambda a: _with_row(a, 5, [1, 0, 3, 0])),
        r"training-info\.mat: row 5 has azimuth 3, expected 0, 2, \.\.\., 4",
    ),
    "instance of the other split": (
        lambda f: _replace_matrix(f, "testing", "info", lambda a: _with_row(a, 0, [1, 0, 0, 0])),
        r"testing-info\.mat: row 0 has instance 1, expected one of \[0\] in the testing files",
    ),
    "category out of range": (
        lambda f: _replace_matrix(f, "testing", "cat", lambda a: _with_row(a, 2, 7)),
        r"testing-cat\.mat: row 2 has category 7, expected 0\.\.1",
    ),
}


@pytest.mark.parametrize("case", sorted(NORB_BAD_FILES))
def test_norb_bad_files_give_one_clear_error(norb_files, case):
    folder, _ = norb_files
    damage, message = NORB_BAD_FILES[case]
    damage(folder)
    data = tiny_norb(folder)
    with pytest.raises(DatasetFormatError, match=message) as error:
        data.check()
        data.prepare()
    assert "\n" not in str(error.value) and str(folder) in str(error.value)
    assert not data.is_prepared()


def test_norb_missing_file_names_it(norb_files):
    folder, _ = norb_files
    norb_path(folder, "testing", "info").unlink()
    data = tiny_norb(folder)
    assert not data.files_present()
    with pytest.raises(DatasetNotFoundError, match=r"not found in .*small_norb: .*testing-info\.mat; download"):
        data.check()
    with pytest.raises(DatasetNotFoundError):
        data.images


def test_norb_truncated_gzip_is_caught(tmp_path):
    folder = tmp_path / "gz"
    make_norb(folder, gz=True)
    path = Path(str(norb_path(folder, "training", "dat")) + ".gz")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    data = tiny_norb(folder)
    data.check()  # a gzip stream's length is unknown until read
    with pytest.raises(DatasetFormatError, match=r"training-dat\.mat\.gz: (truncated|cannot read)"):
        data.prepare()


# =============================================================================
# Cars3D
# =============================================================================


def test_cars_objects_in_sorted_file_order_thumbnailed(tmp_path):
    arrays = make_cars(tmp_path / "cars", size=128)
    data = tiny_cars(tmp_path / "cars")
    data.check()
    assert data.factor_names == ("elevation", "azimuth", "object") and data.factor_sizes == (2, 3, 3)
    images = data.images
    assert images.shape == (18, 3, 64, 64)
    for obj, name in enumerate(sorted(arrays)):
        for elevation in range(2):
            for azimuth in range(3):
                index = data.index_of([elevation, azimuth, obj])
                want = pil_thumbnail_64(arrays[name][:, :, :, azimuth, elevation]).transpose(2, 0, 1)
                np.testing.assert_array_equal(images[index], want)
    # index order: object fastest, then azimuth, then elevation
    assert data.index_of([1, 2, 0]) == 1 * 9 + 2 * 3 + 0
    assert data.prepared_info()["objects"] == sorted(CAR_NAMES)


def test_cars_real_layout_refuses_tiny_folder(tmp_path):
    make_cars(tmp_path / "cars")
    with pytest.raises(DatasetFormatError, match=r"cars: 3 \.mat files, expected 183"):
        Cars3D(Cars3DConfig(path=tmp_path / "cars")).check()


def _cars_rewrite(folder: Path, name: str, im) -> None:
    scipy.io.savemat(folder / name, im)


CARS_BAD_FILES = {
    "one file missing": (lambda f: (f / "car_c_mesh.mat").unlink(), r"cars: 2 \.mat files, expected 3"),
    "azimuth and elevation swapped": (
        lambda f: _cars_rewrite(f, "car_a_mesh.mat", {"im": np.zeros((96, 96, 3, 2, 3), np.uint8)}),
        r"car_a_mesh\.mat: `im` is uint8 \(96, 96, 3, 2, 3\), expected uint8 \(H, H, 3, 3, 2\)",
    ),
    "float pixels": (
        lambda f: _cars_rewrite(f, "car_b_mesh.mat", {"im": np.zeros((96, 96, 3, 3, 2))}),
        r"car_b_mesh\.mat: `im` is double \(96, 96, 3, 3, 2\), expected uint8",
    ),
    "too small": (
        lambda f: _cars_rewrite(f, "car_b_mesh.mat", {"im": np.zeros((32, 32, 3, 3, 2), np.uint8)}),
        r"car_b_mesh\.mat: `im` is uint8 \(32, 32, 3, 3, 2\), expected .* H >= 64",
    ),
    "no im": (
        lambda f: _cars_rewrite(f, "car_c_mesh.mat", {"image": np.zeros((2, 2), np.uint8)}),
        r"car_c_mesh\.mat: no `im` array \(found: image\)",
    ),
    "not a mat file": (
        lambda f: (f / "car_a_mesh.mat").write_bytes(b"garbage" * 40),
        r"car_a_mesh\.mat: not a readable MATLAB file",
    ),
    "truncated": (
        lambda f: (f / "car_b_mesh.mat").write_bytes((f / "car_b_mesh.mat").read_bytes()[:5000]),
        r"car_b_mesh\.mat: (not a readable MATLAB file|cannot read `im`)",
    ),
}


@pytest.mark.parametrize("case", sorted(CARS_BAD_FILES))
def test_cars_bad_files_give_one_clear_error(tmp_path, case):
    folder = tmp_path / "cars"
    make_cars(folder)
    damage, message = CARS_BAD_FILES[case]
    damage(folder)
    data = tiny_cars(folder)
    with pytest.raises(DatasetFormatError, match=message) as error:
        data.check()
        data.prepare()
    assert "\n" not in str(error.value)
    assert not data.is_prepared()


def test_cars_missing_folder(tmp_path):
    data = tiny_cars(tmp_path / "nowhere")
    assert not data.files_present() and data.source_files() == []
    with pytest.raises(DatasetNotFoundError, match=r"Cars3D \.mat files not found in .*nowhere: extract"):
        data.check()


# =============================================================================
# Shapes3D
# =============================================================================


@pytest.mark.parametrize("shuffle", [False, True], ids=["grid-order", "shuffled"])
def test_shapes_h5_index_from_labels(tmp_path, shuffle):
    images, labels, factors = shapes_grid()
    order = np.random.default_rng(5).permutation(len(images)) if shuffle else np.arange(len(images))
    path = write_shapes_h5(tmp_path / "3dshapes" / "3dshapes.h5", images[order], labels[order], chunks=(8, 64, 64, 3), compression="gzip")
    data = tiny_shapes(path)
    data.check()
    prepared = data.images
    assert prepared.shape == (96, 3, 64, 64) and prepared.dtype == np.uint8
    np.testing.assert_array_equal(prepared, images.transpose(0, 3, 1, 2))
    np.testing.assert_array_equal(data.factors_of(np.arange(96)), factors)
    info = data.prepared_info()
    assert info["file_in_grid_order"] is (not shuffle) and info["source_format"] == "h5"
    assert np.allclose(data.factor_values[5], SHAPES_VALUES[5][:3])


def test_shapes_default_location_and_npz_layout(tmp_path, monkeypatch):
    images, labels, _ = shapes_grid()
    root = tmp_path / "root"
    npz = root / "3dshapes" / shapes3d.NPZ_NAME
    npz.parent.mkdir(parents=True)
    sizes = TINY_SHAPES.sizes
    np.savez(npz, images=images.reshape(sizes + (64, 64, 3)), labels=labels)  # factor dims leading, as the study
    data = Shapes3D(_layout=TINY_SHAPES)
    assert data.source_files() == [npz]
    np.testing.assert_array_equal(data.images, images.transpose(0, 3, 1, 2))
    assert data.prepared_dir == root / "shapes3d" / "prepared"
    write_shapes_h5(root / "3dshapes" / "3dshapes.h5", images, labels)
    assert Shapes3D(_layout=TINY_SHAPES).source_files() == [root / "3dshapes" / "3dshapes.h5"]  # h5 first


def _h5(images=None, labels=None, **options):
    base_images, base_labels, _ = shapes_grid()
    return lambda path: write_shapes_h5(
        path, base_images if images is None else images(base_images), base_labels if labels is None else labels(base_labels), **options
    )


def _drop_labels(path):
    with h5py.File(path, "w") as handle:
        handle.create_dataset("images", data=shapes_grid()[0])


def _repeat_first(labels):
    labels = labels.copy()
    labels[1] = labels[0]
    return labels


def _truncate_h5(path):
    _h5(chunks=(8, 64, 64, 3))(path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


SHAPES_BAD_FILES = {
    "float images": (_h5(images=lambda a: a.astype(np.float32)), r"`images` is float32 \(96, 64, 64, 3\), expected uint8"),
    "wrong image size": (_h5(images=lambda a: a[:, :32, :32]), r"`images` is uint8 \(96, 32, 32, 3\), expected uint8 \(96, 64, 64, 3\)"),
    "wrong count": (_h5(images=lambda a: a[:95], labels=lambda l: l[:95]), r"`images` is uint8 \(95, 64, 64, 3\)"),
    "integer labels": (_h5(labels=lambda l: l.astype(np.int64)), r"`labels` is int64 \(96, 6\), expected float"),
    "missing labels": (_drop_labels, r"no `labels` array \(found: images\)"),
    "repeated grid cell": (_h5(labels=_repeat_first), r"`labels`: not the full 2x2x2x2x2x3 factor grid \(96 rows, 1 combinations missing, 1 repeated\)"),
    "too many values": (
        _h5(labels=lambda l: np.where(np.arange(96)[:, None] == 0, l + [0, 0, 0, 0, 0, 7.5], l)),
        r"`labels` column 5 \(azimuth\) has 4 distinct values, expected 3",
    ),
    "nan labels": (_h5(labels=lambda l: np.where(l == 1.0, np.nan, l)), r"`labels` contains NaN"),
    "not hdf5": (lambda path: path.write_bytes(b"\x89HDF garbage" * 50), r"not a readable HDF5 file"),
    "truncated": (_truncate_h5, r"3dshapes\.h5: (not a readable HDF5 file|cannot read `images`)"),
}


@pytest.mark.parametrize("case", sorted(SHAPES_BAD_FILES))
def test_shapes_bad_files_give_one_clear_error(tmp_path, case):
    path = tmp_path / "3dshapes" / "3dshapes.h5"
    path.parent.mkdir(parents=True)
    damage, message = SHAPES_BAD_FILES[case]
    damage(path)
    data = tiny_shapes(path)
    with pytest.raises(DatasetFormatError, match=message) as error:
        data.check()
        data.prepare()
    assert "\n" not in str(error.value) and str(path) in str(error.value)
    assert not data.is_prepared()


def test_shapes_bad_npz(tmp_path):
    images, labels, _ = shapes_grid()
    path = tmp_path / "bad.npz"
    np.savez(path, images=images)
    with pytest.raises(DatasetFormatError, match=r"bad\.npz has no `labels` array \(found: images\)"):
        tiny_shapes(path).check()
    np.savez_compressed(path, images=images, labels=labels)
    path.write_bytes(path.read_bytes()[:-2000])
    with pytest.raises(DatasetFormatError, match=r"bad\.npz (is not an npz|: cannot read)"):
        data = tiny_shapes(path)
        data.check()
        data.prepare()


def test_shapes_real_layout_refuses_tiny_file(tmp_path):
    images, labels, _ = shapes_grid()
    path = write_shapes_h5(tmp_path / "3dshapes.h5", images, labels)
    with pytest.raises(DatasetFormatError, match=r"`images` is uint8 \(96, 64, 64, 3\), expected uint8 \(480000, 64, 64, 3\)"):
        Shapes3D(Shapes3DConfig(path=path)).check()


def test_shapes_missing_file(tmp_path):
    with pytest.raises(DatasetNotFoundError, match=r"Shapes3D file not found: .*3dshapes\.h5; download"):
        Shapes3D().check()


# =============================================================================
# MPI3D
# =============================================================================


@pytest.mark.parametrize("compressed", [False, True], ids=["stored", "deflated"])
def test_mpi3d_reads_npz_in_grid_order(tmp_path, compressed):
    images = mpi3d_grid()
    path = write_mpi3d(tmp_path / "root" / "mpi3d_real" / "mpi3d_real.npz", images, compressed)
    data = MPI3DData(variant="real", _layout=TINY_MPI3D)  # default location
    assert data.name == "mpi3d_real" and data.source_files() == [path]
    np.testing.assert_array_equal(data.images, images.transpose(0, 3, 1, 2))
    assert data.factor_sizes == TINY_MPI3D.sizes and data.num_factors == 7
    assert data.prepared_dir == tmp_path / "root" / "mpi3d_real" / "prepared"


def test_mpi3d_real_factor_sizes():
    for variant in mpi3d.VARIANTS:
        data = MPI3DData(variant=variant)
        assert data.factor_sizes == (6, 6, 2, 3, 3, 40, 40) and data.num_images == 1_036_800


MPI3D_BAD_FILES = {
    "wrong count": (lambda p: write_mpi3d(p, mpi3d_grid()[:47]), r"`images` is uint8 \(47, 64, 64, 3\), expected uint8 \(48, 64, 64, 3\) \(factor grid 2x2x1x1x2x3x2\)"),
    "wrong dtype": (lambda p: write_mpi3d(p, mpi3d_grid().astype(np.float32)), r"`images` is float32"),
    "wrong key": (lambda p: np.savez(p, imgs=mpi3d_grid()), r"has no `images` array \(found: imgs\)"),
    "not an npz": (lambda p: p.write_bytes(b"PK nope"), r"is not an npz \(zip\) archive"),
    "truncated": (
        lambda p: p.write_bytes(write_mpi3d(p, mpi3d_grid()).read_bytes()[:300_000]),
        r"(is not an npz|`images` ends after|cannot read)",
    ),
    "corrupted data": (
        lambda p: p.write_bytes(_flip_middle(write_mpi3d(p, mpi3d_grid(), compressed=True).read_bytes())),
        r"(cannot read `images`.*damaged|is not an npz)",
    ),
}


def _flip_middle(data: bytes) -> bytes:
    middle = len(data) // 2
    return data[:middle] + bytes(b ^ 0xFF for b in data[middle : middle + 64]) + data[middle + 64 :]


@pytest.mark.parametrize("case", sorted(MPI3D_BAD_FILES))
def test_mpi3d_bad_files_give_one_clear_error(tmp_path, case):
    path = tmp_path / "mpi3d_toy.npz"
    damage, message = MPI3D_BAD_FILES[case]
    damage(path)
    data = tiny_mpi3d(path)
    with pytest.raises(DatasetFormatError, match=message) as error:
        data.check()
        data.prepare()
    assert "\n" not in str(error.value) and str(path) in str(error.value)
    assert not data.is_prepared()


def test_unknown_mpi3d_variant():
    with pytest.raises(ValueError, match="unknown MPI3D variant 'fake'"):
        MPI3DData(variant="fake")


# =============================================================================
# The prepared cache
# =============================================================================


@pytest.fixture
def prepared_mpi3d(tmp_path):
    path = write_mpi3d(tmp_path / "src" / "mpi3d_toy.npz", mpi3d_grid())
    data = tiny_mpi3d(path)
    data.prepare()
    return data, path


def test_prepared_cache_loads_memory_mapped_and_stands_alone(prepared_mpi3d, capsys):
    data, path = prepared_mpi3d
    assert sorted(p.name for p in data.prepared_dir.iterdir()) == [".prepare.lock", "images.npy", "info.json"]
    path.unlink()  # the originals may go once prepared
    again = tiny_mpi3d(path)
    assert again.is_prepared() and not again.files_present()
    again.check()
    started = time.perf_counter()
    images = again.images
    assert time.perf_counter() - started < 1.0
    assert isinstance(images, np.memmap) and images.shape == (48, 3, 64, 64)
    assert capsys.readouterr().err == ""  # no preparing message
    assert images[5, 0, 0, 0] == 5
    state = pickle.loads(pickle.dumps(again))  # workers get the recipe, not the pixels
    assert "images" not in state.__dict__ and state.images[7, 0, 3, 3] == 7


def test_prepared_cache_validation(prepared_mpi3d):
    data, path = prepared_mpi3d
    # The real layout never accepts the tiny cache in the same folder.
    assert not MPI3DData(variant="toy").is_prepared()
    # Changed originals (another size) make the cache stale.
    write_mpi3d(path, mpi3d_grid(), compressed=True)
    assert not tiny_mpi3d(path).is_prepared()
    tiny_mpi3d(path).prepare()
    assert tiny_mpi3d(path).is_prepared()
    # A damaged cache is not used, and is rebuilt on first use.
    images = data.images_path
    images.write_bytes(images.read_bytes()[:-10])
    fresh = tiny_mpi3d(path)
    assert not fresh.is_prepared()
    assert fresh.images[9, 0, 0, 0] == 9 and fresh.is_prepared()
    info = data.info_path
    info.write_text("{broken")
    assert not tiny_mpi3d(path).is_prepared()


def test_failed_prepare_keeps_the_old_cache(prepared_mpi3d, tmp_path):
    data, _ = prepared_mpi3d
    before = data.images_path.read_bytes()
    bad = write_mpi3d(tmp_path / "bad" / "mpi3d_toy.npz", mpi3d_grid()[:47])
    with pytest.raises(DatasetFormatError):
        data.prepare(bad)
    assert data.is_prepared() and data.images_path.read_bytes() == before
    assert not list(data.prepared_dir.glob("*.tmp"))


def test_checksums_recorded_and_compared(prepared_mpi3d, monkeypatch):
    data, path = prepared_mpi3d
    digest = sha256_of(path)
    assert data.prepared_info()["sources"] == [{"file": str(path.resolve()), "bytes": path.stat().st_size, "sha256": digest}]
    assert data.checksum_status() == "unverified"  # no published digest known
    monkeypatch.setattr(MPI3DData, "known_sha256", {path.name: digest})
    assert data.checksum_status() == "ok (1 verified)"
    monkeypatch.setattr(MPI3DData, "known_sha256", {path.name: "0" * 64})
    assert data.checksum_status() == "mismatch: mpi3d_toy.npz"
    with pytest.warns(ChecksumWarning, match=r"mpi3d_toy\.npz: SHA-256 [0-9a-f]{64} differs from the published 0{64}"):
        data.prepare()
    assert data.is_prepared()  # a warning, not an error


def test_published_checksum_tables_hold_only_verified_values():
    # Deliberately empty until a digest is checked against the publisher's own file.
    for cls in (SmallNORB, Cars3D, Shapes3D, MPI3DData):
        assert issubclass(cls, PreparedData)
        assert all(len(v) == 64 and int(v, 16) >= 0 for v in cls.known_sha256.values())


def test_index_helpers_with_nuisance(norb_files):
    folder, _ = norb_files
    data = tiny_norb(folder)
    with pytest.raises(ValueError, match=r"index_of needs 5 columns \(category, instance, elevation, azimuth, lighting\)"):
        data.index_of([0, 0, 0, 0])
    assert data.num_observations == 48 and data.nuisance_dims == (1,)
    every = data.grid_vectors_of(np.arange(48))
    np.testing.assert_array_equal(data.index_of(every), np.arange(48))


def test_datasets_registered(registry):
    names = registry.names("dataset")
    for name in ("smallnorb", "cars3d", "shapes3d", "mpi3d_toy", "mpi3d_realistic", "mpi3d_real"):
        assert name in names
        registration = registry.get("dataset", name)
        data = registration.factory(registration.make_config())
        assert data.name == name and data.needs_preparation
    with pytest.raises(Exception, match="extra"):
        registry.get("dataset", "smallnorb").make_config({"expected_sizes": [1]})
    assert not registry.problems
