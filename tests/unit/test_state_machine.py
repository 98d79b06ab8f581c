"""The membership state machine: every move the table allows is recorded, every other one is
refused in words a receptionist can read, and each verb walks the path the business expects."""

from datetime import timedelta
from itertools import product

import pytest

from billing.entitlements import service as ledger
from billing.entitlements.models import EntryKind, LedgerEntry
from billing.errors import Conflict, Forbidden, InvalidInput
from billing.extensions import db
from billing.memberships import service as memberships
from billing.memberships.models import TRANSITIONS, MembershipEvent, State
from tests import factories as f

ALL_PAIRS = list(product(State, State))


def _events(membership, kind=None):
    q = db.select(MembershipEvent).where(MembershipEvent.membership_id == membership.id)
    if kind:
        q = q.where(MembershipEvent.kind == kind)
    return db.session.execute(q.order_by(MembershipEvent.id)).scalars().all()


def _ledger(membership, kind=None):
    q = db.select(LedgerEntry).where(LedgerEntry.membership_id == membership.id)
    if kind:
        q = q.where(LedgerEntry.kind == kind)
    return db.session.execute(q).scalars().all()


@pytest.fixture
def facial(app):
    return f.treatment("hydrafacial", price=20000)


@pytest.fixture
def tier(facial):
    return f.plan([(facial, 2)], price=21800)


def _in_state(version, state, now):
    membership = memberships.join(f.member(), version, actor="test", now=now)
    membership.state = state
    db.session.commit()
    return membership


@pytest.mark.parametrize(
    ("source", "target"), ALL_PAIRS, ids=[f"{a.value}->{b.value}" for a, b in ALL_PAIRS]
)
def test_every_pair_of_states_is_allowed_exactly_when_the_table_says(tier, clock, source, target):
    membership = _in_state(tier, source, clock())
    before = len(_events(membership, "transition"))
    if target in TRANSITIONS[source]:
        event = memberships.transition(
            membership, target, actor="desk:1", now=clock(), reason="test"
        )
        db.session.commit()
        assert membership.state == target
        assert (event.from_state, event.to_state, event.actor) == (source, target, "desk:1")
        assert len(_events(membership, "transition")) == before + 1
    else:
        with pytest.raises(memberships.IllegalTransition) as caught:
            memberships.transition(membership, target, actor="desk:1", now=clock())
        message = caught.value.detail
        assert memberships.READABLE[source] in message
        assert memberships.READABLE[target] in message
        assert caught.value.status == 409
        db.session.rollback()
        assert db.session.get(type(membership), membership.id).state == source
        assert len(_events(membership, "transition")) == before


def test_join_then_first_payment_activates_and_grants_once(tier, facial, clock):
    owner = f.member()
    membership = memberships.join(owner, tier, actor="desk", now=clock())
    assert membership.state == State.PENDING
    assert not membership.can_redeem(clock())
    source = ledger.GrantSource(ref="invoice:in_1", actor="stripe")
    period = dict(period_start=clock(), period_end=clock() + timedelta(days=30))
    memberships.record_paid_period(membership, source=source, now=clock(), **period)
    assert membership.state == State.ACTIVE
    assert membership.paid_periods == 1
    assert ledger.balance([membership.id], facial.id, clock()) == 2
    # Stripe delivers the same paid invoice again: nothing changes.
    assert memberships.record_paid_period(membership, source=source, now=clock(), **period) is None
    assert membership.paid_periods == 1
    assert ledger.balance([membership.id], facial.id, clock()) == 2
    moves = [(e.from_state, e.to_state) for e in _events(membership, "transition")]
    assert moves == [("pending", "active")]


def test_failed_payment_gives_a_grace_period_then_payment_restores(app, tier, facial, clock):
    membership = f.active_membership(tier, now=clock())
    memberships.mark_past_due(membership, actor="stripe", now=clock(), attempts=1)
    grace_days = app.config["GRACE_PERIOD_DAYS"]
    assert membership.state == State.PAST_DUE
    assert membership.grace_ends_at == clock() + timedelta(days=grace_days)
    assert membership.can_redeem(clock() + timedelta(days=grace_days - 1))
    assert not membership.can_redeem(clock() + timedelta(days=grace_days))
    # A second failure keeps the original grace end.
    memberships.mark_past_due(
        membership, actor="stripe", now=clock() + timedelta(days=3), attempts=2
    )
    assert membership.grace_ends_at == clock() + timedelta(days=grace_days)
    assert membership.payment_attempts == 2
    memberships.record_paid_period(
        membership,
        period_start=clock() + timedelta(days=30),
        period_end=clock() + timedelta(days=60),
        source=ledger.GrantSource(ref="invoice:retry", actor="stripe"),
        now=clock() + timedelta(days=4),
    )
    assert membership.state == State.ACTIVE
    assert (membership.grace_ends_at, membership.payment_attempts) == (None, 0)


def test_pause_and_resume_and_what_each_refuses(tier, clock):
    membership = f.active_membership(tier, now=clock())
    with pytest.raises(InvalidInput, match="resume date must be in the future"):
        memberships.pause(membership, actor="c", now=clock(), resume_at=clock())
    db.session.rollback()
    memberships.pause(membership, actor="c", now=clock(), reason="travel")
    assert membership.state == State.PAUSED and membership.paused_at == clock()
    with pytest.raises(memberships.IllegalTransition, match="paused"):
        memberships.pause(membership, actor="c", now=clock())
    db.session.rollback()
    memberships.resume(membership, actor="c", now=clock() + timedelta(days=5))
    assert membership.state == State.ACTIVE and membership.paused_at is None
    with pytest.raises(memberships.IllegalTransition, match="not paused"):
        memberships.resume(membership, actor="c", now=clock())
    db.session.rollback()
    moves = [(e.from_state, e.to_state, e.reason) for e in _events(membership, "transition")]
    assert moves[-2:] == [("active", "paused", "travel"), ("paused", "active", "resumed")]


def test_a_past_due_membership_cannot_be_paused(tier, clock):
    membership = f.active_membership(tier, now=clock())
    memberships.mark_past_due(membership, actor="stripe", now=clock())
    count = len(_events(membership))
    with pytest.raises(memberships.IllegalTransition, match="past due"):
        memberships.pause(membership, actor="c", now=clock())
    db.session.rollback()
    assert db.session.get(type(membership), membership.id).state == State.PAST_DUE
    assert len(_events(membership)) == count


def test_cancel_at_period_end_keeps_credits_until_the_period_finishes(tier, facial, clock):
    membership = f.active_membership(tier, now=clock(), period_days=30)
    memberships.cancel(membership, at_period_end=True, actor="client", now=clock())
    assert membership.state == State.CANCEL_AT_PERIOD_END
    assert membership.cancel_at == clock() + timedelta(days=30)
    assert ledger.balance([membership.id], facial.id, clock()) == 2
    # Asking again (a retry) changes nothing and does not cancel at once.
    memberships.cancel(membership, at_period_end=True, actor="client", now=clock())
    assert membership.state == State.CANCEL_AT_PERIOD_END
    memberships.finish_cancellation(membership, actor="stripe", now=clock() + timedelta(days=30))
    assert membership.state == State.CANCELED
    assert ledger.balance([membership.id], facial.id, clock()) == 0
    forfeited = _ledger(membership, EntryKind.EXPIRE)
    assert sum(e.quantity for e in forfeited) == -2
    with pytest.raises(memberships.IllegalTransition, match="already canceled"):
        memberships.cancel(membership, at_period_end=False, actor="client", now=clock())


def test_cancel_now_forfeits_what_is_left(tier, facial, clock):
    membership = f.active_membership(tier, now=clock())
    memberships.cancel(membership, at_period_end=False, actor="desk", now=clock(), reason="moved")
    assert membership.state == State.CANCELED and membership.canceled_at == clock()
    assert ledger.balance([membership.id], facial.id, clock()) == 0
    assert _events(membership, "transition")[-1].reason == "moved"


def test_minimum_commitment_refuses_records_a_fee_or_yields_to_an_admin(facial, clock):
    strict = f.plan([(facial, 1)], min_commitment_periods=3)
    with_fee = f.plan([(facial, 1)], min_commitment_periods=3, early_termination_fee_minor=5000)

    refused = f.active_membership(strict, now=clock())
    terms = memberships.cancellation_terms(refused)
    assert (terms["periods_remaining"], terms["allowed_without_override"]) == (2, False)
    before = len(_events(refused))
    with pytest.raises(Conflict, match="2 more") as caught:
        memberships.cancel(refused, at_period_end=True, actor="client", now=clock())
    assert caught.value.slug == "minimum-commitment"
    db.session.rollback()
    assert db.session.get(type(refused), refused.id).state == State.ACTIVE
    assert len(_events(refused)) == before

    with pytest.raises(Forbidden, match="Only an admin"):
        memberships.cancel(
            refused, at_period_end=False, actor="desk", now=clock(), override_reason="moving"
        )
    db.session.rollback()
    memberships.cancel(
        refused,
        at_period_end=False,
        actor="admin",
        now=clock(),
        override_reason="medical reasons",
        is_admin=True,
    )
    assert refused.state == State.CANCELED
    assert _events(refused, "transition")[-1].data["commitment_override"] == "medical reasons"

    charged = f.active_membership(with_fee, now=clock())
    assert memberships.cancellation_terms(charged)["early_termination_fee_minor"] == 5000
    memberships.cancel(charged, at_period_end=True, actor="client", now=clock())
    assert charged.state == State.CANCEL_AT_PERIOD_END
    assert charged.early_termination_fee_minor == 5000
    assert _events(charged, "transition")[-1].data["early_termination_fee_minor"] == 5000


def test_commitment_met_cancels_freely(facial, clock):
    version = f.plan([(facial, 1)], min_commitment_periods=1)
    membership = f.active_membership(version, now=clock())
    assert memberships.cancellation_terms(membership)["periods_remaining"] == 0
    memberships.cancel(membership, at_period_end=True, actor="client", now=clock())
    assert membership.state == State.CANCEL_AT_PERIOD_END
    assert membership.early_termination_fee_minor is None


def test_undo_cancellation_returns_to_active(tier, clock):
    membership = f.active_membership(tier, now=clock())
    memberships.cancel(membership, at_period_end=True, actor="client", now=clock())
    memberships.undo_cancellation(membership, actor="client", now=clock())
    assert membership.state == State.ACTIVE and membership.cancel_at is None


def test_upgrade_grants_the_difference_now_and_downgrade_waits(facial, clock):
    peel = f.treatment("peel", price=8000)
    basic = f.plan([(facial, 1)], code="basic", price=21800)
    premium = f.plan([(facial, 2), (peel, 1)], code="premium", price=43600)
    membership = f.active_membership(basic, now=clock(), period_days=30)
    clock.advance(days=15)
    memberships.change_tier(membership, premium, actor="desk", now=clock())
    assert membership.plan_version_id == premium.id
    assert ledger.balance([membership.id], facial.id, clock()) == 2
    assert ledger.balance([membership.id], peel.id, clock()) == 1
    upgrade_grant = _ledger(membership, EntryKind.GRANT)[-1].credit.grant
    # Half the period left, of a net difference of S$200.00: S$100.00.
    assert upgrade_grant.net_amount_minor == 10000

    event = memberships.change_tier(membership, basic, actor="desk", now=clock())
    assert membership.plan_version_id == premium.id
    assert membership.pending_plan_version_id == basic.id
    assert event.effective_at == membership.current_period_end

    with pytest.raises(Conflict, match="already on") as caught:
        memberships.change_tier(membership, premium, actor="desk", now=clock())
    assert caught.value.slug == "same-tier"
