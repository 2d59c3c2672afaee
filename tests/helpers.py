"""Helpers shared by several test files: tiny datasets, model and trainer builders, file writers, plugin installs.

Tests import these from here, never from another test module or from conftest
(which holds only fixtures and pytest hooks).
"""

from __future__ import annotations

import gzip
import io
import os
import struct
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.io
import scipy.stats
import torch
from pydantic import Field

from disentbench.core.data.ground_truth import GroundTruthData
from disentbench.core.registry import LOAD_PLUGINS_ENV, build_registry
from disentbench.core.training.trainer import Trainer, build_model
from disentbench.plugins.datasets import smallnorb
from disentbench.plugins.datasets.cars3d import CarsLayout
from disentbench.plugins.datasets.mpi3d import MPI3DLayout
from disentbench.plugins.datasets.shapes3d import Shapes3DLayout
from disentbench.plugins.datasets.smallnorb import NorbLayout
from disentbench.plugins.models.annealed_vae import AnnealedVAE, AnnealedVAEConfig
from disentbench.plugins.models.beta_tcvae import BetaTCVAE, BetaTCVAEConfig
from disentbench.plugins.models.beta_vae import BetaVAE, BetaVAEConfig
from disentbench.plugins.models.dip_vae import DIPVAE, DIPVAEConfig
from disentbench.plugins.models.factor_vae import FactorVAE, FactorVAEConfig


class Squares(GroundTruthData):
    """A 4x4 grid of 16-pixel squares at x/y positions on a 64x64 canvas."""

    name = "squares"
    factor_names = ("x", "y")
    factor_sizes = (4, 4)
    pixel_scale = 1.0

    def __init__(self):
        images = np.zeros((16, 1, 64, 64), dtype=np.uint8)
        for i in range(4):
            for j in range(4):
                images[i * 4 + j, 0, 16 * j : 16 * j + 16, 16 * i : 16 * i + 16] = 1
        self._images = images

    @property
    def images(self):
        return self._images


def _trainer(tmp_path=None, steps=12, seed=3, checkpoint_every=1000):
    data = Squares()
    model = build_model(BetaVAE, BetaVAEConfig(beta=2.0, num_latent=3), data.observation_shape, seed, torch.device("cpu"))
    return Trainer(
        model, data, seed=seed, steps=steps, batch_size=8, device=torch.device("cpu"),
        log_every=4, checkpoint_every=checkpoint_every,
        checkpoint_path=(tmp_path / "ckpt.pt") if tmp_path else None,
    )


def registry_with_model(name, config, factory, description="test model"):
    """The built-in registry plus one test model plugin, registered through the real hook."""
    from disentbench import hookimpl

    class Plugin:
        __name__ = f"{name}-test-plugin"

        @staticmethod
        @hookimpl
        def register_models(register):
            register(name, config=config, factory=factory, description=description)

    return build_registry(load_entry_points=False, extra_plugins=[Plugin])


class PoisonConfig(BetaVAEConfig):
    poison: float = Field(0.0, ge=0, description="test: above 0 puts a NaN into a decoder weight")


class PoisonedVAE(BetaVAE):
    """A packable beta-VAE whose loss is NaN from the first step when ``poison`` > 0."""

    def __init__(self, config, observation_shape):
        super().__init__(config, observation_shape)
        if config.poison > 0:
            with torch.no_grad():
                next(self.decoder.parameters()).view(-1)[0] = float("nan")


def poisoned_vae_registry():
    """The built-in registry plus ``poisoned_vae`` (:class:`PoisonedVAE`): NaN on demand, per run."""
    return registry_with_model("poisoned_vae", PoisonConfig, PoisonedVAE, "test: NaN on demand")


def recorded_ops():
    """A TorchDispatchMode whose ``ops`` collects the name of every aten op run under it."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Record(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = set()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops.add(str(func.overloadpacket))
            return func(*args, **(kwargs or {}))

    return Record()


def config_with(base: dict, **changes) -> dict:
    """A deep copy of ``base`` with changes at paths written a__b__0 (list indices as digits)."""
    import copy

    config = copy.deepcopy(base)
    for dotted, value in changes.items():
        *parents, last = dotted.split("__")
        node = config
        for part in parents:
            node = node[int(part)] if part.isdigit() else node[part]
        node[int(last) if last.isdigit() else last] = value
    return config


CPU = torch.device("cpu")


STEPS, LOG_EVERY, BATCH = 4, 2, 8


MODELS = {
    "beta_vae": (BetaVAE, [BetaVAEConfig(beta=b) for b in (1.0, 4.0, 16.0)]),
    # threshold 3: the capacity schedule changes during the test's steps
    "annealed_vae": (AnnealedVAE, [AnnealedVAEConfig(c_max=c, iteration_threshold=3) for c in (5.0, 25.0)]),
    "factor_vae": (FactorVAE, [FactorVAEConfig(gamma=g) for g in (10.0, 40.0)]),
    "dip_vae_i": (DIPVAE, [DIPVAEConfig(variant="i", lambda_od=v) for v in (1.0, 20.0)]),
    "dip_vae_ii": (DIPVAE, [DIPVAEConfig(variant="ii", lambda_od=v) for v in (2.0, 50.0)]),
    "beta_tcvae": (BetaTCVAE, [BetaTCVAEConfig(beta=b) for b in (2.0, 10.0)]),
}


def _configs(name, **update):
    factory, configs = MODELS[name]
    return factory, [c.model_copy(update={"num_latent": 3, **update}) for c in configs]


def _build(factory, configs, seeds, data, dtype=torch.float32):
    return [build_model(factory, c, data.observation_shape, s, CPU).to(dtype) for c, s in zip(configs, seeds)]


def _solo(model, data, seed, steps=STEPS, checkpoint_path=None, checkpoint_every=10_000):
    logs = []
    trainer = Trainer(
        model, data, seed=seed, steps=steps, batch_size=BATCH, device=CPU, log_every=LOG_EVERY,
        checkpoint_path=checkpoint_path, checkpoint_every=checkpoint_every,
    )  # fmt: skip
    trainer.train(on_log=lambda step, terms: logs.append((step, terms)))
    return logs


def _max_diff(a, b):
    return max((p - q).abs().max().item() for p, q in zip(a.parameters(), b.parameters()))


def _assert_same_logs(solo_logs, packed_logs, rel=1e-5):
    assert [step for step, _ in packed_logs] == [step for step, _ in solo_logs]
    for (_, solo_terms), (_, packed_terms) in zip(solo_logs, packed_logs):
        assert list(packed_terms) == list(solo_terms)
        for key, value in solo_terms.items():
            assert packed_terms[key] == pytest.approx(value, rel=rel, abs=1e-5), key


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=True)
    return buffer.getvalue()


def metadata(sizes=(1, 3, 6, 40, 32, 32)) -> np.ndarray:
    return np.array({"latents_sizes": np.array(sizes), "latents_names": ("color", "shape", "scale", "orientation", "posX", "posY")}, dtype=object)


def write_npz(path, members: dict[str, bytes]):
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def header_only(shape, dtype=np.uint8) -> bytes:
    """A .npy header announcing ``shape`` with no pixels behind it (enough for the checks)."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": np.dtype(dtype).str, "fortran_order": False, "shape": shape})
    return buffer.getvalue()


TINY_NORB = NorbLayout(
    categories=2, training_instances=(1,), testing_instances=(0,), elevations=2, azimuths=3, lightings=2
)


TINY_CARS = CarsLayout(elevations=2, azimuths=3, objects=3)


TINY_SHAPES = Shapes3DLayout(sizes=(2, 2, 2, 2, 2, 3))


TINY_MPI3D = MPI3DLayout(sizes=(2, 2, 1, 1, 2, 3, 2))


NORB_MAGIC = {np.dtype(np.uint8): 0x1E3D4C55, np.dtype("<i4"): 0x1E3D4C54}


def write_norb(path: Path, array: np.ndarray, magic: int | None = None) -> Path:
    """NORB matrix: int32 magic, int32 ndim, max(ndim, 3) int32 dims, data (little-endian)."""
    array = np.ascontiguousarray(array)
    magic = NORB_MAGIC[array.dtype] if magic is None else magic
    dims = list(array.shape) + [1] * max(0, 3 - array.ndim)
    header = struct.pack("<II", magic, array.ndim) + struct.pack(f"<{len(dims)}i", *dims)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as handle:
        handle.write(header + array.tobytes())
    return path


def norb_path(folder: Path, split: str, kind: str) -> Path:
    return folder / smallnorb.SPLIT_FILES[split].format(kind)


def make_norb(folder: Path, layout: NorbLayout = TINY_NORB, *, seed: int = 0, gz: bool = False) -> dict:
    """Six NORB files in shuffled row order; returns {grid vector: (camera 0, camera 1) 96x96 image}."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    expected = {}
    for split in ("training", "testing"):
        rows = []
        for category in range(layout.categories):
            for instance in layout.split_instances(split):
                for elevation in range(layout.elevations):
                    for azimuth in range(layout.azimuths):
                        for lighting in range(layout.lightings):
                            rows.append((category, instance, elevation, azimuth, lighting))
        rows = [rows[i] for i in rng.permutation(len(rows))]  # the reader must not rely on file order
        size = layout.source_size
        dat = rng.integers(0, 256, size=(len(rows), 2, size, size), dtype=np.uint8)
        cat = np.array([r[0] for r in rows], dtype="<i4")
        info = np.array([(r[1], r[2], 2 * r[3], r[4]) for r in rows], dtype="<i4")  # azimuth stored doubled
        suffix = ".gz" if gz else ""
        write_norb(Path(str(norb_path(folder, split, "dat")) + suffix), dat)
        write_norb(Path(str(norb_path(folder, split, "cat")) + suffix), cat)
        write_norb(Path(str(norb_path(folder, split, "info")) + suffix), info)
        for row, pair in zip(rows, dat):
            expected[row] = pair
    return expected


CAR_NAMES = ("car_b_mesh.mat", "car_a_mesh.mat", "car_c_mesh.mat")  # written in unsorted order


def make_cars(folder: Path, layout: CarsLayout = TINY_CARS, *, size: int = 96, seed: int = 0) -> dict:
    """One .mat per car, ``im`` uint8 (H, W, 3, azimuth, elevation); returns {file name: im}."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for name in CAR_NAMES[: layout.objects]:
        im = rng.integers(0, 256, size=(size, size, 3, layout.azimuths, layout.elevations), dtype=np.uint8)
        scipy.io.savemat(folder / name, {"im": im})
        arrays[name] = im
    return arrays


SHAPES_VALUES = (
    np.linspace(0.0, 0.9, 10),
    np.linspace(0.0, 0.9, 10),
    np.linspace(0.0, 0.9, 10),
    np.linspace(0.75, 1.25, 8),
    np.arange(4.0),
    np.linspace(-30.0, 30.0, 15),
)


def shapes_grid(layout: Shapes3DLayout = TINY_SHAPES, *, seed: int = 0):
    """Grid-ordered (images, labels, factor indices): channel 0 = grid index, the rest random."""
    rng = np.random.default_rng(seed)
    sizes = layout.sizes
    factors = np.stack(np.unravel_index(np.arange(int(np.prod(sizes))), sizes), axis=1)
    labels = np.stack([SHAPES_VALUES[i][factors[:, i]] for i in range(len(sizes))], axis=1).astype(np.float64)
    images = rng.integers(0, 256, size=(len(factors), 64, 64, 3), dtype=np.uint8)
    images[:, :, :, 0] = np.arange(len(factors))[:, None, None]
    return images, labels, factors


def write_shapes_h5(path: Path, images: np.ndarray, labels: np.ndarray, **options) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as handle:
        handle.create_dataset("images", data=images, **options)
        handle.create_dataset("labels", data=labels)
    return path


def mpi3d_grid(layout: MPI3DLayout = TINY_MPI3D, *, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    count = int(np.prod(layout.sizes))
    images = rng.integers(0, 256, size=(count, 64, 64, 3), dtype=np.uint8)
    images[:, :, :, 0] = np.arange(count)[:, None, None]
    return images


def write_mpi3d(path: Path, images: np.ndarray, compressed: bool = False, **extra) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    (np.savez_compressed if compressed else np.savez)(path, images=images, **extra)
    return path


def start_pip_install(target: Path, *projects: Path) -> subprocess.Popen:
    """Start building and installing ``projects`` into the folder ``target`` (offline: no deps, no isolation)."""
    command = [
        sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
        "--no-deps", "--no-build-isolation", "--no-index", "--target", str(target),
        *map(str, projects),
    ]  # fmt: skip
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def write_project(root: Path, dist_name: str, module_name: str, entry_point: str, module_source: str) -> Path:
    """A one-module setuptools project with one ``disentbench`` entry point."""
    root.mkdir(parents=True)
    (root / "pyproject.toml").write_text(
        textwrap.dedent(
            f"""\
            [build-system]
            requires = ["setuptools>=69"]
            build-backend = "setuptools.build_meta"

            [project]
            name = "{dist_name}"
            version = "0.0.1"

            [project.entry-points.disentbench]
            {entry_point} = "{module_name}"

            [tool.setuptools]
            py-modules = ["{module_name}"]
            """
        )
    )
    (root / f"{module_name}.py").write_text(textwrap.dedent(module_source))
    return root


def cli_env(site: Path, load_plugins: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != LOAD_PLUGINS_ENV}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH", "")) if p)
    if load_plugins is not None:
        env[LOAD_PLUGINS_ENV] = load_plugins
    return env


#: The smallest study that trains and scores (two steps, one metric): the base every bad-input case changes.
TINY_STUDY = {
    "name": "bad_inputs",
    "datasets": ["dsprites_procedural"],
    "models": [{"name": "beta_vae", "params": {"num_latent": 4}}],
    "training": {"steps": 2, "batch_size": 8, "device": "cpu"},
    "evaluation": {"metrics": [{"name": "mig", "params": {"num_train": 100}}]},
}


# -- the study's reference code (disentanglement_lib), for the parity tests ----------------------------

#: The reference the parity tests need, pinned: gin-config 0.5 breaks disentanglement_lib's imports.
REFERENCE_PINS = {"disentanglement-lib": "1.5", "gin-config": "0.4.0"}
REFERENCE_INSTALL = "pip install --no-deps disentanglement-lib==1.5 gin-config==0.4.0 absl-py six"


def reference_problem() -> str | None:
    """Why the pinned reference cannot be used here (one line naming the fix), or None if it can."""
    import importlib.metadata

    for dist, pin in REFERENCE_PINS.items():
        try:
            version = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return f"{dist} is not installed (install the pinned reference: {REFERENCE_INSTALL})"
        if version != pin:
            return f"{dist} {version} is installed, the parity tests need {dist}=={pin} ({REFERENCE_INSTALL})"
    return None


DIE_ONCE_ENV = "DISENTBENCH_TEST_DIE_ONCE"  # "STEP RUNS MARKER SPARED_PID", read by die_once_after_checkpoints


def die_once_after_checkpoints() -> None:
    """A Ray ``worker_process_setup_hook`` (``helpers.die_once_after_checkpoints``): a task killed mid-pack.

    With ``$DISENTBENCH_TEST_DIE_ONCE`` set to ``STEP RUNS MARKER SPARED_PID``, the worker process
    that has written RUNS step-STEP checkpoints (every run of its pack) exits at once (``os._exit``:
    no cleanup, as a killed process or a lost node), after creating the file MARKER; once MARKER
    exists no process dies, so Ray's retry of the task trains on. SPARED_PID (the test's own
    process, should Ray run the hook there too) never dies.
    """
    setting = os.environ.get(DIE_ONCE_ENV)
    if not setting:
        return
    step, runs, marker, spared = setting.split(" ")
    if os.getpid() == int(spared):
        return
    save = Trainer.save_checkpoint
    saved: list[int] = []

    def save_then_die(self):
        save(self)
        if self.step == int(step):
            saved.append(self.step)
            if len(saved) == int(runs) and not os.path.exists(marker):
                Path(marker).write_text(str(os.getpid()))
                os._exit(17)

    Trainer.save_checkpoint = save_then_die  # type: ignore[method-assign]
