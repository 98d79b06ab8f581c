"""`flask billing export NAME --from DATE --to DATE [--format csv|xero|qbo] [--output FILE]`."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from billing.finance.exports import EXPORTS, csv_chunks, export_csv


@click.command("export")
@click.argument("name", type=click.Choice(sorted(EXPORTS)))
@click.option("--from", "date_from", required=True, type=click.DateTime(["%Y-%m-%d"]))
@click.option("--to", "date_to", required=True, type=click.DateTime(["%Y-%m-%d"]))
@click.option("--format", "fmt", type=click.Choice(["csv", "xero", "qbo"]), default="csv")
@click.option("--location", help="Location code.")
@click.option("--tier", help="Plan code.")
@click.option(
    "--output", "-o", type=click.Path(dir_okay=False, path_type=Path), help="Default: stdout."
)
def export_command(name, date_from, date_to, fmt, location, tier, output) -> None:
    """Write a finance export as UTF-8 CSV (dates are clinic-local, both days included)."""
    from billing.errors import DomainError
    from billing.finance import journals
    from billing.finance.recognition import finance_settings, resolve_scope

    export = EXPORTS[name]
    if fmt not in export.formats:
        raise click.BadParameter(f"{name} is exported as {', '.join(export.formats)} only.")
    try:
        scope = resolve_scope(
            date_from.date(),
            date_to.date(),
            location=location,
            tier=tier,
            settings=finance_settings(),
        )
        if name == "revenue-journal":
            _write_journal(journals.journal_files(scope, fmt), output)
            return
        if output is None:
            for chunk in export_csv(export, scope):
                click.echo(chunk, nl=False)
            return
        if sys.stdout.isatty():  # a progress bar counts rows: Python writes them
            rows = export.rows(scope)
            with (
                output.open("w", encoding="utf-8", newline="") as handle,
                click.progressbar(rows, label=f"Exporting {name}") as bar,
            ):
                _write(handle, bar)
        else:  # the same bytes, by the database where it can (exports.export_csv)
            with output.open("wb") as handle:
                for chunk in export_csv(export, scope):
                    handle.write(chunk)
    except DomainError as exc:
        raise click.ClickException(exc.detail) from None
    click.echo(f"Wrote {output}", err=True)


def _write(handle, rows) -> None:
    for chunk in csv_chunks(rows):
        handle.write(chunk)


def _write_journal(files, output: Path | None) -> None:
    from billing.finance.journals import to_csv_text

    if len(files) > 1 and output is None:
        raise click.ClickException(
            f"This journal needs {len(files)} files (Xero takes at most 300 lines each): "
            "give --output FILE and they are written as FILE-part-N.csv."
        )
    if output is None:
        click.echo(to_csv_text(files[0][1]), nl=False)
        return
    targets = (
        [output]
        if len(files) == 1
        else [
            output.with_name(f"{output.stem}-part-{n}{output.suffix}")
            for n in range(1, len(files) + 1)
        ]
    )
    for target, (_, rows) in zip(targets, files, strict=True):
        target.write_text(to_csv_text(rows), encoding="utf-8", newline="")
        click.echo(f"Wrote {target}", err=True)
