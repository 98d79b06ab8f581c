"""A gift: N months of a tier (or a series) bought for someone else, claimed with a code.

The money is on the ledger from the purchase: a holding membership (source "gift", the buyer's
until claimed) holds one credit lot of N "month" units worth the net price. A claim hands the
membership to the recipient and converts month 1; each later month is converted when it starts.
An unclaimed gift's lot expires at claim_by (breakage)."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column, relationship

from billing.db import UTCDateTime, utc_default
from billing.extensions import db


class GiftStatus(StrEnum):
    AWAITING_PAYMENT = "awaiting_payment"  # bought online, not paid yet
    UNCLAIMED = "unclaimed"
    CLAIMED = "claimed"
    EXPIRED = "expired"  # not claimed by claim_by: breakage


class Gift(db.Model):
    __tablename__ = "gifts"

    id: Mapped[int] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column(sa.String(32), unique=True)  # e.g. "K7QM-2XPA-9D4F"
    plan_version_id: Mapped[int] = mapped_column(sa.ForeignKey("plan_versions.id"))
    months: Mapped[int] = mapped_column()  # a series gift: 1 (the series)
    buyer_member_id: Mapped[int] = mapped_column(sa.ForeignKey("members.id"), index=True)
    recipient_name: Mapped[str] = mapped_column(sa.String(200))
    recipient_email: Mapped[str | None] = mapped_column(sa.String(254))
    message: Mapped[str] = mapped_column(sa.Text, default="")
    invoice_id: Mapped[int | None] = mapped_column(sa.ForeignKey("invoices.id"))
    amount_minor: Mapped[int] = mapped_column(sa.BigInteger)  # gross paid, incl. tax
    net_minor: Mapped[int] = mapped_column(sa.BigInteger)
    currency: Mapped[str] = mapped_column(sa.String(3))
    purchased_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utc_default)
    claim_by: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    claimed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    claimed_by_member_id: Mapped[int | None] = mapped_column(sa.ForeignKey("members.id"))
    # The holding membership (the recipient's own once claimed as a new membership).
    membership_id: Mapped[int] = mapped_column(sa.ForeignKey("memberships.id"), index=True)
    # Where the months go: the holding membership, or the recipient's existing one of the tier.
    applied_membership_id: Mapped[int | None] = mapped_column(sa.ForeignKey("memberships.id"))
    months_converted: Mapped[int] = mapped_column(default=0)
    status: Mapped[str] = mapped_column(sa.String(24), default=GiftStatus.UNCLAIMED, index=True)
    created_by: Mapped[str] = mapped_column(sa.String(120))

    plan_version = relationship("PlanVersion")

    __table_args__ = (sa.CheckConstraint("months >= 1", name="months_positive"),)

    def is_expired(self, now: datetime) -> bool:
        return self.status == GiftStatus.EXPIRED or (
            self.status == GiftStatus.UNCLAIMED and now >= self.claim_by
        )
