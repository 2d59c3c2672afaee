"""What every ``disentbench`` command shares: exit codes, the bad-input error, one-line messages.

The CLI promises one policy for all its commands: exit 0 on success, 1 when a
run, an analysis or the store failed, 2 on bad input (config, arguments,
missing data, a device, data folder or store this machine cannot use), 130 for
a ``run`` stopped by Ctrl-C; and every bad-input message is one line naming
what is wrong and what to do. Keeping those pieces here, below the command
modules and the root group, lets each command use them without importing the
group that lists the commands. Heavy imports (the plugin registry, the config
loader) happen inside the functions so ``disentbench --help`` stays fast.
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from pathlib import Path

import click

from disentbench.core.messages import show_warning_one_line

EXIT_OK, EXIT_FAILURE, EXIT_BAD_INPUT = 0, 1, 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, the shell's convention
INTERRUPTED_RUN = "interrupted: rerun the same command to resume (finished runs are kept)"

CONFIG_SUFFIXES = (".yaml", ".yml", ".toml", ".json")


class BadInput(click.ClickException):
    """Bad input: shown as one ``error: MESSAGE`` line, exit 2."""

    exit_code = EXIT_BAD_INPUT

    def show(self, file=None):
        click.echo(f"error: {self.format_message()}", err=True)


def plugin_registry():
    """The process's plugin registry; its problems (a plugin that failed to load) are shown once, on stderr."""
    from disentbench.core.registry import get_plugin_manager

    registry = get_plugin_manager()
    if not getattr(registry, "_problems_shown", False):
        for problem in registry.problems:  # once per process, on stderr
            click.echo(f"problem: {problem}", err=True)
        registry._problems_shown = True
    return registry


def check_data_root() -> None:
    """$DISENTBENCH_DATA (or the default data root) must be a folder that can be written: else exit 2."""
    from disentbench.core import paths

    try:
        paths.check_data_root()
    except paths.DataRootError as exc:
        raise BadInput(str(exc)) from None


def load_study(config_path: str, max_runs: int | None = None):
    """The validated study config of a file; on problems, one ``error:`` line each and exit 2.

    ``max_runs`` overrides the config's limit on the grid's size (``run --max-runs``).
    """
    from disentbench.core.config.load import load_study_config
    from disentbench.core.config.problems import ConfigError

    try:
        return load_study_config(config_path, plugin_registry(), max_runs=max_runs)
    except ConfigError as exc:
        for problem in exc.problems:
            click.echo(f"error: {problem}", err=True)
        click.echo(f"{len(exc.problems)} problem(s) in {config_path}; nothing was run.", err=True)
        sys.exit(EXIT_BAD_INPUT)
    except UnicodeDecodeError as exc:  # a binary or non-UTF-8 file given as the config
        raise BadInput(f"{config_path}: not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8") from None


def looks_like_config(target: str) -> bool:
    """Whether a CONFIG|EXPERIMENT argument names a config file (else an experiment)."""
    return Path(target).suffix.lower() in CONFIG_SUFFIXES or Path(target).is_file()


def study_target(target: str, tracking_uri: str | None):
    """``(config or None, experiment name, tracking URI)`` of a CONFIG|EXPERIMENT argument (a bad config exits 2)."""
    if looks_like_config(target):
        config = load_study(target)  # exits 2 with one line per problem
        return config, config.experiment_name, tracking_uri or config.tracking.uri
    return None, target, tracking_uri


@contextlib.contextmanager
def reading_study():
    """Errors while reading a study back from MLflow, as one line: bad input exits 2, a failed store 1."""
    from disentbench.core.analysis.loading import MixedEvaluationError
    from disentbench.core.tracking.tracker import TrackingError

    try:
        yield
    except MixedEvaluationError as exc:
        raise BadInput(str(exc)) from None
    except LookupError as exc:
        raise BadInput(f"{exc.args[0] if exc.args else exc}; check the name or pass --tracking-uri") from None
    except TrackingError as exc:
        raise BadInput(str(exc)) from None
    except Exception as exc:  # the store itself failed (unreachable server, corrupt file)
        click.echo(f"error: cannot read the study from MLflow: {type(exc).__name__}: {exc}", err=True)
        sys.exit(EXIT_FAILURE)


def global_options(ctx: click.Context | None = None) -> dict:
    """The global options (``quiet``, ``verbose``) of this invocation; defaults outside the ``main`` group."""
    ctx = ctx or click.get_current_context(silent=True)
    obj = ctx.find_root().obj if ctx is not None else None
    return {"quiet": False, "verbose": False, **(obj if isinstance(obj, dict) else {})}


def no_color() -> bool:
    """NO_COLOR (https://no-color.org): set and not empty turns colour off."""
    return bool(os.environ.get("NO_COLOR"))


def term_width() -> int:
    """The terminal's width in columns; 120 when output is not a terminal."""
    try:
        return os.get_terminal_size().columns
    except OSError:
        return 120


class OneLineUsageError(click.exceptions.UsageError):
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


def one_line_usage(exc: click.exceptions.UsageError) -> click.exceptions.UsageError:
    """click's 4-6 line usage errors (Usage, Try, blank, Error) as one line naming the help to read."""
    if isinstance(exc, (OneLineUsageError, click.exceptions.NoArgsIsHelpError)):
        return exc  # a bare group shows its help, as it should
    message = " ".join(exc.format_message().split()).rstrip(".")
    return OneLineUsageError(f"{message}; see {_command_path(exc.ctx)} --help", exc.ctx)


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
