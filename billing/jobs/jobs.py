"""The scheduled jobs. Each takes `now` (the scheduler passes billing.clock.now()), is safe to
run late or twice, and returns counts of what it did.

- expire_credits: gift months that have started are converted into credits and unclaimed gifts
  expire; cancellations whose period ended are finished; credits past their expiry roll over or
  expire by the tier's rule. One transaction per membership (and per gift).
- end_grace_periods: a past-due membership whose grace period is over is blocked from
  redeeming; the moment is recorded once as a "grace_ended" membership event.
- reconcile_stripe: asks Stripe what changed lately and repairs what the webhooks missed.
- notify: writes the emails members should get to an outbox, once each, and sends them.
- drain_stripe_events: acts on stored Stripe events the worker has not (a safety net: a
  deployment without `flask billing stripe work` still converges, a minute behind)."""

from __future__ import annotations

import importlib
import inspect
import logging
import os
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, is_dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from flask import current_app

from billing.entitlements import service as ledger
from billing.entitlements.models import EntryKind, LedgerEntry
from billing.extensions import db
from billing.jobs import notify as outbox
from billing.jobs.service import JobFailed, JobSkipped, JobSpec
from billing.memberships import service as memberships
from billing.memberships.models import Membership, MembershipEvent, State
from billing.settings import clinic_settings

log = logging.getLogger("billing.jobs")

ACTOR = "system:{job}"
BATCH_SIZE = 100


# ---------------------------------------------------------------------------------------------
# expire_credits


def expire_credits(*, now: datetime, batch_size: int = BATCH_SIZE) -> dict:
    """Bring every membership's ledger up to `now`: cancellations at period end are finished
    (what was left expires with the membership), then expired credits roll over or expire.

    Memberships are read in batches by id and each is committed on its own, so a run that is
    interrupted leaves every membership either untouched or done, and the next run (of any
    server) finishes the rest. Expiry instants are the credits' own (their period's end, cut in
    the clinic's timezone when the period was granted); `now` only says how far to go."""
    actor = ACTOR.format(job="expire_credits")
    settings = clinic_settings()
    counts: Counter = Counter(
        memberships=0,
        cancellations_finished=0,
        expired_entries=0,
        rollover_entries=0,
        expired_quantity=0,
        expired_value_minor=0,
    )
    crash_after = _test_crash_after()
    done = 0

    # Gifts first: months that have started become credits, and a gift nobody claimed in time
    # expires (its holding lot is breakage at claim_by) before the expiry pass below.
    from billing.gifts.service import grant_due_gift_months

    counts.update(grant_due_gift_months(now, settings=settings, actor=actor))

    for membership_id in _batched(
        lambda after, size: _ending_cancellations(now, after, size), batch_size
    ):
        ledger.lock_memberships([membership_id])
        membership = db.session.get(Membership, membership_id, populate_existing=True)
        if membership.state != State.CANCEL_AT_PERIOD_END or membership.cancel_at > now:
            db.session.rollback()  # undone or finished meanwhile (a webhook, another server)
            continue
        left = ledger.lots([membership_id])
        memberships.finish_cancellation(membership, actor=actor, now=now, commit=False)
        db.session.commit()
        counts["cancellations_finished"] += 1
        counts["memberships"] += 1
        counts["expired_entries"] += len(left)
        counts["expired_quantity"] += sum(lot.remaining for lot in left)
        counts["expired_value_minor"] += sum(lot.value_minor for lot in left)
        done = _maybe_crash(done + 1, crash_after)

    for membership_id in _batched(
        lambda after, size: _with_credits_past_expiry(now, after, size), batch_size
    ):
        ledger.lock_memberships([membership_id])
        membership = db.session.get(Membership, membership_id, populate_existing=True)
        # A run that comes late catches up in this one call: expire_unused rolls a credit over
        # period by period and expires what would still end in the past.
        written = ledger.expire_unused(
            membership, now=now, actor=actor, settings=settings, commit=False
        )
        if written:
            counts["memberships"] += 1
        for entry in written:
            if entry.kind == EntryKind.EXPIRE:
                counts["expired_entries"] += 1
                counts["expired_quantity"] -= entry.quantity
                counts["expired_value_minor"] -= entry.value_minor
            else:
                counts["rollover_entries"] += 1
        db.session.commit()
        done = _maybe_crash(done + 1, crash_after)
    return dict(counts)


def _batched(page: Callable[[int, int], list[int]], size: int) -> Iterator[int]:
    """Ids page by page (keyset on id), each page read fresh: a membership done by another
    server meanwhile simply drops out of the next page."""
    after = 0
    while True:
        ids = page(after, size)
        if not ids:
            return
        yield from ids
        after = ids[-1]
        if len(ids) < size:
            return


def _ending_cancellations(now: datetime, after: int, size: int) -> list[int]:
    return list(
        db.session.execute(
            sa.select(Membership.id)
            .where(
                Membership.state == State.CANCEL_AT_PERIOD_END,
                Membership.cancel_at.is_not(None),
                Membership.cancel_at <= now,
                Membership.id > after,
            )
            .order_by(Membership.id)
            .limit(size)
        ).scalars()
    )


def _with_credits_past_expiry(now: datetime, after: int, size: int) -> list[int]:
    """Memberships holding a credit with units left whose (latest) expiry has passed. A paused
    membership's credits wait for it to resume (their expiry moves by the pause)."""
    due = (
        sa.select(LedgerEntry.membership_id)
        .group_by(LedgerEntry.membership_id, LedgerEntry.credit_id)
        .having(
            sa.func.sum(LedgerEntry.quantity) > 0,
            sa.func.max(LedgerEntry.expires_at) <= now,
        )
    )
    return list(
        db.session.execute(
            sa.select(Membership.id)
            .where(
                Membership.id.in_(due),
                Membership.id > after,
                Membership.state != State.PAUSED,
            )
            .order_by(Membership.id)
            .limit(size)
        ).scalars()
    )


def _test_crash_after() -> int | None:
    """BILLING_TEST_CRASH_AFTER=N makes expire_credits die (os._exit) after N memberships, to
    test that a killed run resumes cleanly. Never honoured in production (BILLING_ENV)."""
    value = os.environ.get("BILLING_TEST_CRASH_AFTER")
    if not value or os.environ.get("BILLING_ENV") == "production":
        return None
    return int(value)


def _maybe_crash(done: int, crash_after: int | None) -> int:
    if crash_after is not None and done >= crash_after:
        log.warning("BILLING_TEST_CRASH_AFTER=%s: exiting in the middle of expire_credits", done)
        os._exit(17)
    return done


# ---------------------------------------------------------------------------------------------
# end_grace_periods


GRACE_ENDED = "grace_ended"


def end_grace_periods(*, now: datetime, batch_size: int = BATCH_SIZE) -> dict:
    """Past-due memberships whose grace period has passed are blocked from redeeming
    (Membership.can_redeem already says so from grace_ends_at); record it once per past-due
    spell as a "grace_ended" event, so the member's history and the desk can see when."""
    actor = ACTOR.format(job="end_grace_periods")
    counts = Counter(grace_ended=0)
    for membership_id in _batched(lambda after, size: _out_of_grace(now, after, size), batch_size):
        ledger.lock_memberships([membership_id])
        membership = db.session.get(Membership, membership_id, populate_existing=True)
        if not membership.redemption_blocked(now) or _grace_end_recorded(membership):
            db.session.rollback()  # paid meanwhile, or another server recorded it
            continue
        db.session.add(
            MembershipEvent(
                membership_id=membership.id,
                kind=GRACE_ENDED,
                from_state=membership.state,
                to_state=membership.state,
                at=now,
                effective_at=membership.grace_ends_at,
                actor=actor,
                reason="grace period over: treatments cannot be redeemed until the failed "
                "payment is settled",
                data={
                    "past_due_since": _iso(membership.past_due_since),
                    "grace_ends_at": _iso(membership.grace_ends_at),
                },
            )
        )
        db.session.commit()
        counts["grace_ended"] += 1
    return dict(counts)


def _out_of_grace(now: datetime, after: int, size: int) -> list[int]:
    recorded = sa.exists().where(
        MembershipEvent.membership_id == Membership.id,
        MembershipEvent.kind == GRACE_ENDED,
        MembershipEvent.effective_at == Membership.grace_ends_at,
    )
    return list(
        db.session.execute(
            sa.select(Membership.id)
            .where(
                Membership.state == State.PAST_DUE,
                Membership.grace_ends_at.is_not(None),
                Membership.grace_ends_at <= now,
                Membership.id > after,
                ~recorded,
            )
            .order_by(Membership.id)
            .limit(size)
        ).scalars()
    )


def _grace_end_recorded(membership: Membership) -> bool:
    return (
        db.session.execute(
            sa.select(MembershipEvent.id).where(
                MembershipEvent.membership_id == membership.id,
                MembershipEvent.kind == GRACE_ENDED,
                MembershipEvent.effective_at == membership.grace_ends_at,
            )
        ).first()
        is not None
    )


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


# ---------------------------------------------------------------------------------------------
# reconcile_stripe


def reconcile_stripe(*, now: datetime) -> dict:
    """Webhooks can be lost or arrive while we are down: compare the last days with Stripe and
    repair. Delegates to billing.stripe_sync.service.reconcile(since=...)."""
    if not current_app.config.get("STRIPE_API_KEY"):
        raise JobSkipped("Stripe is not configured (STRIPE_API_KEY is empty): nothing to compare.")
    try:
        module = importlib.import_module("billing.stripe_sync.service")
    except ModuleNotFoundError as exc:
        if exc.name != "billing.stripe_sync.service":
            raise
        module = None
    reconcile = getattr(module, "reconcile", None)
    if reconcile is None:
        raise JobSkipped("billing.stripe_sync.service.reconcile does not exist in this version.")
    days = int(current_app.config.get("STRIPE_RECONCILE_DAYS", 3))
    kwargs: dict = {"since": now - timedelta(days=days)}
    if "now" in inspect.signature(reconcile).parameters:
        kwargs["now"] = now
    return {"since_days": days, **_as_counts(reconcile(**kwargs))}


def _as_counts(result) -> dict:
    """What reconcile returns (the repairs in words; or a dict, a dataclass, a number) as
    JSON-safe counts, with the repairs themselves in the run's detail."""
    if result is None:
        return {"repaired": 0}
    if isinstance(result, list | tuple):
        shown = "; ".join(str(item) for item in result[:50])
        more = f" (and {len(result) - 50} more)" if len(result) > 50 else ""
        return {"repaired": len(result), "note": shown + more}
    if is_dataclass(result) and not isinstance(result, type):
        result = asdict(result)
    if not isinstance(result, dict):
        return {"repaired": result} if isinstance(result, int) else {"note": str(result)}
    counts: dict = {}
    for key, value in result.items():
        if isinstance(value, bool | int | float | str) or value is None:
            counts[str(key)] = value
        elif isinstance(value, list | tuple | set | dict):
            counts[str(key)] = len(value)
        else:
            counts[str(key)] = str(value)
    return counts


# ---------------------------------------------------------------------------------------------
# notify


def notify(*, now: datetime) -> dict:
    """Write what members should hear about (once per dedupe key), then send what is pending
    when mail is configured (MAIL_SERVER, MAIL_FROM)."""
    written = outbox.write_outbox(now=now, settings=clinic_settings())
    counts = {f"written_{kind}": n for kind, n in written.items()}
    mail = outbox.mail_settings()
    if mail is None:
        counts["pending"] = outbox.pending_count()
        counts["note"] = "mail is not configured (MAIL_SERVER, MAIL_FROM): nothing sent"
        return counts
    delivered = outbox.deliver_pending(now=now, mail=mail)
    counts.update(delivered.counts)
    if delivered.stopped_by:
        raise JobFailed(f"SMTP delivery stopped: {delivered.stopped_by}", counts)
    return counts


# ---------------------------------------------------------------------------------------------
# drain_stripe_events


def drain_stripe_events(*, now: datetime, max_seconds: float = 50.0) -> dict:
    """Act on webhook events stored but not acted on (and failed ones due a retry), as the
    worker does and alongside it (each event is claimed by one of them). Bounded in time so a
    long queue never overlaps the next minute's run; the worker, or the next run, goes on."""
    import time

    from billing import clock
    from billing.stripe_sync import service as stripe_service

    deadline = time.monotonic() + max_seconds
    counts = stripe_service.drain(
        now=clock.now,
        limit=int(current_app.config.get("STRIPE_WORKER_BATCH", 50)),
        should_stop=lambda: time.monotonic() > deadline,
    )
    return {s: counts.get(s, 0) for s in ("processed", "ignored", "flagged", "failed")}


# ---------------------------------------------------------------------------------------------
# The registry: what the scheduler runs, and how often (from the clinic's midnight + offset).

JOBS: dict[str, JobSpec] = {
    spec.name: spec
    for spec in [
        JobSpec(
            "expire_credits",
            expire_credits,
            every=timedelta(hours=1),
            offset=timedelta(minutes=1),
            description="Finish period-end cancellations; expire or roll over expired credits.",
        ),
        JobSpec(
            "end_grace_periods",
            end_grace_periods,
            every=timedelta(hours=1),
            offset=timedelta(minutes=2),
            description="Block redemptions of past-due memberships whose grace period is over.",
        ),
        JobSpec(
            "reconcile_stripe",
            reconcile_stripe,
            every=timedelta(days=1),
            offset=timedelta(hours=3),
            description="Compare the last days with Stripe and repair missed webhooks.",
        ),
        JobSpec(
            "notify",
            notify,
            every=timedelta(minutes=15),
            offset=timedelta(minutes=5),
            description="Write member emails to the outbox once each, and send pending ones.",
        ),
        JobSpec(
            "drain_stripe_events",
            drain_stripe_events,
            every=timedelta(minutes=1),
            offset=timedelta(0),
            description="Act on stored Stripe events the worker has not (a safety net).",
        ),
    ]
}
