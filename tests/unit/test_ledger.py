"""The entitlement ledger's rules, as a member, a receptionist and an accountant would see them."""

from datetime import timedelta

import pytest

from billing.entitlements import service as ledger
from billing.entitlements.models import EntryKind, LedgerEntry
from billing.errors import Conflict, InvalidInput
from billing.extensions import db
from billing.memberships import service as memberships
from billing.payments.models import Invoice, Receivable
from tests import factories as f


@pytest.fixture
def tier(app):
    """The finance issue's worked example: S$327.00 incl. 9 % GST, credits priced 200/80/120."""
    a = f.treatment("facial-a", price=20000)
    b = f.treatment("peel-b", price=8000)
    c = f.treatment("mask-c", price=12000)
    return f.plan([(a, 1), (b, 1), (c, 1)], price=32700), (a, b, c)


def _entries(membership, kind=None):
    q = db.select(LedgerEntry).where(LedgerEntry.membership_id == membership.id)
    if kind:
        q = q.where(LedgerEntry.kind == kind)
    return db.session.execute(q.order_by(LedgerEntry.id)).scalars().all()


def test_period_fee_net_of_gst_is_allocated_by_standalone_price(tier, clock):
    version, _ = tier
    m = f.active_membership(version, now=clock())
    grants = _entries(m, EntryKind.GRANT)
    assert [e.value_minor for e in grants] == [15000, 6000, 9000]
    assert sum(e.value_minor for e in grants) == 30000  # S$327.00 less 9 % GST


def test_granting_the_same_period_and_source_twice_grants_once(tier, clock):
    version, _ = tier
    m = f.active_membership(version, now=clock(), invoice_ref="invoice:in_1")
    again = ledger.grant_period(
        m,
        m.current_period_start,
        m.current_period_end,
        ledger.GrantSource(ref="invoice:in_1", actor="stripe"),
        now=clock(),
    )
    assert again.source_ref == "invoice:in_1"
    assert len(_entries(m, EntryKind.GRANT)) == 3


def test_redeem_consumes_the_credit_that_expires_first(app, clock):
    t = f.treatment(price=10000)
    version = f.plan([(t, 1)], price=10900, unused_rule="rollover", rollover_max_periods=2)
    m = f.active_membership(version, now=clock(), period_days=30)
    later = clock() + timedelta(days=30)
    memberships.record_paid_period(
        m,
        period_start=later,
        period_end=later + timedelta(days=30),
        source=ledger.GrantSource(ref="invoice:second", actor="test"),
        now=clock(),
    )
    r = ledger.redeem(
        membership_ids=[m.id],
        treatment=t,
        quantity=1,
        member_id=m.member_id,
        now=clock(),
        actor="desk",
    )
    assert r.entries[0].expires_at == m.started_at + timedelta(days=30)
    assert ledger.balance([m.id], t.id, clock()) == 1


def test_redeeming_more_than_the_balance_is_refused_and_writes_nothing(tier, clock):
    version, (a, _, _) = tier
    m = f.active_membership(version, now=clock())
    before = len(_entries(m))
    with pytest.raises(ledger.InsufficientCredits, match="1 session left, 2 asked"):
        ledger.redeem(
            membership_ids=[m.id],
            treatment=a,
            quantity=2,
            member_id=m.member_id,
            now=clock(),
            actor="desk",
        )
    db.session.rollback()
    assert len(_entries(m)) == before
    assert ledger.balance([m.id], a.id, clock()) == 1


def test_reverse_gives_the_credit_and_its_value_back_once(tier, clock):
    version, (a, _, _) = tier
    m = f.active_membership(version, now=clock())
    r = ledger.redeem(
        membership_ids=[m.id],
        treatment=a,
        quantity=1,
        member_id=m.member_id,
        now=clock(),
        actor="desk",
    )
    assert r.value_minor == 15000
    back = ledger.reverse(r.entries[0], actor="desk", reason="wrong line", now=clock())
    assert (back.quantity, back.value_minor) == (1, 15000)
    assert ledger.balance([m.id], a.id, clock()) == 1
    with pytest.raises(Conflict, match="already reversed"):
        ledger.reverse(r.entries[0], actor="desk", reason="again", now=clock())


def test_expired_credit_cannot_be_redeemed_and_becomes_breakage(tier, clock):
    version, (a, b, c) = tier
    m = f.active_membership(version, now=clock(), period_days=30)
    ledger.redeem(
        membership_ids=[m.id],
        treatment=a,
        quantity=1,
        member_id=m.member_id,
        now=clock(),
        actor="desk",
    )
    ledger.redeem(
        membership_ids=[m.id],
        treatment=b,
        quantity=1,
        member_id=m.member_id,
        now=clock(),
        actor="desk",
    )
    clock.advance(days=31)
    with pytest.raises(ledger.InsufficientCredits):
        ledger.redeem(
            membership_ids=[m.id],
            treatment=c,
            quantity=1,
            member_id=m.member_id,
            now=clock(),
            actor="desk",
        )
    db.session.rollback()
    expired = ledger.expire_unused(m, now=clock())
    assert [(e.kind, e.quantity, e.value_minor) for e in expired] == [("expire", -1, -9000)]
    assert ledger.expire_unused(m, now=clock()) == []  # a second run finds nothing to do


def test_rollover_keeps_credits_deferred_up_to_the_cap(app, clock):
    t = f.treatment(price=10000)
    version = f.plan(
        [(t, 3)], price=32700, unused_rule="rollover", rollover_max_periods=1, rollover_cap=2
    )
    m = f.active_membership(version, now=clock(), period_days=30)
    clock.advance(days=30)
    written = ledger.expire_unused(m, now=clock())
    kinds = sorted((e.kind, e.quantity) for e in written)
    assert kinds == [("expire", -1), ("rollover", 0)]
    assert ledger.balance([m.id], t.id, clock()) == 2
    clock.advance(days=40)
    ledger.expire_unused(m, now=clock())
    assert ledger.balance([m.id], t.id, clock()) == 0  # rolled over once only


def test_pause_extends_live_credits_by_its_length(tier, clock):
    version, (a, _, _) = tier
    m = f.active_membership(version, now=clock(), period_days=30)
    memberships.pause(m, actor="client", now=clock())
    clock.advance(days=45)
    assert ledger.expire_unused(m, now=clock()) == []  # paused: nothing expires
    memberships.resume(m, actor="client", now=clock())
    assert ledger.balance([m.id], a.id, clock()) == 1
    clock.advance(days=29)  # 30 days were left when it was paused
    assert ledger.balance([m.id], a.id, clock()) == 1
    clock.advance(days=2)
    assert ledger.balance([m.id], a.id, clock()) == 0


def _paid_by_invoice(version, clock):
    """A member who joined and paid the first period by a S$327.00 invoice (the grant's source)."""
    owner = f.member()
    m = memberships.join(owner, version, actor="t", now=clock())
    invoice = Invoice(
        member_id=owner.id,
        membership_id=m.id,
        currency="SGD",
        total_minor=32700,
        tax_minor=2700,
        net_minor=30000,
        status="paid",
    )
    db.session.add(invoice)
    db.session.flush()
    memberships.record_paid_period(
        m,
        period_start=clock(),
        period_end=clock() + timedelta(days=30),
        source=ledger.GrantSource(
            ref=f"invoice:{invoice.id}", actor="stripe", invoice_id=invoice.id
        ),
        now=clock(),
    )
    return owner, m, invoice


def test_clawback_takes_back_unused_and_records_what_was_used(tier, clock):
    version, (a, _, _) = tier
    owner, m, invoice = _paid_by_invoice(version, clock)
    ledger.redeem(
        membership_ids=[m.id],
        treatment=a,
        quantity=1,
        member_id=owner.id,
        now=clock(),
        actor="desk",
    )
    result = ledger.clawback(invoice.id, source_ref="re_1", now=clock(), actor="stripe")
    assert result.clawed_value_minor == 15000
    assert result.shortfall_minor == 15000
    owed = db.session.get(Receivable, result.receivable_id)
    assert (owed.amount_minor, owed.member_id) == (16350, owner.id)  # S$150 + 9 % GST
    assert ledger.live_lots([m.id], clock()) == []
    again = ledger.clawback(invoice.id, source_ref="re_1", now=clock(), actor="stripe")
    assert again.entries == [] and db.session.query(Receivable).count() == 1


def test_choice_credit_covers_any_of_its_options(app, clock):
    x, y, z = (f.treatment(price=p) for p in (10000, 20000, 30000))
    version = f.plan([("choice", [x, y, z], 1, "Any 1 facial")])
    m = f.active_membership(version, now=clock())
    ledger.redeem(
        membership_ids=[m.id],
        treatment=z,
        quantity=1,
        member_id=m.member_id,
        now=clock(),
        actor="desk",
    )
    assert ledger.balance([m.id], x.id, clock()) == 0


def test_quantity_must_be_a_positive_whole_number(tier, clock):
    version, (a, _, _) = tier
    m = f.active_membership(version, now=clock())
    for bad in (0, -1):
        with pytest.raises(InvalidInput):
            ledger.redeem(
                membership_ids=[m.id],
                treatment=a,
                quantity=bad,
                member_id=m.member_id,
                now=clock(),
                actor="desk",
            )


def test_a_redemption_cannot_be_reversed_after_its_invoice_was_refunded(tier, clock):
    version, (a, _, _) = tier
    owner, m, invoice = _paid_by_invoice(version, clock)
    used = ledger.redeem(
        membership_ids=[m.id],
        treatment=a,
        quantity=1,
        member_id=owner.id,
        now=clock(),
        actor="desk",
    )
    clock.advance(hours=1)
    ledger.clawback(invoice.id, source_ref="re_2", now=clock(), actor="stripe")
    with pytest.raises(Conflict, match="refunded after the treatment"):
        ledger.reverse(used.entries[0], actor="desk", reason="mistake", now=clock())
    db.session.rollback()
    assert ledger.balance([m.id], a.id, clock()) == 0


def _ledger_rows(membership_ids):
    """What a grant wrote, without ids and timestamps: comparable across memberships."""
    rows = db.session.execute(
        db.select(LedgerEntry).where(LedgerEntry.membership_id.in_(membership_ids))
    ).scalars()
    return sorted(
        (e.credit.treatment_id, e.kind, e.quantity, e.value_minor, e.expires_at - e.period_start)
        for e in rows
    )


def test_a_renewal_day_in_one_batch_writes_what_one_call_per_membership_writes(tier, clock):
    version, _ = tier
    one_by_one = [f.active_membership(version, now=clock(), grant=False) for _ in range(3)]
    batched = [f.active_membership(version, now=clock(), grant=False) for _ in range(3)]
    for m in one_by_one + batched:
        memberships.transition(m, memberships.State.ACTIVE, actor="t", now=clock())
    db.session.commit()
    start, end = clock(), clock() + timedelta(days=30)
    for m in one_by_one:
        ledger.grant_period(
            m, start, end, ledger.GrantSource(ref=f"invoice:{m.id}", actor="t"), now=clock()
        )
    batch = [
        ledger.PeriodToGrant(m, start, end, ledger.GrantSource(ref=f"invoice:{m.id}", actor="t"))
        for m in batched
    ]
    grants = ledger.grant_periods(batch, now=clock())
    assert [g.membership_id for g in grants] == [m.id for m in batched]
    expected = _ledger_rows([m.id for m in one_by_one])
    assert _ledger_rows([m.id for m in batched]) == expected and len(expected) == 9
    again = ledger.grant_periods(batch, now=clock())  # a rerun of the renewal day
    assert [g.id for g in again] == [g.id for g in grants]
    assert _ledger_rows([m.id for m in batched]) == expected


def test_a_renewal_batch_with_one_paused_membership_writes_nothing(tier, clock):
    version, _ = tier
    ok, paused = (f.active_membership(version, now=clock(), grant=False) for _ in range(2))
    memberships.transition(ok, memberships.State.ACTIVE, actor="t", now=clock())
    memberships.transition(paused, memberships.State.ACTIVE, actor="t", now=clock())
    memberships.pause(paused, actor="t", now=clock())
    start, end = clock(), clock() + timedelta(days=30)
    batch = [
        ledger.PeriodToGrant(m, start, end, ledger.GrantSource(ref=f"invoice:{m.id}", actor="t"))
        for m in (ok, paused)
    ]
    with pytest.raises(Conflict, match="cannot be granted"):
        ledger.grant_periods(batch, now=clock())
    db.session.rollback()
    assert _ledger_rows([ok.id, paused.id]) == []


def test_a_household_partner_is_held_to_their_share_and_told_so(app, clock):
    facial = f.treatment("facial", name="Facial", price=20000)
    version = f.plan([(facial, 2, {"beneficiary_limit": 1})])
    m = f.active_membership(version, now=clock())
    partner = f.member("Wei")
    memberships.add_beneficiary(m, partner, actor="desk", now=clock())
    ledger.redeem(
        membership_ids=[m.id],
        treatment=facial,
        quantity=1,
        member_id=partner.id,
        now=clock(),
        actor="desk",
    )
    before = len(_entries(m))
    with pytest.raises(ledger.InsufficientCredits, match="household limit is reached") as refused:
        ledger.redeem(
            membership_ids=[m.id],
            treatment=facial,
            quantity=1,
            member_id=partner.id,
            now=clock(),
            actor="desk",
        )
    assert refused.value.slug == "beneficiary-limit"
    db.session.rollback()
    assert len(_entries(m)) == before
    ledger.redeem(
        membership_ids=[m.id],
        treatment=facial,
        quantity=1,
        member_id=m.member_id,
        now=clock(),
        actor="desk",
    )  # the owner is not limited
    assert ledger.balance([m.id], facial.id, clock()) == 0
