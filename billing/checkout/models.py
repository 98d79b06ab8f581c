"""Visits at the front desk and their lines."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column, relationship

from billing.db import UTCDateTime, utc_default
from billing.extensions import db


class VisitState(StrEnum):
    OPEN = "open"
    CLOSED = "closed"


class LineStatus(StrEnum):
    OPEN = "open"  # added, neither redeemed nor charged yet
    REDEEMED = "redeemed"  # covered by credits
    CHARGED = "charged"  # to pay at list price less the member discount
    VOIDED = "voided"


class Visit(db.Model):
    __tablename__ = "visits"

    id: Mapped[int] = mapped_column(primary_key=True)
    member_id: Mapped[int] = mapped_column(sa.ForeignKey("members.id"), index=True)
    location_id: Mapped[int] = mapped_column(sa.ForeignKey("locations.id"))
    state: Mapped[str] = mapped_column(sa.String(16), default=VisitState.OPEN)
    supervising_staff_id: Mapped[int | None] = mapped_column(sa.ForeignKey("staff.id"))
    opened_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utc_default)
    opened_by: Mapped[str] = mapped_column(sa.String(120))
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    closed_by: Mapped[str | None] = mapped_column(sa.String(120))
    currency: Mapped[str] = mapped_column(sa.String(3))
    amount_due_minor: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    payment_status: Mapped[str] = mapped_column(sa.String(16), default="none")
    payment_method: Mapped[str | None] = mapped_column(sa.String(16))
    stripe_payment_intent_id: Mapped[str | None] = mapped_column(sa.String(255))

    lines: Mapped[list[VisitLine]] = relationship(
        back_populates="visit", order_by="VisitLine.id", cascade="all, delete-orphan"
    )
    member = relationship("Member")

    @property
    def is_open(self) -> bool:
        return self.state == VisitState.OPEN


class VisitLine(db.Model):
    __tablename__ = "visit_lines"

    id: Mapped[int] = mapped_column(primary_key=True)
    visit_id: Mapped[int] = mapped_column(sa.ForeignKey("visits.id"), index=True)
    treatment_id: Mapped[int] = mapped_column(sa.ForeignKey("treatments.id"))
    provider_id: Mapped[int] = mapped_column(sa.ForeignKey("staff.id"))
    quantity: Mapped[int] = mapped_column(default=1)
    status: Mapped[str] = mapped_column(sa.String(16), default=LineStatus.OPEN)
    membership_id: Mapped[int | None] = mapped_column(sa.ForeignKey("memberships.id"))
    list_price_minor: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    discount_minor: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    amount_minor: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    currency: Mapped[str] = mapped_column(sa.String(3))
    performed_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utc_default)
    created_by: Mapped[str] = mapped_column(sa.String(120))
    voided_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    voided_by: Mapped[str | None] = mapped_column(sa.String(120))
    void_reason: Mapped[str | None] = mapped_column(sa.Text)

    visit: Mapped[Visit] = relationship(back_populates="lines")
    # The line's own ledger entries, appended while both are unwritten: one flush writes the
    # line and then its entries with its id (the ledger is append-only: never removed from).
    ledger_entries = relationship("LedgerEntry", lazy="raise_on_sql", passive_deletes="all")
    treatment = relationship("Treatment")
    provider = relationship("Staff")

    __table_args__ = (sa.CheckConstraint("quantity > 0", name="quantity_positive"),)


class RuleOverride(db.Model):
    """An admin let a line through a clinic rule; the written reason is kept."""

    __tablename__ = "rule_overrides"

    id: Mapped[int] = mapped_column(primary_key=True)
    visit_line_id: Mapped[int] = mapped_column(sa.ForeignKey("visit_lines.id"), index=True)
    rule: Mapped[str] = mapped_column(sa.String(48))
    detail: Mapped[str] = mapped_column(sa.Text)
    actor: Mapped[str] = mapped_column(sa.String(120))
    reason: Mapped[str] = mapped_column(sa.Text)
    at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utc_default)


class Consultation(db.Model):
    """A consultation on file for a client; some treatments need one first."""

    __tablename__ = "consultations"

    id: Mapped[int] = mapped_column(primary_key=True)
    member_id: Mapped[int] = mapped_column(sa.ForeignKey("members.id"), index=True)
    treatment_id: Mapped[int | None] = mapped_column(sa.ForeignKey("treatments.id"))
    staff_id: Mapped[int | None] = mapped_column(sa.ForeignKey("staff.id"))
    held_at: Mapped[datetime] = mapped_column(UTCDateTime())
    notes: Mapped[str] = mapped_column(sa.Text, default="")
    recorded_by: Mapped[str] = mapped_column(sa.String(120))
