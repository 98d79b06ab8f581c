"""Stripe's side of the membership: webhooks in, and the member's actions out.

Webhooks: verified, then stored (StripeEvent, unique by id) before anything is done, and acted
on by the handler table (handlers.py) in the same transaction: the new row is the lock that
makes a second delivery of the event wait and then find it done, and the event is kept with what
came of it, or not at all (a crash before the commit: Stripe, having had no answer, delivers it
again). A duplicate is answered 200 and nothing more (one statement); a handler that raises
leaves the event "failed" with its error and traceback (its savepoint is rolled back, the event
row is kept; Stripe retries it, `flask billing stripe replay` reprocesses it).

Actions (subscribe, pause, resume, cancel, change_tier, update_card, refund_invoice) mirror
billing.memberships.service: each checks the membership's rules first (a dry run that writes
nothing), then asks Stripe, and changes local state only when Stripe has said yes; the
subscription Stripe returns is then applied through the same handler a webhook would use, so
the webhook that follows finds nothing left to do. A membership not billed through Stripe (paid
at the desk) just takes the local verb."""

from __future__ import annotations

import json
import logging
import traceback as tb
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
import stripe
from flask import current_app
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from billing.errors import Conflict, DomainError, InvalidInput, NotFound, ServiceUnavailable
from billing.extensions import db
from billing.memberships import service as memberships
from billing.memberships.models import Membership, State
from billing.payments import service as payments
from billing.payments.models import Invoice
from billing.plans.models import PlanVersion
from billing.pool import autocommit_connections
from billing.settings import clinic_settings
from billing.stripe_sync import gateway as gateway_module
from billing.stripe_sync import handlers
from billing.stripe_sync.gateway import Gateway, PaymentDeclined
from billing.stripe_sync.models import (
    ATTENTION,
    ATTENTION_STATUSES,
    PENDING,
    RECEIVED,
    EventStatus,
    StripeEvent,
)

log = logging.getLogger(__name__)
DONE = {EventStatus.PROCESSED, EventStatus.IGNORED, EventStatus.FLAGGED}


class BadWebhook(DomainError):
    status, slug, title = 400, "bad-webhook", "Webhook rejected"


@dataclass
class Receipt:
    event_id: str
    type: str
    status: str
    duplicate: bool = False
    outcome: str | None = None
    error: str | None = None


# ---------------------------------------------------------------------------------------------
# Webhooks


def receive_webhook(
    payload: bytes,
    signature: str | None,
    *,
    secret: str | None,
    tolerance: int,
    now: datetime,
    parsed: object = None,
) -> Receipt:
    """Verify, store, then process one delivery (STRIPE_WEBHOOK_PROCESSING=inline). A bad
    signature, a stale timestamp or a body that is not an event is a BadWebhook (400) and
    nothing is recorded.

    A new event is stored and acted on in one transaction: its row, inserted first, is the lock
    that makes a concurrent delivery of the same event wait, then find it done. A duplicate of
    an event already done costs one statement and writes nothing."""
    event = verified_event(payload, signature, secret=secret, tolerance=tolerance, parsed=parsed)
    stored = _store(event, now, payload)
    if stored is None:  # new: this transaction holds its row
        return _act(
            event["id"],
            event["type"],
            event["data"]["object"],
            state_at=datetime.fromtimestamp(event["created"], UTC),
            attempts=1,
            now=now,
        )
    db.session.rollback()  # ends the read; nothing was written
    if stored.status in DONE:
        return Receipt(
            stored.id, stored.type, stored.status, duplicate=True, outcome=stored.outcome
        )
    return process(event["id"], now=now)  # failed before (or left received): act again


def verified_event(
    payload: bytes,
    signature: str | None,
    *,
    secret: str | None,
    tolerance: int,
    parsed: object = None,
) -> dict:
    """The event, once the signature says Stripe sent exactly these bytes; else BadWebhook (400).
    `parsed` is the body already parsed from these bytes (the request's own JSON, read once)."""
    if not secret:
        raise ServiceUnavailable(
            "Stripe webhooks are not configured: set STRIPE_WEBHOOK_SECRET.",
            slug="stripe-not-configured",
        )
    try:
        stripe.WebhookSignature.verify_header(payload, signature, secret, tolerance)
    except stripe.SignatureVerificationError as exc:
        raise BadWebhook(
            f"The Stripe-Signature header does not verify: {exc.user_message or exc}",
            slug="bad-signature",
        ) from None
    except UnicodeDecodeError:
        raise BadWebhook("The body is not UTF-8 text.", slug="not-json") from None
    event = parsed
    if event is None:
        try:
            event = json.loads(payload)
        except ValueError:
            raise BadWebhook("The body is not JSON.", slug="not-json") from None
    _check_event(event)
    return event


def queue_webhook(
    payload: bytes,
    signature: str | None,
    *,
    secret: str | None,
    tolerance: int,
    now: datetime,
    parsed: object = None,
) -> Receipt:
    """Verify and store one delivery, and nothing else (STRIPE_WEBHOOK_PROCESSING=queued): the
    worker acts on it. Stripe wants a quick 2xx and delivers again when it gets none, so this
    is kept to one statement and its commit; the event is durable before the 200.

    On PostgreSQL the statement goes straight to the driver's connection (no unit of work, no
    statement compiled per request). A duplicate delivery inserts nothing and is answered the
    same way, whatever became of the event."""
    event = verified_event(payload, signature, secret=secret, tolerance=tolerance, parsed=parsed)
    if db.engine.dialect.name == "postgresql":  # no Session made for this request
        return enqueue(db.engine, event, payload, now)
    values = _new_event_values(event, now, attempts=0, last_attempt_at=None)
    new = db.session.execute(_STORE_OTHER, {**values, "payload": event}).first() is not None
    db.session.commit()
    return Receipt(event["id"], event["type"], EventStatus.RECEIVED, duplicate=not new)


def enqueue(engine: sa.Engine, event: dict, payload: bytes, now: datetime) -> Receipt:
    """Store a verified event as `received` on PostgreSQL, as the bytes Stripe signed, in one
    autocommitted statement: the receipt says whether this delivery was the first. Shared by
    the Flask view and the intake door in front of Flask (intake.py), which has no app
    context: hence the engine is passed in."""
    values = _new_event_values(event, now, attempts=0, last_attempt_at=None)
    new = _enqueue_on_driver(engine, values, payload.decode("utf-8-sig"))
    return Receipt(event["id"], event["type"], EventStatus.RECEIVED, duplicate=not new)


_ENQUEUE_PG = (
    "INSERT INTO stripe_events (id, type, object_id, stripe_created, livemode, payload, status, "
    "attempts, received_at) VALUES ($1, $2, $3, $4, $5, $6::json, $7, 0, $8) "
    "ON CONFLICT (id) DO NOTHING"
)


def _enqueue_on_driver(engine: sa.Engine, values: dict, payload_text: str) -> bool:
    """INSERT ... ON CONFLICT DO NOTHING on an autocommitted connection kept for it (the
    statement is its own transaction, durable when it returns: one round trip; an INSERT then a
    COMMIT were two). True when this delivery stored the event. A database that cannot take it
    is a 503, and Stripe delivers again; so is one that cannot even give a connection (the
    pool hands the driver's own error up, unwrapped, which was a 500)."""
    dbapi = engine.dialect.loaded_dbapi
    try:
        stored = autocommit_connections(engine).execute(
            _ENQUEUE_PG,
            (
                values["id"],
                values["type"],
                values["object_id"],
                values["stripe_created"],
                values["livemode"],
                payload_text,
                EventStatus.RECEIVED,
                values["received_at"],
            ),
        )
    except (dbapi.Error, sa.exc.SQLAlchemyError) as exc:
        raise _not_stored(values["id"], exc) from None
    return stored == 1


def _not_stored(event_id: str, exc: Exception) -> ServiceUnavailable:
    log.error("Stripe event %s could not be stored: %s", event_id, exc)
    return ServiceUnavailable(
        "The event could not be stored just now; Stripe will deliver it again.",
        slug="webhook-not-stored",
    )


def _check_event(event) -> None:
    ok = (
        isinstance(event, dict)
        and isinstance(event.get("id"), str)
        and event["id"]
        and isinstance(event.get("type"), str)
        and isinstance(event.get("created"), int)
        and isinstance((event.get("data") or {}).get("object"), dict)
    )
    if not ok:
        raise BadWebhook(
            "The body is not a Stripe event (id, type, created, data.object).", slug="not-an-event"
        )


_EVENTS = StripeEvent.__table__
_SEEN = (_EVENTS.c.id, _EVENTS.c.type, _EVENTS.c.status, _EVENTS.c.outcome, _EVENTS.c.attempts)
_NEW_EVENT = {
    column: sa.bindparam(column, type_=_EVENTS.c[column].type)
    for column in (
        "id",
        "type",
        "object_id",
        "stripe_created",
        "livemode",
        "status",
        "attempts",
        "received_at",
        "last_attempt_at",
    )
}


def _store_statement_pg() -> sa.Select:
    """INSERT ... ON CONFLICT DO NOTHING, and in the same statement the stored row when the id
    was there already. The payload goes in as the text Stripe signed (cast to json), not
    serialised again."""
    inserted = (
        pg_insert(_EVENTS)
        .values(**_NEW_EVENT, payload=sa.cast(sa.bindparam("payload", type_=sa.Text), sa.JSON))
        .on_conflict_do_nothing(index_elements=[_EVENTS.c.id])
        .returning(_EVENTS.c.id)
        .cte("inserted")
    )
    return (
        sa.select(sa.literal(True).label("created"), *[sa.null().label(c.name) for c in _SEEN])
        .select_from(inserted)
        .union_all(
            sa.select(sa.literal(False), *_SEEN).where(
                _EVENTS.c.id == sa.bindparam("id"), ~sa.exists(sa.select(inserted.c.id))
            )
        )
    )


# Built once: building a statement costs more than executing a cached one.
_STORE_PG = _store_statement_pg()
_STORE_OTHER = (
    sqlite_insert(_EVENTS)
    .values(**_NEW_EVENT, payload=sa.bindparam("payload", type_=_EVENTS.c.payload.type))
    .on_conflict_do_nothing()
    .returning(_EVENTS.c.id)
)
_STORED = sa.select(*_SEEN).where(_EVENTS.c.id == sa.bindparam("id"))
_RECORD_FAILED = (
    _EVENTS.update()
    .where(_EVENTS.c.id == sa.bindparam("event_id"))
    .values(
        status=sa.bindparam("new_status"),
        outcome=sa.bindparam("new_outcome"),
        error=sa.bindparam("new_error"),
        traceback=sa.bindparam("new_traceback"),
        attempts=sa.bindparam("new_attempts"),
        last_attempt_at=sa.bindparam("now", type_=_EVENTS.c.last_attempt_at.type),
        next_attempt_at=sa.bindparam("new_next_attempt_at", type_=_EVENTS.c.next_attempt_at.type),
    )
)
_RECORD_DONE = _RECORD_FAILED.values(
    processed_at=sa.bindparam("now", type_=_EVENTS.c.processed_at.type)
)


def _new_event_values(
    event: dict, now: datetime, *, attempts: int, last_attempt_at: datetime | None
) -> dict:
    return {
        "id": event["id"],
        "type": event["type"],
        "object_id": str(event["data"]["object"].get("id") or "")[:255] or None,
        "stripe_created": datetime.fromtimestamp(event["created"], UTC),
        "livemode": bool(event.get("livemode")),
        "status": EventStatus.RECEIVED,
        "attempts": attempts,
        "received_at": now,
        "last_attempt_at": last_attempt_at,
    }


def _store(event: dict, now: datetime, payload: bytes | None = None) -> sa.Row | None:
    """Keep the verified event before acting on it: None when this delivery stored it (the
    transaction holds the new row until it commits), else the stored event's (id, type, status,
    outcome, attempts).

    One statement on PostgreSQL: the insert and, when the id is already there, the stored
    row's status. A delivery racing with another of the same event waits on the id's unique key
    until the other commits, then finds it stored."""
    values = _new_event_values(event, now, attempts=1, last_attempt_at=now)
    if db.session.get_bind().dialect.name == "postgresql":
        text = payload.decode("utf-8-sig") if payload is not None else json.dumps(event)
        found = db.session.execute(_STORE_PG, {**values, "payload": text}).first()
        if found is not None:
            return None if found.created else found
    elif db.session.execute(_STORE_OTHER, {**values, "payload": event}).first() is not None:
        return None
    # Stored by a delivery that committed while this statement ran (or on SQLite): read it.
    return db.session.execute(_STORED, {"id": event["id"]}).one()


def process(event_id: str, *, now: datetime, force: bool = False) -> Receipt:
    """Act on a stored event in one transaction (under a lock on its row, so two deliveries
    never act at once). `force` reprocesses an event already done (replay)."""
    row = db.session.execute(
        sa.select(*_SEEN, _EVENTS.c.payload, _EVENTS.c.stripe_created)
        .where(_EVENTS.c.id == event_id)
        .with_for_update()
    ).one_or_none()
    if row is None:
        raise NotFound(f"No Stripe event {event_id} was received.")
    if row.status in DONE and not force:
        db.session.rollback()
        return Receipt(row.id, row.type, row.status, duplicate=True, outcome=row.outcome)
    attempts = (row.attempts or 0) + 1
    # Opens the write transaction before the handler's savepoint (SQLite too).
    db.session.execute(
        _EVENTS.update()
        .where(_EVENTS.c.id == event_id)
        .values(attempts=attempts, last_attempt_at=now)
    )
    return _act(
        row.id,
        row.type,
        row.payload["data"]["object"],
        state_at=row.stripe_created,
        attempts=attempts,
        now=now,
    )


def _act(
    event_id: str, event_type: str, obj: dict, *, state_at: datetime, attempts: int, now: datetime
) -> Receipt:
    """Run the event's handler in a savepoint of the transaction that holds the event's row,
    record what came of it on the row, commit."""
    status, outcome, error, trace = _attempt(
        event_id, event_type, obj, state_at=state_at, now=now, settings=clinic_settings()
    )
    record = _record(event_id, status, outcome, error, trace, attempts, now, _retry_policy())
    db.session.execute(_RECORD_FAILED if status == EventStatus.FAILED else _RECORD_DONE, record)
    db.session.commit()
    if status == EventStatus.FAILED:
        log.error("Stripe event %s (%s) failed: %s", event_id, event_type, error)
    return Receipt(event_id, event_type, status, outcome=outcome, error=error)


def _attempt(
    event_id: str, event_type: str, obj: dict, *, state_at: datetime, now: datetime, settings
) -> tuple[str, str | None, str | None, str | None]:
    ctx = handlers.Context(
        actor=f"stripe:{event_id}",
        now=now,
        event_id=event_id,
        state_at=state_at,
        settings=settings,
    )
    return _run(lambda: handlers.apply(event_type, obj, ctx))


@dataclass(frozen=True)
class RetryPolicy:
    """A failed event is tried again `base_seconds` x 2^(attempts-1) later, and stops being
    retried by itself after `max_attempts` tries (then staff and `stripe replay`)."""

    base_seconds: float = 30.0
    max_attempts: int = 8

    def next_attempt(self, attempts: int, now: datetime) -> datetime | None:
        if attempts >= self.max_attempts:
            return None
        return now + timedelta(seconds=self.base_seconds * 2 ** max(attempts - 1, 0))


def _retry_policy() -> RetryPolicy:
    config = current_app.config
    return RetryPolicy(
        base_seconds=float(config.get("STRIPE_EVENT_RETRY_SECONDS", 30)),
        max_attempts=int(config.get("STRIPE_EVENT_MAX_ATTEMPTS", 8)),
    )


def _record(
    event_id: str,
    status: str,
    outcome: str | None,
    error: str | None,
    trace: str | None,
    attempts: int,
    now: datetime,
    policy: RetryPolicy,
) -> dict:
    failed = status == EventStatus.FAILED
    return {
        "event_id": event_id,
        "new_status": status,
        "new_outcome": outcome,
        "new_error": error,
        "new_traceback": trace,
        "new_attempts": attempts,
        "new_next_attempt_at": policy.next_attempt(attempts, now) if failed else None,
        "now": now,
    }


# The worker's claim: events not done, in Stripe's order, each taken by one worker only (rows
# another worker holds are skipped on PostgreSQL). A lock, not a write: the attempt is counted
# by the one UPDATE that records what came of the event, in the same transaction (an UPDATE here
# too made two new versions of every 4 KB row, and the claim's scan longer). Its statuses are
# the pending index's own predicate, written out: as bound parameters, the worker's prepared
# claim (a generic plan) read the whole history, 27 ms at 200,000 events and growing.
_DUE_AT = sa.bindparam("now", type_=_EVENTS.c.next_attempt_at.type)
_CLAIM = (
    sa.select(
        _EVENTS.c.id,
        _EVENTS.c.type,
        _EVENTS.c.payload,
        _EVENTS.c.stripe_created,
        _EVENTS.c.attempts,
    )
    .where(
        PENDING,
        sa.or_(
            _EVENTS.c.status == EventStatus.RECEIVED,
            sa.and_(
                _EVENTS.c.next_attempt_at <= _DUE_AT,
                _EVENTS.c.attempts < sa.bindparam("max_attempts"),
            ),
        ),
    )
    .order_by(_EVENTS.c.stripe_created, _EVENTS.c.id)
    .limit(sa.bindparam("limit"))
    .with_for_update(skip_locked=True)
)
# SQLite has no row locks: a write first takes the database's write lock, so a second worker
# (or the scheduled drain) waits and then finds the events done.
_WRITE_LOCK_SQLITE = _EVENTS.update().where(sa.false()).values(attempts=_EVENTS.c.attempts)


def work_batch(
    *, now: datetime, limit: int = 50, policy: RetryPolicy | None = None
) -> list[Receipt]:
    """Act on up to `limit` stored events in one transaction: claimed in Stripe's created
    order, each handler in its own savepoint (a failure undoes only its own event), what came
    of each recorded on its row, one commit. An event is acted on and marked done in the same
    commit, so a crash leaves it waiting, never done twice."""
    policy = policy or _retry_policy()
    if db.engine.dialect.name == "sqlite":
        db.session.execute(_WRITE_LOCK_SQLITE)
    claimed = db.session.execute(
        _CLAIM, {"now": now, "limit": limit, "max_attempts": policy.max_attempts}
    ).all()
    if not claimed:
        db.session.rollback()
        return []
    settings = clinic_settings()
    receipts, done, failed = [], [], []
    for row in claimed:
        status, outcome, error, trace = _attempt(
            row.id,
            row.type,
            _object_of(row.payload),
            state_at=row.stripe_created,
            now=now,
            settings=settings,
        )
        attempts = row.attempts + 1
        record = _record(row.id, status, outcome, error, trace, attempts, now, policy)
        (failed if status == EventStatus.FAILED else done).append(record)
        receipts.append(Receipt(row.id, row.type, status, outcome=outcome, error=error))
    if done:
        db.session.execute(_RECORD_DONE, done)
    if failed:
        db.session.execute(_RECORD_FAILED, failed)
    db.session.commit()
    for r in receipts:
        if r.status == EventStatus.FAILED:
            log.error("Stripe event %s (%s) failed: %s", r.event_id, r.type, r.error)
    return receipts


def _object_of(payload: object) -> dict:
    """data.object of a stored event; {} for a row that has none (its handler then fails and the
    event is kept failed, instead of the whole batch failing again and again)."""
    data = payload.get("data") if isinstance(payload, dict) else None
    obj = data.get("object") if isinstance(data, dict) else None
    return obj if isinstance(obj, dict) else {}


# The events waiting for the worker, counted from the pending index (a literal status, so the
# partial index applies under generic plans), up to a cap: the worker looks before each batch.
_WAITING = sa.select(sa.func.count()).select_from(
    sa.select(sa.literal_column("1"))
    .select_from(_EVENTS)
    .where(RECEIVED)
    .limit(sa.bindparam("cap"))
    .subquery()
)


def waiting(cap: int = 100_000) -> int:
    """Events stored and not yet acted on (up to `cap`): the worker's backlog."""
    return int(db.session.execute(_WAITING, {"cap": cap}).scalar_one())


def drain(
    *,
    now: Callable[[], datetime],
    limit: int = 50,
    policy: RetryPolicy | None = None,
    should_stop: Callable[[], bool] = lambda: False,
) -> Counter:
    """Work batches until none is due (or `should_stop`): what came of the events, counted."""
    counts: Counter = Counter()
    while not should_stop():
        receipts = work_batch(now=now(), limit=limit, policy=policy)
        if not receipts:
            break
        counts.update(r.status for r in receipts)
    return counts


def _run(action: Callable[[], str | None]) -> tuple[str, str | None, str | None, str | None]:
    """Run a handler inside a savepoint: (status, outcome, error, traceback)."""
    try:
        with db.session.begin_nested():
            outcome = action()
            db.session.flush()
        return EventStatus.PROCESSED, outcome, None, None
    except handlers.Skip as exc:
        return EventStatus.IGNORED, str(exc), None, None
    except handlers.NeedsAttention as exc:
        return EventStatus.FLAGGED, str(exc), None, None
    except DomainError as exc:  # a business rule said no: retrying will not help, staff will
        return EventStatus.FLAGGED, f"{exc.title}: {exc.detail}", None, None
    except Exception as exc:
        return EventStatus.FAILED, None, f"{type(exc).__name__}: {exc}", tb.format_exc()


def replay(
    event_ids: Iterable[str] = (), *, failed: bool = False, flagged: bool = False, now: datetime
) -> list[Receipt]:
    """Reprocess stored events: the ones named, and/or every failed (or flagged) one."""
    ids = list(event_ids)
    statuses = [
        s for s, wanted in ((EventStatus.FAILED, failed), (EventStatus.FLAGGED, flagged)) if wanted
    ]
    if failed:
        statuses.append(EventStatus.RECEIVED)  # a crash between storing and processing
    if statuses:
        ids += (
            db.session.execute(
                sa.select(StripeEvent.id)
                .where(StripeEvent.status.in_(statuses), StripeEvent.id.not_in(ids or [""]))
                .order_by(StripeEvent.stripe_created, StripeEvent.id)
            )
            .scalars()
            .all()
        )
    for event_id in ids:
        if db.session.get(StripeEvent, event_id) is None:
            raise NotFound(f"No Stripe event {event_id} was received.")
    return [process(event_id, now=now, force=True) for event_id in ids]


def list_events(*, status: str | None = None, limit: int = 100) -> list[StripeEvent]:
    return list(db.session.execute(_events_query(status).limit(limit)).scalars())


def _events_query(status: str | None) -> sa.Select:
    """Newest first. Asked for the failed or flagged ones (what staff look at), the attention
    index's predicate is written out too: prepared on a pooled connection and planned for any
    status (plan_cache_mode), `status = $1` alone cannot use that partial index, and the list
    would read every event ever received."""
    q = sa.select(StripeEvent).order_by(StripeEvent.received_at.desc(), StripeEvent.id)
    if status:
        q = q.where(StripeEvent.status == status)
    if status in ATTENTION_STATUSES:
        q = q.where(ATTENTION)
    return q


# ---------------------------------------------------------------------------------------------
# Reading Stripe to repair what lost webhooks left behind, and finance's numbers


INVOICE_EVENT = {
    "paid": "invoice.paid",
    "void": "invoice.voided",
    "uncollectible": "invoice.marked_uncollectible",
}


def reconcile(
    *, now: datetime, since: datetime | None = None, gateway: Gateway | None = None
) -> list[str]:
    """Read subscriptions and invoices from Stripe and apply each through the handler its
    webhook would have used: first every subscription is tied to its membership (by the id in
    its metadata, when the answer that would have recorded it was lost), then invoices oldest
    first (the periods they paid, the payments that failed), then each subscription's current
    state. Returns what was fixed, in words."""
    gw = gateway or gateway_module.current()
    ctx = handlers.Context(actor="stripe:reconcile", now=now, settings=clinic_settings())
    fixed: list[str] = []
    subscriptions = list(gw.list_subscriptions(since))
    for sub in subscriptions:
        membership = db.session.execute(
            sa.select(Membership).where(Membership.stripe_subscription_id == sub["id"])
        ).scalar_one_or_none()
        if membership is None:
            linked = handlers.membership_for_subscription(
                sub["id"], sub.get("metadata"), handlers._id(sub.get("customer"))
            )
            if linked is not None:
                fixed.append(f"{sub['id']}: tied to membership {linked.id}")
    invoices = sorted(gw.list_invoices(since), key=lambda i: (i.get("created") or 0, i["id"]))
    for invoice in invoices:
        status = invoice.get("status")
        if status == "draft":
            continue
        kind = INVOICE_EVENT.get(status) or (
            "invoice.payment_failed" if invoice.get("attempt_count") else "invoice.finalized"
        )
        fixed += _repair(kind, invoice, ctx)
    for sub in subscriptions:
        fixed += _repair("customer.subscription.updated", sub, ctx)
    db.session.commit()
    return fixed


def _repair(event_type: str, obj: dict, ctx: handlers.Context) -> list[str]:
    status, outcome, error, _trace = _run(lambda: handlers.apply(event_type, obj, ctx))
    if status == EventStatus.PROCESSED and outcome:
        return [f"{obj['id']}: {outcome}"]
    if status == EventStatus.FLAGGED:
        return [f"{obj['id']}: NEEDS ATTENTION: {outcome}"]
    if status == EventStatus.FAILED:
        return [f"{obj['id']}: FAILED: {error}"]
    return []


def pull_balance_transactions(
    *, since: datetime | None = None, gateway: Gateway | None = None
) -> list[str]:
    """Stripe's fee and net (and payout) for every charge and refund we recorded."""
    gw = gateway or gateway_module.current()
    done: list[str] = []
    for txn in gw.list_balance_transactions(since):
        source = handlers._id(txn.get("source"))
        if not source:
            continue
        payment = payments.apply_balance_transaction(
            source_id=source,
            balance_transaction_id=txn["id"],
            fee_minor=int(txn.get("fee") or 0),
            net_minor=int(txn.get("net") or 0),
        )
        if payment is not None:
            done.append(
                f"payment {payment.id} ({source}): fee {txn.get('fee')}, net {txn.get('net')}"
            )
    try:
        for payout in gw.list_payouts():
            for txn in gw.list_payout_transactions(payout["id"]):
                if payments.set_payout(txn["id"], payout["id"]):
                    done.append(f"{txn['id']} paid out in {payout['id']}")
    except gateway_module.StripeRejected as exc:
        done.append(f"payouts not read: {exc.detail}")
    db.session.commit()
    return done


def sync_catalog(*, gateway: Gateway | None = None) -> list[str]:
    gw = gateway or gateway_module.current()
    done = gw.sync_catalog()
    db.session.commit()
    return done


# ---------------------------------------------------------------------------------------------
# The member's actions through Stripe


def _dry_run(verb: Callable[[], object]) -> object:
    """Check a membership verb's rules without keeping anything it writes."""
    savepoint = db.session.begin_nested()
    try:
        return verb()
    finally:
        savepoint.rollback()


def _confirmed_by_stripe(
    membership: Membership,
    verb: Callable[[], object],
    ask_stripe: Callable[[object], dict],
    *,
    actor: str,
    now: datetime,
) -> Membership:
    """A member's action: without a Stripe subscription it is just the local verb. With one, the
    verb's rules are checked first (a dry run that keeps nothing), Stripe is asked (given what the
    dry run returned), and only then is the verb applied and Stripe's answer converged."""
    if not membership.stripe_subscription_id:
        verb()
        db.session.commit()
        return membership
    sub = ask_stripe(_dry_run(verb))
    verb()
    _converge(sub, actor=actor, now=now)
    db.session.commit()
    return membership


def _converge(sub: dict, *, actor: str, now: datetime) -> None:
    """Apply the subscription Stripe returned, as its webhook would."""
    handlers.on_subscription_changed(
        sub, handlers.Context(actor=actor, now=now, settings=clinic_settings())
    )


def _apply_invoice(invoice: dict | None, *, actor: str, now: datetime) -> str | None:
    if not invoice:
        return None
    ctx = handlers.Context(actor=actor, now=now, settings=clinic_settings())
    if invoice.get("status") == "paid":
        handlers.on_invoice_paid(invoice, ctx)
    elif invoice.get("attempt_count"):
        handlers.on_invoice_payment_failed(invoice, ctx)
    elif invoice.get("status") != "draft":
        handlers.on_invoice_changed(invoice, ctx)
    return invoice.get("status")


def subscribe(
    membership: Membership,
    *,
    mode: str = "online",
    payment_method: str | None = None,
    actor: str,
    now: datetime,
    gateway: Gateway | None = None,
) -> dict:
    """Start billing a membership that waits for its first payment. online: returns what the
    browser needs to pay the first invoice; card_on_file: charges the card now."""
    if mode not in ("online", "card_on_file"):
        raise InvalidInput("mode is online or card_on_file.", errors={"mode": ["unknown mode"]})
    if membership.state != State.PENDING:
        raise Conflict(
            f"Membership {membership.id} is {memberships.READABLE[State(membership.state)]}: only "
            "a membership waiting for its first payment can start a subscription.",
            slug="not-pending",
        )
    if membership.stripe_subscription_id:
        raise Conflict(
            f"Membership {membership.id} already has subscription {membership.stripe_subscription_id}.",
            slug="already-subscribed",
        )
    gw = gateway or gateway_module.current()
    gw.ensure_customer(membership.member)
    db.session.commit()  # the customer exists in Stripe whatever happens next
    started = gw.start_subscription(membership, mode, payment_method)
    membership.stripe_subscription_id = started.subscription["id"]
    if mode == "online":
        membership.source = "online"
    _converge(started.subscription, actor=actor, now=now)
    invoice_status = _apply_invoice(started.latest_invoice, actor=actor, now=now)
    db.session.commit()
    return {
        "membership": membership,
        "subscription_id": started.subscription["id"],
        "subscription_status": started.subscription.get("status"),
        "invoice_status": invoice_status,
        "client_secret": started.client_secret if invoice_status != "paid" else None,
        "hosted_invoice_url": started.hosted_invoice_url if invoice_status != "paid" else None,
    }


def pause(
    membership: Membership,
    *,
    actor: str,
    now: datetime,
    reason: str = "",
    resume_at: datetime | None = None,
    gateway: Gateway | None = None,
) -> Membership:
    def verb():
        return memberships.pause(
            membership, actor=actor, now=now, reason=reason, resume_at=resume_at, commit=False
        )

    return _confirmed_by_stripe(
        membership,
        verb,
        lambda _: (gateway or gateway_module.current()).pause_collection(membership, resume_at),
        actor=actor,
        now=now,
    )


def resume(
    membership: Membership,
    *,
    actor: str,
    now: datetime,
    reason: str = "",
    gateway: Gateway | None = None,
) -> Membership:
    def verb():
        return memberships.resume(membership, actor=actor, now=now, reason=reason, commit=False)

    return _confirmed_by_stripe(
        membership,
        verb,
        lambda _: (gateway or gateway_module.current()).resume(membership),
        actor=actor,
        now=now,
    )


def cancel(
    membership: Membership,
    *,
    at_period_end: bool,
    actor: str,
    now: datetime,
    reason: str = "",
    override_reason: str | None = None,
    is_admin: bool = False,
    gateway: Gateway | None = None,
) -> Membership:
    """Cancel now or at period end, honouring the minimum commitment (memberships.cancel);
    an early-termination fee is invoiced through Stripe."""

    def verb():
        return memberships.cancel(
            membership,
            at_period_end=at_period_end,
            actor=actor,
            now=now,
            reason=reason,
            override_reason=override_reason,
            is_admin=is_admin,
            commit=False,
        )

    def ask_stripe(_) -> dict:
        terms = memberships.cancellation_terms(membership)
        fee = (
            terms["early_termination_fee_minor"]
            if not override_reason and membership.state != State.PENDING
            else 0
        )
        # What the local verb will do: at period end only from an active membership with a period.
        later = (
            at_period_end
            and membership.state == State.ACTIVE
            and membership.current_period_end is not None
        )
        return (gateway or gateway_module.current()).cancel(
            membership, at_period_end=later, early_termination_fee_minor=fee or None
        )

    return _confirmed_by_stripe(membership, verb, ask_stripe, actor=actor, now=now)


def change_tier(
    membership: Membership,
    new_version: PlanVersion,
    *,
    actor: str,
    now: datetime,
    gateway: Gateway | None = None,
) -> Membership:
    """Upgrade now (Stripe prorates and invoices the difference; the extra credits are granted
    now) or downgrade from the next period (no proration)."""
    source_ref = f"upgrade:{membership.stripe_subscription_id}:{new_version.id}"

    def verb():
        return memberships.change_tier(
            membership,
            new_version,
            actor=actor,
            now=now,
            source_ref=source_ref if membership.stripe_subscription_id else None,
            commit=False,
        )

    return _confirmed_by_stripe(
        membership,
        verb,
        lambda event: (gateway or gateway_module.current()).change_price(
            membership, new_version, upgrade=event.reason == "upgrade"
        ),
        actor=actor,
        now=now,
    )


def change_tier_to(
    membership: Membership,
    plan_code: str,
    *,
    actor: str,
    now: datetime,
    gateway: Gateway | None = None,
) -> Membership:
    """change_tier to the current version of the plan with this code."""
    version = memberships.current_version(plan_code=plan_code)
    return change_tier(membership, version, actor=actor, now=now, gateway=gateway)


def update_card(
    membership: Membership,
    *,
    actor: str,
    now: datetime,
    payment_method: str | None = None,
    flow: str = "setup_intent",
    return_url: str | None = None,
    gateway: Gateway | None = None,
) -> dict:
    """Without a card: a SetupIntent (or a billing-portal link) for the member to enter one.
    With a card (confirmed by that SetupIntent): it becomes the default, and an open invoice
    of this membership (a failed first payment, a past-due renewal) is tried again at once."""
    gw = gateway or gateway_module.current()
    member = membership.member
    customer = gw.ensure_customer(member)
    db.session.commit()
    if not payment_method:
        if flow == "portal":
            if not return_url:
                raise InvalidInput(
                    "The billing portal needs a return_url.", errors={"return_url": ["required"]}
                )
            return gw.billing_portal_session(customer, return_url)
        return gw.card_setup_session(
            customer, idempotency_key=f"member-{member.id}-setup-{int(now.timestamp())}"
        )
    gw.set_default_card(customer, payment_method)
    result: dict = {"kind": "saved", "payment_method": payment_method, "invoice_status": None}
    invoice = _open_invoice(membership)
    if invoice is not None:
        try:
            paid = gw.pay_invoice(
                invoice.stripe_invoice_id,
                idempotency_key=f"invoice-{invoice.id}-retry-{payment_method}",
            )
        except PaymentDeclined as exc:
            result["invoice_status"] = "open"
            result["detail"] = exc.detail
        else:
            if isinstance(paid.get("lines"), dict):
                result["invoice_status"] = _apply_invoice(paid, actor=actor, now=now)
            else:
                result["invoice_status"] = paid.get("status")
        db.session.commit()
    return result


def _open_invoice(membership: Membership) -> Invoice | None:
    return (
        db.session.execute(
            sa.select(Invoice)
            .where(
                Invoice.membership_id == membership.id,
                Invoice.status == "open",
                Invoice.stripe_invoice_id.is_not(None),
            )
            .order_by(Invoice.issued_at.desc(), Invoice.id.desc())
        )
        .scalars()
        .first()
    )


def refund_invoice(
    invoice_id: int,
    *,
    actor: str,
    now: datetime,
    amount_minor: int | None = None,
    gateway: Gateway | None = None,
) -> dict:
    """Give money back on a paid invoice through Stripe; the unused credits it bought are
    clawed back, and what was already used becomes an amount owed (as for charge.refunded)."""
    invoice = db.session.get(Invoice, invoice_id)
    if invoice is None:
        raise NotFound(f"No invoice {invoice_id}.")
    charge_payment = payments.find_charge_payment(invoice.stripe_charge_id, None)
    charge_id = invoice.stripe_charge_id or (
        charge_payment.stripe_charge_id if charge_payment else None
    )
    if invoice.status != "paid" or not charge_id:
        raise Conflict(
            f"Invoice {invoice_id} has no card payment in Stripe to refund.", slug="not-refundable"
        )
    left = invoice.amount_paid_minor - (invoice.amount_refunded_minor or 0)
    amount = left if amount_minor is None else amount_minor
    if amount <= 0 or amount > left:
        raise InvalidInput(
            f"The refund must be between 1 and {left} (what is left of the payment).",
            errors={"amount_minor": [f"must be 1..{left}"]},
        )
    gw = gateway or gateway_module.current()
    refund = gw.refund(
        charge_id,
        None if amount == left and not invoice.amount_refunded_minor else amount,
        idempotency_key=f"invoice-{invoice.id}-refund-{invoice.amount_refunded_minor or 0}-{amount}",
    )
    charge = gw.retrieve_charge(charge_id)
    charge.setdefault("refunds", {"data": [refund]})
    outcome = handlers.on_charge_refunded(
        charge, handlers.Context(actor=actor, now=now, settings=clinic_settings())
    )
    db.session.commit()
    return {
        "invoice": invoice,
        "refund_id": refund["id"],
        "amount_minor": amount,
        "outcome": outcome,
    }
