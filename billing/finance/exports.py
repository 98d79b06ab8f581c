"""The CSV exports an accountant imports, each a generator of rows (header first).

Row exports stream: one query read `yield_per(1000)` rows at a time (a server-side cursor on
PostgreSQL), written out as they come, so a million-entry ledger exports in constant memory.
Summaries (roll-forward, waterfall, journal, metrics) aggregate in the database and are small.

Amounts are in major units ("150.00") beside a currency column; dates are ISO, clinic-local."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.orm import aliased

from billing.checkout.models import Visit, VisitLine
from billing.entitlements.models import Credit, CreditGrant, EntryKind, LedgerEntry
from billing.extensions import db
from billing.finance import journals, metrics
from billing.finance.recognition import (
    KIND_MOVEMENT,
    HomeLocation,
    Scope,
    apply_filters,
    effective_at,
    entry_kind,
    home_code,
    ledger_joined,
    roll_forward,
    waterfall,
)
from billing.members.models import Member
from billing.memberships.models import Membership
from billing.money import div_round_half_up, to_major_str
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


def credit_ledger(scope: Scope) -> Iterator[list]:
    """Credits granted in the range, and older credits that moved in it, as they stood at its end."""
    t = effective_at()
    later = aliased(LedgerEntry, name="moved_entry")
    moved = sa.select(later.credit_id).where(
        later.created_at > scope.start, later.created_at <= scope.end
    )
    q = apply_filters(
        _visit_joins(
            ledger_joined(
                Credit.id.label("credit_id"),
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
            .outerjoin(Invoice, CreditGrant.invoice_id == Invoice.id)
            .outerjoin(Treatment, Credit.treatment_id == Treatment.id)
            .outerjoin(PlanItem, Credit.plan_item_id == PlanItem.id)
        ).where(
            t <= scope.end,
            Credit.created_at <= scope.end,
            sa.or_(Credit.created_at > scope.start, Credit.id.in_(moved)),
        ),
        scope,
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


def ledger_entries(scope: Scope) -> Iterator[list]:
    t = effective_at().label("effective_at")
    q = apply_filters(
        ledger_joined(
            LedgerEntry.id,
            LedgerEntry.created_at,
            t,
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
        ).where(effective_at() > scope.start, effective_at() <= scope.end),
        scope,
    ).order_by(LedgerEntry.id)
    yield [
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


def redemptions(scope: Scope) -> Iterator[list]:
    """Each redemption (and reversal) in the range: treatment, provider, location, value."""
    t = effective_at()
    where = sa.func.coalesce(Visit.location_id, Member.home_location_id)
    q = (
        _visit_joins(
            ledger_joined(
                LedgerEntry,
                TreatedMember.id.label("treated_id"),
                TreatedMember.first_name,
                TreatedMember.last_name,
                Treatment.code.label("treatment_code"),
                Treatment.name.label("treatment_name"),
                Plan.code.label("tier"),
                Credit.product_type,
                Visit.id.label("visit_id"),
                sa.func.coalesce(VisitLocation.code, HomeLocation.code, "").label("location"),
                Staff.id.label("provider_id"),
                Staff.name.label("provider"),
            )
        )
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
    yield [
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
# The table of exports


@dataclass(frozen=True)
class Export:
    name: str
    title: str
    rows: Callable[[Scope], Iterator[list]]
    formats: tuple[str, ...] = ("csv",)


EXPORTS: dict[str, Export] = {
    e.name: e
    for e in (
        Export(
            "credit-ledger",
            "One row per credit, as it stood at the end of the range",
            credit_ledger,
        ),
        Export("ledger-entries", "One row per ledger entry", ledger_entries),
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
        Export("redemptions", "Redemptions by treatment, provider and location", redemptions),
    )
}
