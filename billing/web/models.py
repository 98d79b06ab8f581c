"""People who sign in to the web pages: clinic staff, finance, admins, and members (clients).

A password is stored only as a werkzeug hash; a one-time sign-in code only as a hash too, with
its expiry. Five wrong attempts in a row lock the account for fifteen minutes."""

from __future__ import annotations

from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from billing.auth.models import Role
from billing.db import UTCDateTime, utc_default
from billing.extensions import db

MAX_FAILED_LOGINS = 5
LOCKOUT = timedelta(minutes=15)
CODE_VALID_FOR = timedelta(minutes=10)


class User(db.Model):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(sa.String(254), unique=True)  # stored lower-case
    password_hash: Mapped[str | None] = mapped_column(sa.String(255))
    role: Mapped[str] = mapped_column(sa.String(16))
    staff_id: Mapped[int | None] = mapped_column(sa.ForeignKey("staff.id"))
    member_id: Mapped[int | None] = mapped_column(sa.ForeignKey("members.id"), unique=True)
    failed_logins: Mapped[int] = mapped_column(default=0)
    locked_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # One code at a time: requesting a new one replaces the last.
    login_code_hash: Mapped[str | None] = mapped_column(sa.String(255))
    login_code_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_login_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    disabled_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utc_default)

    __table_args__ = (
        sa.CheckConstraint("role IN ('admin', 'staff', 'finance', 'client')", name="role_known"),
        sa.CheckConstraint("(role = 'client') = (member_id IS NOT NULL)", name="client_has_member"),
    )

    @property
    def is_client(self) -> bool:
        return self.role == Role.CLIENT

    @property
    def is_disabled(self) -> bool:
        return self.disabled_at is not None

    def is_locked(self, now: datetime) -> bool:
        return self.locked_until is not None and now < self.locked_until

    def has_live_code(self, now: datetime) -> bool:
        return (
            self.login_code_hash is not None
            and self.login_code_expires_at is not None
            and now < self.login_code_expires_at
        )
