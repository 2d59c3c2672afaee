"""``disentbench plugins``: what the registry holds, and each plugin's config schema.

A study config names plugins (models, datasets, metrics, tasks, executors,
analyses) and gives their params; this command is where a user finds the names
and the params each one takes, as a table for reading or JSON for scripts.
"""

from __future__ import annotations

import json

import click

from disentbench.core.cli._common import BadInput, plugin_registry, term_width

KINDS = ["model", "dataset", "metric", "task", "executor", "analysis"]


@click.group("plugins", invoke_without_command=True)
@click.option("--kind", type=click.Choice(KINDS), help="Only this kind.")
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
    registry = plugin_registry()
    rows = [(r.kind, r.name, r.source, r.description) for r in registry.all(kind)]
    if as_json:
        click.echo(json.dumps([dict(zip(("kind", "name", "source", "description"), row)) for row in rows], indent=2))
    else:
        from rich.console import Console
        from rich.table import Table

        table = Table("kind", "name", "source", "description", box=None, pad_edge=False)
        for row in rows:
            table.add_row(*row)
        Console(width=max(120, term_width())).print(table)


@plugins_cmd.command("show")
@click.argument("kind", type=click.Choice(KINDS), metavar="KIND")
@click.argument("name")
def plugins_show(kind, name):
    """Show a plugin's config schema (JSON schema with defaults).

    \b
    Example:
      disentbench plugins show metric mig
    """
    registry = plugin_registry()
    try:
        registration = registry.get(kind, name)
    except KeyError as exc:
        raise BadInput(exc.args[0]) from None
    click.echo(f"{registration.kind} {registration.name} (from {registration.source}): {registration.description}")
    click.echo(json.dumps(registration.config.model_json_schema(), indent=2))
