"""Every verified Stripe event, stored before it is acted on, unique by its id."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from billing.db import UTCDateTime, utc_default
from billing.extensions import db


class StripeEvent(db.Model):
    __tablename__ = "stripe_events"

    id: Mapped[str] = mapped_column(sa.String(255), primary_key=True)  # evt_...
    type: Mapped[str] = mapped_column(sa.String(96), index=True)
    stripe_created: Mapped[datetime] = mapped_column(UTCDateTime())
    livemode: Mapped[bool] = mapped_column(default=False)
    payload: Mapped[dict] = mapped_column(sa.JSON)
    # received -> processed | ignored | failed | flagged (unknown customer/subscription: for staff)
    status: Mapped[str] = mapped_column(sa.String(16), default="received", index=True)
    error: Mapped[str | None] = mapped_column(sa.Text)
    attempts: Mapped[int] = mapped_column(default=0)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utc_default)
    processed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
