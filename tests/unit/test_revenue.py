"""Revenue recognition as the accountant checks it: the worked examples to the cent, the
roll-forward, the waterfall and the subscription metrics."""

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from billing.entitlements import service as ledger
from billing.entitlements.models import Credit, CreditGrant
from billing.extensions import db
from billing.finance import journals, metrics
from billing.finance.recognition import (
    FinanceSettings,
    deferred_balance,
    resolve_scope,
    roll_forward,
    waterfall,
)
from billing.memberships import service as memberships
from billing.payments.models import Invoice
from tests import factories as f

SGT = ZoneInfo("Asia/Singapore")


def local(year, month, day, hour=0):
    return datetime(year, month, day, hour, tzinfo=SGT).astimezone(UTC)


def paid(version, clock, *, start, end, gross, tax, owner=None, membership=None):
    """A member pays an invoice for a period, and the period's credits are granted from it."""
    if membership is None:
        owner = owner or f.member()
        membership = memberships.join(owner, version, actor="test", now=clock())
    invoice = Invoice(
        member_id=membership.member_id,
        membership_id=membership.id,
        currency="SGD",
        total_minor=gross,
        tax_minor=tax,
        net_minor=gross - tax,
        status="paid",
        issued_at=clock(),
        paid_at=clock(),
    )
    db.session.add(invoice)
    db.session.flush()
    memberships.record_paid_period(
        membership,
        period_start=start,
        period_end=end,
        source=ledger.GrantSource(
            ref=f"invoice:{invoice.id}",
            actor="stripe",
            invoice_id=invoice.id,
            net_amount_minor=gross - tax,
        ),
        now=clock(),
    )
    return membership, invoice


def redeem(membership, treatment, clock, quantity=1):
    return ledger.redeem(
        membership_ids=[membership.id],
        treatment=treatment,
        quantity=quantity,
        member_id=membership.member_id,
        now=clock(),
        actor="desk",
    )


def scope(date_from, date_to, **filters):
    return resolve_scope(date_from, date_to, settings=FinanceSettings(), **filters)


def account_totals(entries):
    """{account code: debit - credit} over a journal."""
    totals = {}
    for entry in entries:
        for line in entry.lines:
            totals[line.account.code] = totals.get(line.account.code, 0) + line.amount
    return totals


# ---------------------------------------------------------------------------------------------
# The worked example


@pytest.mark.parametrize(
    "rule, treatments, breakage, closing",
    [("expire", 21000, 9000, 0), ("rollover", 21000, 0, 9000)],
)
def test_worked_example_march_revenue_and_closing_liability(
    app, clock, rule, treatments, breakage, closing
):
    clock.set(local(2026, 3, 1, 10))
    a = f.treatment("facial-a", price=20000)
    b = f.treatment("peel-b", price=8000)
    c = f.treatment("mask-c", price=12000)
    extra = {"rollover_max_periods": 1} if rule == "rollover" else {}
    version = f.plan([(a, 1), (b, 1), (c, 1)], code="glow", price=32700, unused_rule=rule, **extra)
    m, _ = paid(
        version, clock, start=local(2026, 3, 1), end=local(2026, 4, 1), gross=32700, tax=2700
    )
    credits = db.session.execute(
        db.select(Credit).where(Credit.membership_id == m.id).order_by(Credit.id)
    ).scalars()
    assert [c.allocated_minor for c in credits] == [15000, 6000, 9000]
    clock.set(local(2026, 3, 5, 11))
    redeem(m, a, clock)
    clock.set(local(2026, 3, 20, 15))
    redeem(m, b, clock)
    clock.set(local(2026, 4, 1, 3))  # the expiry job runs just after the month ends
    ledger.expire_unused(m, now=clock())

    march = scope(date(2026, 3, 1), date(2026, 3, 31), tier="glow")
    [row] = roll_forward(march)
    assert (row.opening, row.billed, row.recognised, row.breakage, row.clawed_back) == (
        0,
        30000,
        treatments,
        breakage,
        0,
    )
    assert row.closing == closing
    assert deferred_balance(march.end) == closing

    totals = account_totals(journals.revenue_journal(march))
    accounts = march.settings.accounts
    assert totals[accounts["treatment_revenue"].code] == -21000
    assert totals.get(accounts["breakage_revenue"].code, 0) == -breakage
    assert totals[accounts["gst_output"].code] == -2700
    assert totals[accounts["stripe_clearing"].code] == 32700
    assert totals[accounts["deferred_revenue"].code] == -closing
    assert sum(totals.values()) == 0


def test_series_twin_two_sessions_recognised_and_one_breakage_to_the_cent(app, clock):
    clock.set(local(2026, 3, 1, 10))
    bbl = f.treatment("bbl", price=45000)
    version = f.plan(
        [(bbl, 3)], code="bbl-x3", kind="series", price=109000, credit_validity_days=60
    )
    m, _ = paid(
        version, clock, start=local(2026, 3, 1), end=local(2026, 4, 30), gross=109000, tax=9000
    )
    clock.set(local(2026, 3, 10, 12))
    first = redeem(m, bbl, clock)
    clock.set(local(2026, 4, 10, 12))
    second = redeem(m, bbl, clock)
    clock.set(local(2026, 5, 2, 1))
    ledger.expire_unused(m, now=clock())

    rows = roll_forward(scope(date(2026, 3, 1), date(2026, 4, 30), tier="bbl-x3"))
    assert [(r.period.label, r.billed, r.recognised, r.breakage, r.closing) for r in rows] == [
        ("2026-03", 100000, first.value_minor, 0, 100000 - first.value_minor),
        ("2026-04", 0, second.value_minor, 33333, 0),
    ]
    assert first.value_minor + second.value_minor == 66667  # S$666.67 at redemption
    assert sum(r.recognised + r.breakage for r in rows) == 100000  # ties to the net price


def test_units_twin_twelve_units_recognised_eight_breakage_to_the_cent(app, clock):
    clock.set(local(2026, 3, 1, 10))
    toxin = f.treatment("toxin", price=1500, counted_in="unit", unit_label="unit")
    version = f.plan([(toxin, 20)], code="toxin-20", price=32699)
    m, _ = paid(
        version, clock, start=local(2026, 3, 1), end=local(2026, 4, 1), gross=32699, tax=2700
    )
    clock.set(local(2026, 3, 12, 12))
    used = redeem(m, toxin, clock, quantity=12)
    clock.set(local(2026, 4, 1, 2))
    ledger.expire_unused(m, now=clock())

    [row] = roll_forward(scope(date(2026, 3, 1), date(2026, 3, 31), tier="toxin-20"))
    assert used.value_minor == 17999  # 12/20 of S$299.99, half up
    assert (row.billed, row.recognised, row.breakage, row.closing) == (29999, 17999, 12000, 0)


# ---------------------------------------------------------------------------------------------
# Periods


def test_breakage_belongs_to_the_month_the_credit_expired_even_if_recorded_later(app, clock):
    clock.set(local(2026, 3, 1, 10))
    t = f.treatment(price=10000)
    version = f.plan([(t, 1)], code="late", price=10900)
    m, _ = paid(
        version, clock, start=local(2026, 3, 1), end=local(2026, 4, 1), gross=10900, tax=900
    )
    clock.set(local(2026, 4, 6, 9))  # the job was down for five days
    ledger.expire_unused(m, now=clock())
    rows = roll_forward(scope(date(2026, 3, 1), date(2026, 4, 30), tier="late"))
    assert [(r.period.label, r.breakage, r.closing) for r in rows] == [("2026-03", 10000, 0)]


def test_each_month_opens_where_the_last_closed_and_reversals_reduce_revenue(app, clock):
    clock.set(local(2026, 3, 1, 10))
    t = f.treatment(price=10000)
    version = f.plan([(t, 2)], code="duo", price=21800, credit_validity_days=90, kind="series")
    m, _ = paid(
        version, clock, start=local(2026, 3, 1), end=local(2026, 5, 30), gross=21800, tax=1800
    )
    clock.set(local(2026, 3, 31, 23))  # late on the last evening of March (Singapore)
    r = redeem(m, t, clock)
    clock.set(local(2026, 4, 2, 10))
    ledger.reverse(r.entries[0], actor="desk", reason="wrong client", now=clock())

    rows = roll_forward(scope(date(2026, 2, 1), date(2026, 4, 30), tier="duo"))
    assert [(r.period.label, r.opening, r.recognised, r.closing) for r in rows] == [
        ("2026-03", 0, 10000, 10000),
        ("2026-04", 10000, -10000, 20000),
    ]


def test_clawback_reduces_deferred_revenue_and_books_the_gst_back(app, clock):
    clock.set(local(2026, 3, 1, 10))
    a = f.treatment(price=20000)
    b = f.treatment(price=10000)
    version = f.plan([(a, 1), (b, 1)], code="claw", price=32700)
    m, invoice = paid(
        version, clock, start=local(2026, 3, 1), end=local(2026, 4, 1), gross=32700, tax=2700
    )
    redeem(m, a, clock)
    clock.advance(days=3)
    result = ledger.clawback(invoice.id, source_ref="re_1", now=clock(), actor="stripe")

    march = scope(date(2026, 3, 1), date(2026, 3, 31), tier="claw")
    [row] = roll_forward(march)
    assert (row.billed, row.recognised, row.clawed_back, row.closing) == (30000, 20000, 10000, 0)
    entries = journals.revenue_journal(march)
    claw = [e for e in entries if e.group == "clawbacks"]
    assert [(line.account.code, line.amount) for line in claw[0].lines] == [
        ("2400", 10000),
        ("2200", 900),
        ("1150", -10900),
    ]
    owed = [e for e in entries if e.group == "receivables"][0]
    assert owed.lines[0].amount == 21800 == result.shortfall_minor + 1800  # S$200 + 9 % GST
    assert all(e.is_balanced for e in entries)


def test_waterfall_releases_a_billing_month_over_the_following_months(app, clock):
    clock.set(local(2026, 3, 1, 10))
    bbl = f.treatment(price=45000)
    version = f.plan([(bbl, 3)], code="wf", kind="series", price=109000, credit_validity_days=60)
    m, _ = paid(
        version, clock, start=local(2026, 3, 1), end=local(2026, 4, 30), gross=109000, tax=9000
    )
    clock.set(local(2026, 3, 15))
    redeem(m, bbl, clock)
    clock.set(local(2026, 4, 15))
    redeem(m, bbl, clock)
    clock.set(local(2026, 5, 1, 1))
    ledger.expire_unused(m, now=clock())

    cells = waterfall(scope(date(2026, 3, 1), date(2026, 5, 31), tier="wf"))
    assert [
        (c.billing.label, c.recognition.label, c.recognised, c.breakage, c.remaining) for c in cells
    ] == [
        ("2026-03", "2026-03", 33333, 0, 66667),
        ("2026-03", "2026-04", 33334, 33333, 0),
        ("2026-03", "2026-05", 0, 0, 0),
    ]


def test_allocation_of_every_grant_adds_up_to_its_net_amount(app, clock):
    x, y, z = (f.treatment(price=p) for p in (9999, 3333, 1))
    version = f.plan([(x, 1), (y, 3), ("choice", [x, y, z], 2)], price=33333)
    m = f.active_membership(version, now=clock())
    grant = db.session.execute(
        db.select(CreditGrant).where(CreditGrant.membership_id == m.id)
    ).scalar_one()
    assert sum(c.allocated_minor for c in grant.credits) == grant.net_amount_minor == 30581


# ---------------------------------------------------------------------------------------------
# Subscription metrics


def _month(rows, label):
    return next(r for r in rows if r.period.label == label)


def test_mrr_movements_month_by_month(app, clock):
    t = f.treatment(price=10000)
    silver = f.plan([(t, 1)], code="silver", price=10900)  # S$100 net a month
    gold = f.plan([(t, 2)], code="gold", price=21800)  # S$200 net a month
    clock.set(local(2026, 1, 10, 10))
    ann, _ = paid(
        silver, clock, start=clock(), end=clock() + timedelta(days=30), gross=10900, tax=900
    )
    bob, _ = paid(
        silver, clock, start=clock(), end=clock() + timedelta(days=30), gross=10900, tax=900
    )
    clock.set(local(2026, 2, 5, 10))
    memberships.change_tier(ann, gold, actor="desk", now=clock())  # expansion +100
    clock.set(local(2026, 3, 3, 10))
    memberships.pause(bob, actor="desk", now=clock())  # contraction to 0
    clock.set(local(2026, 4, 3, 10))
    memberships.resume(bob, actor="desk", now=clock())  # reactivation
    memberships.cancel(ann, at_period_end=False, actor="desk", now=clock())  # churn
    cy, _ = paid(
        gold, clock, start=clock(), end=clock() + timedelta(days=30), gross=21800, tax=1800
    )

    rows = metrics.monthly_metrics(scope(date(2026, 1, 1), date(2026, 4, 30)))
    jan, feb, mar, apr = (_month(rows, f"2026-0{n}") for n in range(1, 5))
    assert (jan.new, jan.mrr_end, jan.customers_end, jan.new_customers) == (20000, 20000, 2, 2)
    assert (feb.mrr_start, feb.expansion, feb.mrr_end) == (20000, 10000, 30000)
    assert feb.active_by_tier == {"gold": 1, "silver": 1}
    assert (mar.contraction, mar.churn, mar.mrr_end, mar.churned_customers) == (10000, 0, 20000, 0)
    assert mar.active_by_tier == {"gold": 1}
    assert (apr.reactivation, apr.churn, apr.new, apr.mrr_end) == (10000, 20000, 20000, 30000)
    assert (apr.customers_start, apr.churned_customers, apr.customers_end) == (1, 1, 2)
    assert str(apr.customer_churn_rate) == "1.0000"
    assert str(apr.gross_mrr_churn_rate) == "1.0000"  # 200 churned of 200 at the start
    assert str(apr.net_mrr_churn_rate) == "0.5000"  # (200 - 100 reactivated) / 200
    assert apr.arpa == 15000 and apr.ltv == 15000
    for m in rows:  # every month's movements explain its change in MRR
        moved = m.new + m.expansion + m.reactivation - m.contraction - m.churn
        assert m.mrr_start + moved == m.mrr_end
    assert cy.state == "active"


def test_summary_for_the_dashboard(app, clock):
    clock.set(local(2026, 3, 1, 10))
    a = f.treatment(price=20000)
    b = f.treatment(price=10000)
    version = f.plan([(a, 1), (b, 1)], code="dash", price=32700)
    m, _ = paid(
        version, clock, start=local(2026, 3, 1), end=local(2026, 4, 1), gross=32700, tax=2700
    )
    clock.set(local(2026, 3, 9))
    redeem(m, a, clock)
    s = metrics.summary(date(2026, 3, 15), FinanceSettings())
    assert s["deferred_revenue"]["amount_minor"] == 10000
    assert s["recognised_this_month"]["total"]["display"] == "SGD 200.00"
    assert s["mrr"]["amount_minor"] == 30000
    assert s["active_members_by_tier"][0]["tier"] == "dash"
    assert s["active_members_by_tier"][0]["members"] == 1
