"""A real ``mlflow server`` on 127.0.0.1 as the tracking URI, as a study on several machines would use it.

The test starts the server (SQLite backend, proxied artifact storage), runs a
tiny study through the CLI with ``--tracking-uri http://127.0.0.1:PORT``, checks
runs, scores and artifacts through the server's REST API, then stops it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from disentbench.core.cli.main import main

CLI = [sys.executable, "-m", "disentbench.core.cli.main"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("MLFLOW_TRACKING_URI", None)
    env["OMP_NUM_THREADS"] = "1"
    return env


@pytest.fixture
def mlflow_server(tmp_path):
    port = _free_port()
    log = (tmp_path / "server.log").open("w")
    command = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", f"sqlite:///{tmp_path / 'srv.db'}",
        "--artifacts-destination", str(tmp_path / "art"),
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]  # fmt: skip
    # its own process group, so stopping it also stops the web server it starts
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=_env(), start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 45
        while True:
            if server.poll() is not None:
                pytest.fail(f"mlflow server exited with {server.returncode}:\n{(tmp_path / 'server.log').read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.time() > deadline:
                pytest.fail(f"mlflow server did not answer in 45 s:\n{(tmp_path / 'server.log').read_text()[-3000:]}")
            time.sleep(0.3)
        yield url
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=1)
            except subprocess.TimeoutExpired:  # a graceful stop can take seconds; nothing is left to save
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()
        log.close()


def test_study_against_a_real_mlflow_server(tmp_path, monkeypatch, mlflow_server):
    from mlflow.tracking import MlflowClient

    config = {
        "name": "served",
        "datasets": ["dsprites_procedural"],
        "models": [{"name": "beta_vae", "sweep": {"beta": [1, 4]}, "params": {"num_latent": 4}}],
        "seeds": 1,
        "training": {
            "steps": 5,
            "batch_size": 8,
            "log_every": 5,
            "device": "cpu",
            "checkpoint_dir": str(tmp_path / "checkpoints"),
        },
        "evaluation": {"metrics": [{"name": "mig", "params": {"num_train": 100}}]},
    }
    path = tmp_path / "served.yaml"
    path.write_text(yaml.safe_dump(config))
    work = tmp_path / "work"  # the client must not create a local store or artifact folder
    work.mkdir()
    result = subprocess.run(
        CLI + ["run", str(path), "-q", "--tracking-uri", mlflow_server],
        capture_output=True, text=True, env=_env(), cwd=work, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert mlflow_server in result.stdout

    client = MlflowClient(tracking_uri=mlflow_server)
    experiment = client.get_experiment_by_name("served")
    runs = client.search_runs([experiment.experiment_id], "tags.`disentbench.kind` = 'run'")
    assert sorted(r.data.params["model.beta"] for r in runs) == ["1.0", "4.0"]
    assert len({r.data.tags["run_key"] for r in runs}) == 2
    (parent,) = client.search_runs([experiment.experiment_id], "tags.`disentbench.kind` = 'study'")
    assert parent.info.status == "FINISHED"
    for run in runs:
        assert run.info.status == "FINISHED"
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        mig = run.data.metrics["eval/mean/mig/discrete_mig"]
        names = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"config.yaml", "scores.json", "images", "checkpoints"} <= names, names
        scores = json.loads(Path(client.download_artifacts(run.info.run_id, "scores.json", str(tmp_path))).read_text())
        assert scores["eval/mean/mig/discrete_mig"] == pytest.approx(mig)
    # artifacts went through the server to its artifact destination, nothing landed beside the client
    assert list((tmp_path / "art").rglob("scores.json"))
    assert not (work / "mlflow.db").exists() and not (work / "mlruns").exists()

    # `disentbench status` reads the same server (in this process: the CLI above already proved startup)
    monkeypatch.chdir(work)
    status = CliRunner().invoke(main, ["status", str(path), "--tracking-uri", mlflow_server])
    assert status.exit_code == 0, status.output
    assert "2 runs: 2 finished" in status.output
    assert not (work / "mlflow.db").exists()
