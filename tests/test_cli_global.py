"""The CLI's global behaviour: NO_COLOR, exit codes, crashes as one line, plain progress off a terminal."""

from __future__ import annotations

import io

import click
import pytest
from click.testing import CliRunner

from disentbench.core.cli.main import main

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
