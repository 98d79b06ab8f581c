"""A member on one plan version, and the state machine that governs it.

The legal transitions are the table TRANSITIONS below, and nowhere else."""

from __future__ import annotations

from datetime import datetime, timedelta
from enum import StrEnum

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column, relationship

from billing.db import UTCDateTime, utc_default
from billing.extensions import db
from billing.members.models import Member
from billing.plans.models import PlanVersion


class State(StrEnum):
    PENDING = "pending"  # joined, first payment not yet confirmed
    ACTIVE = "active"
    PAST_DUE = "past_due"  # a payment failed; redemptions allowed only within the grace period
    PAUSED = "paused"  # a freeze: no billing, no new grants
    CANCEL_AT_PERIOD_END = "cancel_at_period_end"
    CANCELED = "canceled"


TRANSITIONS: dict[State, frozenset[State]] = {
    State.PENDING: frozenset({State.ACTIVE, State.CANCELED}),
    State.ACTIVE: frozenset(
        {State.PAST_DUE, State.PAUSED, State.CANCEL_AT_PERIOD_END, State.CANCELED}
    ),
    State.PAST_DUE: frozenset({State.ACTIVE, State.CANCELED}),
    State.PAUSED: frozenset({State.ACTIVE, State.CANCELED}),
    State.CANCEL_AT_PERIOD_END: frozenset({State.ACTIVE, State.CANCELED, State.PAST_DUE}),
    State.CANCELED: frozenset(),
}


class Membership(db.Model):
    __tablename__ = "memberships"

    id: Mapped[int] = mapped_column(primary_key=True)
    member_id: Mapped[int] = mapped_column(sa.ForeignKey("members.id"), index=True)
    plan_version_id: Mapped[int] = mapped_column(sa.ForeignKey("plan_versions.id"), index=True)
    state: Mapped[str] = mapped_column(sa.String(24), default=State.PENDING, index=True)
    source: Mapped[str] = mapped_column(sa.String(16), default="desk")  # desk, online, gift
    started_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utc_default)
    activated_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    current_period_start: Mapped[datetime | None] = mapped_column(UTCDateTime())
    current_period_end: Mapped[datetime | None] = mapped_column(UTCDateTime())
    paid_periods: Mapped[int] = mapped_column(default=0)
    cancel_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    canceled_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    paused_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    resume_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    past_due_since: Mapped[datetime | None] = mapped_column(UTCDateTime())
    grace_ends_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    payment_attempts: Mapped[int] = mapped_column(default=0)
    next_payment_attempt: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # A downgrade waits for the next period.
    pending_plan_version_id: Mapped[int | None] = mapped_column(sa.ForeignKey("plan_versions.id"))
    early_termination_fee_minor: Mapped[int | None] = mapped_column(sa.BigInteger)
    stripe_subscription_id: Mapped[str | None] = mapped_column(sa.String(255), unique=True)
    # The Stripe-side timestamp of the newest subscription state applied: older events never win.
    stripe_state_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utc_default)
    updated_at: Mapped[datetime] = mapped_column(
        UTCDateTime(), default=utc_default, onupdate=utc_default
    )

    member: Mapped[Member] = relationship(foreign_keys=[member_id])
    plan_version: Mapped[PlanVersion] = relationship(foreign_keys=[plan_version_id])
    pending_plan_version: Mapped[PlanVersion | None] = relationship(
        foreign_keys=[pending_plan_version_id]
    )
    beneficiaries: Mapped[list[Beneficiary]] = relationship(
        back_populates="membership", cascade="all, delete-orphan"
    )

    # Predicates that read like the business.
    @property
    def is_active(self) -> bool:
        return self.state in (State.ACTIVE, State.CANCEL_AT_PERIOD_END)

    @property
    def is_canceled(self) -> bool:
        return self.state == State.CANCELED

    def in_grace(self, now: datetime) -> bool:
        return self.state == State.PAST_DUE and (
            self.grace_ends_at is None or now < self.grace_ends_at
        )

    def redemption_blocked(self, now: datetime) -> bool:
        """Past due and the grace period is over: the desk may not redeem until it is paid."""
        return self.state == State.PAST_DUE and not self.in_grace(now)

    def can_redeem(self, now: datetime) -> bool:
        return self.is_active or self.in_grace(now)

    def can_move_to(self, target: State) -> bool:
        return target in TRANSITIONS[State(self.state)]

    def commitment_remaining(self) -> int:
        return max(0, self.plan_version.min_commitment_periods - self.paid_periods)

    def active_beneficiary_ids(self) -> set[int]:
        return {b.member_id for b in self.beneficiaries if b.removed_at is None}


class Beneficiary(db.Model):
    """A household member who may redeem from someone else's membership."""

    __tablename__ = "membership_beneficiaries"

    id: Mapped[int] = mapped_column(primary_key=True)
    membership_id: Mapped[int] = mapped_column(sa.ForeignKey("memberships.id"), index=True)
    member_id: Mapped[int] = mapped_column(sa.ForeignKey("members.id"), index=True)
    added_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utc_default)
    added_by: Mapped[str] = mapped_column(sa.String(120))
    removed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    membership: Mapped[Membership] = relationship(back_populates="beneficiaries")
    member: Mapped[Member] = relationship()

    __table_args__ = (sa.UniqueConstraint("membership_id", "member_id"),)


class MembershipEvent(db.Model):
    """Every state transition and tier change: when, who (or which Stripe event), from, to, why."""

    __tablename__ = "membership_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    membership_id: Mapped[int] = mapped_column(sa.ForeignKey("memberships.id"), index=True)
    kind: Mapped[str] = mapped_column(sa.String(24))  # transition, tier_change, beneficiary, ...
    from_state: Mapped[str | None] = mapped_column(sa.String(24))
    to_state: Mapped[str | None] = mapped_column(sa.String(24))
    from_version_id: Mapped[int | None] = mapped_column(sa.ForeignKey("plan_versions.id"))
    to_version_id: Mapped[int | None] = mapped_column(sa.ForeignKey("plan_versions.id"))
    at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utc_default)
    effective_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    actor: Mapped[str] = mapped_column(sa.String(120))
    reason: Mapped[str] = mapped_column(sa.Text, default="")
    stripe_event_id: Mapped[str | None] = mapped_column(sa.String(255))
    data: Mapped[dict | None] = mapped_column(sa.JSON)


def grace_end(past_due_since: datetime, grace_days: int) -> datetime:
    return past_due_since + timedelta(days=grace_days)
