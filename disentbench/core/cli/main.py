"""The ``disentbench`` command line: the root group, its policy for errors, and the list of commands.

Exit codes: 0 success, 1 a run or command failed, 2 bad input (config, arguments,
missing data, a device, data folder or store this machine cannot use), 130 a
``run`` interrupted by Ctrl-C (``ui`` exits 0 on Ctrl-C). Every bad-input
message is one line per problem, naming the offending field or file and what
to do; click's usage errors too (``error: MESSAGE; see disentbench CMD --help``).
Each command lives in a module of its own and knows nothing of this group; the
group applies that policy to all of them, and this module is the one place
that says which commands the program has.
"""

from __future__ import annotations

import os
import sys

import click

from disentbench.core.cli._common import (
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    INTERRUPTED_RUN,
    global_options,
    no_color,
    one_line_usage,
    one_line_warnings,
)
from disentbench.core.cli.analyze import analyze_cmd, theorem_cmd
from disentbench.core.cli.compare import compare_cmd
from disentbench.core.cli.data import data as data_group
from disentbench.core.cli.plugins import plugins_cmd
from disentbench.core.cli.run import run_cmd
from disentbench.core.cli.status import status_cmd
from disentbench.core.cli.ui import ui_cmd


class _MainGroup(click.Group):
    """Turns an unexpected exception into one ``error:`` line and exit 1 (the traceback with --verbose).

    Also: click usage errors as one line (exit 2), warnings as one line, and Ctrl-C:
    ``run`` exits 130 with how to resume, ``ui`` exits 0.
    """

    def make_context(self, info_name, args, parent=None, **extra):
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except click.exceptions.UsageError as exc:
            raise one_line_usage(exc) from None

    def invoke(self, ctx: click.Context):
        try:
            with one_line_warnings(enabled=not ctx.params.get("verbose")):  # --verbose: Python's full form
                return super().invoke(ctx)
        except click.exceptions.UsageError as exc:
            raise one_line_usage(exc) from None
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
            if global_options(ctx)["verbose"]:
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
    if no_color():
        ctx.color = False  # click strips ANSI styles from echo; rich honours NO_COLOR itself
    if quiet:  # commands with their own --quiet (run -q) get it as their default
        defaults = dict(ctx.default_map or {})
        defaults["run"] = {**defaults.get("run", {}), "quiet": True}
        ctx.default_map = defaults
    if verbose:
        import logging

        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
        logging.getLogger("disentbench").setLevel(logging.DEBUG)


main.add_command(plugins_cmd)
main.add_command(run_cmd)
main.add_command(status_cmd)
main.add_command(ui_cmd)
main.add_command(data_group)
main.add_command(analyze_cmd)
main.add_command(theorem_cmd)
main.add_command(compare_cmd)


if __name__ == "__main__":
    main()
