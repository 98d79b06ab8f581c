"""`flask billing catalog load FILE` and `flask billing catalog export [--output FILE]`."""

from __future__ import annotations

import getpass
from pathlib import Path

import click
from flask.cli import AppGroup


@click.group("catalog", cls=AppGroup)
def catalog_cli() -> None:
    """The treatment and plan catalogue as a YAML file."""


def _cli_actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except Exception:  # no user name in some containers
        return "cli"


@catalog_cli.command("load")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--dry-run", is_flag=True, help="Check the file and say what would change; write nothing."
)
@click.option(
    "--if-empty",
    is_flag=True,
    help="Load only when there are no treatments yet (first start); otherwise do nothing.",
)
def load_command(file: Path, dry_run: bool, if_empty: bool) -> None:
    """Bring the catalogue to what FILE says: all of it, or nothing if any entry is wrong.

    New codes are created, changed treatments updated, and a plan whose price or contents
    changed gets a new version (members stay on theirs). Loading the same file again changes
    nothing."""
    from billing import clock
    from billing.errors import DomainError
    from billing.plans import service
    from billing.plans.catalog_file import load_catalog_file

    if if_empty and service.list_treatments(include_retired=True):
        click.echo("The catalogue is not empty; nothing loaded (--if-empty).")
        return
    try:
        summary = load_catalog_file(file, actor=_cli_actor(), now=clock.now(), dry_run=dry_run)
    except DomainError as exc:
        raise click.ClickException(f"{file}: nothing was loaded. {exc.detail}") from None
    if dry_run:
        click.echo("Dry run: nothing was written. Loading would give:")
    for line in summary.lines():
        click.echo(line)


@catalog_cli.command("export")
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write to this file instead of standard output.",
)
def export_command(output: Path | None) -> None:
    """Write the catalogue (current versions, retired entries marked) in the load format."""
    from billing import clock
    from billing.plans.catalog_file import dump_catalog
    from billing.plans.service import export_catalog

    header = (
        f"Catalogue exported {clock.now():%Y-%m-%d %H:%M} UTC by `flask billing catalog export`.\n"
        "Money is in major units as quoted strings. Load it with `flask billing catalog load`."
    )
    text = dump_catalog(export_catalog(), header=header)
    if output is None:
        click.echo(text, nl=False)
    else:
        output.write_text(text, encoding="utf-8")
        click.echo(f"Wrote {output}", err=True)
