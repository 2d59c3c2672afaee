"""`disentbench ui`: the MLflow UI served on 127.0.0.1 for a study, stopped cleanly, bad input refused."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request

from click.testing import CliRunner

from disentbench.core.cli.main import main

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


def _store(path) -> str:
    from disentbench.core.tracking.tracker import Tracker

    Tracker(f"sqlite:///{path}", "x")  # creates the store's tables
    return f"sqlite:///{path}"


def _start_ui(tmp_path, port):
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    return subprocess.Popen(
        [sys.executable, "-m", "disentbench.core.cli.main", "ui", "--tracking-uri", _store(tmp_path / "ui.db"),
         "--port", str(port)],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )


def _gone(port) -> bool:
    deadline = time.monotonic() + 20
    while _answers(f"http://127.0.0.1:{port}/health") and time.monotonic() < deadline:
        time.sleep(0.2)
    return not _answers(f"http://127.0.0.1:{port}/health")


def test_ui_stops_its_server_on_sighup_and_when_killed(tmp_path):
    for how in (signal.SIGHUP, signal.SIGKILL):
        port = _free_port()
        process = _start_ui(tmp_path, port)
        try:
            line = process.stdout.readline()
            assert f":{port}/" in line, (line, process.stderr.read() if process.poll() else "")
            process.send_signal(how)
            process.wait(timeout=30)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        assert _gone(port), f"the MLflow server outlived ui after {how.name}"


def test_ui_on_a_folder_without_a_store_creates_none(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    result = CliRunner().invoke(main, ["ui"])
    assert result.exit_code == 2, result.output
    assert "error: no MLflow store at" in result.output and "run a study first" in result.output
    assert list(tmp_path.iterdir()) == []


def test_ui_serves_then_stops_on_ctrl_c(tmp_path):
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    process = subprocess.Popen(
        [sys.executable, "-m", "disentbench.core.cli.main", "ui", "--tracking-uri", _store(tmp_path / "ui.db"),
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
    _store(tmp_path / "u.db")
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
