"""The bad-input corpus: every bad input is one ``error:`` line naming what is wrong, exit 2 or 1, no traceback.

Beyond tests/test_config.py (which covers the first twenty config mistakes),
this file feeds the command line more kinds of config, config files, dataset
files, plugin packages, arguments and tracking URIs. Each case asserts:

* the exit code: 2 for bad input (no CUDA, no srun for the slurm executor
  included), 1 for a failure (a run that could not train);
* an ``error:`` line (click's own ``Error:`` for argument parsing) naming the
  offending field, file, option or URI, and no traceback - nor the catch-all
  for unexpected exceptions;
* nothing half-written: no ``mlflow.db``/``mlruns`` beside the config, and a
  failure that does reach the store leaves every run FAILED with its reason.

Most cases run the CLI in this process (``CliRunner``); plugin packages need
fresh interpreters that discover entry points, so they are pip-installed into
a ``--target`` folder on ``PYTHONPATH`` (as in tests/test_plugin_example.py).
Also here: the security checks (artifact paths, YAML tags, pickled checkpoints).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner
from helpers import (
    TINY_STUDY,
    config_with,
    header_only,
    metadata,
    mpi3d_grid,
    npy_bytes,
    shapes_grid,
    write_mpi3d,
    write_npz,
    write_shapes_h5,
)

from disentbench.core.cli.main import main
from disentbench.core.tracking import tracker as tracking

CLI = [sys.executable, "-m", "disentbench.core.cli.main"]

GOOD = TINY_STUDY


def _with(**changes):
    """GOOD with changes at paths written a__b__0 (list indices as digits)."""
    return config_with(GOOD, **changes)


def _invoke(args: list[str]):
    return CliRunner().invoke(main, args)


def assert_one_line_error(result, exit_code: int, *words: str) -> None:
    output = result.output
    assert result.exit_code == exit_code, f"exit {result.exit_code}, expected {exit_code}:\n{output}"
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in output, output
    assert "--verbose for the full traceback" not in output, f"unexpected exception, not a handled error:\n{output}"
    errors = [line for line in output.splitlines() if line.lower().startswith("error:")]
    assert errors, output
    assert any(all(word in line for word in words) for line in errors), (words, errors)


def assert_nothing_written(work: Path) -> None:
    assert not (work / "mlflow.db").exists(), "a store was created"
    assert not (work / "mlruns").exists(), "artifacts were written"


def _write(work: Path, config: dict, name: str = "study.yaml") -> str:
    (work / name).write_text(yaml.safe_dump(config))
    return name


# =============================================================================
# configs: kinds of mistakes tests/test_config.py does not cover (exit 2)
# =============================================================================

CONFIGS = {
    "unknown task plugin": (_with(evaluation__tasks=["nope"]), "evaluation.tasks[0].name", "unknown task plugin 'nope'"),
    "executor param typo": (
        _with(executor={"name": "multiprocess", "params": {"wokers": 2}}), "executor.params.wokers", "Extra inputs"
    ),
    "executor workers 0": (
        _with(executor={"name": "multiprocess", "params": {"workers": 0}}), "executor.params.workers", "greater than or equal to 1"
    ),
    "executor no devices": (
        _with(executor={"name": "multiprocess", "params": {"devices": []}}), "executor.params.devices", "at least one device"
    ),
    "ray fractional gpus above 1": (
        _with(executor={"name": "ray", "params": {"num_gpus_per_task": 1.5}}), "executor.params.num_gpus_per_task", "whole number"
    ),
    "ray zero cpus": (
        _with(executor={"name": "ray", "params": {"num_cpus_per_task": 0}}), "executor.params.num_cpus_per_task", "greater than 0"
    ),
    "slurm unknown backend": (
        _with(executor={"name": "slurm", "params": {"cluster": "pbs"}}), "executor.params.cluster", "'slurm', 'local' or 'debug'"
    ),
    "slurm gpus not a number": (
        _with(executor={"name": "slurm", "params": {"gpus_per_task": "two"}}), "executor.params.gpus_per_task", "valid integer"
    ),
    "slurm extra options not a mapping": (
        _with(executor={"name": "slurm", "params": {"slurm_additional_parameters": ["qos=high"]}}),
        "executor.params.slurm_additional_parameters",
        "valid dictionary",
    ),
    "executor not a mapping": (_with(executor=5), "executor", "valid dictionary"),
    "no datasets": (_with(datasets=[]), "datasets", "list at least one dataset"),
    "dataset param typo": (
        _with(datasets=[{"name": "dsprites_procedural", "params": {"colour": 1}}]), "datasets[0].params.colour", "Extra inputs"
    ),
    "negative seed": (_with(seeds=[-1]), "seeds", ">= 0"),
    "seeds as words": (_with(seeds="three"), "seeds", "valid list"),
    "batch size 0": (_with(training__batch_size=0), "training.batch_size", "greater than or equal to 1"),
    "negative learning rate": (_with(training__learning_rate=-1), "training.learning_rate", "greater than 0"),
    "log_every 0": (_with(training__log_every=0), "training.log_every", "greater than or equal to 1"),
    "fractional steps": (_with(training__steps=2.5), "training.steps", "fractional part"),
    "channels_last maybe": (_with(training__channels_last="maybe"), "training.channels_last", "valid boolean"),
    "device cuda:x": (_with(training__device="cuda:x"), "training.device", "unknown device 'cuda:x'"),
    "no representations": (_with(evaluation__representations=[]), "evaluation.representations", "at least 1 item"),
    "repeated representation": (
        _with(evaluation__representations=["mean", "mean"]), "evaluation.representations", "must not repeat"
    ),
    "negative evaluation seed": (_with(evaluation__seed=-1), "evaluation.seed", "greater than or equal to 0"),
    "evaluation batch 0": (_with(evaluation__batch_size=0), "evaluation.batch_size", "greater than or equal to 1"),
    "metrics as a mapping": (_with(evaluation__metrics={"mig": {}}), "evaluation.metrics", "valid list"),
    "metric param out of range": (
        _with(evaluation__metrics=[{"name": "mig", "params": {"num_train": -5}}]),
        "evaluation.metrics[0].params.num_train",
        "greater than or equal to 1",
    ),
    "index tag with spaces": (_with(tracking={"index_tag": "bad tag!"}), "tracking.index_tag", "only letters, digits"),
    "tracking key typo": (_with(tracking={"url": "sqlite:///x.db"}), "tracking.url", "Extra inputs"),
    "top-level key typo": ({**GOOD, "modles": []}, "modles", "Extra inputs"),
    "empty name": (_with(name=""), "name", "at least 1 character"),
    "models as a string": (_with(models="beta_vae"), "models", "valid list"),
    "model entry a number": (_with(models=[5]), "models[0]", "valid dictionary"),
    "sweep as a list": (_with(models=[{"name": "beta_vae", "sweep": [1, 4]}]), "models[0].sweep", "valid dictionary"),
    "sweep values as a string": (
        _with(models=[{"name": "beta_vae", "sweep": {"beta": "1,4"}}]), "models[0].sweep.beta", "valid list"
    ),
}


@pytest.mark.parametrize("case", list(CONFIGS))
def test_bad_config(workdir, case):
    config, path, words = CONFIGS[case]
    result = _invoke(["run", _write(workdir, config), "-q"])
    assert_one_line_error(result, 2, f"error: {path}:", words)
    assert "nothing was run" in result.output
    assert_nothing_written(workdir)


# =============================================================================
# config files (exit 2)
# =============================================================================


def _unsafe_yaml(work: Path) -> bytes:
    return f'!!python/object/apply:os.system ["touch {work / "pwned"}"]\n'.encode()


CONFIG_FILES = {
    "empty file": ("study.yaml", lambda work: b"", "the top level must be a mapping"),
    "not UTF-8": ("study.yaml", lambda work: b"name: \xff\xfe\n", "not UTF-8 text"),
    "python tag in YAML": ("study.yaml", _unsafe_yaml, "cannot parse YAML: could not determine a constructor"),
    "JSON trailing comma": ("study.json", lambda work: b'{"name": "x",}', "cannot parse JSON"),
    "TOML syntax": ("study.toml", lambda work: b"name = \n", "cannot parse TOML"),
    "YAML tab indentation": ("study.yaml", lambda work: b"name: x\ntraining:\n\tsteps: 2\n", "cannot parse YAML"),
}


@pytest.mark.parametrize("case", list(CONFIG_FILES))
def test_bad_config_file(workdir, case):
    name, content, words = CONFIG_FILES[case]
    (workdir / name).write_bytes(content(workdir))
    result = _invoke(["run", name, "-q"])
    assert_one_line_error(result, 2, name, words)
    assert not (workdir / "pwned").exists(), "a YAML tag was executed"
    assert_nothing_written(workdir)


# =============================================================================
# dataset files: the dataset's `path` points at a bad file (exit 2, checked before any write)
# =============================================================================


def _dsprites_npz(path: Path, imgs=((737_280, 64, 64), np.uint8), meta=True, unsafe=False) -> Path:
    members = {"imgs.npy": header_only(*imgs)}
    if meta:
        members["metadata.npy"] = npy_bytes(np.array([os.system], dtype=object) if unsafe else metadata())
    return write_npz(path, members)


def _truncated(path: Path) -> Path:
    whole = _dsprites_npz(path).read_bytes()
    path.write_bytes(whole[: len(whole) // 2])
    return path


def _shapes_tiny(path: Path) -> Path:
    images, labels, _ = shapes_grid()
    return write_shapes_h5(path, images, labels)


DATASET_FILES = {
    "dsprites missing": ("dsprites", lambda d: d / "absent.npz", "dSprites file not found at"),
    "dsprites garbage": ("dsprites", lambda d: _bytes(d / "garbage.npz", b"garbage" * 20), "is not an npz archive"),
    "dsprites truncated": ("dsprites", lambda d: _truncated(d / "truncated.npz"), "is not an npz archive"),
    "dsprites wrong shape": (
        "dsprites", lambda d: _dsprites_npz(d / "shape.npz", imgs=((10, 64, 64), np.uint8)), "`imgs` is uint8 (10, 64, 64)"
    ),
    "dsprites wrong dtype": (
        "dsprites", lambda d: _dsprites_npz(d / "dtype.npz", imgs=((737_280, 64, 64), np.float32)), "`imgs` is float32"
    ),
    "dsprites no metadata": ("dsprites", lambda d: _dsprites_npz(d / "nometa.npz", meta=False), "lacks the key(s) metadata"),
    "dsprites unsafe pickle": (
        "dsprites", lambda d: _dsprites_npz(d / "unsafe.npz", unsafe=True), "cannot read `metadata` safely"
    ),
    "color_dsprites garbage": ("color_dsprites", lambda d: _bytes(d / "g.npz", b"PK\x03\x04oops"), "is not an npz archive"),
    "shapes3d not HDF5": ("shapes3d", lambda d: _bytes(d / "3dshapes.h5", b"\x89HDF junk" * 50), "not a readable HDF5 file"),
    "shapes3d wrong size": ("shapes3d", lambda d: _shapes_tiny(d / "tiny.h5"), "`images` is uint8 (96, 64, 64, 3)"),
    "mpi3d wrong key": ("mpi3d_toy", lambda d: _savez(d / "mpi.npz", imgs=mpi3d_grid()), "has no `images` array"),
    "mpi3d not a zip": ("mpi3d_real", lambda d: _bytes(d / "mpi.npz", b"PK nope"), "is not an npz (zip) archive"),
    "mpi3d wrong count": ("mpi3d_realistic", lambda d: write_mpi3d(d / "m.npz", mpi3d_grid()[:5]), "`images` is uint8 (5, 64, 64, 3)"),
    "cars3d empty folder": ("cars3d", lambda d: _folder(d / "cars"), "Cars3D .mat files not found in"),
    "smallnorb empty folder": ("smallnorb", lambda d: _folder(d / "norb"), "smallNORB file(s) not found in"),
}


def _bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _savez(path: Path, **arrays) -> Path:
    np.savez(path, **arrays)
    return path


def _folder(path: Path) -> Path:
    path.mkdir()
    return path


@pytest.mark.parametrize("case", list(DATASET_FILES))
def test_bad_dataset_file(workdir, tmp_path, case):
    dataset, make, words = DATASET_FILES[case]
    files = tmp_path / "files"
    files.mkdir()
    path = make(files)
    config = _with(datasets=[{"name": dataset, "params": {"path": str(path)}}])
    result = _invoke(["run", _write(workdir, config), "-q"])
    assert_one_line_error(result, 2, str(path), words)
    assert_nothing_written(workdir)


def test_unreadable_procedural_cache_fails_the_run_with_its_reason(workdir, tmp_path):
    """dsprites_procedural has no up-front check: its cache is read when training starts.

    Either outcome is clean: bad input before any write (exit 2), or the run
    recorded FAILED with the reason and the study exits 1.
    """
    junk = _bytes(tmp_path / "junk.npy", b"junk" * 64)
    config = _with(datasets=[{"name": "dsprites_procedural", "params": {"path": str(junk)}}])
    result = _invoke(["run", _write(workdir, config), "-q"])
    if result.exit_code == 2:
        assert_one_line_error(result, 2, str(junk))
        assert_nothing_written(workdir)
        return
    assert_one_line_error(result, 1, "failed", "cannot read the dsprites_procedural cache", str(junk))
    _assert_every_run_failed_with_reason(f"sqlite:///{workdir / 'mlflow.db'}", "bad_inputs", "dsprites_procedural cache")


def _assert_every_run_failed_with_reason(uri: str, experiment: str, reason: str) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], "")
    kinds = {r.data.tags.get("disentbench.kind") for r in runs}
    assert kinds == {"study", "run"}, kinds
    for run in runs:
        assert run.info.status == "FAILED", (run.data.tags.get("disentbench.kind"), run.info.status)
        if run.data.tags["disentbench.kind"] == "run":
            assert reason in run.data.tags["error"], run.data.tags["error"]


# =============================================================================
# settings checked when a study starts (before anything is written)
# =============================================================================


def test_checkpoint_dir_under_a_file(workdir):
    (workdir / "afile").write_text("x")
    config = _with(training={**GOOD["training"], "checkpoint_dir": str(workdir / "afile" / "checkpoints")})
    result = _invoke(["run", _write(workdir, config), "-q"])
    assert_one_line_error(result, 2, "training.checkpoint_dir", "afile", "cannot create it")
    assert_nothing_written(workdir)


def test_slurm_backend_without_slurm(workdir):
    pytest.importorskip("submitit", reason="needs the slurm extra")
    if any(Path(p, "srun").exists() for p in os.environ.get("PATH", "").split(os.pathsep)):
        pytest.skip("this machine has Slurm")
    config = _with(executor={"name": "slurm", "params": {"cluster": "slurm", "folder": str(workdir.parent / "sub")}})
    # `--executor slurm` naming the config's executor keeps its params (cluster: slurm)
    for extra in ([], ["--executor", "slurm"]):
        result = _invoke(["run", _write(workdir, config), "-q", *extra])
        assert_one_line_error(result, 2, "slurm executor", "srun", "cluster: local")
        assert_nothing_written(workdir)


# =============================================================================
# command-line arguments
# =============================================================================

CLI_ARGS = {
    "unknown command": (["frobnicate"], 2, ["No such command 'frobnicate'"]),
    "unknown option": (["run", "{good}", "--fast"], 2, ["No such option '--fast'"]),
    "option without its value": (["run", "{good}", "--executor"], 2, ["'--executor' requires an argument"]),
    "missing config argument": (["run"], 2, ["Missing argument 'CONFIG'"]),
    "config is a folder": (["run", "."], 2, ["'.' is a directory"]),
    "missing config file": (["run", "absent.yaml"], 2, ["absent.yaml: no such config file"]),
    "status of a missing config": (["status", "absent.yaml"], 2, ["absent.yaml: no such config file"]),
    "unknown executor flag": (["run", "{good}", "--executor", "nope"], 2, ["--executor 'nope'", "known: local"]),
    "bad device flag": (["run", "{good}", "--device", "gpu0"], 2, ["--device 'gpu0' is not a device"]),
    "plugins show unknown name": (["plugins", "show", "model", "nope"], 2, ["unknown model plugin 'nope'", "beta_vae"]),
    "plugins show unknown kind": (["plugins", "show", "widget", "x"], 2, ["'widget' is not one of"]),
    "plugins unknown kind": (["plugins", "--kind", "gadget"], 2, ["'gadget' is not one of"]),
}


@pytest.mark.parametrize("case", list(CLI_ARGS))
def test_bad_cli_arguments(workdir, case):
    args, code, words = CLI_ARGS[case]
    good = _write(workdir, GOOD, "good.yaml")
    result = _invoke([a.replace("{good}", good) for a in args])
    assert_one_line_error(result, code, *words)
    assert_nothing_written(workdir)


def test_cuda_device_without_cuda(workdir):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    result = _invoke(["run", _write(workdir, GOOD), "-q", "--device", "cuda:0"])
    assert_one_line_error(result, 2, "device 'cuda:0'", "CUDA is not available")
    assert_nothing_written(workdir)


# =============================================================================
# tracking URIs (run and status)
# =============================================================================


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # closed again when this returns: nothing listens there


def _driver_missing(*modules: str) -> bool:
    import importlib.util

    return all(importlib.util.find_spec(m) is None for m in modules)


TRACKING_URIS = {
    "unknown scheme": (lambda work: "foo://bar", ["'foo://bar'", "unsupported URI"]),
    "unreachable server": (lambda work: f"http://127.0.0.1:{_closed_port()}", ["cannot use tracking URI 'http://127.0.0.1:"]),
    "port not a number": (lambda work: "http://127.0.0.1:notaport", ["'http://127.0.0.1:notaport'", "Invalid url"]),
    "sqlite path under a file": (
        lambda work: f"sqlite:///{_bytes(work.parent / 'afile', b'x')}/mlflow.db", ["is a file, not a folder"]
    ),
    "sqlite path is a folder": (lambda work: f"sqlite:///{work.parent}", ["is a folder, not a database file"]),
    "sqlite file not a database": (
        lambda work: f"sqlite:///{_bytes(work.parent / 'notes.db', b'these are notes')}", ["is not an SQLite database"]
    ),
    "in-memory sqlite": (lambda work: "sqlite://", ["in-memory SQLite store"]),
    "postgresql without a driver": (lambda work: "postgresql://user@127.0.0.1:1/db", ["'postgresql://user@127.0.0.1:1/db'", "No module named"]),
}


@pytest.mark.parametrize("command", ["run", "status"])
@pytest.mark.parametrize("case", list(TRACKING_URIS))
def test_bad_tracking_uri(workdir, monkeypatch, case, command):
    if case == "postgresql without a driver" and not _driver_missing("psycopg2", "psycopg"):
        pytest.skip("a PostgreSQL driver is installed")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # fail in seconds, not after minutes of backoff
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    make, words = TRACKING_URIS[case]
    uri = make(workdir)
    before = sorted(p.name for p in workdir.parent.iterdir())
    args = ["run", _write(workdir, GOOD), "-q"] if command == "run" else ["status", _write(workdir, GOOD)]
    result = _invoke(args + ["--tracking-uri", uri])
    assert_one_line_error(result, 2, *words)
    assert_nothing_written(workdir)
    assert sorted(p.name for p in workdir.parent.iterdir()) == before  # no store created beside either


# =============================================================================
# plugin packages (fresh interpreters: entry points)
# =============================================================================

BAD_PLUGINS = {
    "disentbench-test-hook-raises": (
        "hook_raises",
        """\
        from disentbench import hookimpl

        @hookimpl
        def register_models(register):
            raise RuntimeError("registry exploded")
        """,
        "register_models: RuntimeError: registry exploded",
    ),
    "disentbench-test-bad-config": (
        "bad_config",
        """\
        from disentbench import hookimpl

        @hookimpl
        def register_models(register):
            register("plain_vae", config=dict, factory=dict, description="config is not pydantic")
        """,
        "config must be a pydantic BaseModel subclass",
    ),
    "disentbench-test-misspelled-hook": (
        "misspelled",
        """\
        from disentbench import hookimpl

        @hookimpl
        def register_model(register):
            register("misspelled_vae", config=None, factory=None)
        """,
        "register_model",
    ),
    "disentbench-test-factory-raises": (
        "factory_raises",
        """\
        from disentbench import hookimpl
        from disentbench.core.contracts import ModelConfig

        class ExplodingConfig(ModelConfig):
            pass

        def build(config, observation_shape):
            raise RuntimeError("exploding_vae cannot be built: boom")

        @hookimpl
        def register_models(register):
            register("exploding_vae", config=ExplodingConfig, factory=build, description="always fails")
        """,
        None,
    ),
}


@pytest.fixture(scope="module")
def bad_plugin_site(tmp_path_factory):
    pytest.importorskip("setuptools", reason="building the plugin packages needs setuptools (no build isolation)")
    from helpers import start_pip_install, write_project

    root = tmp_path_factory.mktemp("bad_plugins")
    projects = [
        write_project(root / "src" / module, dist, f"disentbench_test_{module}", module, source)
        for dist, (module, source, _) in BAD_PLUGINS.items()
    ]
    install = start_pip_install(root / "site", *projects)
    output, _ = install.communicate(timeout=300)
    assert install.returncode == 0, f"pip install failed:\n{output}"
    return root / "site"


def test_bad_plugin_packages(tmp_path, bad_plugin_site):
    from helpers import cli_env

    env = cli_env(bad_plugin_site)
    env.pop("MLFLOW_TRACKING_URI", None)
    env["OMP_NUM_THREADS"] = "1"
    env["DISENTBENCH_DATA"] = os.environ.get("DISENTBENCH_DATA", str(Path.home() / ".cache" / "disentbench"))
    broken, exploding = tmp_path / "broken", tmp_path / "exploding"
    for work in (broken, exploding):
        work.mkdir()
    models = [{"name": name} for name in ("hook_raises_vae", "plain_vae", "misspelled_vae")]
    _write(broken, _with(models=models))
    _write(exploding, _with(models=[{"name": "exploding_vae"}], training={**GOOD["training"], "checkpoint_dir": "ck"}))
    processes = {
        work: subprocess.Popen(CLI + ["run", "study.yaml", "-q"], cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for work in (broken, exploding)
    }
    results = {work: (p.wait(timeout=300), *p.communicate()) for work, p in processes.items()}

    # models from three broken packages: each package named on a `problem:` line, each model an unknown name
    code, out, err = results[broken]
    assert code == 2, err
    assert "Traceback" not in out + err
    problems = [line for line in err.splitlines() if line.startswith("problem:")]
    for dist, (_, _, words) in BAD_PLUGINS.items():
        if words:
            assert any(dist in line and words in line for line in problems), (dist, problems)
    for index, model in enumerate(models):
        assert f"error: models[{index}].name: unknown model plugin '{model['name']}'" in err, err
    assert_nothing_written(broken)

    # a model whose factory raises: a failure (exit 1), the run recorded FAILED with the plugin's message
    code, out, err = results[exploding]
    assert code == 1, err
    assert "Traceback" not in out + err
    assert "exploding_vae cannot be built: boom" in [l for l in err.splitlines() if l.startswith("error:")][0], err
    _assert_every_run_failed_with_reason(f"sqlite:///{exploding / 'mlflow.db'}", "bad_inputs", "exploding_vae cannot be built")


# =============================================================================
# security: artifact names, config parsing, checkpoints
# =============================================================================


@pytest.mark.parametrize(
    "artifact_path,why",
    [
        ("../outside", "'..'"),
        ("images/../../outside", "'..'"),
        ("..", "'..'"),
        ("/etc", "absolute"),
        ("C:/Windows", "absolute"),
        ("~/x", "absolute"),
        ("images\\..\\..\\x", "backslash"),
        ("images\x00", "control character"),
        ("images\n/x", "control character"),
    ],
)
def test_artifact_path_cannot_escape(artifact_path, why):
    with pytest.raises(ValueError, match=why) as error:
        tracking.safe_artifact_path(artifact_path)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    "artifact_path,expected",
    [(None, None), ("", None), ("images", "images"), ("images//./gifs/", "images/gifs"), ("a..b/c", "a..b/c")],
)
def test_artifact_path_normalised(artifact_path, expected):
    assert tracking.safe_artifact_path(artifact_path) == expected


def test_tracker_refuses_escaping_artifact_names(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the SQLite store's artifacts go to ./mlruns
    tracker = tracking.Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "artifacts")
    run_id = tracker.client.create_run(tracker.experiment_id).info.run_id
    source = _bytes(tmp_path / "report.txt", b"hello")
    root = Path(tracker.client.get_run(run_id).info.artifact_uri.removeprefix("file://"))
    for bad in ("../../escaped", "/tmp/escaped", "images/../../escaped"):
        with pytest.raises(ValueError, match="artifact path"):
            tracker.log_artifact(run_id, source, bad)
    tracker.log_artifact(run_id, source, "reports/./daily")
    assert (root / "reports" / "daily" / "report.txt").read_bytes() == b"hello"
    everything = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("report.txt")}
    assert everything == {"report.txt", (root / "reports" / "daily" / "report.txt").relative_to(tmp_path).as_posix()}
    assert not list(tmp_path.parent.rglob("escaped"))


class _Payload:
    """Unpickling this creates a file: a checkpoint must never be able to run code."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_checkpoint_with_code_is_refused_not_run(tmp_path):
    from helpers import _trainer

    marker = tmp_path / "code-ran"
    torch.save({"step": 3, "model": _Payload(marker), "optimizers": []}, tmp_path / "ckpt.pt")
    with pytest.warns(UserWarning, match="unreadable"):
        result = _trainer(tmp_path, steps=4).train()
    assert not marker.exists(), "loading a checkpoint ran code from it"
    assert result.resumed_from == 0 and (tmp_path / "ckpt.corrupt").exists()


def test_first_line_is_what_every_one_line_message_shows():
    from disentbench.core.messages import first_line

    sqlalchemy_like = RuntimeError("\n(sqlite3.OperationalError) table spans already exists\n[SQL: CREATE TABLE spans (\n")
    assert first_line(sqlalchemy_like) == "(sqlite3.OperationalError) table spans already exists"
    assert first_line(KeyError()) == "KeyError"  # nothing to show but the type
    assert first_line("") == ""
    long = first_line("x" * 500, limit=50)
    assert len(long) == 50 and long.endswith("...")


# =============================================================================
# hostile inputs (issue 24): limits before expansion, names, stores, caches, files
# =============================================================================


def assert_nothing_created(work: Path) -> None:
    """No store, no artifacts and no checkpoint folder beside the config."""
    assert_nothing_written(work)
    assert not (work / ".disentbench").exists(), "a checkpoint folder was created"


LIMITS = {
    "a billion seeds": (_with(seeds=1_000_000_000), ["<config>", "1,000,000,000 runs", "--max-runs"]),
    "a million sweep values": (
        _with(models=[{"name": "beta_vae", "sweep": {"beta": [float(i + 1) for i in range(1_000_000)]}}]),
        ["1,000,000 runs", "1,000,000 model cell(s)", "max_runs"],
    ),
    "grid over the config's own limit": (_with(seeds=3, max_runs=2), ["3 runs", "limit of 2"]),
    "batch larger than the dataset": (
        _with(training__batch_size=1_000_000_000_000), ["training.batch_size", "737,280 observations", "dsprites_procedural"]
    ),
    "study name '..'": (_with(name=".."), ["name", "not a usable folder name"]),
    "study name too long for MLflow": (_with(name="n" * 300), ["name", "at most 200 characters"]),
    "experiment name too long for MLflow": (
        _with(tracking={"experiment": "e" * 501}), ["tracking.experiment", "501 characters", "at most 500"]
    ),
    "experiment name '..'": (_with(tracking={"experiment": "a/../b"}), ["tracking.experiment", "'..' path component"]),
    "experiment name empty": (_with(tracking={"experiment": " "}), ["tracking.experiment", "empty"]),
}


@pytest.mark.parametrize("dry_run", [True, False], ids=["dry-run", "run"])
@pytest.mark.parametrize("case", list(LIMITS))
def test_limits_and_names_refused_before_anything(workdir, case, dry_run):
    if case == "a million sweep values" and not dry_run:
        pytest.skip("the same check as the dry run; writing a million values twice is slow")
    config, words = LIMITS[case]
    result = _invoke(["run", _write(workdir, config), "-q", *(["--dry-run"] if dry_run else [])])
    assert_one_line_error(result, 2, *words)
    assert_nothing_created(workdir)


def test_max_runs_option_raises_the_limit(workdir):
    name = _write(workdir, _with(seeds=3, max_runs=2))
    assert_one_line_error(_invoke(["run", name, "--dry-run", "--max-runs", "2"]), 2, "3 runs", "limit of 2")
    result = _invoke(["run", name, "--dry-run", "--max-runs", "3"])
    assert result.exit_code == 0, result.output
    assert "3 runs" in result.output


def test_seed_count_capped_even_with_a_raised_limit(workdir):
    result = _invoke(["run", _write(workdir, _with(seeds=10**9, max_runs=10**10)), "--dry-run"])
    assert_one_line_error(result, 2, "seeds", "10,000,000 seeds")


@pytest.mark.parametrize("text, words", [
    ("name: a\nseeds: 1\nname: b\n", ["line 3", "key 'name' is given twice (first on line 1)"]),
    ("name: a\ntraining:\n  steps: 2\n  steps: 3\n", ["line 4", "key 'steps' is given twice (first on line 3)"]),
])
def test_duplicate_yaml_keys_rejected(workdir, text, words):
    (workdir / "dup.yaml").write_text(text)
    assert_one_line_error(_invoke(["run", "dup.yaml", "--dry-run"]), 2, "dup.yaml", *words)
    assert_nothing_created(workdir)


def test_fifo_and_symlink_loop_as_config(workdir):
    os.mkfifo(workdir / "fifo.yaml")
    os.symlink(workdir / "loop.yaml", workdir / "loop.yaml")
    os.symlink(workdir / "gone.yaml", workdir / "dangling.yaml")
    assert_one_line_error(_invoke(["run", "fifo.yaml", "--dry-run"]), 2, "fifo.yaml", "FIFO", "not a regular file")
    assert_one_line_error(_invoke(["run", "loop.yaml", "--dry-run"]), 2, "loop.yaml", "symbolic link loop")
    assert_one_line_error(_invoke(["run", "dangling.yaml", "--dry-run"]), 2, "dangling.yaml", "does not exist")
    assert_nothing_created(workdir)


@pytest.mark.parametrize("uri, words", [
    ("garbage", ["'garbage'", "unsupported URI (no scheme)"]),
    ("garbage://x", ["'garbage://x'", "unknown scheme 'garbage:'"]),
    ("closed", ["unreachable", "connection refused", "tried for up to 5 s"]),
])
def test_tracking_uri_refused_before_any_folder(workdir, monkeypatch, uri, words):
    # MLflow's own retry settings left at their defaults: the connect probe alone must answer
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", raising=False)
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_TIMEOUT", raising=False)
    if uri == "closed":
        uri = f"http://127.0.0.1:{_closed_port()}"
    result = _invoke(["run", _write(workdir, GOOD), "-q", "--tracking-uri", uri])
    assert_one_line_error(result, 2, *words)
    assert_nothing_created(workdir)
    assert not (workdir / "garbage").exists()


def test_connect_probe_times_out(monkeypatch):
    """A server that never answers (a blackholed address): the probe gives up after its timeout, saying so."""
    import socket as socket_module

    def hang(address, timeout=None):
        assert timeout is not None and timeout <= 15, timeout  # the probe always bounds its wait
        raise TimeoutError("timed out")

    monkeypatch.setattr(socket_module, "create_connection", hang)
    with pytest.raises(tracking.TrackingError, match=r"unreachable \(timed out, tried for up to 5 s\)"):
        tracking.check_tracking_uri("http://10.255.255.1:5000")


def test_mlflow_refusing_an_experiment_name_is_reported(workdir):
    """Whatever MLflow refuses at creation comes back as its own message, never as an AttributeError."""
    tracker = tracking.Tracker(f"sqlite:///{workdir / 'mlflow.db'}", "x" * 600)  # past the config's own check
    with pytest.raises(tracking.TrackingError, match="MLflow cannot create experiment .*exceeds the maximum length"):
        tracker.experiment_id


def _procedural_cache(data_root: Path) -> Path:
    from disentbench.plugins.datasets.dsprites import PROCEDURAL_FILENAME

    folder = data_root / "dsprites_procedural"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / PROCEDURAL_FILENAME


@pytest.mark.parametrize("damage, words", [
    ("garbage", ["not a readable .npy"]),
    ("wrong shape", ["uint8 (10, 1, 64, 64)", "expected uint8 (737280, 1, 64, 64)"]),
    ("truncated", ["truncated or padded"]),
])
def test_corrupt_procedural_cache_is_bad_input(workdir, damage, words):
    cache = _procedural_cache(Path(os.environ["DISENTBENCH_DATA"]))
    if damage == "garbage":
        cache.write_bytes(b"not an npy file at all")
    elif damage == "wrong shape":
        np.save(cache, np.zeros((10, 1, 64, 64), dtype=np.uint8))
    else:
        header = np.lib.format.header_data_from_array_1_0(np.zeros((1, 1, 64, 64), dtype=np.uint8))
        header["shape"] = (737280, 1, 64, 64)
        with open(cache, "wb") as handle:
            np.lib.format.write_array_header_1_0(handle, header)
            handle.write(b"\0" * 100)
    result = _invoke(["run", _write(workdir, GOOD), "-q"])
    assert_one_line_error(result, 2, "dsprites_procedural cache", str(cache), "delete it to re-render", *words)
    assert_nothing_created(workdir)


def test_metric_whose_constructor_raises_is_named_with_its_package():
    from disentbench import Metric, PluginConfig, hookimpl
    from disentbench.core.config.load import load_study_config
    from disentbench.core.registry import build_registry
    from disentbench.core.study.context import build_scorers

    class Broken(Metric):
        name = "broken_metric"
        description = "raises when built"
        config_class = PluginConfig

        def __init__(self, config):
            raise ZeroDivisionError("division by zero")

    class Plugin:
        __name__ = "broken-metric-test-plugin"

        @staticmethod
        @hookimpl
        def register_metrics(register):
            register(Broken)

    registry = build_registry(load_entry_points=False, extra_plugins=[Plugin])
    config = load_study_config(_with(evaluation__metrics=["broken_metric"]), registry)
    with pytest.raises(RuntimeError) as caught:
        build_scorers(config, registry)
    message = str(caught.value)
    assert "metric plugin 'broken_metric' (package " in message and "ZeroDivisionError: division by zero" in message
    assert "\n" not in message
