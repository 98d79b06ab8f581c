"""Whatever happens to credits, month after month, deferred revenue rolls forward exactly, the
journal balances and ties to it, and every grant's allocations add up to its net amount."""

from datetime import UTC, date, datetime
from itertools import count
from zoneinfo import ZoneInfo

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from billing.entitlements import service as ledger
from billing.entitlements.models import CreditGrant, EntryKind, LedgerEntry
from billing.errors import Conflict
from billing.extensions import db
from billing.finance import journals
from billing.finance.recognition import FinanceSettings, resolve_scope, roll_forward
from billing.memberships import service as memberships
from billing.payments.models import Invoice
from billing.settings import clinic_settings
from tests import factories as f

SGT = ZoneInfo("Asia/Singapore")
_example = count(1)

ACTIONS = st.lists(
    st.tuples(
        st.sampled_from(["pay", "redeem", "redeem", "reverse", "wait", "expire", "clawback"]),
        st.integers(min_value=0, max_value=40),
    ),
    min_size=1,
    max_size=14,
)


def _month_start(index: int) -> datetime:
    year, month = 2026 + index // 12, index % 12 + 1
    return datetime(year, month, 1, tzinfo=SGT).astimezone(UTC)


def _counts_at(entry: LedgerEntry, previous: datetime | None) -> datetime:
    """The test's own statement of when an entry counts: breakage at the credit's expiry when
    recorded late, never before the credit's previous entry."""
    if entry.kind == EntryKind.EXPIRE and entry.expires_at < entry.created_at:
        return max(entry.expires_at, previous) if previous else entry.expires_at
    return entry.created_at


@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    prices=st.lists(st.integers(min_value=1, max_value=60000), min_size=1, max_size=3),
    quantities=st.lists(st.integers(min_value=1, max_value=4), min_size=3, max_size=3),
    gross=st.integers(min_value=0, max_value=250000),
    rule=st.sampled_from(["expire", "rollover"]),
    actions=ACTIONS,
)
def test_roll_forward_closes_every_period_exactly(
    app, clock, prices, quantities, gross, rule, actions
):
    n = next(_example)
    clock.set(datetime(2026, 1, 3, 10, tzinfo=SGT))
    treatments = [f.treatment(price=p) for p in prices]
    code = f"prop-{n}"
    version = f.plan(
        list(zip(treatments, quantities, strict=False)),
        code=code,
        price=gross,
        unused_rule=rule,
        rollover_max_periods=1,
    )
    m = memberships.join(f.member(), version, actor="test", now=clock())
    invoices, redemptions, months_paid = [], [], 0
    for action, k in actions:
        if action == "pay":
            tax = gross - ledger.version_net_price(version, clinic_settings())
            invoice = Invoice(
                member_id=m.member_id,
                membership_id=m.id,
                currency="SGD",
                total_minor=gross,
                tax_minor=tax,
                net_minor=gross - tax,
                status="paid",
            )
            db.session.add(invoice)
            db.session.flush()
            memberships.record_paid_period(
                m,
                period_start=_month_start(months_paid),
                period_end=_month_start(months_paid + 1),
                source=ledger.GrantSource(
                    ref=f"invoice:{invoice.id}",
                    actor="stripe",
                    invoice_id=invoice.id,
                    net_amount_minor=gross - tax,
                ),
                now=clock(),
            )
            invoices.append(invoice)
            months_paid += 1
        elif action == "redeem":
            t = treatments[k % len(treatments)]
            if ledger.balance([m.id], t.id, clock()) > 0:
                r = ledger.redeem(
                    membership_ids=[m.id],
                    treatment=t,
                    quantity=1,
                    member_id=m.member_id,
                    now=clock(),
                    actor="desk",
                )
                redemptions.extend(r.entries)
        elif action == "reverse" and redemptions:
            entry = redemptions.pop(k % len(redemptions))
            entries_before = db.session.query(LedgerEntry).count()
            try:
                ledger.reverse(entry, actor="desk", reason="mistake", now=clock())
            except Conflict as refused:
                # A redemption whose invoice was refunded afterwards stays: the member owes it.
                assert refused.slug == "credit-clawed-back"
                db.session.rollback()
                assert db.session.query(LedgerEntry).count() == entries_before
        elif action == "wait":
            clock.advance(days=k, hours=k % 7)
        elif action == "expire":
            ledger.expire_unused(m, now=clock())
        elif action == "clawback" and invoices:
            invoice = invoices.pop(k % len(invoices))
            ledger.clawback(invoice.id, source_ref=f"re_{invoice.id}", now=clock(), actor="stripe")
    clock.advance(days=45)
    ledger.expire_unused(m, now=clock())

    # Every grant's allocations add up to its net amount, to the cent.
    for grant in db.session.execute(
        db.select(CreditGrant).where(CreditGrant.membership_id == m.id)
    ).scalars():
        assert sum(c.allocated_minor for c in grant.credits) == grant.net_amount_minor

    last = clock().astimezone(SGT).date()
    scope = resolve_scope(date(2026, 1, 1), last, tier=code, settings=FinanceSettings())
    rows = {r.period.label: r for r in roll_forward(scope)}
    entries = (
        db.session.execute(
            db.select(LedgerEntry).where(LedgerEntry.membership_id == m.id).order_by(LedgerEntry.id)
        )
        .scalars()
        .all()
    )
    previous: dict[int, datetime] = {}
    timed = []
    for e in entries:
        timed.append((e, _counts_at(e, previous.get(e.credit_id))))
        previous[e.credit_id] = e.created_at

    journal = journals.revenue_journal(scope)
    assert all(entry.is_balanced for entry in journal)
    deferred_code = scope.settings.accounts["deferred_revenue"].code

    closing = 0
    for period in scope.periods():
        row = rows.get(period.label)
        opening = sum(e.value_minor for e, at in timed if at <= period.start)
        expected_closing = sum(e.value_minor for e, at in timed if at <= period.end)
        if row is None:  # nothing deferred and nothing moved
            assert opening == expected_closing == 0
            continue
        assert row.opening == opening == closing
        assert row.opening + row.billed - row.recognised - row.breakage - row.clawed_back == (
            expected_closing
        )
        assert row.closing == expected_closing >= 0
        moved = [e for e, at in timed if period.start < at <= period.end]
        assert row.billed == sum(e.value_minor for e in moved if e.kind == EntryKind.GRANT)
        assert row.breakage == -sum(e.value_minor for e in moved if e.kind == EntryKind.EXPIRE)
        # The journal's deferred revenue account moves exactly as the roll-forward says.
        gl = sum(
            line.amount
            for j in journal
            if j.period.label == period.label
            for line in j.lines
            if line.account.code == deferred_code
        )
        assert -gl == row.closing - row.opening
        closing = row.closing
    assert closing == sum(e.value_minor for e in entries)
