"""The user's view: `compare`, the per-run GIF and score card, `ui`, and the CLI's global behaviour."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import click
import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner
from PIL import Image

from disentbench.core.cli.main import main
from disentbench.core.display import images

MIG = "eval/mean/mig/discrete_mig"
MIG_SAMPLED = "eval/sampled/mig/discrete_mig"
FVAE = "eval/mean/factor_vae_score/eval_accuracy"
DOWN = "downstream/mean/downstream_logistic_regression/100:mean_test_accuracy"


# ---------------------------------------------------------------------------
# compare, on a store of fake runs


def _fake_study(uri: str, name: str = "cmp", runs=None, config: dict | None = None) -> dict[str, str]:
    """An experiment as `disentbench run` leaves it: a study parent run and tagged child runs."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    experiment_id = client.create_experiment(name)
    evaluation = {
        "metrics": [{"name": "mig", "params": {}}, {"name": "factor_vae_score", "params": {}}],
        "tasks": [{"name": "downstream_logistic_regression", "params": {"num_train": [10, 100]}}],
        "representations": ["mean", "sampled"],
    }
    parent = client.create_run(experiment_id, tags={"disentbench.kind": "study", "study": name}, run_name=f"{name} now")
    models = [{"name": "beta_vae", "sweep": {"beta": [1, 4, 8]}}, {"name": "factor_vae", "sweep": {"gamma": [10]}}]
    recorded = config or {"name": name, "models": models, "evaluation": evaluation}
    client.log_param(parent.info.run_id, "config", json.dumps(recorded))
    client.set_terminated(parent.info.run_id)
    ids = {}
    for run_name, model, dataset, seed, params, metrics, status in runs:
        tags = {"mlflow.parentRunId": parent.info.run_id, "disentbench.kind": "run", "study": name,
                "model": model, "dataset": dataset, "seed": str(seed), "run_key": params.pop("run_key", run_name)}
        run = client.create_run(experiment_id, tags=tags, run_name=run_name)
        for key, value in {"model": model, "dataset": dataset, "seed": seed, **params}.items():
            client.log_param(run.info.run_id, key, value)
        for key, value in metrics.items():
            client.log_metric(run.info.run_id, key, value)
        client.set_terminated(run.info.run_id, status=status)
        ids[run_name] = run.info.run_id
    return ids


def _scores(mig, mig_sampled, fvae, down):
    return {
        MIG: mig, MIG_SAMPLED: mig_sampled, "eval/mean/mig/continuous_mig": 0.5,  # not a headline key
        FVAE: fvae, "eval/mean/factor_vae_score/train_accuracy": 0.99,
        DOWN: down, "downstream/mean/downstream_logistic_regression/10:mean_test_accuracy": 0.2,
        "train/elbo": -100.0,
    }


RUNS = [
    ("beta_vae beta=1 dsprites s=0", "beta_vae", "dsprites", 0, {"model.beta": "1.0", "model.num_latent": "10"},
     _scores(0.10, 0.05, 0.60, 0.70), "FINISHED"),
    ("beta_vae beta=4 dsprites s=0", "beta_vae", "dsprites", 0, {"model.beta": "4.0", "model.num_latent": "10"},
     _scores(0.30, 0.02, 0.80, 0.65), "FINISHED"),
    ("factor_vae gamma=10 dsprites s=1", "factor_vae", "dsprites", 1, {"model.gamma": "10.0"},
     _scores(0.20, 0.25, 0.70, 0.90), "FINISHED"),
    ("beta_vae beta=1 cars3d s=0", "beta_vae", "cars3d", 0, {"model.beta": "1.0", "model.num_latent": "10"},
     _scores(0.05, 0.04, 0.50, 0.40), "FINISHED"),
    ("beta_vae beta=8 dsprites s=0", "beta_vae", "dsprites", 0, {"model.beta": "8.0", "model.num_latent": "10"},
     _scores(0.99, 0.99, 0.99, 0.99), "FAILED"),  # not finished: never shown
]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One store for the read-only compare tests (creating a SQLite store takes seconds)."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('compare') / 'mlflow.db'}"
    ids = _fake_study(uri, runs=[(*r[:4], dict(r[4]), r[5], r[6]) for r in RUNS])
    return uri, ids


def _compare(uri, *args):
    return CliRunner().invoke(main, ["compare", "cmp", "--tracking-uri", uri, *args])


def _json(uri, *args) -> dict:
    result = _compare(uri, "--json", *args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_compare_table_shows_finished_runs_and_headline_scores(store):
    uri, _ = store
    result = _compare(uri)
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "cmp: 4 finished run(s)" in out
    assert "beta=8" not in out  # the failed run
    header = " ".join(out.split())  # headers are on several lines: name, key where needed, (representation)
    assert re.search(r"mig factor_vae_score downstream_logistic_regression mig", header), out
    assert re.search(r"\(mean\) \(mean\) \(mean\) \(sampled\)", header), out
    assert "continuous_mig" not in out and "train_accuracy" not in out and "elbo" not in out
    assert "beta=4" in out and "gamma=10" in out  # the varying model params


def test_compare_json_columns_are_the_headline_keys_in_config_order(store):
    uri, ids = store
    data = _json(uri)
    # mean before sampled; metrics in config order, then tasks; the task's headline follows its params (num_train)
    assert data["columns"] == [MIG, FVAE, DOWN, MIG_SAMPLED]
    assert len(data["runs"]) == 4
    run = next(r for r in data["runs"] if r["run_name"] == "beta_vae beta=4 dsprites s=0")
    assert run["run_id"] == ids["beta_vae beta=4 dsprites s=0"]
    assert run["params"] == {"beta": "4"} and run["seed"] == 0 and run["model"] == "beta_vae"
    assert run["scores"][MIG] == pytest.approx(0.30)


def test_compare_sorting(store):
    uri, _ = store
    names = lambda data: [r["run_name"] for r in data["runs"]]  # noqa: E731
    assert names(_json(uri, "--sort", "mig")) == [
        "beta_vae beta=4 dsprites s=0", "factor_vae gamma=10 dsprites s=1",
        "beta_vae beta=1 dsprites s=0", "beta_vae beta=1 cars3d s=0",
    ]  # highest first
    assert names(_json(uri, "--sort", "mig (sampled)"))[0] == "factor_vae gamma=10 dsprites s=1"
    assert names(_json(uri, "--sort", DOWN, "--reverse"))[0] == "beta_vae beta=1 cars3d s=0"
    assert [r["model"] for r in _json(uri, "--sort", "model")["runs"]] == ["beta_vae"] * 3 + ["factor_vae"]
    assert [r["dataset"] for r in _json(uri, "--sort", "dataset")["runs"]][0] == "cars3d"

    bad = _compare(uri, "--sort", "nope")
    assert bad.exit_code == 2
    assert "--sort 'nope' is not a column" in bad.output and "mig (mean)" in bad.output


def test_compare_filters(store):
    uri, _ = store
    data = _json(uri, "--model", "factor_vae")
    assert [r["model"] for r in data["runs"]] == ["factor_vae"]
    data = _json(uri, "--dataset", "cars3d", "--model", "beta_vae")
    assert [r["run_name"] for r in data["runs"]] == ["beta_vae beta=1 cars3d s=0"]
    data = _json(uri, "--representation", "sampled")
    assert data["columns"] == [MIG_SAMPLED]
    empty = _compare(uri, "--model", "dip_vae")
    assert empty.exit_code == 0
    assert "No finished runs" in empty.output and "known: beta_vae, factor_vae" in empty.output


def test_compare_csv(store):
    uri, ids = store
    result = _compare(uri, "--csv", "--sort", "factor_vae_score")
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert list(rows[0])[:6] == ["run_id", "run_name", "model", "dataset", "seed", "params"]
    assert [float(r[FVAE]) for r in rows] == [0.80, 0.70, 0.60, 0.50]
    assert rows[0]["run_id"] == ids["beta_vae beta=4 dsprites s=0"] and rows[0]["params"] == "beta=4"


def test_compare_bad_input_exits_2(store):
    uri, _ = store
    assert _compare(uri, "--csv", "--json").exit_code == 2
    missing = CliRunner().invoke(main, ["compare", "no_such_study", "--tracking-uri", uri])
    assert missing.exit_code == 2 and "no experiment named 'no_such_study'" in missing.output


def test_compare_from_config_shows_only_its_grid(tmp_path, monkeypatch, registry):
    from disentbench.core.config.grid import expand_grid
    from disentbench.core.config.load import load_study_config

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    config_path = tmp_path / "grid.yaml"
    config_path.write_text(yaml.safe_dump({
        "name": "grid", "datasets": ["dsprites_procedural"], "models": [{"name": "beta_vae", "sweep": {"beta": [1, 4]}}],
        "evaluation": {"metrics": ["mig"]}, "tracking": {"uri": uri},
    }))
    specs = expand_grid(load_study_config(config_path, registry), registry)
    runs = [(s.run_name, s.model, s.dataset, s.seed, {"run_key": s.run_key, "model.beta": str(s.swept["beta"])},
             {MIG: 0.1 * (i + 1)}, "FINISHED") for i, s in enumerate(specs)]
    runs.append(("stray old run", "beta_vae", "dsprites_procedural", 0, {"run_key": "0000"}, {MIG: 0.9}, "FINISHED"))
    _fake_study(uri, "grid", runs)
    result = CliRunner().invoke(main, ["compare", str(config_path), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert sorted(r["run_name"] for r in data["runs"]) == sorted(s.run_name for s in specs)
    assert {r["run_name"]: r["params"] for r in data["runs"]}[specs[1].run_name] == {"beta": "4"}
    table = CliRunner().invoke(main, ["compare", str(config_path)])
    assert "2 finished run(s) of 2 in the grid" in table.stdout


# ---------------------------------------------------------------------------
# pictures: traversal GIF and score card


class _FakeData:
    def sample_observations(self, num, random_state):
        return random_state.rand(num, 1, 8, 8).astype(np.float32)


class _FakeModel:
    """Latent i brightens the i-th band of rows: every traversal value gives a different frame."""

    num_latent = 3

    def encode(self, x):
        mean = torch.zeros(x.shape[0], self.num_latent)
        return mean, torch.zeros_like(mean)

    def decode(self, z):
        logits = torch.full((z.shape[0], 1, 8, 8), -1.0)
        for i in range(self.num_latent):
            logits[:, 0, 2 * i : 2 * i + 2, :] += 2 * z[:, i].view(-1, 1, 1)
        return logits


def test_traversal_gif_frames(tmp_path):
    traversals = images.traversal_images(_FakeModel(), _FakeData(), "cpu", steps=5)
    assert traversals.shape == (3, 5, 1, 8, 8)
    grid = images.traversal_grid_from(traversals)
    assert grid.shape == (3 * 10 + 2, 5 * 10 + 2, 3)
    assert np.array_equal(grid, images.traversal_grid(_FakeModel(), _FakeData(), "cpu", steps=5))

    frames = images.traversal_frames(traversals)  # 3 latents -> a 2x2 grid, one cell blank
    assert frames.shape == (5, 2 * 10 + 2, 2 * 10 + 2, 3)
    assert np.all(frames[:, 12:20, 12:20] == 1.0)  # the unused cell stays white

    path = images.save_traversal_gif(traversals, tmp_path / "t.gif")
    with Image.open(path) as gif:
        assert gif.format == "GIF" and gif.is_animated
        assert gif.n_frames == images.gif_frame_count(5) == 8  # there and back, end frames once
        assert gif.info.get("loop") == 0
        assert gif.size[0] == frames.shape[2] * 2  # scale 2
        first = np.asarray(gif.convert("RGB")).copy()
        gif.seek(4)  # the +limit end
        assert not np.array_equal(first, np.asarray(gif.convert("RGB")))

    plain = images.save_gif(frames, tmp_path / "p.gif", bounce=False, scale=1)
    with Image.open(plain) as gif:
        assert gif.n_frames == 5 and gif.size == (frames.shape[2], frames.shape[1])
    with pytest.raises(ValueError):
        images.save_gif(frames[0], tmp_path / "bad.gif")


def test_headline_scores_and_score_card(tmp_path):
    scores = {MIG: 0.3, MIG_SAMPLED: 0.2, "eval/mean/mig/continuous_mig": 0.1, FVAE: 0.8,
              "eval/mean/factor_vae_score/train_accuracy": 0.9, DOWN: 0.7, "train/elbo": -3.0,
              "eval/mean/sap/SAP_score": float("nan")}
    headlines = {"mig": ("discrete_mig",), "factor_vae_score": ("eval_accuracy",),
                 "downstream_logistic_regression": ("100:mean_test_accuracy",)}
    table = images.headline_scores(scores, headlines)
    assert list(table) == ["mean", "sampled"]
    assert list(table["mean"]) == ["factor_vae_score", "mig", "sap", "downstream_logistic_regression"]
    assert table["sampled"] == {"mig": 0.2}

    figure = images.score_card("beta_vae beta=4 dsprites s=3", {"beta": 4.0, "steps": 10}, scores, headlines,
                               subtitle="model beta_vae · dataset dsprites · seed 3")
    assert "pyplot" not in type(figure.canvas).__module__
    path = images.save_figure(figure, tmp_path / "card.png")
    with Image.open(path) as png:
        assert png.format == "PNG" and png.size[0] == 800 and png.size[1] > 200
    empty = images.save_figure(images.score_card("x", {}, {}), tmp_path / "empty.png")
    assert Image.open(empty).format == "PNG"


def test_each_run_logs_gif_and_score_card(tmp_path, monkeypatch):
    """A one-run, few-step study: the artifacts a researcher opens in the UI, and global -q."""
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "one.yaml").write_text(yaml.safe_dump({
        "name": "one", "datasets": ["dsprites_procedural"], "models": [{"name": "beta_vae", "params": {"beta": 4}}],
        "training": {"steps": 2, "batch_size": 8, "device": "cpu", "log_every": 1},
        "evaluation": {"metrics": [{"name": "mig", "params": {"num_train": 50}}]},
    }))
    result = CliRunner().invoke(main, ["-q", "run", "one.yaml"])
    assert result.exit_code == 0, result.output
    assert "start [1/1]" not in result.output  # the global --quiet reached run's own -q

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("one")
    run = next(r for r in client.search_runs([experiment.experiment_id]) if r.data.tags.get("disentbench.kind") == "run")
    listed = {a.path for a in client.list_artifacts(run.info.run_id, "images")}
    assert {"images/traversals.gif", "images/score_card.png", "images/traversals.png"} <= listed
    gif = client.download_artifacts(run.info.run_id, "images/traversals.gif", str(tmp_path))
    with Image.open(gif) as image:
        assert image.format == "GIF" and 1 <= image.n_frames <= images.gif_frame_count(images.TRAVERSAL_STEPS)
    card = client.download_artifacts(run.info.run_id, "images/score_card.png", str(tmp_path))
    assert Image.open(card).format == "PNG"


# ---------------------------------------------------------------------------
# ui


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def test_ui_serves_then_stops_on_ctrl_c(tmp_path):
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    process = subprocess.Popen(
        [sys.executable, "-m", "disentbench.core.cli.main", "ui", "--tracking-uri", f"sqlite:///{tmp_path / 'ui.db'}",
         "--port", str(port)],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    try:
        line = process.stdout.readline()  # printed only once the server answers
        assert re.search(rf"http://127\.0\.0\.1:{port}/", line), (line, process.stderr.read() if process.poll() else "")
        assert _answers(f"http://127.0.0.1:{port}/health")
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    stderr = process.stderr.read()
    assert "Binding 127.0.0.1" in stderr and "MLflow UI stopped." in stderr
    deadline = time.monotonic() + 10
    while _answers(f"http://127.0.0.1:{port}/health") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _answers(f"http://127.0.0.1:{port}/health")  # the whole server process group is gone


def test_ui_bad_input(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    runner = CliRunner()
    served = runner.invoke(main, ["ui", "--tracking-uri", "http://example.org:5000"])
    assert served.exit_code == 2 and "already a tracking server" in served.output
    unknown = runner.invoke(main, ["ui", "no_such_experiment", "--tracking-uri", f"sqlite:///{tmp_path / 'u.db'}"])
    assert unknown.exit_code == 2 and "no experiment named 'no_such_experiment'" in unknown.output
    with socket.socket() as busy:  # a port in use; --host other than loopback warns first
        busy.bind(("0.0.0.0", 0))
        busy.listen()
        port = busy.getsockname()[1]
        taken = runner.invoke(main, ["ui", "--tracking-uri", f"sqlite:///{tmp_path / 'u.db'}", "--host", "0.0.0.0",
                                     "--port", str(port)])
    assert taken.exit_code == 2, taken.output
    assert "warning: binding 0.0.0.0" in taken.output and f"port {port} on 0.0.0.0 is in use" in taken.output


# ---------------------------------------------------------------------------
# the CLI's global behaviour


@pytest.fixture
def probe_commands():
    """Temporary commands on the main group: one that styles its output, one that crashes."""

    @click.command("_probe_colour")
    def colour():
        click.echo(click.style("red", fg="red"))

    @click.command("_probe_crash")
    def crash():
        raise RuntimeError("boom")

    main.add_command(colour)
    main.add_command(crash)
    yield
    main.commands.pop("_probe_colour")
    main.commands.pop("_probe_crash")


def test_no_color_and_exit_codes(probe_commands):
    runner = CliRunner()
    assert "\x1b[" in runner.invoke(main, ["_probe_colour"], color=True, env={"NO_COLOR": ""}).output
    assert runner.invoke(main, ["_probe_colour"], color=True, env={"NO_COLOR": "1"}).output == "red\n"

    crashed = runner.invoke(main, ["_probe_crash"])
    assert crashed.exit_code == 1
    assert "error: RuntimeError: boom" in crashed.output and "--verbose" in crashed.output
    verbose = runner.invoke(main, ["--verbose", "_probe_crash"])
    assert verbose.exit_code == 1 and isinstance(verbose.exception, RuntimeError)  # the traceback is not hidden

    assert runner.invoke(main, ["--quiet", "--verbose", "plugins"]).exit_code == 2
    assert runner.invoke(main, ["no-such-command"]).exit_code == 2
    help_text = runner.invoke(main, ["--help"]).output
    assert "Exit codes:" in help_text and "2  bad input" in help_text and "NO_COLOR" in help_text


def test_progress_is_plain_lines_off_a_terminal():
    from disentbench.core.display.progress import StudyProgress

    stream = io.StringIO()  # not a TTY, like a CI log
    bar = StudyProgress(20, stream=stream, plain_every=0.0)
    assert bar._rich is None
    bar.start_run("[1/1] run")
    for step in (5, 10, 20):
        bar.update_run(step)
    bar.close()
    lines = stream.getvalue().splitlines()
    assert lines[0] == "start [1/1] run"
    assert lines[-1].startswith("  [1/1] run: 20/20 steps (100%)")
    assert "\x1b[" not in stream.getvalue()
