"""A treatment series sold once: the purchase, and its instalments (one, when paid in full).

The credits themselves are on the ledger (granted by memberships.record_paid_period); the money
is on Invoice and Payment rows. These two tables only say what was agreed: how many instalments,
how much each, when each is due, and which invoice paid it."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column, relationship

from billing.db import UTCDateTime, utc_default
from billing.extensions import db


class SeriesPurchase(db.Model):
    __tablename__ = "series_purchases"

    id: Mapped[int] = mapped_column(primary_key=True)
    membership_id: Mapped[int] = mapped_column(sa.ForeignKey("memberships.id"), unique=True)
    member_id: Mapped[int] = mapped_column(sa.ForeignKey("members.id"), index=True)
    plan_version_id: Mapped[int] = mapped_column(sa.ForeignKey("plan_versions.id"))
    instalments: Mapped[int] = mapped_column(default=1)
    grant_mode: Mapped[str] = mapped_column(sa.String(16))  # upfront | per_instalment
    total_minor: Mapped[int] = mapped_column(sa.BigInteger)  # gross, incl. tax
    tax_minor: Mapped[int] = mapped_column(sa.BigInteger)
    net_minor: Mapped[int] = mapped_column(sa.BigInteger)
    currency: Mapped[str] = mapped_column(sa.String(3))
    payment_method: Mapped[str] = mapped_column(sa.String(16))  # desk, card_on_file, online
    purchased_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utc_default)
    # The first payment: the credits' validity runs from here.
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_by: Mapped[str] = mapped_column(sa.String(120))

    instalment_rows: Mapped[list[SeriesInstalment]] = relationship(
        back_populates="purchase", order_by="SeriesInstalment.number", cascade="all, delete-orphan"
    )

    __table_args__ = (sa.CheckConstraint("instalments >= 1", name="instalments_positive"),)

    @property
    def paid_count(self) -> int:
        return sum(1 for i in self.instalment_rows if i.is_paid)


class SeriesInstalment(db.Model):
    __tablename__ = "series_instalments"

    id: Mapped[int] = mapped_column(primary_key=True)
    purchase_id: Mapped[int] = mapped_column(sa.ForeignKey("series_purchases.id"), index=True)
    number: Mapped[int] = mapped_column()  # 1..instalments
    total_minor: Mapped[int] = mapped_column(sa.BigInteger)
    tax_minor: Mapped[int] = mapped_column(sa.BigInteger)
    net_minor: Mapped[int] = mapped_column(sa.BigInteger)
    due_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), index=True)
    invoice_id: Mapped[int | None] = mapped_column(sa.ForeignKey("invoices.id"))
    paid_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    purchase: Mapped[SeriesPurchase] = relationship(back_populates="instalment_rows")

    __table_args__ = (sa.UniqueConstraint("purchase_id", "number"),)

    @property
    def is_paid(self) -> bool:
        return self.paid_at is not None
