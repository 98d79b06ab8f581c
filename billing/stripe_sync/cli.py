"""`flask --app wsgi billing stripe ...`: catalogue, reconciliation, fees, and replaying events."""

from __future__ import annotations

from datetime import UTC, datetime

import click
from flask.cli import AppGroup

from billing import clock
from billing.errors import DomainError

stripe_cli = AppGroup("stripe", help="Stripe: catalogue, reconciliation, fees, webhook replay.")


def _run(action):
    try:
        return action()
    except DomainError as exc:
        raise click.ClickException(exc.detail) from None


def _echo_all(lines: list[str], nothing: str) -> None:
    for line in lines:
        click.echo(line)
    if not lines:
        click.echo(nothing)


@stripe_cli.command("sync-catalog")
def sync_catalog() -> None:
    """Create in Stripe what the catalogue lacks (Product per plan, Price per version)."""
    from billing.stripe_sync import service

    _echo_all(_run(service.sync_catalog), "The catalogue is already in Stripe.")


@stripe_cli.command("reconcile")
@click.option(
    "--since",
    type=click.DateTime(formats=["%Y-%m-%d"]),
    default=None,
    help="Only invoices and subscriptions created on or after this day (UTC).",
)
def reconcile(since: datetime | None) -> None:
    """Read subscriptions and invoices from Stripe and repair what a lost webhook left behind."""
    from billing.stripe_sync import service

    start = since.replace(tzinfo=UTC) if since else None
    fixed = _run(lambda: service.reconcile(now=clock.now(), since=start))
    _echo_all(fixed, "Nothing to fix: every invoice and subscription is in step.")


@stripe_cli.command("pull-balance-transactions")
@click.option("--since", type=click.DateTime(formats=["%Y-%m-%d"]), default=None)
def pull_balance_transactions(since: datetime | None) -> None:
    """Fill in Stripe's fee, net and payout on the payments we recorded."""
    from billing.stripe_sync import service

    start = since.replace(tzinfo=UTC) if since else None
    done = _run(lambda: service.pull_balance_transactions(since=start))
    _echo_all(done, "Every payment already has its fee and net.")


@stripe_cli.command("replay")
@click.argument("event_ids", nargs=-1)
@click.option("--failed", is_flag=True, help="Every event whose handler failed.")
@click.option("--flagged", is_flag=True, help="Every event flagged for staff (after a fix).")
def replay(event_ids: tuple[str, ...], failed: bool, flagged: bool) -> None:
    """Process stored events again (handlers are idempotent: a replay changes only what is
    still out of step)."""
    from billing.stripe_sync import service

    if not event_ids and not failed and not flagged:
        raise click.UsageError("Name an EVENT_ID, or give --failed or --flagged.")
    receipts = _run(
        lambda: service.replay(event_ids, failed=failed, flagged=flagged, now=clock.now())
    )
    for r in receipts:
        detail = r.error if r.status == "failed" else (r.outcome or "nothing to change")
        click.echo(f"{r.event_id} {r.type}: {r.status} ({detail})")
    if not receipts:
        click.echo("No events to replay.")
    if any(r.status == "failed" for r in receipts):
        raise SystemExit(1)


@stripe_cli.command("work")
@click.option("--once", is_flag=True, help="Act on every event due, then exit.")
@click.option("--batch", type=click.IntRange(1, 1000), default=None, help="Events a transaction.")
@click.option("--poll", type=click.FloatRange(0.01), default=None, help="Seconds between looks.")
def work(once: bool, batch: int | None, poll: float | None) -> None:
    """Act on the webhook events stored but not yet acted on (STRIPE_WEBHOOK_PROCESSING=queued),
    in Stripe's order; failed ones again when due. Runs until SIGTERM (or, --once, until none
    is due)."""
    from flask import current_app

    from billing.stripe_sync import worker

    counts = worker.run(
        current_app._get_current_object(),
        once=once,
        batch=batch,
        poll_seconds=poll,
        report=click.echo,
    )
    if once:
        click.echo(", ".join(f"{k}: {v}" for k, v in sorted(counts.items())) or "Nothing due.")
    if once and counts.get("failed"):
        raise SystemExit(1)
