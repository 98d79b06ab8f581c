"""The CSV exports an accountant imports, each a generator of rows (header first).

Row exports stream: one query read `yield_per(1000)` rows at a time (a server-side cursor on
PostgreSQL), written out as they come, so a million-entry ledger exports in constant memory.
Summaries (roll-forward, waterfall, journal, metrics) aggregate in the database and are small.

On PostgreSQL the three big row exports (credit-ledger, ledger-entries, redemptions) are written
by the database instead: a query giving the very strings the Python rows give, streamed by
COPY ... TO STDOUT (export_csv; "PostgreSQL" below). Same bytes, several times faster.

Amounts are in major units ("150.00") beside a currency column; dates are ISO, clinic-local."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import aggregate_order_by, distinct_on
from sqlalchemy.orm import aliased

from billing.checkout.models import Visit, VisitLine
from billing.clinic.models import Location
from billing.entitlements.models import Credit, CreditGrant, EntryKind, LedgerEntry
from billing.extensions import db
from billing.finance import journals, metrics
from billing.finance.recognition import (
    KIND_MOVEMENT,
    HomeLocation,
    Scope,
    apply_filters,
    credit_context,
    effective_at,
    entry_kind,
    home_code,
    ledger_joined,
    roll_forward,
    waterfall,
)
from billing.members.models import Member
from billing.memberships.models import Membership
from billing.money import ISO_4217, div_round_half_up, exponent, to_major_str
from billing.payments.models import Invoice, Payment
from billing.plans.models import Plan, PlanItem, PlanKind, PlanVersion, Treatment
from billing.staff.models import Staff

YIELD_PER = 1000
VisitLocation = journals.VisitLocation
TreatedMember = aliased(Member, name="treated_member")


def stream(query: sa.Select) -> Iterator[sa.Row]:
    """Rows of a query, fetched a thousand at a time; the cursor is closed however it ends."""
    result = db.session.execute(query.execution_options(yield_per=YIELD_PER))
    try:
        yield from result
    finally:
        result.close()


def csv_chunks(rows: Iterable[list], rows_per_chunk: int = 500) -> Iterator[str]:
    """CSV text in chunks of a few hundred rows (one chunk per HTTP write)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    for n, row in enumerate(rows, start=1):
        writer.writerow(row)
        if n % rows_per_chunk == 0:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    tail = buffer.getvalue()
    if tail:
        yield tail


def _money(amount: int | None, currency: str) -> str:
    return "" if amount is None else to_major_str(int(amount), currency)


def _name(first: str | None, last: str | None) -> str:
    return f"{first or ''} {last or ''}".strip()


def _visit_joins(query: sa.Select) -> sa.Select:
    return (
        query.outerjoin(VisitLine, LedgerEntry.visit_line_id == VisitLine.id)
        .outerjoin(Visit, VisitLine.visit_id == Visit.id)
        .outerjoin(VisitLocation, Visit.location_id == VisitLocation.id)
        .outerjoin(Staff, VisitLine.provider_id == Staff.id)
    )


# ---------------------------------------------------------------------------------------------
# 1. credit-ledger: one row per credit


CREDIT_LEDGER_HEADER = [
    "credit_id",
    "member_id",
    "member",
    "membership_id",
    "invoice_id",
    "stripe_invoice_id",
    "treatment",
    "product_type",
    "tier",
    "unit",
    "quantity",
    "ssp_unit",
    "allocated_ex_gst",
    "currency",
    "granted_at",
    "expires_at",
    "status",
    "redeemed_qty",
    "recognised",
    "expired_qty",
    "breakage",
    "clawed_back_qty",
    "clawed_back",
    "remaining_qty",
    "deferred",
    "redeemed_at",
    "visits",
    "locations",
    "providers",
    "home_location",
]


@dataclass
class _CreditRow:
    """One credit's entries folded into what the credit-ledger shows."""

    head: sa.Row
    remaining: int = 0
    deferred: int = 0
    expires_at: object = None
    redeemed: int = 0
    recognised: int = 0
    expired: int = 0
    breakage: int = 0
    clawed_qty: int = 0
    clawed: int = 0
    rolled: bool = False

    def __post_init__(self) -> None:
        self.redemptions: dict[int, tuple] = {}

    def add(self, e: sa.Row) -> None:
        self.remaining += e.quantity
        self.deferred += e.value_minor
        self.expires_at = max(self.expires_at or e.expires_at, e.expires_at)
        if e.kind in (EntryKind.REDEEM, EntryKind.REVERSE):
            self.redeemed -= e.quantity
            self.recognised -= e.value_minor
            if e.kind == EntryKind.REDEEM:
                self.redemptions[e.entry_id] = (e.created_at, e.visit_id, e.visit_loc, e.provider)
            else:
                self.redemptions.pop(e.reverses_entry_id, None)
        elif e.kind in (EntryKind.EXPIRE, EntryKind.ADJUST):
            self.expired -= e.quantity
            self.breakage -= e.value_minor
        elif e.kind == EntryKind.CLAWBACK:
            self.clawed_qty -= e.quantity
            self.clawed -= e.value_minor
        elif e.kind == EntryKind.ROLLOVER:
            self.rolled = True

    @property
    def status(self) -> str:
        if self.remaining > 0:
            return "rolled" if self.rolled else "open"
        if self.clawed_qty > 0:
            return "clawed back"
        if self.expired > 0:
            return "expired"
        return "redeemed"

    def row(self, scope: Scope) -> list[str]:
        h = self.head
        cur = h.currency
        used = sorted(self.redemptions.values(), key=lambda r: r[0])

        def distinct(values) -> str:
            return ";".join(dict.fromkeys(str(v) for v in values if v not in (None, "")))

        return [
            h.credit_id,
            h.member_id,
            _name(h.first_name, h.last_name),
            h.membership_id,
            h.invoice_id or "",
            h.stripe_invoice_id or "",
            h.treatment_name or h.item_label or "choice",
            h.product_type,
            h.tier,
            h.unit_label,
            h.credit_qty,
            _money(h.ssp_unit_minor, cur),
            _money(h.allocated_minor, cur),
            cur,
            scope.local_time(h.granted_at),
            scope.local_time(self.expires_at),
            self.status,
            self.redeemed,
            _money(self.recognised, cur),
            self.expired,
            _money(self.breakage, cur),
            self.clawed_qty,
            _money(self.clawed, cur),
            self.remaining,
            _money(self.deferred, cur),
            scope.local_time(used[-1][0]) if used else "",
            distinct(r[1] for r in used),
            distinct(r[2] for r in used),
            distinct(r[3] for r in used),
            h.home or "",
        ]


def _credit_in_range(scope: Scope):
    """The credits the credit-ledger shows: granted by the end of the range, and granted in it or
    moved in it (both paths use this)."""
    later = aliased(LedgerEntry, name="moved_entry")
    moved = (
        sa.select(later.id)
        .where(
            later.credit_id == Credit.id,
            later.created_at > scope.start,
            later.created_at <= scope.end,
        )
        .exists()
    )
    return sa.and_(Credit.created_at <= scope.end, sa.or_(Credit.created_at > scope.start, moved))


def _credit_ledger_entries(scope: Scope, *columns) -> sa.Select:
    """The entries the credit-ledger folds: those counted by the end of the range, of the credits
    it shows (filtered by location and tier)."""
    return apply_filters(
        ledger_joined(*columns).where(effective_at() <= scope.end, _credit_in_range(scope)),
        scope,
    )


def _credit_facts() -> tuple:
    """What both paths of the credit-ledger (Python and PostgreSQL's COPY) say of a credit
    besides its entries and visits; the query needs credit_context and _credit_facts_joins."""
    return (
        Member.id.label("member_id"),
        Member.first_name,
        Member.last_name,
        Membership.id.label("membership_id"),
        CreditGrant.invoice_id,
        Invoice.stripe_invoice_id,
        Treatment.name.label("treatment_name"),
        PlanItem.label.label("item_label"),
        Credit.product_type,
        Plan.code.label("tier"),
        Credit.unit_label,
        Credit.quantity.label("credit_qty"),
        Credit.ssp_unit_minor,
        Credit.allocated_minor,
        Credit.currency,
        Credit.created_at.label("granted_at"),
        HomeLocation.code.label("home"),
    )


def _credit_facts_joins(query: sa.Select) -> sa.Select:
    """The credit's invoice, treatment and plan item, when it has them."""
    return (
        query.outerjoin(Invoice, CreditGrant.invoice_id == Invoice.id)
        .outerjoin(Treatment, Credit.treatment_id == Treatment.id)
        .outerjoin(PlanItem, Credit.plan_item_id == PlanItem.id)
    )


def credit_ledger(scope: Scope) -> Iterator[list]:
    """Credits granted in the range, and older credits that moved in it, as they stood at its end."""
    q = _credit_facts_joins(
        _visit_joins(
            _credit_ledger_entries(
                scope,
                Credit.id.label("credit_id"),
                *_credit_facts(),
                LedgerEntry.id.label("entry_id"),
                LedgerEntry.kind,
                LedgerEntry.quantity,
                LedgerEntry.value_minor,
                LedgerEntry.expires_at,
                LedgerEntry.created_at,
                LedgerEntry.reverses_entry_id,
                Visit.id.label("visit_id"),
                VisitLocation.code.label("visit_loc"),
                Staff.name.label("provider"),
            )
        )
    ).order_by(Credit.id, LedgerEntry.id)
    yield CREDIT_LEDGER_HEADER
    current: _CreditRow | None = None
    for e in stream(q):
        if current is None or current.head.credit_id != e.credit_id:
            if current is not None:
                yield current.row(scope)
            current = _CreditRow(e)
        current.add(e)
    if current is not None:
        yield current.row(scope)


# ---------------------------------------------------------------------------------------------
# ledger-entries: one row per ledger entry (for an auditor)


LEDGER_ENTRIES_HEADER = [
    "entry_id",
    "created_at",
    "effective_at",
    "kind",
    "movement",
    "credit_id",
    "membership_id",
    "member_id",
    "tier",
    "product_type",
    "quantity",
    "deferred_change",
    "currency",
    "invoice_id",
    "visit_line_id",
    "reverses_entry_id",
    "actor",
    "home_location",
]


def _ledger_entries_query(scope: Scope, *columns) -> sa.Select:
    """Entries counted in the range, in the order they were written (both paths use this)."""
    return apply_filters(
        ledger_joined(*columns).where(effective_at() > scope.start, effective_at() <= scope.end),
        scope,
    ).order_by(LedgerEntry.id)


def ledger_entries(scope: Scope) -> Iterator[list]:
    q = _ledger_entries_query(
        scope,
        LedgerEntry.id,
        LedgerEntry.created_at,
        effective_at().label("effective_at"),
        LedgerEntry.kind,
        entry_kind().label("movement_kind"),
        LedgerEntry.credit_id,
        LedgerEntry.membership_id,
        Member.id.label("member_id"),
        Plan.code,
        Credit.product_type,
        LedgerEntry.quantity,
        LedgerEntry.value_minor,
        LedgerEntry.currency,
        LedgerEntry.invoice_id,
        LedgerEntry.visit_line_id,
        LedgerEntry.reverses_entry_id,
        LedgerEntry.actor,
        home_code().label("home"),
    )
    yield LEDGER_ENTRIES_HEADER
    for r in stream(q):
        movement = KIND_MOVEMENT.get(r.movement_kind)
        yield [
            r.id,
            scope.local_time(r.created_at),
            scope.local_time(r.effective_at),
            r.kind,
            movement[0] if movement else "",
            r.credit_id,
            r.membership_id,
            r.member_id,
            r.code,
            r.product_type,
            r.quantity,
            _money(r.value_minor, r.currency),
            r.currency,
            r.invoice_id or "",
            r.visit_line_id or "",
            r.reverses_entry_id or "",
            r.actor,
            r.home,
        ]


# ---------------------------------------------------------------------------------------------
# 2, 3: roll-forward and waterfall


def deferred_roll_forward(scope: Scope) -> Iterator[list]:
    yield [
        "period",
        "period_start",
        "period_end",
        "tier",
        "location",
        "currency",
        "opening",
        "billed_ex_gst",
        "recognised",
        "breakage",
        "clawed_back",
        "closing",
    ]
    for r in roll_forward(scope):
        c = r.currency
        yield [
            r.period.label,
            r.period.first_day.isoformat(),
            r.period.last_day.isoformat(),
            r.tier,
            r.location,
            c,
            _money(r.opening, c),
            _money(r.billed, c),
            _money(r.recognised, c),
            _money(r.breakage, c),
            _money(r.clawed_back, c),
            _money(r.closing, c),
        ]


def deferred_waterfall(scope: Scope) -> Iterator[list]:
    yield [
        "billing_month",
        "recognition_month",
        "currency",
        "billed_ex_gst",
        "recognised",
        "breakage",
        "clawed_back",
        "remaining_deferred",
    ]
    for cell in waterfall(scope):
        c = cell.currency
        yield [
            cell.billing.label,
            cell.recognition.label,
            c,
            _money(cell.billed, c),
            _money(cell.recognised, c),
            _money(cell.breakage, c),
            _money(cell.clawed_back, c),
            _money(cell.remaining, c),
        ]


def revenue_journal(scope: Scope) -> Iterator[list]:
    return journals.generic_rows(journals.revenue_journal(scope))


# ---------------------------------------------------------------------------------------------
# 5. gst-sales


def _invoice_filters(q: sa.Select, scope: Scope) -> sa.Select:
    if scope.location_id is not None:
        q = q.where(Member.home_location_id == scope.location_id)
    if scope.plan_id is not None:
        q = q.where(Plan.id == scope.plan_id)
    return q


def _invoice_joins(q: sa.Select) -> sa.Select:
    return (
        q.outerjoin(Member, Invoice.member_id == Member.id)
        .outerjoin(Membership, Invoice.membership_id == Membership.id)
        .outerjoin(PlanVersion, Membership.plan_version_id == PlanVersion.id)
        .outerjoin(Plan, PlanVersion.plan_id == Plan.id)
    )


def gst_sales(scope: Scope) -> Iterator[list]:
    """Invoices issued in the range, then the credit notes (refunds) made in it."""
    yield [
        "type",
        "document",
        "invoice_id",
        "stripe_invoice_id",
        "date",
        "paid_on",
        "member_id",
        "member",
        "tier",
        "gross_incl_gst",
        "net",
        "gst",
        "currency",
        "status",
    ]
    invoices = _invoice_filters(
        _invoice_joins(
            sa.select(Invoice, Member.first_name, Member.last_name, Plan.code).select_from(Invoice)
        ).where(Invoice.issued_at > scope.start, Invoice.issued_at <= scope.end),
        scope,
    ).order_by(Invoice.issued_at, Invoice.id)
    for inv, first, last, tier in stream(invoices):
        cur = inv.currency
        net = inv.net_minor or inv.total_minor - inv.tax_minor
        yield [
            "invoice",
            inv.stripe_invoice_id or f"invoice-{inv.id}",
            inv.id,
            inv.stripe_invoice_id or "",
            scope.local_date(inv.issued_at),
            scope.local_date(inv.paid_at),
            inv.member_id or "",
            _name(first, last),
            tier or "",
            _money(inv.total_minor, cur),
            _money(net, cur),
            _money(inv.tax_minor, cur),
            cur,
            inv.status,
        ]
    refunds = _invoice_filters(
        _invoice_joins(
            sa.select(Payment, Invoice, Member.first_name, Member.last_name, Plan.code)
            .select_from(Payment)
            .join(Invoice, Payment.invoice_id == Invoice.id)
        ).where(
            Payment.kind == "refund",
            Payment.occurred_at > scope.start,
            Payment.occurred_at <= scope.end,
        ),
        scope,
    ).order_by(Payment.occurred_at, Payment.id)
    for pay, inv, first, last, tier in stream(refunds):
        cur = pay.currency
        gross = abs(pay.amount_minor)
        gst = div_round_half_up(gross * inv.tax_minor, inv.total_minor) if inv.total_minor else 0
        yield [
            "credit_note",
            pay.stripe_id or f"payment-{pay.id}",
            inv.id,
            inv.stripe_invoice_id or "",
            scope.local_date(pay.occurred_at),
            "",
            inv.member_id or "",
            _name(first, last),
            tier or "",
            _money(-gross, cur),
            _money(-(gross - gst), cur),
            _money(-gst, cur),
            cur,
            pay.status,
        ]


# ---------------------------------------------------------------------------------------------
# 6. payments-payouts


def payments_payouts(scope: Scope) -> Iterator[list]:
    """Every charge, refund, dispute and fee in the range, grouped by payout (with the payout's
    other rows, so each payout is complete), each payout followed by its total: the sum of net
    equals what the bank received."""
    in_range = sa.and_(Payment.occurred_at > scope.start, Payment.occurred_at <= scope.end)
    same = aliased(Payment, name="same_payout")
    payouts = sa.select(same.payout_id).where(
        same.occurred_at > scope.start, same.occurred_at <= scope.end, same.payout_id.is_not(None)
    )
    q = (
        sa.select(Payment, Member.first_name, Member.last_name)
        .select_from(Payment)
        .outerjoin(Member, Payment.member_id == Member.id)
        .where(sa.or_(in_range, Payment.payout_id.in_(payouts)))
    )
    if scope.location_id is not None:
        q = q.where(Member.home_location_id == scope.location_id)
    if scope.plan_id is not None:
        q = (
            q.join(Invoice, Payment.invoice_id == Invoice.id)
            .join(Membership, Invoice.membership_id == Membership.id)
            .join(PlanVersion, Membership.plan_version_id == PlanVersion.id)
            .where(PlanVersion.plan_id == scope.plan_id)
        )
    q = q.order_by(
        sa.case((Payment.payout_id.is_(None), 1), else_=0), Payment.payout_id, Payment.occurred_at
    ).order_by(Payment.id)
    yield [
        "row",
        "payout_id",
        "payment_id",
        "kind",
        "method",
        "status",
        "occurred_at",
        "member_id",
        "member",
        "invoice_id",
        "stripe_id",
        "stripe_charge_id",
        "balance_transaction",
        "amount",
        "fee",
        "net",
        "currency",
    ]
    payout, totals, count = None, {}, 0

    def total_row():
        return [
            "payout_total",
            payout,
            "",
            "",
            "",
            "",
            "",
            "",
            f"{count} rows",
            "",
            "",
            "",
            "",
            *(_money(totals[k], totals["currency"]) for k in ("amount", "fee", "net")),
            totals["currency"],
        ]

    for pay, first, last in stream(q):
        if pay.payout_id != payout:
            if payout is not None:
                yield total_row()
            payout, totals, count = pay.payout_id, dict.fromkeys(("amount", "fee", "net"), 0), 0
            totals["currency"] = pay.currency
        count += 1
        # Stored amounts are magnitudes; the kind says which way the money went (a refund or a
        # dispute leaves the balance), so the payout's net sums to what the bank received.
        sign = -1 if pay.kind in ("refund", "dispute") else 1
        amount, fee, net = sign * abs(pay.amount_minor), pay.fee_minor, sign * abs(pay.net_minor)
        for key, value in (("amount", amount), ("fee", fee), ("net", net)):
            totals[key] += value
        cur = pay.currency
        yield [
            "payment",
            pay.payout_id or "",
            pay.id,
            pay.kind,
            pay.method,
            pay.status,
            scope.local_time(pay.occurred_at),
            pay.member_id or "",
            _name(first, last),
            pay.invoice_id or "",
            pay.stripe_id or "",
            pay.stripe_charge_id or "",
            pay.balance_transaction_id or "",
            _money(amount, cur),
            _money(fee, cur),
            _money(net, cur),
            cur,
        ]
    if payout is not None:
        yield total_row()


# ---------------------------------------------------------------------------------------------
# 7. subscription-metrics


def _rate(value) -> str:
    return "" if value is None else str(value)


def subscription_metrics(scope: Scope) -> Iterator[list]:
    """One row per month for all tiers (movements, churn, ARPA, LTV), then one per tier (active
    members and MRR)."""
    yield [
        "month",
        "tier",
        "currency",
        "mrr_start",
        "new",
        "expansion",
        "contraction",
        "churn",
        "reactivation",
        "mrr_end",
        "customers_start",
        "customers_end",
        "new_customers",
        "churned_customers",
        "reactivated_customers",
        "customer_churn_rate",
        "gross_mrr_churn_rate",
        "net_mrr_churn_rate",
        "arpa",
        "ltv",
        "active_members",
    ]
    for m in metrics.monthly_metrics(scope):
        c = m.currency
        yield [
            m.period.label,
            "",
            c,
            *(
                _money(v, c)
                for v in (
                    m.mrr_start,
                    m.new,
                    m.expansion,
                    m.contraction,
                    m.churn,
                    m.reactivation,
                    m.mrr_end,
                )
            ),
            m.customers_start,
            m.customers_end,
            m.new_customers,
            m.churned_customers,
            m.reactivated_customers,
            _rate(m.customer_churn_rate),
            _rate(m.gross_mrr_churn_rate),
            _rate(m.net_mrr_churn_rate),
            _money(m.arpa, c),
            _money(m.ltv, c),
            sum(m.active_by_tier.values()),
        ]
        for tier, count in m.active_by_tier.items():
            mrr = _money(m.mrr_by_tier.get(tier, 0), c)
            yield [m.period.label, tier, c, *[""] * 6, mrr, *[""] * 10, count]


# ---------------------------------------------------------------------------------------------
# 8. roster and redemptions


def roster(scope: Scope) -> Iterator[list]:
    """Memberships that existed at some point in the range, as they stand now."""
    q = (
        sa.select(Membership, Member, PlanVersion, Plan, HomeLocation.code)
        .select_from(Membership)
        .join(Member, Membership.member_id == Member.id)
        .join(PlanVersion, Membership.plan_version_id == PlanVersion.id)
        .join(Plan, PlanVersion.plan_id == Plan.id)
        .outerjoin(HomeLocation, Member.home_location_id == HomeLocation.id)
        .where(
            Membership.started_at <= scope.end,
            sa.or_(Membership.canceled_at.is_(None), Membership.canceled_at > scope.start),
        )
        .order_by(Membership.id)
    )
    q = apply_filters(q, scope)
    yield [
        "membership_id",
        "member_id",
        "member",
        "email",
        "home_location",
        "tier",
        "plan",
        "version",
        "product",
        "state",
        "source",
        "started_at",
        "activated_at",
        "current_period_start",
        "current_period_end",
        "paid_periods",
        "cancel_at",
        "canceled_at",
        "mrr_ex_gst",
        "currency",
    ]
    rate = scope.settings.tax_rate_bp
    for ms, member, version, plan, home in stream(q):
        counts = plan.kind == PlanKind.TIER and ms.state in metrics.COUNTING_STATES
        yield [
            ms.id,
            member.id,
            member.full_name,
            member.email,
            home or "",
            plan.code,
            plan.name,
            version.version,
            plan.kind,
            ms.state,
            ms.source,
            scope.local_time(ms.started_at),
            scope.local_time(ms.activated_at),
            scope.local_time(ms.current_period_start),
            scope.local_time(ms.current_period_end),
            ms.paid_periods,
            scope.local_time(ms.cancel_at),
            scope.local_time(ms.canceled_at),
            _money(metrics.monthly_price(version, rate) if counts else 0, version.currency),
            version.currency,
        ]


REDEMPTIONS_HEADER = [
    "at",
    "entry_id",
    "kind",
    "member_id",
    "member",
    "membership_id",
    "credit_id",
    "treatment_code",
    "treatment",
    "tier",
    "product_type",
    "quantity",
    "value_recognised",
    "currency",
    "visit_id",
    "visit_line_id",
    "location",
    "provider_id",
    "provider",
    "reverses_entry_id",
    "actor",
]


def _treatment_location():
    """Where a treatment was done: the visit's location, else the member's home ('' if none)."""
    return sa.func.coalesce(VisitLocation.code, HomeLocation.code, "")


def _redemptions_query(scope: Scope, *columns) -> sa.Select:
    """Redemptions and reversals counted in the range, in the order they were written (both
    paths use this)."""
    t = effective_at()
    where = sa.func.coalesce(Visit.location_id, Member.home_location_id)
    q = (
        _visit_joins(ledger_joined(*columns))
        .outerjoin(TreatedMember, LedgerEntry.member_id == TreatedMember.id)
        .outerjoin(
            Treatment,
            Treatment.id == sa.func.coalesce(VisitLine.treatment_id, Credit.treatment_id),
        )
        .where(
            t > scope.start,
            t <= scope.end,
            LedgerEntry.kind.in_([EntryKind.REDEEM, EntryKind.REVERSE]),
        )
        .order_by(LedgerEntry.created_at, LedgerEntry.id)
    )
    if scope.location_id is not None:
        q = q.where(where == scope.location_id)
    if scope.plan_id is not None:
        q = q.where(Plan.id == scope.plan_id)
    return q


def redemptions(scope: Scope) -> Iterator[list]:
    """Each redemption (and reversal) in the range: treatment, provider, location, value."""
    q = _redemptions_query(
        scope,
        LedgerEntry,
        TreatedMember.id.label("treated_id"),
        TreatedMember.first_name,
        TreatedMember.last_name,
        Treatment.code.label("treatment_code"),
        Treatment.name.label("treatment_name"),
        Plan.code.label("tier"),
        Credit.product_type,
        Visit.id.label("visit_id"),
        _treatment_location().label("location"),
        Staff.id.label("provider_id"),
        Staff.name.label("provider"),
    )
    yield REDEMPTIONS_HEADER
    for r in stream(q):
        e = r.LedgerEntry
        yield [
            scope.local_time(e.created_at),
            e.id,
            e.kind,
            r.treated_id or "",
            _name(r.first_name, r.last_name),
            e.membership_id,
            e.credit_id,
            r.treatment_code or "",
            r.treatment_name or "",
            r.tier,
            r.product_type,
            -e.quantity,
            _money(-e.value_minor, e.currency),
            e.currency,
            r.visit_id or "",
            e.visit_line_id or "",
            r.location,
            r.provider_id or "",
            r.provider or "",
            e.reverses_entry_id or "",
            e.actor,
        ]


# ---------------------------------------------------------------------------------------------
# PostgreSQL: the same rows, computed by the database and written by COPY
#
# Python spends microseconds a row turning a Row into strings (money, local times, names); the
# database does the same in a fraction of that and writes the CSV itself. Each query below gives
# exactly the strings its Python export writes, column for column:
#
#   * money: the amount in numeric times 10^-exponent of its currency, which prints with exactly
#     that many decimals ("150.00", "-0.05", "1500" for JPY, "1.500" for KWD), like to_major_str;
#   * moments: to_char in the clinic's timezone (set for the transaction), to the second, with
#     the offset as +HH:MM, like datetime.isoformat(timespec="seconds");
#   * names: "first last" stripped of the characters str.strip() strips;
#   * `x or ""`: NULLIF(x, 0) for ids, NULLIF(x, '') for text.
#
# COPY's CSV differs from the csv module's in two ways, both undone here: it writes an empty
# string as "" (so every text column is NULLIF(..., ''), and NULL is written as nothing), and it
# ends lines with \n (turned into \r\n outside quoted fields, see _crlf). The header is written by
# the csv module. tests/integration/test_export_fast_path.py checks the bytes are identical.

# What str.strip() strips (str.isspace(); checked by the tests).
PY_WHITESPACE = (
    "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006"
    "\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)
ISO_TIME = 'YYYY-MM-DD"T"HH24:MI:SSTZH:TZM'
_NOT_TWO_DECIMALS = {c: exponent(c) for c in ISO_4217 if exponent(c) != 2}
COPY_CHUNK_BYTES = 64 * 1024


def _pg_text(expr):
    return sa.func.nullif(expr, "")


def _pg_id(expr):
    """`id or ""`."""
    return sa.func.nullif(expr, 0)


def _pg_money(amount, currency):
    """to_major_str(amount, currency); NULL stays NULL."""
    numeric = sa.cast(amount, sa.Numeric)

    def scaled(exp: int):
        if exp == 0:
            return sa.cast(numeric, sa.Text)
        return sa.cast(numeric * sa.literal_column(f"0.{'0' * (exp - 1)}1"), sa.Text)

    others = sorted(_NOT_TWO_DECIMALS)
    by_exponent = sorted({e for e in _NOT_TWO_DECIMALS.values()})
    return sa.case(
        (
            currency.in_(others),
            sa.case(
                *[
                    (currency.in_([c for c in others if _NOT_TWO_DECIMALS[c] == e]), scaled(e))
                    for e in by_exponent
                ]
            ),
        ),
        else_=scaled(2),
    )


def _pg_time(moment):
    """Scope.local_time: the clinic's timezone is the transaction's (see _copy_csv)."""
    return sa.func.to_char(moment, ISO_TIME)


def _pg_name(first, last):
    """_name(first, last), '' as NULL."""
    joined = sa.func.coalesce(first, "").op("||")(" ").op("||")(sa.func.coalesce(last, ""))
    return _pg_text(sa.func.btrim(joined, PY_WHITESPACE))


def _pg_ledger_entries(scope: Scope) -> sa.Select:
    movement = sa.case(
        {kind: m[0] for kind, m in KIND_MOVEMENT.items() if m}, value=entry_kind(), else_=None
    )
    return _ledger_entries_query(
        scope,
        LedgerEntry.id,
        _pg_time(LedgerEntry.created_at),
        _pg_time(effective_at()),
        _pg_text(LedgerEntry.kind),
        movement,
        LedgerEntry.credit_id,
        LedgerEntry.membership_id,
        Member.id,
        _pg_text(Plan.code),
        _pg_text(Credit.product_type),
        LedgerEntry.quantity,
        _pg_money(LedgerEntry.value_minor, LedgerEntry.currency),
        _pg_text(LedgerEntry.currency),
        _pg_id(LedgerEntry.invoice_id),
        _pg_id(LedgerEntry.visit_line_id),
        _pg_id(LedgerEntry.reverses_entry_id),
        _pg_text(LedgerEntry.actor),
        _pg_text(home_code()),
    )


def _pg_redemptions(scope: Scope) -> sa.Select:
    return _redemptions_query(
        scope,
        _pg_time(LedgerEntry.created_at),
        LedgerEntry.id,
        _pg_text(LedgerEntry.kind),
        _pg_id(TreatedMember.id),
        _pg_name(TreatedMember.first_name, TreatedMember.last_name),
        LedgerEntry.membership_id,
        LedgerEntry.credit_id,
        _pg_text(Treatment.code),
        _pg_text(Treatment.name),
        _pg_text(Plan.code),
        _pg_text(Credit.product_type),
        -LedgerEntry.quantity,
        _pg_money(-LedgerEntry.value_minor, LedgerEntry.currency),
        _pg_text(LedgerEntry.currency),
        _pg_id(Visit.id),
        _pg_id(LedgerEntry.visit_line_id),
        _pg_text(_treatment_location()),
        _pg_id(Staff.id),
        _pg_text(Staff.name),
        _pg_id(LedgerEntry.reverses_entry_id),
        _pg_text(LedgerEntry.actor),
    )


def _live_redemptions(scope: Scope, credit_id, correlate) -> sa.Subquery:
    """The redemptions of one credit that _CreditRow keeps: counted by the end of the range and
    not taken back by a later reversal also counted by then (a redemption or a reversal counts
    when it was written: effective_at is created_at for both), each with its visit, location and
    provider.

    Only expressions and subqueries on one table each, no join: this runs once per credit that
    needs it, under enable_nestloop=off (see _copy_csv), where a join would be a hash join over
    a whole table each time."""
    back = aliased(LedgerEntry, name="reversal")
    # NOT IN, not NOT EXISTS: PostgreSQL turns NOT EXISTS into an anti-join, but keeps NOT IN a
    # subquery on the credit's entries (no NULL in it, so the two mean the same).
    reversals = sa.select(back.reverses_entry_id).where(
        back.kind == EntryKind.REVERSE,
        back.credit_id == LedgerEntry.credit_id,
        back.id > LedgerEntry.id,
        back.created_at <= scope.end,
        back.reverses_entry_id.is_not(None),
    )

    def lookup(table: sa.TableClause, column: str, key):
        """table.column of the row whose id is key: a scalar subquery on one table."""
        query = sa.select(table.c[column]).where(table.c.id == key)
        return query.correlate_except(table).scalar_subquery()

    line = VisitLine.__table__.alias("live_line")
    visit = Visit.__table__.alias("live_visit")
    place = Location.__table__.alias("live_location")
    staff = Staff.__table__.alias("live_provider")

    def visit_line(column: str):
        return lookup(line, column, LedgerEntry.visit_line_id)

    visit_id = lookup(visit, "id", visit_line("visit_id"))
    return (
        sa.select(
            LedgerEntry.id,
            LedgerEntry.created_at,
            sa.cast(visit_id, sa.Text).label("visit"),
            lookup(place, "code", lookup(visit, "location_id", visit_line("visit_id"))).label(
                "location"
            ),
            lookup(staff, "name", visit_line("provider_id")).label("provider"),
        )
        .where(
            LedgerEntry.credit_id == credit_id,
            LedgerEntry.kind == EntryKind.REDEEM,
            LedgerEntry.created_at <= scope.end,
            LedgerEntry.id.not_in(reversals),
        )
        .correlate(correlate)
        .subquery("live")
    )


def _pg_distinct(live: sa.Subquery, column: str):
    """_CreditRow.row's distinct(): the credit's live redemptions' values, in the order they were
    made, each once, empty ones left out, joined with ';'."""
    value = live.c[column]
    first = (
        sa.select(value.label("value"), live.c.created_at, live.c.id)
        .where(value.is_not(None), value != "")
        .ext(distinct_on(value))
        .order_by(value, live.c.created_at, live.c.id)
        .subquery("first_use")
    )
    return sa.select(
        sa.func.string_agg(
            first.c.value,
            aggregate_order_by(sa.literal_column("';'"), first.c.created_at, first.c.id),
        )
    ).scalar_subquery()


# Entry kinds as small numbers, worked out once an entry (each sum below tests one).
_REDEEM, _REVERSE, _BREAKAGE, _CLAWBACK, _ROLLOVER = 1, 2, 3, 4, 5
_KIND_CODE = {
    EntryKind.REDEEM: _REDEEM,
    EntryKind.REVERSE: _REVERSE,
    EntryKind.EXPIRE: _BREAKAGE,
    EntryKind.ADJUST: _BREAKAGE,
    EntryKind.CLAWBACK: _CLAWBACK,
    EntryKind.ROLLOVER: _ROLLOVER,
}


def _pg_credit_ledger(scope: Scope) -> sa.Select:
    """One row per credit: its entries summed in the database (as _CreditRow folds them).

    Three steps: the entries counted (each read once, of the credits in the range: the same
    conditions as the Python path's query), summed per credit, then joined to what the row
    shows, sorted by credit and only then turned into strings. The redemption columns (last
    redeemed, visits, locations, providers) come from the sums when a credit has at most one
    redemption and no reversal (nearly all of them: its one visit line is joined once per
    credit); the others read the credit's live redemptions again (_live_redemptions)."""
    in_range = sa.select(Credit.id).where(_credit_in_range(scope))
    if scope.location_id is not None or scope.plan_id is not None:  # what apply_filters reads
        in_range = apply_filters(
            in_range.join(CreditGrant, Credit.grant_id == CreditGrant.id)
            .join(PlanVersion, CreditGrant.plan_version_id == PlanVersion.id)
            .join(Plan, PlanVersion.plan_id == Plan.id)
            .join(Membership, Credit.membership_id == Membership.id)
            .join(Member, Membership.member_id == Member.id),
            scope,
        )
    counted = (
        sa.select(
            LedgerEntry.credit_id,
            LedgerEntry.quantity,
            LedgerEntry.value_minor,
            LedgerEntry.expires_at,
            LedgerEntry.created_at,
            LedgerEntry.visit_line_id,
            sa.case(_KIND_CODE, value=LedgerEntry.kind, else_=0).label("kind"),
        )
        .where(effective_at() <= scope.end, LedgerEntry.credit_id.in_(in_range))
        .offset(0)  # a fence: the kind's number is worked out once, not in every sum
        .subquery("counted")
    )
    e = counted.c

    def total(column, *kinds):
        return sa.func.coalesce(-sa.func.sum(column).filter(e.kind.in_(kinds)), 0)

    redeem = e.kind == _REDEEM
    folded = (
        sa.select(
            e.credit_id,
            sa.func.sum(e.quantity).label("remaining"),
            sa.func.sum(e.value_minor).label("deferred"),
            sa.func.max(e.expires_at).label("expires_at"),
            total(e.quantity, _REDEEM, _REVERSE).label("redeemed"),
            total(e.value_minor, _REDEEM, _REVERSE).label("recognised"),
            total(e.quantity, _BREAKAGE).label("expired"),
            total(e.value_minor, _BREAKAGE).label("breakage"),
            total(e.quantity, _CLAWBACK).label("clawed_qty"),
            total(e.value_minor, _CLAWBACK).label("clawed"),
            sa.func.bool_or(e.kind == _ROLLOVER).label("rolled"),
            sa.func.bool_or(e.kind == _REVERSE).label("reversed"),
            sa.func.count().filter(redeem).label("redemptions"),
            sa.func.max(e.created_at).filter(redeem).label("redeemed_at"),
            sa.func.max(e.visit_line_id).filter(redeem).label("visit_line_id"),
        )
        .group_by(e.credit_id)
        .subquery("folded")
    )
    f = folded.c
    joined = credit_context(
        sa.select(
            f,
            *_credit_facts(),
            sa.cast(Visit.id, sa.Text).label("visit"),
            VisitLocation.code.label("location"),
            Staff.name.label("provider"),
        )
        .select_from(folded)
        .join(Credit, Credit.id == f.credit_id)
    )
    joined = (
        _credit_facts_joins(joined)
        .outerjoin(VisitLine, VisitLine.id == f.visit_line_id)
        .outerjoin(Visit, VisitLine.visit_id == Visit.id)
        .outerjoin(VisitLocation, Visit.location_id == VisitLocation.id)
        .outerjoin(Staff, VisitLine.provider_id == Staff.id)
        .order_by(Credit.id)
        .offset(0)  # a fence: sorted as numbers and ids, turned into strings after
        .subquery("credit_row")
    )
    r = joined.c
    simple = sa.and_(sa.not_(r.reversed), r.redemptions <= 1)
    live = _live_redemptions(scope, r.credit_id, joined)

    def redemption_column(column: str):
        return sa.case((simple, _pg_text(r[column])), else_=_pg_distinct(live, column))

    last_redeemed = sa.case(
        (sa.not_(r.reversed), r.redeemed_at),
        else_=sa.select(sa.func.max(live.c.created_at)).scalar_subquery(),
    )
    status = sa.case(
        (r.remaining > 0, sa.case((r.rolled, "rolled"), else_="open")),
        (r.clawed_qty > 0, "clawed back"),
        (r.expired > 0, "expired"),
        else_="redeemed",
    )
    return sa.select(
        r.credit_id,
        r.member_id,
        _pg_name(r.first_name, r.last_name),
        r.membership_id,
        _pg_id(r.invoice_id),
        _pg_text(r.stripe_invoice_id),
        sa.func.coalesce(_pg_text(r.treatment_name), _pg_text(r.item_label), "choice"),
        _pg_text(r.product_type),
        _pg_text(r.tier),
        _pg_text(r.unit_label),
        r.credit_qty,
        _pg_money(r.ssp_unit_minor, r.currency),
        _pg_money(r.allocated_minor, r.currency),
        _pg_text(r.currency),
        _pg_time(r.granted_at),
        _pg_time(r.expires_at),
        status,
        r.redeemed,
        _pg_money(r.recognised, r.currency),
        r.expired,
        _pg_money(r.breakage, r.currency),
        r.clawed_qty,
        _pg_money(r.clawed, r.currency),
        r.remaining,
        _pg_money(r.deferred, r.currency),
        _pg_time(last_redeemed),
        redemption_column("visit"),
        redemption_column("location"),
        redemption_column("provider"),
        _pg_text(r.home),
    ).order_by(r.credit_id)


def _crlf(chunk: bytes, quoted: bool) -> tuple[bytes, bool]:
    """COPY's line ends (\n) as the csv module's (\r\n), except inside a quoted field; `quoted`:
    whether the chunk starts inside one (and, returned, whether the next does)."""
    if not quoted and b'"' not in chunk:
        return chunk.replace(b"\n", b"\r\n"), False
    pieces = chunk.split(b"\n")
    out = []
    for piece in pieces[:-1]:
        quoted ^= piece.count(b'"') % 2 == 1
        out.append(piece)
        out.append(b"\n" if quoted else b"\r\n")
    quoted ^= pieces[-1].count(b'"') % 2 == 1
    out.append(pieces[-1])
    return b"".join(out), quoted


def _copy_csv(query: sa.Select, header: list[str], scope: Scope) -> Iterator[bytes]:
    """The header (csv module), then COPY (query) TO STDOUT as CSV, in chunks of ~64 KB, in the
    session's transaction (its snapshot, nothing held in memory), with three settings for this
    transaction only, put back after:

      * TimeZone: the clinic's, for to_char (_pg_time);
      * jit off: compiling these queries costs most of a second, more than it saves;
      * enable_nestloop off: the planner cannot estimate effective_at (a CASE over a subquery),
        guesses a few rows and looks every row's credit, member and plan up one at a time; an
        export reads the whole range, which hash joins do in about two thirds of the time. The
        per-credit subqueries of _live_redemptions are written without joins for this.

    A client that goes away mid-stream closes the generator: psycopg cancels the COPY and the
    request's teardown rolls the transaction back."""
    connection = db.session.connection()
    compiled = query.compile(
        dialect=connection.dialect, compile_kwargs={"render_postcompile": True}
    )
    raw = connection.connection.driver_connection
    settings = {"TimeZone": scope.settings.timezone, "jit": "off", "enable_nestloop": "off"}
    with raw.cursor() as cursor:
        before = cursor.execute(
            "SELECT " + ", ".join(f"current_setting('{name}')" for name in settings)
        ).fetchone()
        cursor.execute(
            "SELECT " + ", ".join(f"set_config('{name}', %s, true)" for name in settings),
            list(settings.values()),
        )
        statement = f"COPY ({compiled}) TO STDOUT WITH (FORMAT csv, ENCODING 'UTF8')"
        with cursor.copy(statement, compiled.params) as copy:
            yield next(csv_chunks([header])).encode()
            parts, size, quoted = [], 0, False
            for row in copy:
                parts.append(row)
                size += len(row)
                if size >= COPY_CHUNK_BYTES:
                    chunk, quoted = _crlf(b"".join(parts), quoted)
                    yield chunk
                    parts, size = [], 0
            if parts:
                yield _crlf(b"".join(parts), quoted)[0]
        cursor.execute(
            "SELECT " + ", ".join(f"set_config('{name}', %s, true)" for name in settings),
            list(before),
        )


def fast_path(export: Export) -> bool:
    """Whether this export is written by the database here: PostgreSQL through psycopg."""
    if export.pg_query is None:
        return False
    dialect = db.session.get_bind().dialect
    return dialect.name == "postgresql" and dialect.driver == "psycopg"


def export_csv(export: Export, scope: Scope) -> Iterator[bytes]:
    """An export as UTF-8 CSV, in chunks: by the database on PostgreSQL where the export has a
    query for it, else its Python rows through the csv module. The same bytes either way."""
    if fast_path(export):
        return _copy_csv(export.pg_query(scope), export.header, scope)
    return (chunk.encode() for chunk in csv_chunks(export.rows(scope)))


# ---------------------------------------------------------------------------------------------
# The table of exports


@dataclass(frozen=True)
class Export:
    name: str
    title: str
    rows: Callable[[Scope], Iterator[list]]
    formats: tuple[str, ...] = ("csv",)
    # PostgreSQL: the header and a query giving exactly the strings `rows` gives after it.
    header: list[str] | None = None
    pg_query: Callable[[Scope], sa.Select] | None = None


EXPORTS: dict[str, Export] = {
    e.name: e
    for e in (
        Export(
            "credit-ledger",
            "One row per credit, as it stood at the end of the range",
            credit_ledger,
            header=CREDIT_LEDGER_HEADER,
            pg_query=_pg_credit_ledger,
        ),
        Export(
            "ledger-entries",
            "One row per ledger entry",
            ledger_entries,
            header=LEDGER_ENTRIES_HEADER,
            pg_query=_pg_ledger_entries,
        ),
        Export(
            "deferred-roll-forward",
            "Deferred revenue by month, tier and location",
            deferred_roll_forward,
        ),
        Export("deferred-waterfall", "Billing month x recognition month", deferred_waterfall),
        Export(
            "revenue-journal",
            "Balanced journal entries (csv, xero, qbo)",
            revenue_journal,
            formats=("csv", "xero", "qbo"),
        ),
        Export("gst-sales", "Invoices and credit notes with GST", gst_sales),
        Export(
            "payments-payouts", "Charges, refunds, disputes and fees by payout", payments_payouts
        ),
        Export(
            "subscription-metrics", "MRR movements, churn, ARPA, LTV by month", subscription_metrics
        ),
        Export("roster", "The membership roster", roster),
        Export(
            "redemptions",
            "Redemptions by treatment, provider and location",
            redemptions,
            header=REDEMPTIONS_HEADER,
            pg_query=_pg_redemptions,
        ),
    )
}
