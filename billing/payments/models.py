"""Money as Stripe reported it (or the desk took it): invoices, payments, and what a member owes."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from billing.db import UTCDateTime, utc_default
from billing.extensions import db


class Invoice(db.Model):
    __tablename__ = "invoices"

    id: Mapped[int] = mapped_column(primary_key=True)
    stripe_invoice_id: Mapped[str | None] = mapped_column(sa.String(255), unique=True)
    member_id: Mapped[int | None] = mapped_column(sa.ForeignKey("members.id"), index=True)
    membership_id: Mapped[int | None] = mapped_column(sa.ForeignKey("memberships.id"), index=True)
    kind: Mapped[str] = mapped_column(sa.String(16), default="subscription")
    billing_reason: Mapped[str | None] = mapped_column(sa.String(48))
    status: Mapped[str] = mapped_column(sa.String(24), default="open")
    currency: Mapped[str] = mapped_column(sa.String(3))
    total_minor: Mapped[int] = mapped_column(sa.BigInteger, default=0)  # gross, incl. tax
    tax_minor: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    net_minor: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    amount_paid_minor: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    amount_refunded_minor: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    period_start: Mapped[datetime | None] = mapped_column(UTCDateTime())
    period_end: Mapped[datetime | None] = mapped_column(UTCDateTime())
    attempt_count: Mapped[int] = mapped_column(default=0)
    next_payment_attempt: Mapped[datetime | None] = mapped_column(UTCDateTime())
    issued_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utc_default)
    paid_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    stripe_charge_id: Mapped[str | None] = mapped_column(sa.String(255), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utc_default)


class Payment(db.Model):
    __tablename__ = "payments"

    id: Mapped[int] = mapped_column(primary_key=True)
    invoice_id: Mapped[int | None] = mapped_column(sa.ForeignKey("invoices.id"), index=True)
    member_id: Mapped[int | None] = mapped_column(sa.ForeignKey("members.id"), index=True)
    visit_id: Mapped[int | None] = mapped_column(sa.ForeignKey("visits.id"))
    kind: Mapped[str] = mapped_column(sa.String(16), default="charge")  # charge, refund, dispute
    method: Mapped[str] = mapped_column(sa.String(16), default="card")  # card, cash, desk_card
    status: Mapped[str] = mapped_column(sa.String(24), default="succeeded")
    amount_minor: Mapped[int] = mapped_column(sa.BigInteger)
    fee_minor: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    net_minor: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    currency: Mapped[str] = mapped_column(sa.String(3))
    stripe_id: Mapped[str | None] = mapped_column(sa.String(255), unique=True)  # ch_, re_, dp_
    stripe_charge_id: Mapped[str | None] = mapped_column(sa.String(255), index=True)
    stripe_payment_intent_id: Mapped[str | None] = mapped_column(sa.String(255), index=True)
    balance_transaction_id: Mapped[str | None] = mapped_column(sa.String(255))
    payout_id: Mapped[str | None] = mapped_column(sa.String(255), index=True)
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utc_default)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utc_default)


class Receivable(db.Model):
    """Money a member owes: e.g. credits already used from an invoice that was later refunded."""

    __tablename__ = "receivables"

    id: Mapped[int] = mapped_column(primary_key=True)
    member_id: Mapped[int] = mapped_column(sa.ForeignKey("members.id"), index=True)
    membership_id: Mapped[int | None] = mapped_column(sa.ForeignKey("memberships.id"))
    invoice_id: Mapped[int | None] = mapped_column(sa.ForeignKey("invoices.id"))
    amount_minor: Mapped[int] = mapped_column(sa.BigInteger)
    currency: Mapped[str] = mapped_column(sa.String(3))
    reason: Mapped[str] = mapped_column(sa.Text)
    dedupe_key: Mapped[str | None] = mapped_column(sa.String(255), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utc_default)
    settled_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
