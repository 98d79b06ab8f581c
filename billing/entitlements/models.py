"""The entitlement ledger: append-only.

A *grant* (one per membership, period and source) creates *credits*: immutable lots of one
treatment (or one choice group) with a quantity, a standalone selling price and the share of the
period's net fee allocated to them. Everything that happens to a credit afterwards is a
*ledger entry* on it with a signed quantity and a signed value:

    grant +q/+A, redeem -n/-v, reverse +n/+v, expire -r/-rest (breakage),
    rollover 0/0 (a later expiry), adjust (0/0 with a later expiry after a pause, or +-n),
    clawback -n/-v (refund or dispute).

A credit's balance is SUM(quantity), its deferred value SUM(value_minor), its expiry
MAX(expires_at) (an expiry only ever moves later; ending a credit early is an `expire` entry).
Nothing is updated or deleted; a correction is a new entry."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column, relationship

from billing.db import UTCDateTime, utc_default
from billing.extensions import db


class EntryKind(StrEnum):
    GRANT = "grant"
    REDEEM = "redeem"
    REVERSE = "reverse"
    EXPIRE = "expire"
    ROLLOVER = "rollover"
    ADJUST = "adjust"
    CLAWBACK = "clawback"


class ProductType(StrEnum):
    TIER = "tier"
    SERIES = "series"
    GIFT = "gift"
    ADJUSTMENT = "adjustment"


class CreditGrant(db.Model):
    """One grant_period call. The unique key is what makes granting idempotent."""

    __tablename__ = "credit_grants"

    id: Mapped[int] = mapped_column(primary_key=True)
    membership_id: Mapped[int] = mapped_column(sa.ForeignKey("memberships.id"), index=True)
    period_start: Mapped[datetime] = mapped_column(UTCDateTime())
    period_end: Mapped[datetime] = mapped_column(UTCDateTime())
    source_ref: Mapped[str] = mapped_column(sa.String(255))  # invoice:in_.., upgrade:.., admin:..
    invoice_id: Mapped[int | None] = mapped_column(sa.ForeignKey("invoices.id"), index=True)
    plan_version_id: Mapped[int] = mapped_column(sa.ForeignKey("plan_versions.id"))
    net_amount_minor: Mapped[int] = mapped_column(sa.BigInteger)  # the fee (ex-tax) allocated
    currency: Mapped[str] = mapped_column(sa.String(3))
    actor: Mapped[str] = mapped_column(sa.String(120))
    reason: Mapped[str] = mapped_column(sa.Text, default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utc_default)

    credits: Mapped[list[Credit]] = relationship(back_populates="grant")

    __table_args__ = (sa.UniqueConstraint("membership_id", "period_start", "source_ref"),)


class Credit(db.Model):
    """An immutable lot of credits from one grant for one plan item."""

    __tablename__ = "credits"

    id: Mapped[int] = mapped_column(primary_key=True)
    grant_id: Mapped[int] = mapped_column(sa.ForeignKey("credit_grants.id"), index=True)
    membership_id: Mapped[int] = mapped_column(sa.ForeignKey("memberships.id"), index=True)
    plan_item_id: Mapped[int | None] = mapped_column(sa.ForeignKey("plan_items.id"))
    treatment_id: Mapped[int | None] = mapped_column(sa.ForeignKey("treatments.id"))  # None: choice
    product_type: Mapped[str] = mapped_column(sa.String(16), default=ProductType.TIER)
    unit_label: Mapped[str] = mapped_column(sa.String(32), default="session")
    quantity: Mapped[int] = mapped_column()
    ssp_unit_minor: Mapped[int] = mapped_column(sa.BigInteger)  # standalone selling price per unit
    allocated_minor: Mapped[int] = mapped_column(sa.BigInteger)  # share of the net fee
    currency: Mapped[str] = mapped_column(sa.String(3))
    period_start: Mapped[datetime] = mapped_column(UTCDateTime())
    period_end: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())  # as granted; see the ledger
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utc_default)

    grant: Mapped[CreditGrant] = relationship(back_populates="credits")
    plan_item = relationship("PlanItem")
    treatment = relationship("Treatment")

    __table_args__ = (sa.CheckConstraint("quantity > 0", name="quantity_positive"),)


class LedgerEntry(db.Model):
    __tablename__ = "ledger_entries"

    id: Mapped[int] = mapped_column(primary_key=True)
    credit_id: Mapped[int] = mapped_column(sa.ForeignKey("credits.id"), index=True)
    membership_id: Mapped[int] = mapped_column(sa.ForeignKey("memberships.id"))
    kind: Mapped[str] = mapped_column(sa.String(16))
    quantity: Mapped[int] = mapped_column()
    value_minor: Mapped[int] = mapped_column(sa.BigInteger)  # deferred revenue moved (ex-tax)
    currency: Mapped[str] = mapped_column(sa.String(3))
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())  # the credit's expiry after this
    period_start: Mapped[datetime] = mapped_column(UTCDateTime())
    period_end: Mapped[datetime] = mapped_column(UTCDateTime())
    invoice_id: Mapped[int | None] = mapped_column(sa.ForeignKey("invoices.id"))
    visit_line_id: Mapped[int | None] = mapped_column(sa.ForeignKey("visit_lines.id"), index=True)
    member_id: Mapped[int | None] = mapped_column(sa.ForeignKey("members.id"))  # who was treated
    reverses_entry_id: Mapped[int | None] = mapped_column(sa.ForeignKey("ledger_entries.id"))
    actor: Mapped[str] = mapped_column(sa.String(120))
    reason: Mapped[str] = mapped_column(sa.Text, default="")
    # Set on entries that must happen once (e.g. "expire:<credit>", "reverse:<entry>").
    dedupe_key: Mapped[str | None] = mapped_column(sa.String(255), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utc_default, index=True)

    credit: Mapped[Credit] = relationship()

    __table_args__ = (
        sa.Index("ix_ledger_entries_membership_credit", "membership_id", "credit_id"),
        sa.Index("ix_ledger_entries_kind_created", "kind", "created_at"),
        # A void asks whether a redemption was reversed already: only reversals are indexed.
        sa.Index(
            "ix_ledger_entries_reverses_entry_id",
            "reverses_entry_id",
            postgresql_where=sa.text("reverses_entry_id IS NOT NULL"),
            sqlite_where=sa.text("reverses_entry_id IS NOT NULL"),
        ),
    )
