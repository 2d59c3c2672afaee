"""``disentbench ui``: the MLflow UI for a study's store, started and stopped as one command.

The MLflow UI is a separate server process (with worker processes of its own),
so this room holds what running one safely takes: picking and checking a port,
warning when the bind exposes the UI to the network, waiting until the server
answers before printing the URL, showing its log when it fails, and stopping
its whole process group on Ctrl-C, SIGTERM, SIGHUP or any other way out, and
(on Linux) when ``ui`` itself is killed, so no server is ever left behind; a
folder with no store gets an error, never a new empty store. The URL it prints
opens the study's shared view (:mod:`~disentbench.core.tracking.view`: every
run a row, with its swept hyperparameters and headline scores), which a study
writes on its experiment (and ``ui`` writes for a study recorded before that,
from its runs: a tag on an existing experiment, never a store).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import click

from disentbench.core.cli._common import EXIT_FAILURE, EXIT_OK, BadInput, global_options, load_study, looks_like_config

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def free_port(host: str = "127.0.0.1") -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _port_is_free(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _browse_host(host: str) -> str:
    """Where a browser on this machine reaches a server bound to ``host`` (URL form)."""
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def _mlflow_major() -> int:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return int(version("mlflow").split(".")[0])
    except (PackageNotFoundError, ValueError):
        return 3


def _experiment_fragment(experiment_id: str, shared_view: bool = False) -> str:
    """The UI route of an experiment's runs table; MLflow 3 otherwise opens its GenAI overview.

    ``shared_view``: open disentbench's shared view of the study (flat runs, headline score columns).
    """
    from disentbench.core.tracking import view

    if _mlflow_major() >= 3:
        return f"#/experiments/{experiment_id}/runs?workflowType=machine_learning" + (
            f"&{view.query()}" if shared_view else ""
        )
    return f"#/experiments/{experiment_id}" + (f"?{view.query()}" if shared_view else "")


def _run_fragment(experiment_id: str, run_id: str, artifact: str) -> str:
    suffix = "?workflowType=machine_learning" if _mlflow_major() >= 3 else ""
    return f"#/experiments/{experiment_id}/runs/{run_id}/artifacts/{artifact}{suffix}"


def _recorded_view(tracker, experiment_id: str) -> tuple[list[str], list[str]]:
    """Headline score keys and swept ``model.*`` params of an experiment's runs (one page of them), for a
    study recorded before disentbench wrote its shared view."""
    from disentbench.core.analysis.loading import headlines_from_registry
    from disentbench.core.registry import get_plugin_manager
    from disentbench.core.tracking import tracker as tracking

    runs = tracker.client.search_runs([experiment_id], f"tags.`{tracking.TAG_KIND}` = 'run'", max_results=500)
    headlines = headlines_from_registry(get_plugin_manager())
    keys = set()
    values: dict[str, set[str]] = {}
    for run in runs:
        for key in run.data.metrics:
            parts = key.split("/", 3)
            if len(parts) == 4 and parts[0] in ("eval", "downstream"):
                wanted = headlines.get(parts[2])
                if not wanted or parts[3] in wanted:
                    keys.add(key)
        for key, value in run.data.params.items():
            if key.startswith("model."):
                values.setdefault(key, set()).add(value)
    ordered = sorted(keys, key=lambda k: (k.split("/")[1] != "mean", k.split("/")[1], k.startswith("downstream"), k))
    return ordered, sorted(k for k, v in values.items() if len(v) > 1)


def _first_view(uri: str, experiment: str) -> tuple[bool, str | None]:
    """Whether the experiment has disentbench's shared view (written here for studies recorded before it
    existed), and the id of its latest study run (the parent run with the scores table and plot)."""
    from disentbench.core.tracking import tracker as tracking
    from disentbench.core.tracking import view

    tracker, experiment_id = tracking.open_existing(uri, experiment)
    if tracker is None or experiment_id is None:
        return False, None
    shared = view.has_view(tracker.client.get_experiment(experiment_id))
    parents = tracker.client.search_runs(
        [experiment_id], f"tags.`{tracking.TAG_KIND}` = 'study'", max_results=1, order_by=["attributes.start_time DESC"]
    )
    if not shared:
        try:
            keys, params = _recorded_view(tracker, experiment_id)
            if keys:
                view.write_view(tracker.client, experiment_id, keys, params)
                shared = True
        except Exception:  # a read-only store, say: the plain runs table then
            shared = False
    return shared, parents[0].info.run_id if parents else None


def _only_experiment(uri: str) -> str | None:
    """The name of the store's one experiment besides MLflow's Default (None if there are none or several)."""
    from disentbench.core.tracking import tracker as tracking

    tracker, _ = tracking.open_existing(uri, "Default")
    if tracker is None:
        return None
    names = [e.name for e in tracker.client.search_experiments(max_results=3) if e.name != "Default"]
    return names[0] if len(names) == 1 else None


def _answers(url: str, timeout: float = 2.0) -> bool:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return 200 <= response.status < 500
    except urllib.error.HTTPError as exc:
        return exc.code < 500
    except (OSError, ValueError):
        return False


def _stop_process_group(process: subprocess.Popen, timeout: float = 10.0) -> None:
    """SIGTERM the server's whole process group (MLflow starts worker processes), SIGKILL what stays."""
    import signal

    try:
        if os.name == "posix":
            os.killpg(process.pid, signal.SIGTERM)
        else:
            process.terminate()
    except (ProcessLookupError, PermissionError):
        pass
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pass
    if os.name == "posix":
        try:
            os.killpg(process.pid, signal.SIGKILL)  # stragglers of the group, if any
        except (ProcessLookupError, PermissionError):
            pass
    elif process.poll() is None:
        process.kill()
    process.wait()


def _new_session_dying_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """The server's own session (its group is stopped as one), and on Linux SIGTERM when ``ui`` dies.

    PR_SET_PDEATHSIG covers ``kill -9`` of ``ui``, where no handler of ours runs;
    MLflow's launcher forwards that SIGTERM to its server processes.
    """
    import signal

    os.setsid()
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, int(signal.SIGTERM), 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass


def _set_signal(sig, handler) -> None:
    import signal

    try:
        signal.signal(sig, handler)
    except (ValueError, TypeError):  # not the main thread, or a handler not set from Python
        pass


def _log_tail(log, lines: int = 20) -> str:
    if log is None:
        return ""
    log.flush()
    log.seek(0)
    text = log.read().decode(errors="replace").strip().splitlines()
    return "\n".join(text[-lines:])


@click.command("ui")
@click.argument("target", required=False, metavar="[CONFIG|EXPERIMENT]")
@click.option("--tracking-uri", help="The MLflow store to show (default: the config's, $MLFLOW_TRACKING_URI, or ./mlflow.db).")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Interface to bind. Any other than 127.0.0.1/localhost exposes the UI, which has no login, to the network.")
@click.option("--port", type=click.IntRange(1, 65535), default=None, help="Port (default: a free one).")
@click.option("--timeout", type=click.FloatRange(min=1), default=120, show_default=True,
              help="Seconds to wait for the server to answer.")
@click.pass_context
def ui_cmd(ctx, target, tracking_uri, host, port, timeout):
    """Start the MLflow UI for a study's store (Ctrl-C stops it).

    It binds 127.0.0.1 (only this machine can open it) on a free port, waits
    until the server answers, then prints the URL of the study's experiment
    (CONFIG: a study config file; EXPERIMENT: an experiment name; neither: the
    store's one experiment, or the UI's home page if it holds several), opened
    on a view that lists every run with its hyperparameters and headline
    scores, then the URL of the study's scores table and plot. Ctrl-C stops the server and all its worker processes
    and exits with 0.

    \b
    Example:
      disentbench ui
      disentbench ui examples/quickstart.yaml
      disentbench ui quickstart --port 5000
      disentbench ui --tracking-uri sqlite:///runs/mlflow.db
    """
    import signal
    import tempfile
    import time

    from disentbench.core.tracking.tracker import TrackingError, check_sqlite_uri, open_existing, resolve_tracking_uri

    options = global_options(ctx)
    experiment, from_config = None, False
    if target:
        if looks_like_config(target):
            from_config = True
            study = load_study(target)
            tracking_uri = tracking_uri or study.tracking.uri
            experiment = study.experiment_name
        else:
            experiment = target
    uri = resolve_tracking_uri(tracking_uri)
    if uri.startswith(("http://", "https://")):
        raise BadInput(f"{uri} is already a tracking server; open it in a browser instead")
    experiment_id = None
    database = uri[len("sqlite:///"):].split("?", 1)[0] if uri.startswith("sqlite:///") else None
    if database and not os.path.exists(os.path.expanduser(database)):
        # `mlflow ui` would create an empty store there; status, compare and analyze never do either
        missing = f"no experiment named {experiment!r} in {uri}: " if experiment else ""
        raise BadInput(
            f"{missing}no MLflow store at {database}; run a study first (disentbench run CONFIG) or pass --tracking-uri"
        )
    try:
        check_sqlite_uri(uri)
        if experiment:
            experiment_id = open_existing(uri, experiment)[1]  # never creates a store or an experiment
    except TrackingError as exc:
        raise BadInput(str(exc)) from None
    if experiment and experiment_id is None and not from_config:
        raise BadInput(f"no experiment named {experiment!r} in {uri}; check the name or pass --tracking-uri")
    shared_view, parent_run_id = False, None
    try:
        if not experiment:  # a store holding one study: open that study, not the home page
            experiment = _only_experiment(uri)
            if experiment:
                experiment_id = open_existing(uri, experiment)[1]
        if experiment_id is not None:
            shared_view, parent_run_id = _first_view(uri, experiment)
    except TrackingError as exc:
        raise BadInput(str(exc)) from None

    if host in LOOPBACK_HOSTS:
        if not options["quiet"]:
            click.echo(f"Binding {host}: only this machine can open the UI (--host to change).", err=True)
    else:
        click.echo(
            f"warning: binding {host}: anyone who can reach this machine on the port can read and change "
            "the runs (the MLflow UI has no login).",
            err=True,
        )
    if port is None:
        try:
            port = free_port(host)
        except OSError as exc:
            raise BadInput(f"cannot bind --host {host}: {exc.strerror or exc}") from None
    elif not _port_is_free(host, port):
        raise BadInput(f"port {port} on {host} is in use or not allowed; pick another or leave --port out")

    base = f"http://{_browse_host(host)}:{port}/"
    url = base + (_experiment_fragment(experiment_id, shared_view) if experiment_id else "")
    # One worker: a personal UI needs no more, and it starts much faster than MLflow's default four.
    command = [
        sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", host, "--port", str(port),
        "--workers", "1",
    ]
    log = None if options["verbose"] else tempfile.TemporaryFile()  # server logs: shown with --verbose or on failure
    popen_kwargs = {"preexec_fn": _new_session_dying_with_parent} if os.name == "posix" else {
        "creationflags": getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0)
    }

    def interrupted(signum, frame):  # SIGTERM and SIGHUP (the terminal closed) stop the UI like Ctrl-C
        raise KeyboardInterrupt

    stopping = [signal.SIGINT, signal.SIGTERM] + ([signal.SIGHUP] if hasattr(signal, "SIGHUP") else [])
    previous = {sig: signal.getsignal(sig) for sig in stopping}
    _set_signal(signal.SIGTERM, interrupted)
    if hasattr(signal, "SIGHUP"):
        _set_signal(signal.SIGHUP, interrupted)
    _set_signal(signal.SIGINT, signal.default_int_handler)  # even where the shell started us with SIGINT ignored
    process = None
    try:
        if not options["quiet"]:
            click.echo(f"Starting the MLflow UI for {uri} ...", err=True)
        env = dict(os.environ)
        env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")  # GenAI job runner: one process less
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT if log else None, env=env,
            **popen_kwargs,
        )
        deadline = time.monotonic() + timeout
        while not _answers(base + "health"):
            if process.poll() is not None:
                click.echo(f"error: the MLflow UI exited with code {process.returncode} before answering", err=True)
                tail = _log_tail(log)
                if tail:
                    click.echo(tail, err=True)
                sys.exit(EXIT_FAILURE)
            if time.monotonic() > deadline:
                _stop_process_group(process)
                click.echo(f"error: the MLflow UI did not answer on {base} within {timeout:g} s", err=True)
                tail = _log_tail(log)
                if tail:
                    click.echo(tail, err=True)
                sys.exit(EXIT_FAILURE)
            time.sleep(0.25)
        if experiment and experiment_id is None:
            click.echo(f"Experiment '{experiment}' has no runs yet; showing the UI's home page.", err=True)
        click.echo(f"MLflow UI for {uri}: {url}")
        if experiment_id and parent_run_id:
            overview = base + _run_fragment(experiment_id, parent_run_id, "study/scores.png")
            click.echo(f"Study overview (scores table and plot on the study's parent run): {overview}")
        if not options["quiet"]:
            click.echo("Press Ctrl-C to stop.", err=True)
        code = process.wait()
        click.echo(f"error: the MLflow UI exited with code {code}" if code else "The MLflow UI exited.", err=True)
        tail = _log_tail(log)
        if tail:
            click.echo(tail, err=True)
        sys.exit(EXIT_FAILURE if code else EXIT_OK)
    except KeyboardInterrupt:
        _set_signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not leave the server half-stopped
        if process is not None:
            _stop_process_group(process)
        if not options["quiet"]:
            click.echo("MLflow UI stopped.", err=True)
        # returning normally: exit code 0
    finally:
        for sig, handler in previous.items():
            _set_signal(sig, handler)
        if process is not None and process.poll() is None:  # any other way out: never leave a server behind
            _stop_process_group(process)
        if log is not None:
            log.close()
