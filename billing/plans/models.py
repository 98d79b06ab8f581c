"""The catalogue: treatments, and plans (monthly tiers and prepaid series) in immutable versions.

A plan's price or contents never change in place: a change makes a new PlanVersion, and members
keep the version they joined on until moved (Kill Bill's catalogue does the same)."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column, relationship

from billing.db import UTCDateTime, utc_default
from billing.extensions import db


class Category(StrEnum):
    SPA_FACIAL = "spa_facial"
    MEDICAL_FACIAL = "medical_facial"
    PEEL = "peel"
    DEVICE = "device"
    INJECTABLE = "injectable"
    LASER_LIGHT = "laser_light"
    MASK = "mask"
    CONSULTATION = "consultation"
    OTHER = "other"


class CountedIn(StrEnum):
    SESSION = "session"  # one credit = one treatment session
    UNIT = "unit"  # credits are units (toxin units, syringes, ml); price is per unit


class PlanKind(StrEnum):
    TIER = "tier"  # recurring membership
    SERIES = "series"  # prepaid package, sold once (or in instalments)


class Interval(StrEnum):
    MONTH = "month"
    YEAR = "year"


class UnusedRule(StrEnum):
    EXPIRE = "expire"
    ROLLOVER = "rollover"


class GrantMode(StrEnum):
    UPFRONT = "upfront"
    PER_INSTALMENT = "per_instalment"


class ItemKind(StrEnum):
    TREATMENT = "treatment"
    CHOICE = "choice"  # "any 1 of these 3 facials"


class Treatment(db.Model):
    __tablename__ = "treatments"

    id: Mapped[int] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column(sa.String(64), unique=True)
    name: Mapped[str] = mapped_column(sa.String(200))
    category: Mapped[str] = mapped_column(sa.String(32))
    description: Mapped[str] = mapped_column(sa.Text, default="")
    list_price_minor: Mapped[int] = mapped_column(sa.BigInteger)
    currency: Mapped[str] = mapped_column(sa.String(3))
    tax_inclusive: Mapped[bool] = mapped_column(default=True)
    duration_minutes: Mapped[int] = mapped_column(default=60)
    is_medical: Mapped[bool] = mapped_column(default=False)
    requires_consultation: Mapped[bool] = mapped_column(default=False)
    min_interval_days: Mapped[int] = mapped_column(default=0)
    counted_in: Mapped[str] = mapped_column(sa.String(16), default=CountedIn.SESSION)
    unit_label: Mapped[str] = mapped_column(sa.String(32), default="session")
    retired_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utc_default)
    updated_at: Mapped[datetime] = mapped_column(
        UTCDateTime(), default=utc_default, onupdate=utc_default
    )

    __table_args__ = (
        sa.CheckConstraint("list_price_minor >= 0", name="price_not_negative"),
        sa.CheckConstraint("min_interval_days >= 0", name="interval_not_negative"),
    )

    @property
    def is_retired(self) -> bool:
        return self.retired_at is not None

    @property
    def in_units(self) -> bool:
        return self.counted_in == CountedIn.UNIT


class Plan(db.Model):
    __tablename__ = "plans"

    id: Mapped[int] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column(sa.String(64), unique=True)
    name: Mapped[str] = mapped_column(sa.String(200))
    description: Mapped[str] = mapped_column(sa.Text, default="")
    kind: Mapped[str] = mapped_column(sa.String(16), default=PlanKind.TIER)
    stripe_product_id: Mapped[str | None] = mapped_column(sa.String(255))
    retired_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utc_default)

    versions: Mapped[list[PlanVersion]] = relationship(
        back_populates="plan", order_by="PlanVersion.version", cascade="all, delete-orphan"
    )

    @property
    def current_version(self) -> PlanVersion | None:
        return self.versions[-1] if self.versions else None

    @property
    def is_retired(self) -> bool:
        return self.retired_at is not None

    @property
    def is_series(self) -> bool:
        return self.kind == PlanKind.SERIES


class PlanVersion(db.Model):
    __tablename__ = "plan_versions"

    id: Mapped[int] = mapped_column(primary_key=True)
    plan_id: Mapped[int] = mapped_column(sa.ForeignKey("plans.id"), index=True)
    version: Mapped[int] = mapped_column()
    price_minor: Mapped[int] = mapped_column(sa.BigInteger)
    currency: Mapped[str] = mapped_column(sa.String(3))
    tax_inclusive: Mapped[bool] = mapped_column(default=True)
    interval: Mapped[str] = mapped_column(sa.String(8), default=Interval.MONTH)
    interval_count: Mapped[int] = mapped_column(default=1)
    signup_fee_minor: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    min_commitment_periods: Mapped[int] = mapped_column(default=0)
    early_termination_fee_minor: Mapped[int | None] = mapped_column(sa.BigInteger)
    member_discount_bp: Mapped[int] = mapped_column(default=0)  # 1000 = 10 %
    unused_rule: Mapped[str] = mapped_column(sa.String(16), default=UnusedRule.EXPIRE)
    rollover_max_periods: Mapped[int] = mapped_column(default=0)
    rollover_cap: Mapped[int | None] = mapped_column()
    # Credits may be granted on a slower cadence than billing: every N billing periods.
    grant_every_periods: Mapped[int] = mapped_column(default=1)
    # Series: how long credits last from purchase, and how the price is paid.
    credit_validity_days: Mapped[int | None] = mapped_column()
    instalments: Mapped[int] = mapped_column(default=1)
    grant_mode: Mapped[str] = mapped_column(sa.String(16), default=GrantMode.UPFRONT)
    stripe_price_id: Mapped[str | None] = mapped_column(sa.String(255))
    stripe_signup_price_id: Mapped[str | None] = mapped_column(sa.String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utc_default)
    created_by: Mapped[str] = mapped_column(sa.String(120), default="system")

    plan: Mapped[Plan] = relationship(back_populates="versions")
    items: Mapped[list[PlanItem]] = relationship(
        back_populates="version", order_by="PlanItem.position", cascade="all, delete-orphan"
    )

    __table_args__ = (
        sa.UniqueConstraint("plan_id", "version"),
        sa.CheckConstraint("price_minor >= 0", name="price_not_negative"),
        sa.CheckConstraint("signup_fee_minor >= 0", name="signup_not_negative"),
        sa.CheckConstraint("interval_count >= 1", name="interval_positive"),
        sa.CheckConstraint(
            "member_discount_bp >= 0 AND member_discount_bp <= 10000", name="discount_range"
        ),
    )

    @property
    def is_current(self) -> bool:
        return self.plan.current_version is self


class PlanItem(db.Model):
    """One line of what a plan includes per grant: a treatment x quantity, or a choice group."""

    __tablename__ = "plan_items"

    id: Mapped[int] = mapped_column(primary_key=True)
    version_id: Mapped[int] = mapped_column(sa.ForeignKey("plan_versions.id"), index=True)
    position: Mapped[int] = mapped_column(default=0)
    kind: Mapped[str] = mapped_column(sa.String(16), default=ItemKind.TREATMENT)
    treatment_id: Mapped[int | None] = mapped_column(sa.ForeignKey("treatments.id"))
    label: Mapped[str] = mapped_column(sa.String(200), default="")
    quantity: Mapped[int] = mapped_column()
    # Standalone selling price per credit when the list price is not the right one (choice groups).
    ssp_override_minor: Mapped[int | None] = mapped_column(sa.BigInteger)
    # On a household membership: at most this many per beneficiary per period.
    beneficiary_limit: Mapped[int | None] = mapped_column()

    version: Mapped[PlanVersion] = relationship(back_populates="items")
    treatment: Mapped[Treatment | None] = relationship()
    options: Mapped[list[PlanItemOption]] = relationship(
        back_populates="item", cascade="all, delete-orphan"
    )

    __table_args__ = (sa.CheckConstraint("quantity > 0", name="quantity_positive"),)

    @property
    def treatments(self) -> list[Treatment]:
        """What a credit from this item can be spent on."""
        if self.kind == ItemKind.CHOICE:
            return [o.treatment for o in self.options]
        return [self.treatment] if self.treatment else []


class PlanItemOption(db.Model):
    __tablename__ = "plan_item_options"

    id: Mapped[int] = mapped_column(primary_key=True)
    item_id: Mapped[int] = mapped_column(sa.ForeignKey("plan_items.id"), index=True)
    treatment_id: Mapped[int] = mapped_column(sa.ForeignKey("treatments.id"))

    item: Mapped[PlanItem] = relationship(back_populates="options")
    treatment: Mapped[Treatment] = relationship()

    __table_args__ = (sa.UniqueConstraint("item_id", "treatment_id"),)
