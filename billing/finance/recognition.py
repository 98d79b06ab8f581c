"""Revenue recognition read off the entitlement ledger.

The ledger already moves deferred revenue: every entry's `value_minor` is the ex-GST amount it
adds to (grant) or takes from (redeem, expire, clawback, adjust) the deferred balance. This module
only *reads* it: it cuts the entries into clinic-local months and names each movement the way an
accountant does:

    billed       grant                         credits deferred revenue when a period is paid
    recognised   redeem, less reverse          treatment revenue, at redemption
    breakage     expire, adjust (removals)     breakage revenue, at the credit's expiry
    clawed_back  clawback                      refunds and disputes take unused credits back
    (nothing)    rollover                      a rolled-over credit stays deferred

so that, for every period, opening + billed - recognised - breakage - clawed_back = closing.

When an entry counts: when it was written, except breakage, which belongs to the moment the credit
expired even when the expiry job records it a little later (a credit that expires at the end of
March is March's breakage), though never before the credit's previous entry. Periods are (start, end]: the balance at T includes what happened at T.

Nothing here reads the clock or the request; settings arrive as a FinanceSettings value built in
one place (`finance_settings`) from the app config."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from sqlalchemy.orm import aliased

import billing.models  # noqa: F401  (every mapper, before the aliases below configure them)
from billing.clinic.models import Location
from billing.clock import start_of_local_day
from billing.db import UTCDateTime
from billing.entitlements.models import Credit, CreditGrant, EntryKind, LedgerEntry
from billing.errors import InvalidInput, ServiceUnavailable
from billing.extensions import db
from billing.members.models import Member
from billing.memberships.models import Membership
from billing.plans.models import Plan, PlanVersion

# ---------------------------------------------------------------------------------------------
# Settings: the one place the finance package reads the app config.


@dataclass(frozen=True)
class Account:
    code: str
    name: str


# key -> (config key prefix, default code, default name)
ACCOUNT_DEFAULTS: dict[str, tuple[str, str, str]] = {
    "deferred_revenue": ("ACCOUNT_DEFERRED_REVENUE", "2400", "Deferred revenue - memberships"),
    "treatment_revenue": ("ACCOUNT_TREATMENT_REVENUE", "4000", "Treatment revenue"),
    "breakage_revenue": ("ACCOUNT_BREAKAGE_REVENUE", "4100", "Breakage revenue"),
    "gst_output": ("ACCOUNT_GST_OUTPUT", "2200", "GST output tax"),
    "refunds_loss": ("ACCOUNT_REFUNDS_LOSS", "6900", "Refunds and losses"),
    "receivable": ("ACCOUNT_RECEIVABLE", "1200", "Member receivables"),
    "stripe_clearing": ("ACCOUNT_STRIPE_CLEARING", "1150", "Stripe clearing"),
    "stripe_fees": ("ACCOUNT_STRIPE_FEES", "6100", "Stripe fees"),
}

BREAKAGE_AT_EXPIRY = "at_expiry"
BREAKAGE_PROPORTIONAL = "proportional"  # recognise expected breakage as credits are redeemed


@dataclass(frozen=True)
class FinanceSettings:
    currency: str = "SGD"
    timezone: str = "Asia/Singapore"
    tax_rate_bp: int = 900
    prices_include_tax: bool = True
    breakage_policy: str = BREAKAGE_AT_EXPIRY
    accounts: dict[str, Account] = field(
        default_factory=lambda: {k: Account(c, n) for k, (_, c, n) in ACCOUNT_DEFAULTS.items()}
    )
    xero_tax_rate: str = "No GST"
    xero_max_lines: int = 300
    journal_prefix: str = "REV"

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def account(self, key: str) -> Account:
        return self.accounts[key]


def finance_settings() -> FinanceSettings:
    """Everything finance reads from the app config, read here and nowhere else."""
    from flask import current_app

    c = current_app.config
    accounts = {
        key: Account(
            str(c.get(prefix, code)),
            str(c.get(f"{prefix}_NAME", name)),
        )
        for key, (prefix, code, name) in ACCOUNT_DEFAULTS.items()
    }
    return FinanceSettings(
        currency=c.get("CLINIC_CURRENCY", "SGD"),
        timezone=c.get("CLINIC_TIMEZONE", "Asia/Singapore"),
        tax_rate_bp=int(c.get("TAX_RATE_BP", 900)),
        prices_include_tax=bool(c.get("PRICES_INCLUDE_TAX", True)),
        breakage_policy=str(c.get("FINANCE_BREAKAGE_POLICY", BREAKAGE_AT_EXPIRY)),
        accounts=accounts,
        xero_tax_rate=str(c.get("FINANCE_XERO_TAX_RATE", "No GST")),
        xero_max_lines=int(c.get("FINANCE_XERO_MAX_LINES", 300)),
        journal_prefix=str(c.get("FINANCE_JOURNAL_PREFIX", "REV")),
    )


def ensure_supported_policy(settings: FinanceSettings) -> None:
    """Proportional breakage (recognising expected breakage as credits are redeemed) needs a
    breakage-rate estimate per tier; until one exists only breakage at expiry is offered."""
    if settings.breakage_policy != BREAKAGE_AT_EXPIRY:
        raise ServiceUnavailable(
            f"The breakage policy {settings.breakage_policy!r} is not available yet; set "
            f"FINANCE_BREAKAGE_POLICY={BREAKAGE_AT_EXPIRY!r}.",
            slug="breakage-policy-unavailable",
        )


# ---------------------------------------------------------------------------------------------
# Periods and scope


@dataclass(frozen=True)
class Period:
    """A clinic-local month, clipped to the report's range: entries at t with start < t <= end."""

    label: str  # "2026-03"
    first_day: date
    last_day: date
    start: datetime
    end: datetime


def _first_of_next_month(day: date) -> date:
    return date(day.year + (day.month == 12), day.month % 12 + 1, 1)


def month_periods(date_from: date, date_to: date, tz: ZoneInfo) -> list[Period]:
    periods = []
    day = date_from
    while day <= date_to:
        next_month = _first_of_next_month(day)
        last = min(date_to, next_month - timedelta(days=1))
        periods.append(
            Period(
                label=f"{day.year:04d}-{day.month:02d}",
                first_day=day,
                last_day=last,
                start=start_of_local_day(day, tz),
                end=start_of_local_day(last + timedelta(days=1), tz),
            )
        )
        day = next_month
    return periods


@dataclass(frozen=True)
class Scope:
    """What a report covers: clinic-local days from..to inclusive, and optional filters."""

    date_from: date
    date_to: date
    settings: FinanceSettings = field(default_factory=FinanceSettings)
    location_id: int | None = None
    location_code: str | None = None
    plan_id: int | None = None
    tier_code: str | None = None

    @property
    def tz(self) -> ZoneInfo:
        return self.settings.tz

    @property
    def currency(self) -> str:
        return self.settings.currency

    @property
    def start(self) -> datetime:
        return start_of_local_day(self.date_from, self.tz)

    @property
    def end(self) -> datetime:
        return start_of_local_day(self.date_to + timedelta(days=1), self.tz)

    def periods(self) -> list[Period]:
        return month_periods(self.date_from, self.date_to, self.tz)

    def local_date(self, moment: datetime | None) -> str:
        return moment.astimezone(self.tz).date().isoformat() if moment else ""

    def local_time(self, moment: datetime | None) -> str:
        return moment.astimezone(self.tz).isoformat(timespec="seconds") if moment else ""


MAX_REPORT_DAYS = 366 * 5


def resolve_scope(
    date_from: date,
    date_to: date,
    *,
    location: str | None = None,
    tier: str | None = None,
    settings: FinanceSettings | None = None,
) -> Scope:
    """Check a report's range and filters before anything is streamed (a streamed response can
    no longer become an error)."""
    settings = settings or FinanceSettings()
    ensure_supported_policy(settings)
    if date_to < date_from:
        raise InvalidInput(
            "The range ends before it starts.", errors={"to": ["must be on or after 'from'"]}
        )
    if (date_to - date_from).days > MAX_REPORT_DAYS:
        raise InvalidInput(
            "A report covers at most five years.", errors={"to": ["at most five years"]}
        )
    location_id = plan_id = None
    if location:
        location_id = db.session.execute(
            sa.select(Location.id).where(Location.code == location)
        ).scalar_one_or_none()
        if location_id is None:
            raise InvalidInput(
                f"No location {location!r}.", errors={"location": ["unknown location code"]}
            )
    if tier:
        plan_id = db.session.execute(
            sa.select(Plan.id).where(Plan.code == tier)
        ).scalar_one_or_none()
        if plan_id is None:
            raise InvalidInput(f"No plan {tier!r}.", errors={"tier": ["unknown plan code"]})
    return Scope(
        date_from=date_from,
        date_to=date_to,
        settings=settings,
        location_id=location_id,
        location_code=location,
        plan_id=plan_id,
        tier_code=tier,
    )


# ---------------------------------------------------------------------------------------------
# The ledger, joined to what a report is cut by


HomeLocation = aliased(Location, name="home_location")

MOVEMENTS = ("billed", "recognised", "breakage", "clawed_back")

# Entry kind -> (movement, sign that turns the entry's value into a positive movement).
KIND_MOVEMENT: dict[str, tuple[str, int] | None] = {
    EntryKind.GRANT: ("billed", 1),
    EntryKind.REDEEM: ("recognised", -1),
    EntryKind.REVERSE: ("recognised", -1),
    EntryKind.EXPIRE: ("breakage", -1),
    EntryKind.ADJUST: ("breakage", -1),
    EntryKind.CLAWBACK: ("clawed_back", -1),
    EntryKind.ROLLOVER: None,
    "transfer": None,
}

TRANSFER = "transfer"


def entry_kind():
    """The entry's kind as revenue sees it. A gift's month converted into that month's credits is
    two entries (an `adjust` off the gift's holding credit, a `grant` of the month) that only move
    deferred value from one credit to another: a transfer, neither billing nor breakage. The gift
    was billed when it was bought."""
    return sa.case(
        (
            sa.and_(LedgerEntry.kind == EntryKind.ADJUST, LedgerEntry.dedupe_key.like("convert:%")),
            TRANSFER,
        ),
        (
            sa.and_(
                LedgerEntry.kind == EntryKind.GRANT, CreditGrant.source_ref.like("gift:%:month:%")
            ),
            TRANSFER,
        ),
        else_=LedgerEntry.kind,
    )


def effective_at():
    """When an entry moves revenue (see the module docstring).

    An expiry recorded after the fact counts at the credit's expiry, but never before the
    credit's previous entry: a credit granted late, or given back by a reversal after it expired,
    cannot break before it was there to break."""
    earlier = aliased(LedgerEntry, name="earlier_entry")
    previous = (
        sa.select(sa.func.max(earlier.created_at))
        .where(earlier.credit_id == LedgerEntry.credit_id, earlier.id < LedgerEntry.id)
        .scalar_subquery()
    )
    return sa.type_coerce(
        sa.case(
            (
                sa.and_(
                    LedgerEntry.kind == EntryKind.EXPIRE,
                    LedgerEntry.expires_at < LedgerEntry.created_at,
                ),
                sa.case(
                    (previous > LedgerEntry.expires_at, previous),
                    else_=LedgerEntry.expires_at,
                ),
            ),
            else_=LedgerEntry.created_at,
        ),
        UTCDateTime(),
    )


def ledger_joined(*columns) -> sa.Select:
    """SELECT columns FROM the ledger joined to its credit, grant, plan and member's home."""
    return credit_context(
        sa.select(*columns)
        .select_from(LedgerEntry)
        .join(Credit, LedgerEntry.credit_id == Credit.id)
    )


def credit_context(query: sa.Select) -> sa.Select:
    """A query that has the credit, joined to its grant, plan, membership, member and the
    member's home location (what the filters and the exports' columns need)."""
    return (
        query.join(CreditGrant, Credit.grant_id == CreditGrant.id)
        .join(PlanVersion, CreditGrant.plan_version_id == PlanVersion.id)
        .join(Plan, PlanVersion.plan_id == Plan.id)
        .join(Membership, Credit.membership_id == Membership.id)
        .join(Member, Membership.member_id == Member.id)
        .outerjoin(HomeLocation, Member.home_location_id == HomeLocation.id)
    )


def apply_filters(query: sa.Select, scope: Scope) -> sa.Select:
    """Location and tier filters of credit-based reports: the member's home location, the plan
    the credit was granted from."""
    if scope.location_id is not None:
        query = query.where(Member.home_location_id == scope.location_id)
    if scope.plan_id is not None:
        query = query.where(Plan.id == scope.plan_id)
    return query


def period_bucket(moment, periods: list[Period]):
    """A SQL expression giving the index of the period a moment falls in (start, end]."""
    return sa.case(*[(moment <= p.end, i) for i, p in enumerate(periods)], else_=None)


def home_code():
    return sa.func.coalesce(HomeLocation.code, sa.literal_column("''"))


def summed(inner: sa.Select, *keys: str) -> sa.Select:
    """SUM(value) of a one-row-per-entry query, grouped by its named columns outside it.

    Grouping outside a subquery keeps expressions with bound parameters (period buckets) out of
    GROUP BY, which PostgreSQL cannot match against the same expression in the SELECT list."""
    sub = inner.subquery()
    columns = [sub.c[k] for k in keys]
    return sa.select(*columns, sa.func.sum(sub.c.value)).group_by(*columns)


# ---------------------------------------------------------------------------------------------
# Roll-forward


@dataclass
class RollForwardRow:
    period: Period
    tier: str
    location: str
    currency: str
    opening: int = 0
    billed: int = 0
    recognised: int = 0
    breakage: int = 0
    clawed_back: int = 0

    @property
    def closing(self) -> int:
        return self.opening + self.billed - self.recognised - self.breakage - self.clawed_back

    @property
    def is_empty(self) -> bool:
        return not any(
            (self.opening, self.billed, self.recognised, self.breakage, self.clawed_back)
        )


def deferred_balance(at: datetime, scope: Scope | None = None) -> int:
    """Deferred revenue at an instant: the sum of every entry's value that counts by then."""
    t = effective_at()
    q = ledger_joined(sa.func.coalesce(sa.func.sum(LedgerEntry.value_minor), 0)).where(t <= at)
    if scope is not None:
        q = apply_filters(q, scope)
    return int(db.session.execute(q).scalar_one())


def movements(scope: Scope, periods: list[Period] | None = None) -> dict[tuple, int]:
    """{(period index, tier, location, currency, movement): amount} over the scope's range."""
    periods = periods or scope.periods()
    t = effective_at()
    inner = apply_filters(
        ledger_joined(
            period_bucket(t, periods).label("bucket"),
            Plan.code.label("tier"),
            home_code().label("location"),
            LedgerEntry.currency.label("currency"),
            entry_kind().label("kind"),
            LedgerEntry.value_minor.label("value"),
        ).where(t > periods[0].start, t <= periods[-1].end),
        scope,
    )
    q = summed(inner, "bucket", "tier", "location", "currency", "kind")
    result: dict[tuple, int] = defaultdict(int)
    for index, tier, location, currency, kind, value in db.session.execute(q):
        movement = KIND_MOVEMENT.get(kind)
        if movement is None or index is None:
            continue
        name, sign = movement
        result[(int(index), tier, location, currency, name)] += sign * int(value)
    return result


def roll_forward(scope: Scope) -> list[RollForwardRow]:
    """Deferred revenue by month x tier x location: each period opens where the last closed."""
    periods = scope.periods()
    t = effective_at()
    opening_q = summed(
        apply_filters(
            ledger_joined(
                Plan.code.label("tier"),
                home_code().label("location"),
                LedgerEntry.currency.label("currency"),
                LedgerEntry.value_minor.label("value"),
            ).where(t <= scope.start),
            scope,
        ),
        "tier",
        "location",
        "currency",
    )
    balances: dict[tuple, int] = {
        (tier, loc, cur): int(v) for tier, loc, cur, v in db.session.execute(opening_q)
    }
    moved = movements(scope, periods)
    keys = sorted(set(balances) | {(k[1], k[2], k[3]) for k in moved})
    rows = []
    for index, period in enumerate(periods):
        for key in keys:
            row = RollForwardRow(period, *key, opening=balances.get(key, 0))
            for name in MOVEMENTS:
                setattr(row, name, moved.get((index, *key, name), 0))
            balances[key] = row.closing
            if not row.is_empty:
                rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------------
# Waterfall: billing month x recognition month


@dataclass
class WaterfallCell:
    billing: Period
    recognition: Period
    currency: str
    billed: int
    recognised: int = 0
    breakage: int = 0
    clawed_back: int = 0
    remaining: int = 0


def waterfall(scope: Scope) -> list[WaterfallCell]:
    """For the credits billed in each month: how their deferred revenue was released month by
    month afterwards, and what is still deferred at the end of each month."""
    periods = scope.periods()
    t = effective_at()
    inner = apply_filters(
        ledger_joined(
            period_bucket(Credit.created_at, periods).label("billing"),
            period_bucket(t, periods).label("release"),
            LedgerEntry.currency.label("currency"),
            entry_kind().label("kind"),
            LedgerEntry.value_minor.label("value"),
        ).where(
            Credit.created_at > scope.start,
            Credit.created_at <= scope.end,
            t <= scope.end,
        ),
        scope,
    )
    q = summed(inner, "billing", "release", "currency", "kind")
    amounts: dict[tuple, int] = defaultdict(int)
    currencies: set[tuple[int, str]] = set()
    for b, r, currency, kind, value in db.session.execute(q):
        movement = KIND_MOVEMENT.get(kind)
        if movement is None or b is None or r is None:
            continue
        name, sign = movement
        amounts[(int(b), int(r), currency, name)] += sign * int(value)
        currencies.add((int(b), currency))
    cells = []
    for b, currency in sorted(currencies):
        billed = sum(
            v
            for (bb, _, cur, name), v in amounts.items()
            if (bb, cur, name) == (b, currency, "billed")
        )
        remaining = 0
        for r in range(b, len(periods)):
            cell = WaterfallCell(periods[b], periods[r], currency, billed=billed)
            cell.recognised = amounts.get((b, r, currency, "recognised"), 0)
            cell.breakage = amounts.get((b, r, currency, "breakage"), 0)
            cell.clawed_back = amounts.get((b, r, currency, "clawed_back"), 0)
            remaining += amounts.get((b, r, currency, "billed"), 0)
            remaining -= cell.recognised + cell.breakage + cell.clawed_back
            cell.remaining = remaining
            cells.append(cell)
    return cells


# ---------------------------------------------------------------------------------------------
# Small totals for the dashboard


def recognised_between(start: datetime, end: datetime, scope: Scope | None = None) -> dict:
    """Treatment revenue and breakage recognised in (start, end]."""
    t = effective_at()
    q = ledger_joined(entry_kind().label("kind"), LedgerEntry.value_minor.label("value")).where(
        t > start, t <= end
    )
    if scope is not None:
        q = apply_filters(q, scope)
    totals = dict.fromkeys(MOVEMENTS, 0)
    for kind, value in db.session.execute(summed(q, "kind")):
        movement = KIND_MOVEMENT.get(kind)
        if movement:
            totals[movement[0]] += movement[1] * int(value)
    return totals
