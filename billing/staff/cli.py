"""`flask billing staff ...`"""

from __future__ import annotations

import click
from flask.cli import AppGroup

staff_cli = AppGroup("staff", help="Staff and who may perform or supervise each category.")


@staff_cli.command("load-policies")
@click.option(
    "--overwrite", is_flag=True, help="Reset every category to the default (else keep edits)."
)
def load_policies(overwrite: bool) -> None:
    """Write the default category policies; safe to run again (existing rows are kept)."""
    from billing.staff.service import load_default_policies

    written, kept = load_default_policies(overwrite=overwrite)
    click.echo(f"{written} category policies written, {kept} kept as they were.")
