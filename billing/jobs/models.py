"""What the scheduled jobs leave behind: one row per job run, and the notification outbox.

`JobRun` is how several app servers share one schedule: a run is claimed by inserting
(job, slot) first, and the UNIQUE key lets exactly one process win each slot. `Notification`
is written once per dedupe key, then delivered; a row is never written or sent twice."""

from __future__ import annotations

import hashlib
from datetime import datetime
from enum import StrEnum

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from billing.db import UTCDateTime, utc_default
from billing.extensions import db


class Outcome(StrEnum):
    RUNNING = "running"  # claimed; still running, or the process died (see `jobs history`)
    SUCCEEDED = "succeeded"
    SKIPPED = "skipped"  # nothing to do by design, e.g. Stripe not configured; see detail
    FAILED = "failed"  # raised; the traceback is in error


class JobRun(db.Model):
    __tablename__ = "job_runs"

    id: Mapped[int] = mapped_column(primary_key=True)
    job: Mapped[str] = mapped_column(sa.String(64))
    # The scheduled fire time truncated to the job's interval (UTC ISO), or "manual:<timestamp>".
    slot: Mapped[str] = mapped_column(sa.String(64))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utc_default)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    outcome: Mapped[str] = mapped_column(sa.String(16), default=Outcome.RUNNING, index=True)
    counts: Mapped[dict | None] = mapped_column(sa.JSON)
    detail: Mapped[str] = mapped_column(sa.Text, default="")
    error: Mapped[str | None] = mapped_column(sa.Text)
    worker: Mapped[str] = mapped_column(sa.String(160), default="")  # host:pid that ran it

    __table_args__ = (
        sa.UniqueConstraint("job", "slot"),
        sa.Index("ix_job_runs_job_started", "job", "started_at"),
    )

    @property
    def is_finished(self) -> bool:
        return self.outcome != Outcome.RUNNING


class NotificationStatus(StrEnum):
    PENDING = "pending"
    SENDING = "sending"  # claimed by one deliverer; back to pending if it stays here too long
    SENT = "sent"
    FAILED = "failed"  # gave up after several attempts; last_error says why


class Notification(db.Model):
    """An email to a member, written by the notify job and delivered by SMTP."""

    __tablename__ = "notifications"

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(sa.String(32), index=True)
    # What makes it once-only: "payment_failed:event:12", "credits_expiring:7:2026-03-09", ...
    dedupe_key: Mapped[str] = mapped_column(sa.String(255), unique=True)
    member_id: Mapped[int | None] = mapped_column(sa.ForeignKey("members.id"), index=True)
    membership_id: Mapped[int | None] = mapped_column(sa.ForeignKey("memberships.id"))
    to_email: Mapped[str] = mapped_column(sa.String(254))
    subject: Mapped[str] = mapped_column(sa.String(255))
    body: Mapped[str] = mapped_column(sa.Text)
    data: Mapped[dict | None] = mapped_column(sa.JSON)
    status: Mapped[str] = mapped_column(
        sa.String(16), default=NotificationStatus.PENDING, index=True
    )
    attempts: Mapped[int] = mapped_column(default=0)
    last_error: Mapped[str | None] = mapped_column(sa.Text)
    claimed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utc_default)

    @property
    def message_id(self) -> str:
        """Stable per notification, so a receiving server can drop a resend after a crash."""
        digest = hashlib.sha256(self.dedupe_key.encode()).hexdigest()[:16]
        return f"<notification-{self.id}.{digest}@billing.local>"
