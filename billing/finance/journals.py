"""The revenue journal: what the ledger and Stripe did in a period, as balanced double entries.

One journal entry per (period, group, location, currency); each balances on its own, so a file
can be cut between any two entries (Xero imports at most 300 lines per file). Groups:

    billing      invoice paid: Dr Stripe clearing (gross) / Cr GST output / Cr Deferred revenue
                 (what the credits were allocated) / Cr Treatment revenue (any part of the
                 invoice not allocated to credits, e.g. a sign-up fee). Credits granted without
                 an invoice (upgrade prorations, admin grants): Dr Receivable / Cr Deferred.
    treatments   redemptions less reversals: Dr Deferred revenue / Cr Treatment revenue
    breakage     expiries and removals: Dr Deferred revenue / Cr Breakage revenue
    clawbacks    refund or dispute of unused credits: Dr Deferred / Dr GST output /
                 Cr Stripe clearing
    receivables  refunded treatments already received (the member owes them):
                 Dr Receivable / Cr Stripe clearing
    fees         Stripe fees: Dr Stripe fees / Cr Stripe clearing

Locations: treatments are tracked where they were performed (the visit's location); everything
else by the member's home location."""

from __future__ import annotations

import bisect
import csv
import io
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date

import sqlalchemy as sa
from sqlalchemy.orm import aliased

from billing.checkout.models import Visit, VisitLine
from billing.clinic.models import Location
from billing.entitlements.models import EntryKind, LedgerEntry
from billing.extensions import db
from billing.finance.recognition import (
    Account,
    HomeLocation,
    Period,
    Scope,
    apply_filters,
    effective_at,
    home_code,
    ledger_joined,
    period_bucket,
    summed,
)
from billing.members.models import Member
from billing.memberships.models import Membership
from billing.money import div_round_half_up, to_major_str
from billing.payments.models import Invoice, Payment, Receivable
from billing.plans.models import PlanVersion

GROUPS = {
    "billing": "Memberships billed",
    "treatments": "Treatments delivered from credits",
    "breakage": "Credits expired unused (breakage)",
    "clawbacks": "Credits clawed back (refunds and disputes)",
    "receivables": "Refunded treatments already received",
    "fees": "Stripe fees",
}

VisitLocation = aliased(Location, name="visit_location")

GENERIC_HEADER = [
    "journal_no",
    "date",
    "period",
    "group",
    "narration",
    "account_code",
    "account_name",
    "location",
    "description",
    "debit",
    "credit",
    "currency",
]
XERO_HEADER = [
    "Narration",
    "Date",
    "Description",
    "AccountCode",
    "TaxRate",
    "Amount",
    "TrackingName1",
    "TrackingOption1",
]
QBO_HEADER = [
    "Journal No.",
    "Journal Date",
    "Account Name",
    "Debits",
    "Credits",
    "Description",
    "Location",
]


@dataclass
class JournalLine:
    account: Account
    amount: int  # positive: debit, negative: credit
    description: str

    @property
    def debit(self) -> int:
        return max(self.amount, 0)

    @property
    def credit(self) -> int:
        return max(-self.amount, 0)


@dataclass
class JournalEntry:
    number: str
    period: Period
    group: str
    location: str
    currency: str
    lines: list[JournalLine] = field(default_factory=list)

    @property
    def date(self) -> date:
        return self.period.last_day

    @property
    def narration(self) -> str:
        where = f" - {self.location}" if self.location else ""
        return f"{GROUPS[self.group]}, {self.period.label}{where}"

    @property
    def is_balanced(self) -> bool:
        return sum(line.amount for line in self.lines) == 0

    def post(self, account: Account, amount: int, description: str) -> None:
        if amount:
            self.lines.append(JournalLine(account, amount, description))


class _Book:
    """Collects amounts by (period, group, location, currency) and account, then makes entries."""

    def __init__(self, scope: Scope, periods: list[Period]):
        self.scope = scope
        self.periods = periods
        self.amounts: dict[tuple, dict[tuple[str, str], int]] = defaultdict(
            lambda: defaultdict(int)
        )

    def add(self, index, group, location, currency, account_key, description, amount) -> None:
        if index is None or not amount:
            return
        key = (int(index), list(GROUPS).index(group), location or "", currency)
        self.amounts[key][(account_key, description)] += amount

    def entries(self) -> list[JournalEntry]:
        accounts = self.scope.settings.accounts
        prefix = self.scope.settings.journal_prefix
        result = []
        counters: dict[int, int] = defaultdict(int)
        for key in sorted(self.amounts):
            index, group_index, location, currency = key
            period = self.periods[index]
            counters[index] += 1
            number = f"{prefix}{period.label.replace('-', '')}-{counters[index]:03d}"
            entry = JournalEntry(number, period, list(GROUPS)[group_index], location, currency)
            for (account_key, description), amount in self.amounts[key].items():
                entry.post(accounts[account_key], amount, description)
            if entry.lines:
                if not entry.is_balanced:  # a bug, never a rounding: every group posts pairs
                    raise AssertionError(f"journal {number} does not balance")
                result.append(entry)
        return result


def _bucket_of(periods: list[Period], moment) -> int | None:
    ends = [p.end for p in periods]
    i = bisect.bisect_left(ends, moment)
    if i == len(periods) or moment <= periods[i].start:
        return None
    return i


def revenue_journal(scope: Scope) -> list[JournalEntry]:
    """The period's journal entries, every one balanced."""
    periods = scope.periods()
    book = _Book(scope, periods)
    t = effective_at()
    bucket = period_bucket(t, periods)
    in_range = sa.and_(t > scope.start, t <= scope.end)

    # Billing, from invoices: counted in the period of the invoice's first grant.
    first = sa.func.min(LedgerEntry.created_at)
    invoices = apply_filters(
        ledger_joined(
            home_code(),
            LedgerEntry.currency,
            Invoice.total_minor,
            Invoice.net_minor,
            Invoice.tax_minor,
            first,
            sa.func.sum(LedgerEntry.value_minor),
        )
        .join(Invoice, LedgerEntry.invoice_id == Invoice.id)
        .where(LedgerEntry.kind == EntryKind.GRANT),
        scope,
    ).group_by(
        Invoice.id,
        home_code(),
        LedgerEntry.currency,
        Invoice.total_minor,
        Invoice.net_minor,
        Invoice.tax_minor,
    )
    invoices = invoices.having(first > scope.start, first <= scope.end)
    for loc, cur, total, net, tax, first_at, granted in db.session.execute(invoices):
        i = _bucket_of(periods, first_at)
        granted = int(granted)
        net = net or max(0, (total or 0) - (tax or 0))
        tax = tax or 0
        book.add(i, "billing", loc, cur, "stripe_clearing", "Invoices paid (gross)", net + tax)
        book.add(i, "billing", loc, cur, "gst_output", "GST on invoices", -tax)
        book.add(i, "billing", loc, cur, "deferred_revenue", "Credits granted", -granted)
        book.add(
            i,
            "billing",
            loc,
            cur,
            "treatment_revenue",
            "Invoiced, not allocated to credits",
            -(net - granted),
        )

    # Billing without an invoice.
    for i, loc, cur, value in _sum(
        book,
        ledger_joined(*_keys(bucket, home_code()), LedgerEntry.value_minor.label("value")).where(
            in_range, LedgerEntry.kind == EntryKind.GRANT, LedgerEntry.invoice_id.is_(None)
        ),
    ):
        text = "Credits granted without an invoice"
        book.add(i, "billing", loc, cur, "receivable", text, value)
        book.add(i, "billing", loc, cur, "deferred_revenue", text, -value)

    # Treatments, where they were performed.
    where = sa.func.coalesce(VisitLocation.code, HomeLocation.code, sa.literal_column("''"))
    treatments = (
        ledger_joined(*_keys(bucket, where), LedgerEntry.value_minor.label("value"))
        .outerjoin(VisitLine, LedgerEntry.visit_line_id == VisitLine.id)
        .outerjoin(Visit, VisitLine.visit_id == Visit.id)
        .outerjoin(VisitLocation, Visit.location_id == VisitLocation.id)
        .where(in_range, LedgerEntry.kind.in_([EntryKind.REDEEM, EntryKind.REVERSE]))
    )
    for i, loc, cur, value in _sum(book, treatments):
        text = "Treatments redeemed, less reversals"
        book.add(i, "treatments", loc, cur, "deferred_revenue", text, -value)
        book.add(i, "treatments", loc, cur, "treatment_revenue", text, value)

    # Breakage.
    for i, loc, cur, value in _sum(
        book,
        ledger_joined(*_keys(bucket, home_code()), LedgerEntry.value_minor.label("value")).where(
            in_range, LedgerEntry.kind.in_([EntryKind.EXPIRE, EntryKind.ADJUST])
        ),
    ):
        text = "Credits expired or removed unused"
        book.add(i, "breakage", loc, cur, "deferred_revenue", text, -value)
        book.add(i, "breakage", loc, cur, "breakage_revenue", text, value)

    # Clawbacks, with the GST of the invoice they came from.
    clawbacks = (
        ledger_joined(
            *_keys(bucket, home_code()),
            sa.func.coalesce(Invoice.net_minor, 0).label("net"),
            sa.func.coalesce(Invoice.tax_minor, 0).label("tax"),
            LedgerEntry.value_minor.label("value"),
        )
        .outerjoin(Invoice, LedgerEntry.invoice_id == Invoice.id)
        .where(in_range, LedgerEntry.kind == EntryKind.CLAWBACK)
    )
    for i, loc, cur, net, tax, value in _sum(book, clawbacks, "net", "tax"):
        clawed = -value
        gst = div_round_half_up(clawed * tax, net) if net and tax else 0
        text = "Unused credits refunded"
        book.add(i, "clawbacks", loc, cur, "deferred_revenue", text, clawed)
        book.add(i, "clawbacks", loc, cur, "gst_output", "GST on refunded credits", gst)
        book.add(i, "clawbacks", loc, cur, "stripe_clearing", text, -(clawed + gst))

    # Receivables raised for refunded treatments already received; Stripe fees.
    for group, model, moment, amount, account in (
        ("receivables", Receivable, Receivable.created_at, Receivable.amount_minor, "receivable"),
        ("fees", Payment, Payment.occurred_at, Payment.fee_minor, "stripe_fees"),
    ):
        inner = (
            sa.select(
                period_bucket(moment, periods).label("bucket"),
                home_code().label("location"),
                model.currency.label("currency"),
                amount.label("value"),
            )
            .select_from(model)
            .outerjoin(Member, model.member_id == Member.id)
            .outerjoin(HomeLocation, Member.home_location_id == HomeLocation.id)
            .where(moment > scope.start, moment <= scope.end)
        )
        inner = _money_filters(inner, scope, model)
        q = summed(inner, "bucket", "location", "currency")
        for i, location, cur, value in db.session.execute(q):
            text = GROUPS[group]
            book.add(i, group, location, cur, account, text, int(value))
            book.add(i, group, location, cur, "stripe_clearing", text, -int(value))
    return book.entries()


def _keys(bucket, location) -> tuple:
    return (
        bucket.label("bucket"),
        location.label("location"),
        LedgerEntry.currency.label("currency"),
    )


def _sum(book: _Book, inner: sa.Select, *extra: str):
    """(bucket, location, currency, *extra, SUM(value)) of a per-entry query, in the scope."""
    q = summed(apply_filters(inner, book.scope), "bucket", "location", "currency", *extra)
    for row in db.session.execute(q):
        yield (*row[:-1], int(row[-1]))


def _money_filters(q: sa.Select, scope: Scope, model) -> sa.Select:
    """Filters for rows about money (payments, receivables): home location; tier through the
    membership the invoice (or receivable) belongs to."""
    if scope.location_id is not None:
        q = q.where(Member.home_location_id == scope.location_id)
    if scope.plan_id is not None:
        if model is Payment:
            q = q.join(Invoice, Payment.invoice_id == Invoice.id).join(
                Membership, Invoice.membership_id == Membership.id
            )
        else:
            q = q.join(Membership, model.membership_id == Membership.id)
        q = q.join(PlanVersion, Membership.plan_version_id == PlanVersion.id).where(
            PlanVersion.plan_id == scope.plan_id
        )
    return q


# ---------------------------------------------------------------------------------------------
# Formats


def generic_rows(entries: list[JournalEntry]) -> Iterator[list[str]]:
    yield GENERIC_HEADER
    for e in entries:
        for line in e.lines:
            yield [
                e.number,
                e.date.isoformat(),
                e.period.label,
                e.group,
                e.narration,
                line.account.code,
                line.account.name,
                e.location,
                line.description,
                to_major_str(line.debit, e.currency) if line.debit else "",
                to_major_str(line.credit, e.currency) if line.credit else "",
                e.currency,
            ]


def xero_rows(entries: list[JournalEntry], scope: Scope) -> Iterator[list[str]]:
    """Xero's manual journal import: Amount positive for a debit, negative for a credit; one
    journal per Narration and Date."""
    yield XERO_HEADER
    for e in entries:
        for line in e.lines:
            yield [
                f"{e.number} {e.narration}",
                e.date.isoformat(),
                line.description,
                line.account.code,
                scope.settings.xero_tax_rate,
                to_major_str(line.amount, e.currency),
                "Location" if e.location else "",
                e.location,
            ]


def qbo_rows(entries: list[JournalEntry]) -> Iterator[list[str]]:
    """QuickBooks Online's journal entry import: rows sharing a Journal No. are one entry."""
    yield QBO_HEADER
    for e in entries:
        for line in e.lines:
            yield [
                e.number,
                e.date.isoformat(),
                line.account.name,
                to_major_str(line.debit, e.currency) if line.debit else "",
                to_major_str(line.credit, e.currency) if line.credit else "",
                f"{e.narration}: {line.description}",
                e.location,
            ]


def split_for_xero(entries: list[JournalEntry], max_lines: int) -> list[list[JournalEntry]]:
    """Pack whole (balanced) entries into files of at most `max_lines` lines each."""
    parts: list[list[JournalEntry]] = [[]]
    used = 0
    for entry in entries:
        size = len(entry.lines)
        if size > max_lines:
            raise ValueError(f"journal {entry.number} alone has {size} lines (> {max_lines})")
        if used + size > max_lines and parts[-1]:
            parts.append([])
            used = 0
        parts[-1].append(entry)
        used += size
    return parts


def journal_files(scope: Scope, fmt: str) -> list[tuple[str, list[list[str]]]]:
    """[(file name, rows)]: one file, except Xero beyond its line limit (then part-1, part-2...)."""
    entries = revenue_journal(scope)
    stem = f"revenue-journal_{scope.date_from.isoformat()}_{scope.date_to.isoformat()}"
    if fmt == "qbo":
        return [(f"{stem}_qbo.csv", list(qbo_rows(entries)))]
    if fmt == "xero":
        parts = split_for_xero(entries, scope.settings.xero_max_lines)
        if len(parts) == 1:
            return [(f"{stem}_xero.csv", list(xero_rows(parts[0], scope)))]
        return [
            (f"{stem}_xero_part-{n}-of-{len(parts)}.csv", list(xero_rows(part, scope)))
            for n, part in enumerate(parts, start=1)
        ]
    return [(f"{stem}.csv", list(generic_rows(entries)))]


def to_csv_text(rows: list[list[str]]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\r\n").writerows(rows)
    return buffer.getvalue()
