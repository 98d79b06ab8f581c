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
    search_name: Mapped[str] = mapped_column(sa.String(201))
    last_name_lower: Mapped[str] = mapped_column(sa.String(100))
    phone: Mapped[str | None] = mapped_column(sa.String(32))
    phone_digits: Mapped[str | None] = mapped_column(sa.String(32))
    date_of_birth: Mapped[date | None] = mapped_column(sa.Date)
    home_location_id: Mapped[int | None] = mapped_column(sa.ForeignKey("locations.id"))
    notes: Mapped[str] = mapped_column(sa.Text, default="")
    stripe_customer_id: Mapped[str | None] = mapped_column(sa.String(255), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utc_default)
    updated_at: Mapped[datetime] = mapped_column(
        UTCDateTime(), default=utc_default, onupdate=utc_default
    )

    # The list's order (last name, full name, id) and the search box's indexes (see
    # service.search_members), one per way of finding a member. On PostgreSQL the prefix indexes
    # use the pattern operator class (byte order), so a prefix ("tan": from 'tan' up to 'tao') is
    # a range scan whatever the database's collation, and carry the columns the results are
    # ordered by, so each arm of a search is an index-only scan; the phone ending ("4567" in
    # 6591234567) is a trigram index (pg_trgm). SQLite ignores the postgresql_* options: there
    # they are plain indexes on the same columns, so the schema has one shape on both databases
    # (and migration 0002 builds exactly these).
    __table_args__ = (
        sa.Index("ix_members_list_order", "last_name_lower", "search_name", "id"),
        sa.Index(
            "ix_members_search_name",
            "search_name",
            postgresql_ops={"search_name": "varchar_pattern_ops"},
            postgresql_include=["last_name_lower", "id"],
        ),
        sa.Index(
            "ix_members_last_name_prefix",
            "last_name_lower",
            postgresql_ops={"last_name_lower": "varchar_pattern_ops"},
            postgresql_include=["search_name", "id"],
        ),
        sa.Index(
            "ix_members_email_prefix",
            "email_normalized",
            postgresql_ops={"email_normalized": "varchar_pattern_ops"},
            postgresql_include=["last_name_lower", "search_name", "id"],
        ),
        sa.Index(
            "ix_members_phone_digits",
            "phone_digits",
            postgresql_ops={"phone_digits": "varchar_pattern_ops"},
            postgresql_include=["last_name_lower", "search_name", "id"],
        ),
        sa.Index(
            "ix_members_phone_digits_trgm",
            "phone_digits",
            postgresql_using="gin",
            postgresql_ops={"phone_digits": "gin_trgm_ops"},
        ),
    )

    @property
    def full_name(self) -> str:
        return f"{self.first_name} {self.last_name}".strip()

    def refresh_search_columns(self) -> None:
        self.email_normalized = normalize_email(self.email)
        self.search_name = f"{self.first_name} {self.last_name}".strip().lower()
        self.last_name_lower = self.last_name.strip().lower()
        self.phone_digits = phone_digits(self.phone) or None


# The trigram operator class comes from the pg_trgm extension (trusted since PostgreSQL 13: the
# database's owner may create it). A schema built from the models (tests, benchmarks) needs it
# before the table's indexes; migration 0002 creates it for a migrated database.
sa.event.listen(
    Member.__table__,
    "before_create",
    sa.DDL("CREATE EXTENSION IF NOT EXISTS pg_trgm").execute_if(dialect="postgresql"),
)
