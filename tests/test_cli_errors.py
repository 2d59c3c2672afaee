"""Bad input at the command line: one ``error:`` line naming the problem and the fix, exit 2, nothing written.

Companion to tests/test_bad_inputs.py, for what goes wrong at the command line: devices
the machine lacks (mps, cuda, cuda:N past the device count), an unusable
$DISENTBENCH_DATA, read-only commands on a folder without the study's store,
an uncreatable SQLite store, unknown theorem metrics, click's usage errors,
the corrupt-checkpoint warning, Slurm without srun, Ctrl-C, and three small
ones ($DISENTBENCH_LOAD_PLUGINS, compare's sort arrow, the run table headers).
"""

from __future__ import annotations

import time
import types
import warnings
from pathlib import Path

import click
import pytest
import torch
import yaml
from click.testing import CliRunner
from helpers import TINY_STUDY

from disentbench.core.cli import _common as cli_common
from disentbench.core.cli import run as run_cli
from disentbench.core.cli.main import main

GOOD = {**TINY_STUDY, "name": "tiny"}  # the same tiny study, under its own name


def _config(work: Path, config: dict | None = None) -> str:
    (work / "study.yaml").write_text(yaml.safe_dump(config or GOOD))
    return "study.yaml"


def _invoke(args: list[str]):
    return CliRunner().invoke(main, args)


def one_line(result, exit_code: int, *words: str) -> str:
    """Exit code, exactly one non-empty stderr line starting ``error:`` holding every word; returns it."""
    assert result.exit_code == exit_code, f"exit {result.exit_code}, expected {exit_code}:\n{result.output}"
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: "), lines
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


def nothing_written(work: Path) -> None:
    assert sorted(p.name for p in work.iterdir()) == ["study.yaml"], sorted(p.name for p in work.iterdir())


# -- 1, 2: devices ----------------------------------------------------------------------------------------------


def test_mps_without_mps_is_bad_input_and_writes_nothing(workdir):
    if torch.backends.mps.is_available():
        pytest.skip("this machine has MPS")
    result = _invoke(["run", _config(workdir), "-q", "--device", "mps"])
    one_line(result, 2, "device 'mps'", "not available", "--device cpu")
    nothing_written(workdir)


def test_mps_in_the_config_is_checked_up_front_too(workdir):
    if torch.backends.mps.is_available():
        pytest.skip("this machine has MPS")
    result = _invoke(["run", _config(workdir, {**GOOD, "training": {**GOOD["training"], "device": "mps"}}), "-q"])
    one_line(result, 2, "training.device", "'mps'")
    nothing_written(workdir)


@pytest.mark.parametrize("device", ["cuda", "cuda:3"])
def test_cuda_without_cuda_exits_2(workdir, device):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    result = _invoke(["run", _config(workdir), "-q", "--device", device])
    one_line(result, 2, f"device {device!r}", "CUDA is not available")
    nothing_written(workdir)


def test_cuda_index_past_the_device_count_is_bad_input(workdir, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    result = _invoke(["run", _config(workdir), "-q", "--device", "cuda:3"])
    one_line(result, 2, "device 'cuda:3'", "1 CUDA device", "cuda:0")
    nothing_written(workdir)


# -- 3: $DISENTBENCH_DATA ---------------------------------------------------------------------------------------


def _bad_data_roots(tmp_path: Path) -> list[tuple[Path, str]]:
    (tmp_path / "afile").write_text("not a folder")
    roots = [(tmp_path / "afile", "is a file, not a folder")]
    if Path("/proc/self").exists():  # virtual: nothing can be created there, not even by root
        roots.append((Path("/proc/disentbench-nope"), "not writable"))
    return roots


@pytest.mark.parametrize("command", [["data", "list"], ["data", "info", "dsprites_procedural"], ["run", "{config}", "-q"]])
def test_unusable_data_root_is_bad_input(workdir, tmp_path, monkeypatch, command):
    for root, why in _bad_data_roots(tmp_path):
        monkeypatch.setenv("DISENTBENCH_DATA", str(root))
        result = _invoke([a.replace("{config}", _config(workdir)) for a in command])
        one_line(result, 2, "$DISENTBENCH_DATA", str(root), why, "set $DISENTBENCH_DATA to a writable folder")
        nothing_written(workdir)
        assert not root.is_dir()


# -- 4: read-only commands where the study's store is not ------------------------------------------------------


def test_status_without_a_store_creates_nothing_and_says_so(workdir):
    result = _invoke(["status", _config(workdir)])
    assert result.exit_code == 0, result.output
    assert "1 runs: 1 pending" in result.stdout
    notes = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(notes) == 1 and "no experiment named 'tiny'" in notes[0] and "--tracking-uri" in notes[0], notes
    nothing_written(workdir)  # no mlflow.db, no .mlflow.db.lock


def test_status_of_an_existing_experiment_without_runs_is_all_pending(workdir):
    from disentbench.core.tracking.tracker import Tracker

    Tracker(None, "tiny").experiment_id  # the experiment exists, no run yet
    result = _invoke(["status", _config(workdir)])
    assert result.exit_code == 0, result.output
    assert "1 runs: 1 pending" in result.stdout and not result.stderr.strip(), result.output


@pytest.mark.parametrize("args", [["compare", "{config}"], ["compare", "tiny"], ["analyze", "tiny", "--no-log"],
                                  ["analyze", "{config}", "--no-log"], ["ui", "tiny"]])
def test_read_only_commands_without_a_store_create_nothing(workdir, args):
    result = _invoke([a.replace("{config}", _config(workdir)) for a in args])
    one_line(result, 2, "no experiment named 'tiny'", "mlflow.db", "--tracking-uri")
    nothing_written(workdir)


# -- 5: an SQLite store that cannot be created ------------------------------------------------------------------


@pytest.mark.parametrize("command", ["run", "status"])
def test_uncreatable_sqlite_store_fails_at_once(workdir, command):
    if not Path("/proc/self").exists():
        pytest.skip("needs /proc")
    args = ["run", _config(workdir), "-q"] if command == "run" else ["status", _config(workdir)]
    start = time.monotonic()
    result = _invoke(args + ["--tracking-uri", "sqlite:////proc/x.db"])
    assert time.monotonic() - start < 60  # not MLflow's minutes of retries
    one_line(result, 2, "sqlite:////proc/x.db", "cannot create /proc/x.db", "not writable")
    nothing_written(workdir)


# -- 6: theorem metrics -------------------------------------------------------------------------------------------


def test_theorem_unknown_metric_is_bad_input(workdir):
    result = _invoke(["theorem", "--metrics", "mig,nosuch", "--no-log", "--samples", "500", "--out", "out"])
    one_line(result, 2, "--metrics", "'nosuch'", "known:", "mig", "dci")
    assert not (workdir / "out").exists() and not (workdir / "mlflow.db").exists()


# -- 7: click usage errors ------------------------------------------------------------------------------------


USAGE = {
    "bad choice": (["plugins", "show", "models", "beta_vae"], "'models' is not one of", "disentbench plugins show --help"),
    "unknown option": (["run", "--bogus-flag"], "No such option '--bogus-flag'", "disentbench run --help"),
    "missing argument": (["run"], "Missing argument 'CONFIG'", "disentbench run --help"),
    "out of range": (["ui", "--port", "0"], "0 is not in the range", "disentbench ui --help"),
    "unknown command": (["frobnicate"], "No such command 'frobnicate'", "disentbench --help"),
    "top-level option": (["--bogus"], "No such option '--bogus'", "disentbench --help"),
    "quiet and verbose": (["-q", "-v", "plugins"], "--quiet and --verbose exclude each other", "disentbench --help"),
    "data subcommand option": (["data", "list", "--nope"], "No such option '--nope'", "disentbench data list --help"),
}


@pytest.mark.parametrize("case", list(USAGE))
def test_usage_errors_are_one_line(workdir, case):
    args, message, help_hint = USAGE[case]
    line = one_line(_invoke(args), 2, message)
    assert line.endswith(f"; see {help_hint}"), line
    assert "Usage:" not in line and "Try " not in line
    nothing_written_at_all = list(workdir.iterdir())
    assert nothing_written_at_all == [], nothing_written_at_all


def test_help_and_bad_input_keep_their_form(workdir):
    for args in (["--help"], ["run", "--help"], ["plugins", "show", "--help"]):
        shown = _invoke(args)
        assert shown.exit_code == 0 and shown.stdout.startswith("Usage:"), shown.output
    one_line(_invoke(["plugins", "show", "model", "nope"]), 2, "unknown model plugin 'nope'", "beta_vae")
    bare = _invoke(["data"])  # a group without its subcommand still shows its help
    assert "Usage:" in bare.output and "Commands:" in bare.output


# -- 8: the corrupt-checkpoint warning ------------------------------------------------------------------------


def test_corrupt_checkpoint_warning_is_one_line(tmp_path):
    from helpers import _trainer

    (tmp_path / "ckpt.pt").write_bytes(b"\x80\x02garbage that is no checkpoint" * 20)
    with pytest.warns(UserWarning) as caught:
        result = _trainer(tmp_path, steps=4).train()
    assert result.resumed_from == 0 and (tmp_path / "ckpt.corrupt").exists()
    messages = [str(w.message) for w in caught if "unreadable" in str(w.message)]
    assert len(messages) == 1, messages
    message = messages[0]
    assert "\n" not in message and "weights_only" not in message, message
    assert message.startswith(f"checkpoint {tmp_path / 'ckpt.pt'} is unreadable (")
    assert message.endswith("); moved to ckpt.corrupt, training restarts from step 0"), message


@pytest.fixture
def warning_command():
    @click.command("_probe_warning")
    def probe():
        warnings.warn("checkpoint x is unreadable (Boom: first)\nsecond line\nthird line", UserWarning, stacklevel=1)
        click.echo("done")

    main.add_command(probe)
    yield
    main.commands.pop("_probe_warning", None)


def test_cli_shows_warnings_as_one_line(warning_command, monkeypatch):
    # pytest records warnings; show them as a plain interpreter would for this test
    if cli_common._ORIGINAL_SHOWWARNMSG_IMPL is None:
        pytest.skip("no warnings._showwarnmsg_impl in this Python")
    with warnings.catch_warnings():
        monkeypatch.setattr(warnings, "_showwarnmsg_impl", cli_common._ORIGINAL_SHOWWARNMSG_IMPL)
        monkeypatch.setattr(warnings, "showwarning", cli_common._ORIGINAL_SHOWWARNING)
        warnings.simplefilter("always")
        result = _invoke(["_probe_warning"])
        assert warnings.showwarning is cli_common._ORIGINAL_SHOWWARNING  # restored after the command
    assert result.exit_code == 0, result.output
    assert result.stderr.splitlines() == ["warning: checkpoint x is unreadable (Boom: first)"], result.stderr


# -- 9: Slurm without srun --------------------------------------------------------------------------------------


def test_slurm_without_srun_says_how_to_run_locally(workdir, tmp_path):
    pytest.importorskip("submitit", reason="needs the slurm extra")
    import shutil

    if shutil.which("srun"):
        pytest.skip("this machine has Slurm")
    config = {**GOOD, "executor": {"name": "slurm", "params": {"cluster": "slurm", "folder": str(tmp_path / "sub")}}}
    result = _invoke(["run", _config(workdir, config), "-q"])
    one_line(result, 2, "slurm executor", "srun", "cluster: local", "Slurm login node")
    nothing_written(workdir)


# -- 10: Ctrl-C ---------------------------------------------------------------------------------------------------


def test_ctrl_c_during_run_exits_130_with_how_to_resume(workdir, monkeypatch):
    import disentbench.core.study.run as study

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(study, "run_study", interrupted)
    result = _invoke(["run", _config(workdir), "-q"])
    assert result.exit_code == 130, result.output
    assert [line for line in result.stderr.splitlines() if line.strip()] == [
        "interrupted: rerun the same command to resume (finished runs are kept)"
    ]
    assert "Aborted" not in result.output


def test_ctrl_c_while_the_ui_starts_exits_0(workdir, monkeypatch):
    import disentbench.core.tracking.tracker as tracking

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(tracking, "resolve_tracking_uri", interrupted)
    result = _invoke(["ui"])
    assert result.exit_code == 0, result.output
    assert "Aborted" not in result.output


# -- 11: small ones --------------------------------------------------------------------------------------------


def test_unknown_load_plugins_entry_point_is_a_plugin_problem(monkeypatch):
    """A name in $DISENTBENCH_LOAD_PLUGINS that no package provides is reported, like any plugin problem
    (the CLI prints each as one ``problem:`` line), instead of silently loading nothing."""
    from disentbench.core.registry import build_registry

    monkeypatch.setenv("DISENTBENCH_LOAD_PLUGINS", "nosuch_plugin")
    problems = [str(p) for p in build_registry().problems if "nosuch_plugin" in str(p)]
    assert len(problems) == 1 and "\n" not in problems[0], problems
    assert "$DISENTBENCH_LOAD_PLUGINS" in problems[0] and "installed plugin entry points:" in problems[0]
    monkeypatch.setenv("DISENTBENCH_LOAD_PLUGINS", "")  # empty on purpose: no third-party plugin, no problem
    assert not [p for p in build_registry().problems if "DISENTBENCH_LOAD_PLUGINS" in str(p)]


def _table():
    from disentbench.core.cli.compare import CompareRow, CompareTable

    columns = ["eval/mean/mig/discrete_mig"]
    rows = [CompareRow(run_id=str(i), run_name=f"r{i}", run_key=f"k{i}", model="beta_vae", dataset="d", seed=i, params={},
                       scores={columns[0]: 0.1 * i}) for i in range(2)]
    return CompareTable(experiment="tiny", tracking_uri="sqlite:///x", rows=rows, columns=columns)


def test_compare_sort_arrow_follows_reverse():
    from rich.console import Console

    def rendered(reverse: bool) -> str:
        console = Console(width=200, record=True)
        console.print(_table().rich_table("eval/mean/mig/discrete_mig", reverse=reverse))
        return console.export_text()

    assert "mig ▾" in rendered(False) and "▴" not in rendered(False)
    assert "mig ▴" in rendered(True) and "▾" not in rendered(True)


def test_run_table_headers_name_each_key_of_a_metric(capsys):
    keys = ["eval/mean/code_std/mean_std", "eval/mean/code_std/min_std", "eval/mean/mig/discrete_mig"]
    spec = types.SimpleNamespace(model="plugin_vae", swept={}, dataset="d", seed=0)
    outcome = types.SimpleNamespace(spec=spec, status="finished", scores=dict.fromkeys(keys, 0.5))
    config = types.SimpleNamespace(name="tiny", experiment_name="tiny",
                                   evaluation=types.SimpleNamespace(representations=["mean"]))
    result = types.SimpleNamespace(config=config, headline_keys=keys, outcomes=[outcome], tracking_uri="sqlite:///x")
    run_cli._print_scores(result)
    header = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("model"))
    assert "code_std:mean_std" in header and "code_std:min_std" in header, header
    assert header.count("mig") == 1 and "discrete_mig" not in header, header
