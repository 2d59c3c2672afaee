"""The ``disentbench`` command line.

Exit codes: 0 success, 1 a run or command failed, 2 bad input (config, arguments,
missing data, a device, data folder or store this machine cannot use), 130 a
``run`` interrupted by Ctrl-C (``ui`` exits 0 on Ctrl-C). Every bad-input
message is one line per problem, naming the offending field or file and what
to do; click's usage errors too (``error: MESSAGE; see disentbench CMD --help``).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import warnings
from pathlib import Path

import click

from disentbench.core.messages import show_warning_one_line

EXIT_OK, EXIT_FAILURE, EXIT_BAD_INPUT = 0, 1, 2


class BadInput(click.ClickException):
    exit_code = EXIT_BAD_INPUT

    def show(self, file=None):
        click.echo(f"error: {self.format_message()}", err=True)


def _registry():
    from disentbench.core.registry import get_plugin_manager

    registry = get_plugin_manager()
    if not getattr(registry, "_problems_shown", False):
        for problem in registry.problems:  # once per process, on stderr
            click.echo(f"problem: {problem}", err=True)
        registry._problems_shown = True
    return registry


def _check_data_root() -> None:
    """$DISENTBENCH_DATA (or the default data root) must be a folder that can be written: else exit 2."""
    from disentbench.core.paths import DataRootError, check_data_root

    try:
        check_data_root()
    except DataRootError as exc:
        raise BadInput(str(exc)) from None


def _load(config_path: str):
    from disentbench.core.config.schema import ConfigError, load_study_config

    try:
        return load_study_config(config_path, _registry())
    except ConfigError as exc:
        for problem in exc.problems:
            click.echo(f"error: {problem}", err=True)
        click.echo(f"{len(exc.problems)} problem(s) in {config_path}; nothing was run.", err=True)
        sys.exit(EXIT_BAD_INPUT)
    except UnicodeDecodeError as exc:  # a binary or non-UTF-8 file given as the config
        raise BadInput(f"{config_path}: not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8") from None


def _options(ctx: click.Context | None = None) -> dict:
    """The global options (``quiet``, ``verbose``) of this invocation; defaults outside the ``main`` group."""
    ctx = ctx or click.get_current_context(silent=True)
    obj = ctx.find_root().obj if ctx is not None else None
    return {"quiet": False, "verbose": False, **(obj if isinstance(obj, dict) else {})}


def _no_color() -> bool:
    """NO_COLOR (https://no-color.org): set and not empty turns colour off."""
    return bool(os.environ.get("NO_COLOR"))


class _OneLineUsageError(click.exceptions.UsageError):
    """A usage error shown as one line, ``error: MESSAGE; see disentbench COMMAND --help`` (exit 2)."""

    exit_code = EXIT_BAD_INPUT

    def show(self, file=None):
        click.echo(f"error: {self.message}", err=True)


def _command_path(ctx: click.Context | None) -> str:
    """``disentbench SUB ...`` for ``ctx`` whatever the program was called (CliRunner names it ``main``)."""
    names = []
    while ctx is not None:
        names.append(ctx.info_name or "")
        ctx = ctx.parent
    names.reverse()
    return " ".join(["disentbench", *[n for n in names[1:] if n]])


def _one_line_usage(exc: click.exceptions.UsageError) -> click.exceptions.UsageError:
    """click's 4-6 line usage errors (Usage, Try, blank, Error) as one line naming the help to read."""
    if isinstance(exc, (_OneLineUsageError, click.exceptions.NoArgsIsHelpError)):
        return exc  # a bare group shows its help, as it should
    message = " ".join(exc.format_message().split()).rstrip(".")
    return _OneLineUsageError(f"{message}; see {_command_path(exc.ctx)} --help", exc.ctx)


_ORIGINAL_SHOWWARNING = warnings.showwarning
_ORIGINAL_SHOWWARNMSG_IMPL = getattr(warnings, "_showwarnmsg_impl", None)


@contextlib.contextmanager
def one_line_warnings(enabled: bool = True):
    """Show Python warnings as single ``warning:`` lines while the CLI runs (restored afterwards).

    Left alone where warnings are being recorded (pytest.warns, catch_warnings(record=True)).
    """
    recording = getattr(warnings, "_showwarnmsg_impl", None) is not _ORIGINAL_SHOWWARNMSG_IMPL
    if not enabled or recording or warnings.showwarning is not _ORIGINAL_SHOWWARNING:
        yield
        return
    warnings.showwarning = show_warning_one_line
    try:
        yield
    finally:
        if warnings.showwarning is show_warning_one_line:
            warnings.showwarning = _ORIGINAL_SHOWWARNING


INTERRUPTED_RUN = "interrupted: rerun the same command to resume (finished runs are kept)"
EXIT_INTERRUPTED = 130  # 128 + SIGINT, the shell's convention


class _MainGroup(click.Group):
    """Turns an unexpected exception into one ``error:`` line and exit 1 (the traceback with --verbose).

    Also: click usage errors as one line (exit 2), warnings as one line, and Ctrl-C:
    ``run`` exits 130 with how to resume, ``ui`` exits 0.
    """

    def make_context(self, info_name, args, parent=None, **extra):
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except click.exceptions.UsageError as exc:
            raise _one_line_usage(exc) from None

    def invoke(self, ctx: click.Context):
        try:
            with one_line_warnings(enabled=not ctx.params.get("verbose")):  # --verbose: Python's full form
                return super().invoke(ctx)
        except click.exceptions.UsageError as exc:
            raise _one_line_usage(exc) from None
        except (KeyboardInterrupt, click.exceptions.Abort):
            command = ctx.invoked_subcommand
            if command == "ui":  # Ctrl-C stops the UI, at any moment: that is how it is meant to end
                ctx.exit(EXIT_OK)
            if command == "run":
                click.echo(INTERRUPTED_RUN, err=True)
                ctx.exit(EXIT_INTERRUPTED)
            raise
        except (click.exceptions.ClickException, click.exceptions.Exit, EOFError):
            raise
        except BrokenPipeError:  # the reader went away (`disentbench compare x --csv | head`): stop quietly
            try:
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
            except (OSError, ValueError, AttributeError):
                pass
            ctx.exit(EXIT_FAILURE)
        except Exception as exc:
            if _options(ctx)["verbose"]:
                raise
            click.echo(f"error: {type(exc).__name__}: {exc}", err=True)
            click.echo("(run with --verbose for the full traceback)", err=True)
            ctx.exit(EXIT_FAILURE)


EPILOG = """\b
Exit codes:
  0  success
  1  failure: a run, an analysis or the tracking store failed
  2  bad input: config, arguments or options, missing data files, a device,
     data folder or tracking store this machine cannot use
  130  run interrupted (Ctrl-C): rerun the same command to resume
\b
Colour is off when NO_COLOR is set or output is not a terminal; progress
bars become plain lines when not on a terminal. Shell completion: see the
README (eval "$(_DISENTBENCH_COMPLETE=bash_source disentbench)").
"""


@click.group(cls=_MainGroup, context_settings={"help_option_names": ["-h", "--help"]}, epilog=EPILOG)
@click.version_option(package_name="disentbench")
@click.option("--quiet", "-q", is_flag=True, help="Less output: no progress bars or informational lines.")
@click.option("--verbose", "-v", is_flag=True, help="More output: debug log lines, server logs, full tracebacks.")
@click.pass_context
def main(ctx, quiet, verbose):
    """disentbench: train, score and analyse disentanglement studies.

    \b
    Example:
      disentbench plugins
      disentbench run examples/quickstart.yaml
      disentbench compare examples/quickstart.yaml --sort mig
      disentbench ui examples/quickstart.yaml
    """
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")  # MLflow probes git; silence its warning
    if quiet and verbose:
        raise click.UsageError("--quiet and --verbose exclude each other")
    ctx.ensure_object(dict)
    ctx.obj.update(quiet=quiet, verbose=verbose)
    if _no_color():
        ctx.color = False  # click strips ANSI styles from echo; rich honours NO_COLOR itself
    if quiet:  # commands with their own --quiet (run -q) get it as their default
        defaults = dict(ctx.default_map or {})
        defaults["run"] = {**defaults.get("run", {}), "quiet": True}
        ctx.default_map = defaults
    if verbose:
        import logging

        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
        logging.getLogger("disentbench").setLevel(logging.DEBUG)


# ---------------------------------------------------------------------------
# plugins


@main.group("plugins", invoke_without_command=True)
@click.option("--kind", type=click.Choice(["model", "dataset", "metric", "task", "executor", "analysis"]), help="Only this kind.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def plugins_cmd(ctx, kind, as_json):
    """List every plugin: kind, name, source package and description.

    \b
    Example:
      disentbench plugins --kind metric
      disentbench plugins show model beta_vae
    """
    if ctx.invoked_subcommand is not None:
        return
    registry = _registry()
    rows = [(r.kind, r.name, r.source, r.description) for r in registry.all(kind)]
    if as_json:
        click.echo(json.dumps([dict(zip(("kind", "name", "source", "description"), row)) for row in rows], indent=2))
    else:
        from rich.console import Console
        from rich.table import Table

        table = Table("kind", "name", "source", "description", box=None, pad_edge=False)
        for row in rows:
            table.add_row(*row)
        Console(width=max(120, _term_width())).print(table)


@plugins_cmd.command("show")
@click.argument("kind", type=click.Choice(["model", "dataset", "metric", "task", "executor", "analysis"]), metavar="KIND")
@click.argument("name")
def plugins_show(kind, name):
    """Show a plugin's config schema (JSON schema with defaults).

    \b
    Example:
      disentbench plugins show metric mig
    """
    registry = _registry()
    try:
        registration = registry.get(kind, name)
    except KeyError as exc:
        raise BadInput(exc.args[0]) from None
    click.echo(f"{registration.kind} {registration.name} (from {registration.source}): {registration.description}")
    click.echo(json.dumps(registration.config.model_json_schema(), indent=2))


def _term_width() -> int:
    try:
        return os.get_terminal_size().columns
    except OSError:
        return 120


# ---------------------------------------------------------------------------
# run


@main.command("run")
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--dry-run", is_flag=True, help="Validate and print the run table; train nothing.")
@click.option("--device", help="Override training.device (auto, cpu, cuda, cuda:N).")
@click.option("--tracking-uri", help="Override the MLflow tracking URI.")
@click.option("--executor", help="Override the config's executor (local, multiprocess, ...).")
@click.option("--quiet", "-q", is_flag=True, help="No progress output.")
def run_cmd(config, dry_run, device, tracking_uri, executor, quiet):
    """Run a study: train, score and record every run of the grid in MLflow.

    Finished runs (same run key) are skipped, so re-running resumes a study.

    \b
    Example:
      disentbench run examples/quickstart.yaml
      disentbench run examples/quickstart.yaml --dry-run
      disentbench run study.yaml --device cuda:1 --tracking-uri http://mlflow:5000
      disentbench run study.yaml --executor multiprocess
    """
    from disentbench.core.config.grid import expand_grid

    study = _load(config)
    if device is not None:
        from disentbench.core.config.schema import TrainingConfig

        try:
            TrainingConfig(device=device)
        except Exception:
            raise BadInput(f"--device {device!r} is not a device; use auto, cpu, cuda, cuda:N or mps") from None
    if executor is not None and executor not in _registry().plugins["executor"]:
        known = ", ".join(_registry().names("executor"))
        raise BadInput(f"--executor {executor!r} is not an executor plugin; known: {known}")
    specs = expand_grid(study, _registry())
    if dry_run:
        _print_run_table(specs)
        click.echo(f"{len(specs)} runs")
        return

    from disentbench.core.study.run import run_study

    try:
        result = run_study(
            study,
            device=device,
            tracking_uri=tracking_uri,
            config_path=Path(config),
            progress=not quiet,
            executor=executor,
        )
    except (FileNotFoundError, ValueError) as exc:
        raise BadInput(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None
    except RuntimeError as exc:
        click.echo(f"error: {(str(exc).splitlines() or [type(exc).__name__])[0]}", err=True)
        sys.exit(EXIT_FAILURE)
    _print_scores(result)
    if result.failed:
        for outcome in result.failed:  # why, one line each (with -q nothing else says it)
            reason = (outcome.error or "unknown error").splitlines()[0]
            click.echo(f"error: run {outcome.spec.run_name} failed: {reason}", err=True)
        click.echo(f"{len(result.failed)} run(s) failed; see their 'error' tag in MLflow, then re-run to retry.", err=True)
        sys.exit(EXIT_FAILURE)


def _print_run_table(specs) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table("#", "run key", "dataset", "model", "params", "seed", "steps", box=None, pad_edge=False)
    shown = specs if len(specs) <= 200 else specs[:100] + specs[-100:]
    for spec in shown:
        params = " ".join(f"{k}={v}" for k, v in spec.swept.items())
        table.add_row(str(spec.index), spec.run_key, spec.dataset, spec.model, params, str(spec.seed), str(spec.steps))
    Console(width=max(120, _term_width())).print(table)
    if len(shown) < len(specs):
        click.echo(f"(showing the first and last 100 of {len(specs)} runs)")


def _print_scores(result) -> None:
    from rich.console import Console
    from rich.table import Table

    columns = result.headline_keys
    several_reps = len(result.config.evaluation.representations) > 1

    def header(key: str) -> str:
        # as `compare` labels them: a metric with several headline keys shows which one (code_std:mean_std)
        _, representation, name, sub = key.split("/", 3)
        siblings = {c.split("/", 3)[3] for c in columns if c.split("/", 3)[2] == name}
        label = f"{name}:{sub}" if len(siblings) > 1 else name
        return f"{label} ({representation})" if several_reps else label

    table = Table(title=f"study {result.config.name}", box=None, pad_edge=False)
    for name in ("model", "params", "dataset", "seed", "status"):
        table.add_column(name, no_wrap=True)
    for key in columns:
        table.add_column(header(key), justify="right")
    for outcome in result.outcomes:
        spec = outcome.spec
        params = " ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in spec.swept.items())
        values = [f"{outcome.scores[c]:.3f}" if c in outcome.scores else "-" for c in columns]
        table.add_row(spec.model, params, spec.dataset, str(spec.seed), outcome.status, *values)
    Console(width=max(120, _term_width())).print(table)
    click.echo(f"Results are in MLflow ({result.tracking_uri}), experiment '{result.config.experiment_name}'.")
    click.echo(f"Open the MLflow UI: disentbench ui --tracking-uri {result.tracking_uri}")


# ---------------------------------------------------------------------------
# status


@main.command("status")
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--tracking-uri", help="Override the MLflow tracking URI.")
def status_cmd(config, tracking_uri):
    """Per run of a study: finished, running, failed or pending (read from MLflow).

    \b
    Example:
      disentbench status examples/quickstart.yaml
    """
    from rich.console import Console
    from rich.table import Table

    from disentbench.core.tracking import tracker as tracking
    from disentbench.core.config.grid import expand_grid

    study = _load(config)
    specs = expand_grid(study, _registry())
    uri = tracking.resolve_tracking_uri(tracking_uri or study.tracking.uri)
    try:
        tracker, experiment_id = tracking.open_existing(uri, study.experiment_name)
    except tracking.TrackingError as exc:
        raise BadInput(str(exc)) from None
    recorded = tracker.runs_by_key(experiment_id) if experiment_id else {}
    if experiment_id is None:
        # every run pending is the truth before the first `run`, and a hint when the store is the wrong one
        click.echo(
            f"note: no experiment named {study.experiment_name!r} in {uri} yet, so every run is pending; "
            "if the study has run, pass its --tracking-uri (or run status where it ran)",
            err=True,
        )
    table = Table("#", "run", "run key", "status", box=None, pad_edge=False)
    counts: dict[str, int] = {}
    for spec in specs:
        status = tracking.status_of(recorded.get(spec.run_key, [])).lower()
        counts[status] = counts.get(status, 0) + 1
        table.add_row(str(spec.index), spec.run_name, spec.run_key, status)
    Console(width=max(120, _term_width())).print(table)
    summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    click.echo(f"{len(specs)} runs: {summary}")


# ---------------------------------------------------------------------------
# ui


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


def _experiment_fragment(experiment_id: str) -> str:
    """The UI route of an experiment's runs table; MLflow 3 otherwise opens its GenAI overview."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        major = int(version("mlflow").split(".")[0])
    except (PackageNotFoundError, ValueError):
        major = 3
    if major >= 3:
        return f"#/experiments/{experiment_id}/runs?workflowType=machine_learning"
    return f"#/experiments/{experiment_id}"


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


def _stop_process_group(process: "subprocess.Popen", timeout: float = 10.0) -> None:
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


@main.command("ui")
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
    UI's home page). Ctrl-C stops the server and all its worker processes
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

    options = _options(ctx)
    experiment, from_config = None, False
    if target:
        if Path(target).suffix.lower() in (".yaml", ".yml", ".toml", ".json") or Path(target).is_file():
            from_config = True
            study = _load(target)
            tracking_uri = tracking_uri or study.tracking.uri
            experiment = study.experiment_name
        else:
            experiment = target
    uri = resolve_tracking_uri(tracking_uri)
    if uri.startswith(("http://", "https://")):
        raise BadInput(f"{uri} is already a tracking server; open it in a browser instead")
    experiment_id = None
    try:
        check_sqlite_uri(uri)
        if experiment:
            experiment_id = open_existing(uri, experiment)[1]  # never creates a store or an experiment
    except TrackingError as exc:
        raise BadInput(str(exc)) from None
    if experiment and experiment_id is None and not from_config:
        raise BadInput(f"no experiment named {experiment!r} in {uri}; check the name or pass --tracking-uri")

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
    url = base + (_experiment_fragment(experiment_id) if experiment_id else "")
    # One worker: a personal UI needs no more, and it starts much faster than MLflow's default four.
    command = [
        sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", host, "--port", str(port),
        "--workers", "1",
    ]
    log = None if options["verbose"] else tempfile.TemporaryFile()  # server logs: shown with --verbose or on failure
    popen_kwargs = {"start_new_session": True} if os.name == "posix" else {
        "creationflags": getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0)
    }

    def interrupted(signum, frame):  # SIGTERM stops the UI like Ctrl-C
        raise KeyboardInterrupt

    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    _set_signal(signal.SIGTERM, interrupted)
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


from disentbench.core.cli.data import data as data_group  # noqa: E402
main.add_command(data_group)

from disentbench.core.cli.analyze import analyze_cmd, theorem_cmd  # noqa: E402
main.add_command(analyze_cmd)
main.add_command(theorem_cmd)

from disentbench.core.cli.compare import compare_cmd  # noqa: E402
main.add_command(compare_cmd)


if __name__ == "__main__":
    main()
