"""Subscription metrics, defined as ChartMogul defines them (the README (Finance) says how).

MRR is rebuilt from the membership history (MembershipEvent: joined, transition, tier_change,
tier_change_applied) and the price of the plan version held at each moment: the tier's monthly
price net of GST (a yearly tier counts a twelfth). A membership contributes MRR while it is
active, past due or set to cancel at period end; pending, paused and canceled contribute nothing.
Prepaid series are not subscriptions and have no MRR.

A customer is a member; their MRR is the sum over their tier memberships. Each change of a
customer's MRR is one movement: new (first time above zero), reactivation (above zero again,
including a resume after a pause), expansion, contraction (including a pause: contraction to 0),
churn (to zero for any other reason)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import ROUND_HALF_UP, Decimal

import sqlalchemy as sa

from billing.extensions import db
from billing.finance.recognition import (
    FinanceSettings,
    Period,
    Scope,
    deferred_balance,
    recognised_between,
)
from billing.members.models import Member
from billing.memberships.models import Membership, MembershipEvent, State
from billing.money import Money, div_round_half_up, net_of_tax
from billing.payments.models import Payment
from billing.plans.models import Plan, PlanKind, PlanVersion

COUNTING_STATES = frozenset({State.ACTIVE, State.PAST_DUE, State.CANCEL_AT_PERIOD_END})
HISTORY_KINDS = ("joined", "transition", "tier_change", "tier_change_applied")


def monthly_price(version: PlanVersion, tax_rate_bp: int) -> int:
    """A version's MRR: its price net of GST, per month."""
    net = (
        net_of_tax(version.price_minor, tax_rate_bp)
        if version.tax_inclusive
        else version.price_minor
    )
    months = version.interval_count * (12 if version.interval == "year" else 1)
    return div_round_half_up(net, months)


@dataclass
class _Point:
    at: datetime
    seq: int
    member_id: int
    membership_id: int
    state: str | None
    version_id: int | None
    paused: bool  # this change is a pause


@dataclass
class MonthMetrics:
    period: Period
    currency: str
    mrr_start: int = 0
    new: int = 0
    expansion: int = 0
    contraction: int = 0
    churn: int = 0
    reactivation: int = 0
    mrr_end: int = 0
    customers_start: int = 0
    customers_end: int = 0
    new_customers: int = 0
    churned_customers: int = 0
    reactivated_customers: int = 0
    active_by_tier: dict[str, int] = field(default_factory=dict)
    mrr_by_tier: dict[str, int] = field(default_factory=dict)

    @property
    def customer_churn_rate(self) -> Decimal | None:
        return _rate(self.churned_customers, self.customers_start)

    @property
    def gross_mrr_churn_rate(self) -> Decimal | None:
        return _rate(self.churn + self.contraction, self.mrr_start)

    @property
    def net_mrr_churn_rate(self) -> Decimal | None:
        lost = self.churn + self.contraction - self.expansion - self.reactivation
        return _rate(lost, self.mrr_start)

    @property
    def arpa(self) -> int | None:
        return div_round_half_up(self.mrr_end, self.customers_end) if self.customers_end else None

    @property
    def ltv(self) -> int | None:
        """ARPA / customer churn rate; none while nobody churns."""
        if self.arpa is None or not self.churned_customers or not self.customers_start:
            return None
        return div_round_half_up(self.arpa * self.customers_start, self.churned_customers)


def _rate(numerator: int, denominator: int) -> Decimal | None:
    if not denominator:
        return None
    return (Decimal(numerator) / Decimal(denominator)).quantize(
        Decimal("0.0001"), rounding=ROUND_HALF_UP
    )


def _history(scope: Scope, until: datetime) -> tuple[list[_Point], dict[int, PlanVersion]]:
    rows = db.session.execute(
        sa.select(
            MembershipEvent.id,
            MembershipEvent.membership_id,
            MembershipEvent.kind,
            MembershipEvent.to_state,
            MembershipEvent.to_version_id,
            MembershipEvent.at,
            MembershipEvent.effective_at,
            Membership.member_id,
            Membership.plan_version_id,
        )
        .join(Membership, MembershipEvent.membership_id == Membership.id)
        .join(Member, Membership.member_id == Member.id)
        .join(PlanVersion, Membership.plan_version_id == PlanVersion.id)
        .join(Plan, PlanVersion.plan_id == Plan.id)
        .where(
            Plan.kind == PlanKind.TIER,
            MembershipEvent.kind.in_(HISTORY_KINDS),
            MembershipEvent.at <= until,
            *(
                [Member.home_location_id == scope.location_id]
                if scope.location_id is not None
                else []
            ),
        )
        .order_by(MembershipEvent.at, MembershipEvent.id)
    ).all()
    current: dict[int, tuple[str | None, int | None]] = {}
    points = []
    for event_id, mid, kind, to_state, to_version, at, effective_at, member_id, now_version in rows:
        state, version = current.get(mid, (None, None))
        if kind == "joined":
            state, version = to_state or State.PENDING, to_version or version
        elif kind == "transition":
            state = to_state
        elif _changes_version_now(kind, at, effective_at):
            version = to_version or version
        version = version or now_version
        current[mid] = (state, version)
        points.append(
            _Point(at, event_id, member_id, mid, state, version, to_state == State.PAUSED)
        )
    version_ids = {p.version_id for p in points if p.version_id}
    versions = {
        v.id: v
        for v in db.session.execute(
            sa.select(PlanVersion).where(PlanVersion.id.in_(version_ids))
        ).scalars()
    }
    return points, versions


def _changes_version_now(kind: str, at: datetime, effective_at: datetime | None) -> bool:
    """An upgrade takes effect when recorded; a downgrade is recorded when asked for (effective
    at the period end) and takes effect with its `tier_change_applied` event."""
    if kind == "tier_change_applied":
        return True
    return kind == "tier_change" and (effective_at is None or effective_at <= at)


class _Sweep:
    """Walks the history in time order, keeping each customer's MRR and counting movements."""

    def __init__(self, scope: Scope, versions: dict[int, PlanVersion]):
        self.scope = scope
        self.versions = versions
        self.by_membership: dict[int, tuple[int, int, str | None]] = {}  # mrr, member, tier
        self.member_mrr: dict[int, int] = defaultdict(int)
        self.ever_paid: set[int] = set()
        self.month: MonthMetrics | None = None

    def contribution(self, point: _Point) -> tuple[int, str | None]:
        version = self.versions.get(point.version_id)
        if version is None or point.state not in COUNTING_STATES:
            return 0, None
        if self.scope.plan_id is not None and version.plan_id != self.scope.plan_id:
            return 0, None
        return monthly_price(version, self.scope.settings.tax_rate_bp), version.plan.code

    def apply(self, point: _Point) -> None:
        mrr, tier = self.contribution(point)
        old, _, _ = self.by_membership.get(point.membership_id, (0, point.member_id, None))
        self.by_membership[point.membership_id] = (mrr, point.member_id, tier)
        before = self.member_mrr[point.member_id]
        after = before - old + mrr
        self.member_mrr[point.member_id] = after
        if self.month is not None and before != after:
            self._count(point, before, after)
        if after > 0:
            self.ever_paid.add(point.member_id)

    def _count(self, point: _Point, before: int, after: int) -> None:
        m = self.month
        if before == 0:
            if point.member_id in self.ever_paid:
                m.reactivation += after
                m.reactivated_customers += 1
            else:
                m.new += after
                m.new_customers += 1
        elif after == 0:
            if point.paused:
                m.contraction += before
            else:
                m.churn += before
                m.churned_customers += 1
        elif after > before:
            m.expansion += after - before
        else:
            m.contraction += before - after

    def totals(self) -> tuple[int, int]:
        values = [v for v in self.member_mrr.values() if v > 0]
        return sum(values), len(values)

    def by_tier(self) -> tuple[dict[str, int], dict[str, int]]:
        members: dict[str, int] = defaultdict(int)
        mrr: dict[str, int] = defaultdict(int)
        for value, _, tier in self.by_membership.values():
            if tier is not None:
                members[tier] += 1
                mrr[tier] += value
        return dict(sorted(members.items())), dict(sorted(mrr.items()))


def monthly_metrics(scope: Scope) -> list[MonthMetrics]:
    """MRR and its movements, customers and churn, month by month over the scope."""
    periods = scope.periods()
    points, versions = _history(scope, periods[-1].end)
    sweep = _Sweep(scope, versions)
    result = []
    i = 0
    for period in periods:
        sweep.month = None
        while i < len(points) and points[i].at <= period.start:
            sweep.apply(points[i])
            i += 1
        month = MonthMetrics(period, scope.currency)
        month.mrr_start, month.customers_start = sweep.totals()
        sweep.month = month
        while i < len(points) and points[i].at <= period.end:
            sweep.apply(points[i])
            i += 1
        month.mrr_end, month.customers_end = sweep.totals()
        month.active_by_tier, month.mrr_by_tier = sweep.by_tier()
        result.append(month)
    return result


# ---------------------------------------------------------------------------------------------
# The finance dashboard's numbers


def summary(on: date, settings: FinanceSettings) -> dict:
    """Deferred revenue at the end of `on`, what this month recognised and took in so far,
    active members by tier and MRR."""
    scope = Scope(on.replace(day=1), on, settings)
    cur = settings.currency
    recognised = recognised_between(scope.start, scope.end)
    month = monthly_metrics(scope)[-1]
    kinds = dict(
        db.session.execute(
            sa.select(
                Payment.kind,
                sa.func.coalesce(sa.func.sum(Payment.amount_minor), 0),
            )
            .where(Payment.occurred_at > scope.start, Payment.occurred_at <= scope.end)
            .where(sa.or_(Payment.kind != "charge", Payment.status == "succeeded"))
            .group_by(Payment.kind)
        ).all()
    )
    fees, net = db.session.execute(
        sa.select(
            sa.func.coalesce(sa.func.sum(Payment.fee_minor), 0),
            sa.func.coalesce(sa.func.sum(Payment.net_minor), 0),
        ).where(Payment.occurred_at > scope.start, Payment.occurred_at <= scope.end)
    ).one()
    names = dict(
        db.session.execute(
            sa.select(Plan.code, Plan.name).where(Plan.code.in_(list(month.active_by_tier)))
        ).all()
    )

    def money(amount: int) -> dict:
        return Money(int(amount), cur).as_dict()

    return {
        "on": on,
        "month_start": scope.date_from,
        "currency": cur,
        "deferred_revenue": money(deferred_balance(scope.end)),
        "recognised_this_month": {
            "treatments": money(recognised["recognised"]),
            "breakage": money(recognised["breakage"]),
            "total": money(recognised["recognised"] + recognised["breakage"]),
        },
        "payments_this_month": {
            "charges": money(kinds.get("charge", 0)),
            "refunds": money(abs(int(kinds.get("refund", 0)))),
            "disputes": money(abs(int(kinds.get("dispute", 0)))),
            "fees": money(fees),
            "net": money(net),
        },
        "active_members": sum(month.active_by_tier.values()),
        "active_members_by_tier": [
            {
                "tier": tier,
                "name": names.get(tier, tier),
                "members": count,
                "mrr": money(month.mrr_by_tier.get(tier, 0)),
            }
            for tier, count in month.active_by_tier.items()
        ],
        "mrr": money(month.mrr_end),
    }
