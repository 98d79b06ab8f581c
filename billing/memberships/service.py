"""Membership verbs. The state machine (models.TRANSITIONS) is enforced in `transition` only;
every other verb goes through it, so every change of state is recorded with who, when and why.

Stripe's webhooks call the same verbs as the API (with the event id as the actor's reference)."""

from __future__ import annotations

import functools
from datetime import datetime, timedelta

import sqlalchemy as sa

from billing.entitlements import service as ledger
from billing.errors import Conflict, Forbidden, InvalidInput, NotFound
from billing.extensions import db
from billing.members.models import Member
from billing.memberships.models import (
    TRANSITIONS,
    Beneficiary,
    Membership,
    MembershipEvent,
    State,
    grace_end,
)
from billing.money import div_round_half_up
from billing.plans.models import PlanKind, PlanVersion
from billing.settings import ClinicSettings, clinic_settings

READABLE = {
    State.PENDING: "waiting for its first payment",
    State.ACTIVE: "active",
    State.PAST_DUE: "past due",
    State.PAUSED: "paused",
    State.CANCEL_AT_PERIOD_END: "ending at the close of this period",
    State.CANCELED: "canceled",
}


class IllegalTransition(Conflict):
    slug, title = "illegal-transition", "Not possible in this state"


def transition(
    membership: Membership,
    target: State,
    *,
    actor: str,
    now: datetime,
    reason: str = "",
    stripe_event_id: str | None = None,
    data: dict | None = None,
) -> MembershipEvent:
    """Move to `target` if the table allows it, and record the move. Does not commit."""
    current = State(membership.state)
    if not membership.can_move_to(target):
        allowed = ", ".join(sorted(s.value for s in TRANSITIONS[current])) or "nothing"
        raise IllegalTransition(
            f"This membership is {READABLE[current]}; it cannot become {READABLE[target]} "
            f"(from {current.value} it can go to: {allowed}).",
            current_state=current.value,
            requested_state=target.value,
        )
    membership.state = target
    event = MembershipEvent(
        membership_id=membership.id,
        kind="transition",
        from_state=current.value,
        to_state=target.value,
        at=now,
        actor=actor,
        reason=reason,
        stripe_event_id=stripe_event_id,
        data=data,
    )
    db.session.add(event)
    return event


def get_membership(membership_id: int) -> Membership:
    membership = db.session.get(Membership, membership_id)
    if membership is None:
        raise NotFound(f"No membership {membership_id}.")
    return membership


GIFT_SOURCE = "gift"


def _unclaimed_gift():
    """A gift's holding membership before its claim: pending, source "gift"."""
    return sa.and_(Membership.source == GIFT_SOURCE, Membership.state == State.PENDING)


def join(
    member: Member,
    version: PlanVersion,
    *,
    actor: str,
    now: datetime,
    source: str = "desk",
    commit: bool = True,
) -> Membership:
    """A member joins a plan version: `pending` until the first payment is confirmed."""
    if version.plan.is_retired:
        raise Conflict(
            f"{version.plan.name} is retired: nobody can join it now.", slug="plan-retired"
        )
    if version.plan.kind == PlanKind.TIER and source != GIFT_SOURCE:
        # A gift bought for someone else is held on a membership of the buyer's until it is
        # claimed: it is not the buyer's own tier, and holding one does not count as one.
        existing = (
            db.session.execute(
                sa.select(Membership)
                .join(PlanVersion, Membership.plan_version_id == PlanVersion.id)
                .join(PlanVersion.plan)
                .where(
                    Membership.member_id == member.id,
                    Membership.state != State.CANCELED,
                    PlanVersion.plan.has(kind=PlanKind.TIER),
                    ~_unclaimed_gift(),
                )
            )
            .scalars()
            .first()
        )
        if existing is not None:
            raise Conflict(
                f"{member.full_name} already has a membership ({existing.plan_version.plan.name}, "
                f"{READABLE[State(existing.state)]}); change its tier instead.",
                slug="already-a-member",
                membership_id=existing.id,
            )
    membership = Membership(
        member_id=member.id,
        plan_version_id=version.id,
        state=State.PENDING,
        source=source,
        started_at=now,
        created_at=now,
    )
    db.session.add(membership)
    db.session.flush()
    db.session.add(
        MembershipEvent(
            membership_id=membership.id,
            kind="joined",
            to_state=State.PENDING,
            to_version_id=version.id,
            at=now,
            actor=actor,
            reason=f"joined {version.plan.name} v{version.version}",
        )
    )
    if commit:
        db.session.commit()
    return membership


def record_paid_period(
    membership: Membership,
    *,
    period_start: datetime,
    period_end: datetime,
    source: ledger.GrantSource,
    now: datetime,
    stripe_event_id: str | None = None,
    items=None,
    commit: bool = True,
):
    """A period was paid: the membership is active for it and its credits are granted, once.

    A downgrade waiting for this period takes effect first, so the new period grants the new
    tier. A repeat for the same period and source changes nothing. `items` ([(plan item,
    quantity)]) grants part of the plan (a series paid by instalments); None: all of it.

    The membership's row is locked first: two periods paid at the same moment (two webhook
    deliveries on two servers) are applied one after the other, and both are counted."""
    ledger.lock_memberships([membership.id])
    if ledger._find_grant(membership.id, period_start, source.ref) is not None:
        return None
    if membership.state in (State.CANCELED, State.PAUSED):
        raise Conflict(
            f"Membership {membership.id} is {READABLE[State(membership.state)]}; a paid period "
            "cannot be granted to it.",
            slug="membership-not-grantable",
        )
    if (
        membership.pending_plan_version_id is not None
        and membership.current_period_end is not None
        and period_start >= membership.current_period_end
    ):
        _apply_pending_downgrade(
            membership, now=now, actor=source.actor, stripe_event_id=stripe_event_id
        )
    if membership.state in (State.PENDING, State.PAST_DUE):
        transition(
            membership,
            State.ACTIVE,
            actor=source.actor,
            now=now,
            reason="payment received",
            stripe_event_id=stripe_event_id,
        )
        membership.past_due_since = None
        membership.grace_ends_at = None
        membership.payment_attempts = 0
        membership.next_payment_attempt = None
    membership.activated_at = membership.activated_at or now
    if membership.current_period_start is None or period_start >= membership.current_period_start:
        membership.current_period_start = period_start
        membership.current_period_end = period_end
    membership.paid_periods += 1
    grant = ledger.grant_period(
        membership,
        period_start,
        period_end,
        source,
        now=now,
        items=items,
        commit=False,
        found_none=True,  # looked for above, under the lock: not looked for again
    )
    if commit:
        db.session.commit()
    return grant


def mark_past_due(
    membership: Membership,
    *,
    actor: str,
    now: datetime,
    attempts: int = 1,
    next_attempt: datetime | None = None,
    settings: ClinicSettings | None = None,
    stripe_event_id: str | None = None,
    commit: bool = True,
) -> Membership:
    """A payment failed: past due, with a grace period in which the member may still redeem."""
    settings = settings or clinic_settings()
    if membership.state != State.PAST_DUE:
        transition(
            membership,
            State.PAST_DUE,
            actor=actor,
            now=now,
            reason="payment failed",
            stripe_event_id=stripe_event_id,
            data={"attempts": attempts},
        )
        membership.past_due_since = now
        membership.grace_ends_at = grace_end(now, settings.grace_period_days)
    membership.payment_attempts = max(membership.payment_attempts, attempts)
    membership.next_payment_attempt = next_attempt
    if commit:
        db.session.commit()
    return membership


def pause(
    membership: Membership,
    *,
    actor: str,
    now: datetime,
    reason: str = "",
    resume_at: datetime | None = None,
    commit: bool = True,
) -> Membership:
    """A freeze: no billing and no new grants until resumed; live credits wait."""
    if membership.state == State.PAST_DUE:
        raise IllegalTransition(
            "This membership is past due: settle the failed payment before pausing it.",
            current_state=membership.state,
            requested_state=State.PAUSED.value,
        )
    if resume_at is not None and resume_at <= now:
        raise InvalidInput(
            "The resume date must be in the future.",
            errors={"resume_at": ["must be in the future"]},
        )
    transition(membership, State.PAUSED, actor=actor, now=now, reason=reason or "paused")
    membership.paused_at = now
    membership.resume_at = resume_at
    if commit:
        db.session.commit()
    return membership


def resume(
    membership: Membership, *, actor: str, now: datetime, reason: str = "", commit: bool = True
) -> Membership:
    if membership.state != State.PAUSED:
        raise IllegalTransition(
            f"This membership is {READABLE[State(membership.state)]}, not paused: "
            "there is nothing to resume.",
            current_state=membership.state,
            requested_state=State.ACTIVE.value,
        )
    paused_for = now - membership.paused_at if membership.paused_at else None
    transition(membership, State.ACTIVE, actor=actor, now=now, reason=reason or "resumed")
    if paused_for:
        ledger.extend_for_pause(
            membership, paused_for=paused_for, now=now, actor=actor, commit=False
        )
    membership.paused_at = None
    membership.resume_at = None
    if commit:
        db.session.commit()
    return membership


def cancellation_terms(membership: Membership) -> dict:
    """What cancelling would cost now: shown to the member before they confirm."""
    remaining = membership.commitment_remaining()
    fee = membership.plan_version.early_termination_fee_minor
    return {
        "commitment_periods": membership.plan_version.min_commitment_periods,
        "paid_periods": membership.paid_periods,
        "periods_remaining": remaining,
        "early_termination_fee_minor": fee if remaining and fee is not None else 0,
        "currency": membership.plan_version.currency,
        "allowed_without_override": remaining == 0 or fee is not None,
    }


def cancel(
    membership: Membership,
    *,
    at_period_end: bool,
    actor: str,
    now: datetime,
    reason: str = "",
    override_reason: str | None = None,
    is_admin: bool = False,
    stripe_event_id: str | None = None,
    commit: bool = True,
) -> Membership:
    """Cancel now or at the end of the period, honouring the minimum commitment.

    Before the committed number of paid periods: refused, unless the tier defines an early
    termination fee (recorded here, charged through Stripe) or an admin overrides with a reason."""
    if membership.state == State.CANCELED:
        raise IllegalTransition(
            "This membership is already canceled.",
            current_state=membership.state,
            requested_state=State.CANCELED.value,
        )
    if at_period_end and membership.state == State.CANCEL_AT_PERIOD_END:
        return membership  # asked again (a retry, or Stripe echoing it): nothing more to do
    terms = cancellation_terms(membership)
    data: dict = {"at_period_end": at_period_end}
    if terms["periods_remaining"] and membership.state != State.PENDING:
        fee = membership.plan_version.early_termination_fee_minor
        if override_reason:
            if not is_admin:
                raise Forbidden(
                    "Only an admin may override the minimum commitment.",
                    slug="override-needs-admin",
                )
            data["commitment_override"] = override_reason
        elif fee is not None:
            membership.early_termination_fee_minor = fee
            data["early_termination_fee_minor"] = fee
        else:
            raise Conflict(
                f"This membership has a minimum commitment of {terms['commitment_periods']} paid "
                f"periods and {terms['paid_periods']} are paid: it can be cancelled after "
                f"{terms['periods_remaining']} more, or by an admin with a reason.",
                slug="minimum-commitment",
                periods_remaining=terms["periods_remaining"],
            )
    if at_period_end and membership.state in (State.ACTIVE,) and membership.current_period_end:
        transition(
            membership,
            State.CANCEL_AT_PERIOD_END,
            actor=actor,
            now=now,
            reason=reason or "cancel at period end",
            stripe_event_id=stripe_event_id,
            data=data,
        )
        membership.cancel_at = membership.current_period_end
    else:
        transition(
            membership,
            State.CANCELED,
            actor=actor,
            now=now,
            reason=reason or "canceled",
            stripe_event_id=stripe_event_id,
            data=data,
        )
        membership.canceled_at = now
        ledger.end_all_credits(
            membership,
            now=now,
            actor=actor,
            reason="membership canceled: unused credits forfeited",
            commit=False,
        )
    if commit:
        db.session.commit()
    return membership


def finish_cancellation(
    membership: Membership,
    *,
    actor: str,
    now: datetime,
    stripe_event_id: str | None = None,
    commit: bool = True,
) -> Membership:
    """The period of a cancel-at-period-end membership has ended: it is canceled, and what is
    left unused expires with it (breakage), as at any period end."""
    if membership.state == State.CANCELED:
        return membership
    transition(
        membership,
        State.CANCELED,
        actor=actor,
        now=now,
        reason="period ended",
        stripe_event_id=stripe_event_id,
    )
    membership.canceled_at = now
    ledger.end_all_credits(
        membership,
        now=now,
        actor=actor,
        reason="membership ended: unused credits expired",
        commit=False,
    )
    if commit:
        db.session.commit()
    return membership


def undo_cancellation(
    membership: Membership, *, actor: str, now: datetime, commit: bool = True
) -> Membership:
    if membership.state != State.CANCEL_AT_PERIOD_END:
        raise IllegalTransition(
            "Only a membership set to end at the close of its period can be kept.",
            current_state=membership.state,
            requested_state="active",
        )
    transition(membership, State.ACTIVE, actor=actor, now=now, reason="cancellation withdrawn")
    membership.cancel_at = None
    membership.early_termination_fee_minor = None
    if commit:
        db.session.commit()
    return membership


def change_tier(
    membership: Membership,
    new_version: PlanVersion,
    *,
    actor: str,
    now: datetime,
    net_amount_minor: int | None = None,
    source_ref: str | None = None,
    stripe_event_id: str | None = None,
    settings: ClinicSettings | None = None,
    commit: bool = True,
) -> MembershipEvent:
    """An upgrade takes effect at once and grants, for this period, what the new tier includes
    beyond what was already granted; a downgrade waits for the next period."""
    settings = settings or clinic_settings()
    old = membership.plan_version
    if new_version.id == old.id or new_version.plan_id == old.plan_id:
        raise Conflict(f"This membership is already on {old.plan.name}.", slug="same-tier")
    if new_version.plan.kind != PlanKind.TIER or old.plan.kind != PlanKind.TIER:
        raise InvalidInput("Only a monthly tier can change to another tier.")
    if new_version.plan.is_retired:
        raise Conflict(f"{new_version.plan.name} is retired.", slug="plan-retired")
    if new_version.currency != old.currency:
        raise InvalidInput("The new tier is priced in another currency.")
    if membership.state not in (State.ACTIVE, State.PENDING):
        raise IllegalTransition(
            f"This membership is {READABLE[State(membership.state)]}: change its tier when active.",
            current_state=membership.state,
            requested_state=membership.state,
        )
    upgrade = _costs_more_per_month(new_version, old)
    event = MembershipEvent(
        membership_id=membership.id,
        kind="tier_change",
        from_version_id=old.id,
        to_version_id=new_version.id,
        at=now,
        actor=actor,
        stripe_event_id=stripe_event_id,
        reason="upgrade" if upgrade else "downgrade",
    )
    if upgrade or membership.state == State.PENDING or membership.current_period_start is None:
        membership.plan_version_id = new_version.id
        membership.plan_version = new_version
        membership.pending_plan_version_id = None
        event.effective_at = now
        if upgrade and membership.state == State.ACTIVE and membership.current_period_start:
            extra = ledger.upgrade_difference(
                membership, new_version, membership.current_period_start
            )
            if extra:
                if net_amount_minor is None:
                    net_amount_minor = _prorated_difference(
                        membership, old, new_version, now, settings
                    )
                ledger.grant_period(
                    membership,
                    membership.current_period_start,
                    membership.current_period_end,
                    ledger.GrantSource(
                        ref=source_ref or f"upgrade:{now.isoformat()}",
                        actor=actor,
                        net_amount_minor=net_amount_minor,
                        reason=f"upgrade to {new_version.plan.name}",
                    ),
                    now=now,
                    items=extra,
                    settings=settings,
                    commit=False,
                )
    else:
        membership.pending_plan_version_id = new_version.id
        event.effective_at = membership.current_period_end
    db.session.add(event)
    if commit:
        db.session.commit()
    return event


def _months(version: PlanVersion) -> int:
    return version.interval_count * (12 if version.interval == "year" else 1)


def _costs_more_per_month(new: PlanVersion, old: PlanVersion) -> bool:
    """new.price / new.months > old.price / old.months, in integers (no floats for money)."""
    return new.price_minor * _months(old) > old.price_minor * _months(new)


def _prorated_difference(membership, old, new, now, settings) -> int:
    """The net price difference for the rest of this period (what Stripe would prorate)."""
    start, end = membership.current_period_start, membership.current_period_end
    if not start or not end or end <= now:
        return 0
    diff = ledger.version_net_price(new, settings) - ledger.version_net_price(old, settings)
    if diff <= 0:
        return 0
    left = (end - max(now, start)) // timedelta(microseconds=1)
    total = (end - start) // timedelta(microseconds=1)
    return div_round_half_up(diff * left, total)


def _apply_pending_downgrade(membership, *, now, actor, stripe_event_id=None) -> None:
    new_version = membership.pending_plan_version
    db.session.add(
        MembershipEvent(
            membership_id=membership.id,
            kind="tier_change_applied",
            from_version_id=membership.plan_version_id,
            to_version_id=new_version.id,
            at=now,
            effective_at=now,
            actor=actor,
            stripe_event_id=stripe_event_id,
            reason="downgrade takes effect",
        )
    )
    membership.plan_version_id = new_version.id
    membership.plan_version = new_version
    membership.pending_plan_version_id = None


def add_beneficiary(
    membership: Membership, member: Member, *, actor: str, now: datetime, commit: bool = True
) -> Beneficiary:
    """A household member who may redeem from this membership."""
    if member.id == membership.member_id:
        raise InvalidInput(
            f"{member.full_name} owns this membership; they are not a beneficiary.",
            errors={"member_id": ["is the owner"]},
        )
    if membership.state == State.CANCELED:
        raise Conflict("This membership is canceled.", slug="membership-canceled")
    row = db.session.execute(
        sa.select(Beneficiary).where(
            Beneficiary.membership_id == membership.id, Beneficiary.member_id == member.id
        )
    ).scalar_one_or_none()
    if row is not None and row.removed_at is None:
        raise Conflict(f"{member.full_name} is already a beneficiary.", slug="already-beneficiary")
    if row is None:
        row = Beneficiary(
            membership_id=membership.id, member_id=member.id, added_at=now, added_by=actor
        )
        db.session.add(row)
    else:
        row.removed_at, row.added_at, row.added_by = None, now, actor
    db.session.add(
        MembershipEvent(
            membership_id=membership.id,
            kind="beneficiary_added",
            at=now,
            actor=actor,
            data={"member_id": member.id},
        )
    )
    if commit:
        db.session.commit()
    return row


def remove_beneficiary(
    membership: Membership, member_id: int, *, actor: str, now: datetime, commit: bool = True
) -> None:
    row = db.session.execute(
        sa.select(Beneficiary).where(
            Beneficiary.membership_id == membership.id,
            Beneficiary.member_id == member_id,
            Beneficiary.removed_at.is_(None),
        )
    ).scalar_one_or_none()
    if row is None:
        raise NotFound(f"Member {member_id} is not a beneficiary of this membership.")
    row.removed_at = now
    db.session.add(
        MembershipEvent(
            membership_id=membership.id,
            kind="beneficiary_removed",
            at=now,
            actor=actor,
            data={"member_id": member_id},
        )
    )
    if commit:
        db.session.commit()


def memberships_usable_by(member_id: int, *, lock: bool = False) -> list[Membership]:
    """The memberships a client may redeem from: their own and those naming them as beneficiary.

    With `lock`, they are locked for this transaction in the same statement (the ledger's lock,
    taken before spending or granting)."""
    params = {"member_id": member_id}
    if lock:
        return ledger.lock_selected(_usable_query(), params)
    return list(db.session.execute(_usable_query(), params).scalars())


@functools.cache
def _usable_query() -> sa.Select:
    """Built once (bound parameter `member_id`): it is on the front desk's path."""
    return usable_select(sa.bindparam("member_id"))


def usable_select(member_id: sa.ColumnElement) -> sa.Select:
    """The memberships a client may redeem from, in id order: `member_id` is a bound parameter,
    or the column of an enclosing statement that names the client (the desk's visit)."""
    # A UNION's selects are not correlated by themselves: each names its own table only.
    own = (
        sa.select(Membership.id)
        .where(Membership.member_id == member_id)
        .correlate_except(Membership)
    )
    shared = (
        sa.select(Beneficiary.membership_id)
        .where(Beneficiary.member_id == member_id, Beneficiary.removed_at.is_(None))
        .correlate_except(Beneficiary)
    )
    return (
        sa.select(Membership)
        .where(
            Membership.id.in_(own.union(shared)),
            Membership.state != State.CANCELED,
            ~_unclaimed_gift(),
        )
        .order_by(Membership.id)
    )


# ---------------------------------------------------------------------------------------------
# For the API: the same verbs, addressed by ids and codes, and what a member is shown.


def current_version(*, plan_code: str | None = None, plan_version_id: int | None = None):
    """The version a new member joins: always the plan's current one. Naming an older version
    is refused rather than silently swapped, so nobody is signed up at a price they did not see."""
    from billing.plans.models import Plan

    if (plan_code is None) == (plan_version_id is None):
        raise InvalidInput(
            "Name the plan by its code (plan) or its version (plan_version_id), not both.",
            errors={"plan": ["give plan or plan_version_id"]},
        )
    if plan_version_id is not None:
        version = db.session.get(PlanVersion, plan_version_id)
        if version is None:
            raise InvalidInput(
                f"No plan version {plan_version_id}.",
                errors={"plan_version_id": ["unknown plan version"]},
            )
        current = version.plan.current_version
        if current is not None and current.id != version.id:
            raise Conflict(
                f"Version {version.version} of {version.plan.name} is no longer sold; new "
                f"members join version {current.version} (plan_version_id {current.id}).",
                slug="version-not-current",
                current_plan_version_id=current.id,
            )
        return version
    plan = db.session.execute(sa.select(Plan).where(Plan.code == plan_code)).scalar_one_or_none()
    if plan is None or plan.current_version is None:
        raise InvalidInput(f"No plan {plan_code!r}.", errors={"plan": ["unknown plan"]})
    return plan.current_version


def join_plan(
    member_id: int,
    *,
    plan_code: str | None = None,
    plan_version_id: int | None = None,
    actor: str,
    now: datetime,
    source: str = "desk",
) -> Membership:
    """join, with the member and plan named as the API names them."""
    member = db.session.get(Member, member_id)
    if member is None:
        raise InvalidInput(f"No member {member_id}.", errors={"member_id": ["unknown member"]})
    version = current_version(plan_code=plan_code, plan_version_id=plan_version_id)
    return join(member, version, actor=actor, now=now, source=source)


def change_tier_to(
    membership: Membership, plan_code: str, *, actor: str, now: datetime
) -> Membership:
    """change_tier to the current version of the plan with this code."""
    change_tier(membership, current_version(plan_code=plan_code), actor=actor, now=now)
    return membership


def add_beneficiary_by_id(
    membership: Membership, member_id: int, *, actor: str, now: datetime
) -> Membership:
    """add_beneficiary, with the member named by id; returns the membership as it now is."""
    member = db.session.get(Member, member_id)
    if member is None:
        raise InvalidInput(f"No member {member_id}.", errors={"member_id": ["unknown member"]})
    add_beneficiary(membership, member, actor=actor, now=now)
    return membership


def remove_beneficiary_by_id(
    membership: Membership, member_id: int, *, actor: str, now: datetime
) -> Membership:
    remove_beneficiary(membership, member_id, actor=actor, now=now)
    return membership


def memberships_of(member_id: int) -> list[Membership]:
    """Every membership a member owns or shares as a beneficiary, canceled ones too, newest first."""
    if db.session.get(Member, member_id) is None:
        raise NotFound(f"No member {member_id}.")
    shared = sa.select(Beneficiary.membership_id).where(
        Beneficiary.member_id == member_id, Beneficiary.removed_at.is_(None)
    )
    return list(
        db.session.execute(
            sa.select(Membership)
            .where(sa.or_(Membership.member_id == member_id, Membership.id.in_(shared)))
            .order_by(Membership.started_at.desc(), Membership.id.desc())
        ).scalars()
    )


def events_of(membership: Membership) -> list[MembershipEvent]:
    """The recorded history: joins, transitions, tier changes, beneficiaries, oldest first."""
    return list(
        db.session.execute(
            sa.select(MembershipEvent)
            .where(MembershipEvent.membership_id == membership.id)
            .order_by(MembershipEvent.at, MembershipEvent.id)
        ).scalars()
    )


def describe_state(membership: Membership) -> str:
    return READABLE[State(membership.state)]


def next_payment_at(membership: Membership) -> datetime | None:
    """When the card is next charged: the period's end while active, the retry while past due;
    nothing while paused, ending or ended, or before the first payment is confirmed."""
    if membership.state == State.ACTIVE:
        return membership.current_period_end
    if membership.state == State.PAST_DUE:
        return membership.next_payment_attempt
    return None


def transfer_gift(
    membership: Membership, recipient: Member, *, actor: str, now: datetime, code: str
) -> MembershipEvent:
    """A gift's holding membership passes from its buyer to the person who claimed it: the one
    change of owner there is, recorded as a "gift_claimed" event. Does not commit."""
    if membership.source != GIFT_SOURCE:
        raise Conflict("Only a gift's membership changes hands.", slug="not-a-gift")
    previous = membership.member_id
    membership.member_id = recipient.id
    membership.member = recipient
    event = MembershipEvent(
        membership_id=membership.id,
        kind="gift_claimed",
        at=now,
        actor=actor,
        reason=f"gift {code} claimed by {recipient.full_name}",
        data={"from_member_id": previous, "to_member_id": recipient.id, "code": code},
    )
    db.session.add(event)
    db.session.flush()
    return event
