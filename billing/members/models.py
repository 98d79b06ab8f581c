"""Clients of the clinic."""

from __future__ import annotations

import re
from datetime import date, datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from billing.db import UTCDateTime, utc_default
from billing.extensions import db


def normalize_email(email: str) -> str:
    return email.strip().lower()


def phone_digits(phone: str | None) -> str:
    return re.sub(r"\D", "", phone or "")


class Member(db.Model):
    __tablename__ = "members"

    id: Mapped[int] = mapped_column(primary_key=True)
    first_name: Mapped[str] = mapped_column(sa.String(100))
    last_name: Mapped[str] = mapped_column(sa.String(100))
    email: Mapped[str] = mapped_column(sa.String(254))
    # Searched columns, kept lower-case / digits-only and indexed for the front-desk search box.
    email_normalized: Mapped[str] = mapped_column(sa.String(254), unique=True)
    search_name: Mapped[str] = mapped_column(sa.String(201), index=True)
    last_name_lower: Mapped[str] = mapped_column(sa.String(100), index=True)
    phone: Mapped[str | None] = mapped_column(sa.String(32))
    phone_digits: Mapped[str | None] = mapped_column(sa.String(32), index=True)
    date_of_birth: Mapped[date | None] = mapped_column(sa.Date)
    home_location_id: Mapped[int | None] = mapped_column(sa.ForeignKey("locations.id"))
    notes: Mapped[str] = mapped_column(sa.Text, default="")
    stripe_customer_id: Mapped[str | None] = mapped_column(sa.String(255), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utc_default)
    updated_at: Mapped[datetime] = mapped_column(
        UTCDateTime(), default=utc_default, onupdate=utc_default
    )

    @property
    def full_name(self) -> str:
        return f"{self.first_name} {self.last_name}".strip()

    def refresh_search_columns(self) -> None:
        self.email_normalized = normalize_email(self.email)
        self.search_name = f"{self.first_name} {self.last_name}".strip().lower()
        self.last_name_lower = self.last_name.strip().lower()
        self.phone_digits = phone_digits(self.phone) or None
