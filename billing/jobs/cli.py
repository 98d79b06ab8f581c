"""`flask billing scheduler` and `flask billing jobs list|run NAME|history`."""

from __future__ import annotations

import logging

import click
from flask import current_app
from flask.cli import AppGroup, with_appcontext


@click.command("scheduler")
@click.option(
    "--run-seconds",
    type=float,
    envvar="SCHEDULER_RUN_SECONDS",
    help="Stop after this many seconds (tests; env SCHEDULER_RUN_SECONDS). Default: run until "
    "stopped (SIGTERM or Ctrl-C).",
)
@with_appcontext
def scheduler_command(run_seconds: float | None) -> None:
    """Run the job scheduler in this process (one per app server; runs never double up)."""
    from billing.jobs import scheduler

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(process)d %(name)s %(levelname)s %(message)s"
    )
    scheduler.run_blocking(current_app._get_current_object(), run_seconds=run_seconds)


@click.group("jobs", cls=AppGroup)
def jobs_cli() -> None:
    """Scheduled jobs: what they are, run one now, what they did."""


def _when(moment) -> str:
    from billing.clock import clinic_tz

    return moment.astimezone(clinic_tz()).strftime("%Y-%m-%d %H:%M:%S %Z") if moment else "-"


def _counts(counts: dict | None) -> str:
    return ", ".join(f"{k}={v}" for k, v in (counts or {}).items()) or "-"


@jobs_cli.command("list")
def list_command() -> None:
    """Each job, how often it runs, when it runs next and how its last run went."""
    from billing.extensions import db
    from billing.jobs import scheduler, service

    next_runs = scheduler.stored_next_runs(db.engine)
    last = service.last_runs()
    for s in scheduler.schedules(current_app._get_current_object()):
        spec = service.get_spec(s.name)
        run = last.get(s.name)
        click.echo(f"{s.name}: every {s.every} -- {spec.description}")
        click.echo(f"    next: {_when(next_runs.get(s.name)) if next_runs else 'not scheduled'}")
        if run:
            click.echo(f"    last: {run.slot} {run.outcome} {_counts(run.counts)} {run.detail}")


@jobs_cli.command("run")
@click.argument("name")
def run_command(name: str) -> None:
    """Run job NAME now (slot manual:<timestamp>, so it always runs)."""
    from billing.errors import DomainError
    from billing.jobs import service
    from billing.jobs.models import Outcome

    try:
        run = service.run_job(name, slot=service.manual_slot())
    except DomainError as exc:
        raise click.ClickException(exc.detail) from None
    click.echo(f"{run.job} {run.slot}: {run.outcome}")
    click.echo(f"  {_counts(run.counts)}")
    if run.detail:
        click.echo(f"  {run.detail}")
    if run.outcome == Outcome.FAILED:
        raise click.ClickException(run.error or "failed")


@jobs_cli.command("history")
@click.option("--job", "name", help="Only this job.")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 1000))
def history_command(name: str | None, limit: int) -> None:
    """The latest runs, newest first: slot, outcome, what they did, who ran them."""
    from billing.errors import DomainError
    from billing.jobs import service

    try:
        runs = service.history(name, limit)
    except DomainError as exc:
        raise click.ClickException(exc.detail) from None
    if not runs:
        click.echo("No runs yet.")
    for run in runs:
        took = (
            f"{(run.finished_at - run.started_at).total_seconds():.1f}s"
            if run.finished_at
            else "unfinished"
        )
        click.echo(
            f"{_when(run.started_at)}  {run.job:<18} {run.slot:<40} {run.outcome:<9} {took:>10}"
            f"  {run.worker}  {_counts(run.counts)}"
            + (f"  ({run.detail})" if run.detail else "")
            + (f"  error: {run.error.strip().splitlines()[-1]}" if run.error else "")
        )
