"""``disentbench data list/info/prepare/show`` with $DISENTBENCH_DATA in a temporary folder.

Tiny variants of the dataset plugins (their internal ``_layout`` test hook)
are registered next to the built-ins through an extra plugin, exactly as a
third-party package would; the built-in names keep the published layouts.
"""

from __future__ import annotations

import json
import types

import matplotlib.image
import numpy as np
import pytest
from click.testing import CliRunner
from helpers import (
    TINY_CARS,
    TINY_MPI3D,
    TINY_NORB,
    TINY_SHAPES,
    make_cars,
    make_norb,
    mpi3d_grid,
    shapes_grid,
    write_mpi3d,
    write_shapes_h5,
)

from disentbench import hookimpl
from disentbench.core import registry as plugins
from disentbench.core.cli.main import main
from disentbench.plugins.datasets.cars3d import Cars3D, Cars3DConfig
from disentbench.plugins.datasets.mpi3d import MPI3DConfig, MPI3DData
from disentbench.plugins.datasets.shapes3d import Shapes3D, Shapes3DConfig
from disentbench.plugins.datasets.smallnorb import SmallNORB, SmallNORBConfig


@hookimpl
def _register_tiny(register):
    register("tiny_norb", config=SmallNORBConfig, factory=lambda c: SmallNORB(c, _layout=TINY_NORB), description="tiny smallNORB")
    register("tiny_cars", config=Cars3DConfig, factory=lambda c: Cars3D(c, _layout=TINY_CARS), description="tiny Cars3D")
    register("tiny_shapes", config=Shapes3DConfig, factory=lambda c: Shapes3D(c, _layout=TINY_SHAPES), description="tiny Shapes3D")
    register(
        "tiny_mpi3d",
        config=MPI3DConfig,
        factory=lambda c: MPI3DData(c, variant="toy", _layout=TINY_MPI3D),
        description="tiny MPI3D",
    )


TINY_PLUGIN = types.SimpleNamespace(__name__="tiny_datasets", register_datasets=_register_tiny)


@pytest.fixture
def root(tmp_path, monkeypatch):
    """A data root with tiny originals for every format in their default places."""
    root = tmp_path / "data"
    monkeypatch.setenv("DISENTBENCH_DATA", str(root))
    monkeypatch.chdir(tmp_path)
    registry = plugins.build_registry(load_entry_points=False, extra_plugins=[TINY_PLUGIN])
    assert not registry.problems
    monkeypatch.setattr(plugins, "_REGISTRY", registry)
    make_norb(root / "small_norb")
    make_cars(root / "cars")
    images, labels, _ = shapes_grid()
    write_shapes_h5(root / "3dshapes" / "3dshapes.h5", images, labels)
    write_mpi3d(root / "mpi3d_toy" / "mpi3d_toy.npz", mpi3d_grid())
    return root


def invoke(*args):
    return CliRunner().invoke(main, ["data", *args])


def assert_bad_input(result, *fragments):
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0]
    assert "Traceback" not in result.output


def listing() -> dict[str, dict]:
    result = invoke("list", "--json")
    assert result.exit_code == 0, result.output
    return {row["name"]: row for row in json.loads(result.stdout)}


def test_list_shows_factors_files_prepared_checksums(root):
    rows = listing()
    norb = rows["smallnorb"]
    assert norb["factors"] == {"category": 5, "elevation": 9, "azimuth": 18, "lighting": 6}
    assert norb["images"] == 48_600
    # The real plugins find the tiny originals' names (present) but are not prepared.
    assert (norb["files"], norb["prepared"], norb["checksums"]) == ("yes", "no", "-")
    assert rows["mpi3d_real"]["files"] == "no"
    assert rows["tiny_mpi3d"]["factors"]["horizontal_axis"] == 3
    assert rows["dsprites"]["prepared"] == "-"
    table = invoke("list")
    assert table.exit_code == 0
    for name in ("smallnorb", "cars3d", "shapes3d", "mpi3d_toy", "tiny_norb", "data root"):
        assert name in table.stdout


def test_prepare_then_info_then_list(root):
    result = invoke("prepare", "tiny_norb")
    assert result.exit_code == 0, result.output
    assert "prepared tiny_norb: 48 images (1, 64, 64) uint8" in result.stdout
    assert "checksums: unverified" in result.stdout
    assert (root / "smallnorb" / "prepared" / "images.npy").is_file()
    again = invoke("prepare", "tiny_norb")
    assert again.exit_code == 0 and "already prepared" in again.stdout
    forced = invoke("prepare", "tiny_norb", "--force")
    assert forced.exit_code == 0 and "prepared tiny_norb" in forced.stdout

    info = invoke("info", "tiny_norb")
    assert info.exit_code == 0, info.output
    assert "factors: category 2, elevation 2, azimuth 3, lighting 2" in info.stdout
    assert "nuisance (drawn uniformly per observation): instance 2" in info.stdout
    assert "training-dat.mat (present)" in info.stdout
    assert "prepared: " in info.stdout and "sha256 " in info.stdout

    rows = listing()
    assert (rows["tiny_norb"]["prepared"], rows["tiny_norb"]["checksums"]) == ("yes", "unverified")
    assert rows["smallnorb"]["prepared"] == "no"  # the real layout never takes the tiny cache


def test_prepare_every_format_and_from(root, tmp_path):
    for name in ("tiny_cars", "tiny_shapes", "tiny_mpi3d"):
        result = invoke("prepare", name)
        assert result.exit_code == 0, result.output
    other = tmp_path / "elsewhere"
    write_mpi3d(other / "mpi3d_toy.npz", mpi3d_grid(seed=1))
    result = invoke("prepare", "tiny_mpi3d", "--from", str(other))
    assert result.exit_code == 0, result.output
    prepared = np.load(root / "mpi3d_toy" / "prepared" / "images.npy")
    np.testing.assert_array_equal(prepared, mpi3d_grid(seed=1).transpose(0, 3, 1, 2))
    info = invoke("info", "tiny_cars")
    assert "originals: " not in info.stdout or "3 of 3" in info.stdout


def test_info_unprepared_and_plain_datasets(root):
    info = invoke("info", "cars3d")
    assert info.exit_code == 0
    assert "factors: elevation 4, azimuth 24, object 183" in info.stdout
    assert "prepared: no (run `disentbench data prepare cars3d`" in info.stdout
    plain = invoke("info", "dsprites")
    assert plain.exit_code == 0 and "files: dSprites file not found" in plain.stdout


def test_show_writes_one_row_per_factor(root):
    result = invoke("show", "tiny_norb", "--out", "norb.png", "--columns", "4")
    assert result.exit_code == 0, result.output
    assert "rows category, elevation, azimuth, lighting; 4 columns" in result.stdout
    picture = matplotlib.image.imread(root.parent / "norb.png")
    assert picture.shape[:2] == (4 * 66 + 2, 4 * 66 + 2)
    default = invoke("show", "tiny_shapes")
    assert default.exit_code == 0, default.output
    picture = matplotlib.image.imread(root.parent / "tiny_shapes_factors.png")
    assert picture.shape[:2] == (6 * 66 + 2, 10 * 66 + 2)


def test_bad_input_exits_2_with_one_line(root, tmp_path):
    assert_bad_input(invoke("prepare", "nope"), "unknown dataset plugin 'nope'")
    assert_bad_input(invoke("info", "nope"), "unknown dataset plugin")
    assert_bad_input(invoke("show", "nope"), "unknown dataset plugin")
    # The real layouts refuse the tiny files, naming the file and what is wrong.
    assert_bad_input(invoke("prepare", "smallnorb"), "training-dat.mat", "expected a uint8 24300x2x96x96 matrix")
    assert_bad_input(invoke("prepare", "cars3d"), "3 .mat files, expected 183")
    assert_bad_input(invoke("prepare", "shapes3d"), "3dshapes.h5", "expected uint8 (480000, 64, 64, 3)")
    assert_bad_input(invoke("show", "mpi3d_toy", "--out", "x.png"), "mpi3d_toy.npz", "factor grid 6x6x2x3x3x40x40")
    # Missing files.
    assert_bad_input(invoke("prepare", "mpi3d_real"), "MPI3D-real file not found", "mpi3d_real.npz")
    # A corrupted header.
    info = root / "small_norb" / "smallnorb-5x01235x9x18x6x2x96x96-testing-info.mat"
    info.write_bytes(b"\xff" * 4 + info.read_bytes()[4:])
    assert_bad_input(invoke("prepare", "tiny_norb"), "testing-info.mat: not a NORB matrix file (header magic 0xFFFFFFFF")
    assert_bad_input(invoke("show", "tiny_norb", "--out", "norb.png"), "testing-info.mat")
    # Arguments.
    assert_bad_input(invoke("show", "tiny_cars", "--out", "x.jpg"), "must end in .png")
    assert_bad_input(invoke("prepare", "dsprites_procedural", "--from", str(tmp_path)), "has no prepared form")
    missing = invoke("prepare", "tiny_mpi3d", "--from", str(tmp_path / "absent"))
    assert missing.exit_code == 2 and "does not exist" in missing.output


def test_plain_dataset_needs_no_preparation(root):
    result = invoke("prepare", "dsprites_procedural")
    assert result.exit_code == 0 and "needs no preparation" in result.stdout
