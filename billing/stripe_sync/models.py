"""Every verified Stripe event, stored before it is acted on, unique by its id; and what Stripe
tells us about a member as a customer (their billing details live in Stripe, mirrored here)."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from billing.db import UTCDateTime, utc_default
from billing.extensions import db


class EventStatus:
    RECEIVED = "received"  # stored, not yet (or not successfully) acted on
    PROCESSED = "processed"
    IGNORED = "ignored"  # a type we do not act on, or older than what we already applied
    FAILED = "failed"  # the handler raised: Stripe retries, `stripe replay` reprocesses
    FLAGGED = "flagged"  # unknown customer/subscription or a business conflict: for staff

    ALL = (RECEIVED, PROCESSED, IGNORED, FAILED, FLAGGED)


def _status_in(*statuses: str) -> sa.TextClause:
    """`status IN ('a', 'b')` with the statuses written out: a partial index's predicate, and a
    query's condition the planner can match to it. As bound parameters (a prepared statement
    under plan_cache_mode=force_generic_plan) the condition proves nothing about the index, and
    the query reads the whole table."""
    listed = ", ".join(f"'{s}'" for s in statuses)
    return sa.text(f"status IN ({listed})")


# What the worker looks for: events not yet done, in Stripe's order. Partial, so it holds only
# the few events waiting (received, or failed and due a retry), not the whole history.
PENDING = _status_in(EventStatus.RECEIVED, EventStatus.FAILED)
# Events stored and not yet acted on at all: the worker's backlog (read through the pending index).
RECEIVED = _status_in(EventStatus.RECEIVED)
# What staff look at and replay (`stripe replay --failed/--flagged`, the events list): the few
# events that went wrong, not the processed history every delivery and every update would
# otherwise add an index entry for.
ATTENTION_STATUSES = (EventStatus.FAILED, EventStatus.FLAGGED)
ATTENTION = _status_in(*ATTENTION_STATUSES)


class StripeEvent(db.Model):
    __tablename__ = "stripe_events"
    __table_args__ = (
        sa.Index(
            "ix_stripe_events_pending",
            "stripe_created",
            "id",
            postgresql_where=PENDING,
            sqlite_where=PENDING,
        ),
        sa.Index(
            "ix_stripe_events_attention",
            "status",
            postgresql_where=ATTENTION,
            sqlite_where=ATTENTION,
        ),
    )

    id: Mapped[str] = mapped_column(sa.String(255), primary_key=True)  # evt_...
    type: Mapped[str] = mapped_column(sa.String(96))
    # data.object.id (sub_..., in_..., ch_...): every event about one Stripe object.
    object_id: Mapped[str | None] = mapped_column(sa.String(255), index=True)
    stripe_created: Mapped[datetime] = mapped_column(UTCDateTime())
    livemode: Mapped[bool] = mapped_column(default=False)
    payload: Mapped[dict] = mapped_column(sa.JSON)
    # received -> processed | ignored | failed | flagged (unknown customer/subscription: for staff)
    status: Mapped[str] = mapped_column(sa.String(16), default="received")
    error: Mapped[str | None] = mapped_column(sa.Text)
    attempts: Mapped[int] = mapped_column(default=0)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utc_default)
    processed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # What the handler did, in words ("granted 2026-03-02..2026-04-02 to membership 7"), or why
    # it did nothing; and the traceback of the last failure, kept for whoever replays it.
    outcome: Mapped[str | None] = mapped_column(sa.Text)
    traceback: Mapped[str | None] = mapped_column(sa.Text)
    last_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # When a failed event is due its next try by the worker; None: not to be retried by itself.
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


# A Stripe event is 2 to 4 KB of JSON, past PostgreSQL's 2 KB TOAST threshold, so each one is
# compressed as it is stored, on the webhook's path. lz4 (PostgreSQL 14+, where the server was
# built with it) costs a fraction of the default pglz's CPU: storing 4 KB events went from
# ~10,000 to ~12,600 a second (pgbench, 8 clients, this 2-core machine). Migration 0005 sets it
# on a migrated database; this, on a schema built from the models (tests, benchmarks).
COMPRESS_PAYLOADS_WITH_LZ4 = (
    "DO $$ BEGIN IF EXISTS (SELECT 1 FROM pg_settings WHERE name = 'default_toast_compression'"
    " AND 'lz4' = ANY (enumvals)) THEN"
    " ALTER TABLE stripe_events ALTER COLUMN payload SET COMPRESSION lz4; END IF; END $$"
)
sa.event.listen(
    StripeEvent.__table__,
    "after_create",
    sa.DDL(COMPRESS_PAYLOADS_WITH_LZ4).execute_if(dialect="postgresql"),
)


class BillingProfile(db.Model):
    """A member's billing details as their Stripe customer says (customer.updated/deleted)."""

    __tablename__ = "stripe_billing_profiles"

    id: Mapped[int] = mapped_column(primary_key=True)
    member_id: Mapped[int] = mapped_column(sa.ForeignKey("members.id"), index=True)
    stripe_customer_id: Mapped[str] = mapped_column(sa.String(255), unique=True)
    email: Mapped[str | None] = mapped_column(sa.String(254))
    name: Mapped[str | None] = mapped_column(sa.String(200))
    phone: Mapped[str | None] = mapped_column(sa.String(32))
    address: Mapped[dict | None] = mapped_column(sa.JSON)
    default_payment_method: Mapped[str | None] = mapped_column(sa.String(255))
    delinquent: Mapped[bool] = mapped_column(default=False)
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # The Stripe-side time of the newest customer state applied: older events never win.
    stripe_state_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(
        UTCDateTime(), default=utc_default, onupdate=utc_default
    )
