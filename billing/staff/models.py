"""Staff, their credentials, their shifts, and the clinic's rule of who may perform and supervise what.

Medical procedures (injectables, lasers, deep peels) are performed only by licensed staff, and by a
non-physician only under a physician's supervision: the policy table says which credential covers
which treatment category."""

from __future__ import annotations

from datetime import date, datetime
from enum import StrEnum

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column, relationship

from billing.db import UTCDateTime, utc_default
from billing.extensions import db


class CredentialKind(StrEnum):
    MEDICAL_AESTHETICIAN = "medical_aesthetician"
    REGISTERED_NURSE = "registered_nurse"
    NURSE_PRACTITIONER = "nurse_practitioner"
    PHYSICIAN_ASSISTANT = "physician_assistant"
    PHYSICIAN = "physician"


class StaffRole(StrEnum):
    """What someone does at the clinic. The role says nothing about licences: credentials do."""

    RECEPTIONIST = "receptionist"
    AESTHETICIAN = "aesthetician"
    MEDICAL_AESTHETICIAN = "medical_aesthetician"
    NURSE = "nurse"
    NURSE_PRACTITIONER = "nurse_practitioner"
    PHYSICIAN_ASSISTANT = "physician_assistant"
    PHYSICIAN = "physician"
    MANAGER = "manager"


class Staff(db.Model):
    __tablename__ = "staff"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(200))
    email: Mapped[str | None] = mapped_column(sa.String(254), unique=True)
    role: Mapped[str] = mapped_column(sa.String(32))  # receptionist, aesthetician, nurse, doctor...
    location_id: Mapped[int] = mapped_column(sa.ForeignKey("locations.id"), index=True)
    active: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utc_default)

    credentials: Mapped[list[Credential]] = relationship(
        back_populates="staff", cascade="all, delete-orphan", order_by="Credential.id"
    )
    location = relationship("Location")

    def valid_credentials(self, on: date) -> set[str]:
        return {c.kind for c in self.credentials if c.expires_on is None or c.expires_on >= on}

    def lapsed_credentials(self, on: date) -> dict[str, date]:
        """Credentials that have expired and are not renewed: kind -> the day the last one ended."""
        valid = self.valid_credentials(on)
        lapsed: dict[str, date] = {}
        for c in self.credentials:
            if c.kind not in valid and c.expires_on is not None:
                lapsed[c.kind] = max(lapsed.get(c.kind, c.expires_on), c.expires_on)
        return lapsed

    def is_physician(self, on: date) -> bool:
        return CredentialKind.PHYSICIAN in self.valid_credentials(on)


class Credential(db.Model):
    __tablename__ = "staff_credentials"

    id: Mapped[int] = mapped_column(primary_key=True)
    staff_id: Mapped[int] = mapped_column(sa.ForeignKey("staff.id"), index=True)
    kind: Mapped[str] = mapped_column(sa.String(32))
    number: Mapped[str] = mapped_column(sa.String(64), default="")
    expires_on: Mapped[date | None] = mapped_column(sa.Date)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utc_default)

    staff: Mapped[Staff] = relationship(back_populates="credentials")


class DutyShift(db.Model):
    """Who is on duty where on a clinic-local day (a supervising physician must be)."""

    __tablename__ = "duty_shifts"

    id: Mapped[int] = mapped_column(primary_key=True)
    staff_id: Mapped[int] = mapped_column(sa.ForeignKey("staff.id"), index=True)
    location_id: Mapped[int] = mapped_column(sa.ForeignKey("locations.id"))
    day: Mapped[date] = mapped_column(sa.Date)

    staff: Mapped[Staff] = relationship()
    location = relationship("Location")

    __table_args__ = (sa.UniqueConstraint("staff_id", "location_id", "day"),)


class CategoryPolicy(db.Model):
    """Which credentials may perform, and which may supervise, a treatment category."""

    __tablename__ = "category_policies"

    id: Mapped[int] = mapped_column(primary_key=True)
    category: Mapped[str] = mapped_column(sa.String(32), unique=True)
    may_perform: Mapped[list] = mapped_column(sa.JSON, default=list)
    may_supervise: Mapped[list] = mapped_column(sa.JSON, default=list)
    # A non-physician performing needs a supervising physician on the visit.
    needs_supervision: Mapped[bool] = mapped_column(default=True)
