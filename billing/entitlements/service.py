"""The ledger's verbs. Every rule about credits lives here: how a period is granted and valued,
which credit a redemption consumes, when credits expire or roll over, what a refund takes back.

Callers pass `now`; nothing here reads the clock. Each verb that writes locks the memberships it
touches (SELECT ... FOR UPDATE on PostgreSQL), so two desks cannot both spend the last credit."""

from __future__ import annotations

import functools
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, joinedload, selectinload

from billing.entitlements.models import Credit, CreditGrant, EntryKind, LedgerEntry, ProductType
from billing.errors import Conflict, InvalidInput, NotFound
from billing.extensions import db
from billing.memberships.models import Membership, State
from billing.money import allocate, div_round_half_up, net_of_tax, tax_on_net
from billing.periods import add_interval
from billing.plans.models import (
    ItemKind,
    PlanItem,
    PlanItemOption,
    PlanKind,
    PlanVersion,
    Treatment,
    UnusedRule,
)
from billing.plans.service import ssp_per_credit
from billing.rows import insert_persistent, returning_ids
from billing.settings import ClinicSettings, clinic_settings

GRANTABLE_STATES = {State.ACTIVE, State.CANCEL_AT_PERIOD_END, State.PAST_DUE}


class InsufficientCredits(Conflict):
    slug, title = "insufficient-credits", "Not enough credits"


class TreatmentNotIncluded(InsufficientCredits):
    """The membership never had a credit for this treatment: not "none left" but "not in it"."""

    slug, title = "treatment-not-included", "Not included in the membership"


@dataclass(frozen=True)
class GrantSource:
    """Why credits are granted: a paid invoice, an upgrade, a gift claim, an admin."""

    ref: str  # unique per source: "invoice:in_123", "upgrade:evt_9", "admin:key:1:2026-03"
    actor: str
    invoice_id: int | None = None
    net_amount_minor: int | None = None  # the fee, ex-tax, to allocate; None: the version's price
    reason: str = ""


@dataclass
class Lot:
    """A credit with what is left of it, derived from its ledger entries.

    `credit` is the Credit, or, for a treatment's lots (`lots(..., treatment_id=)`), the credit's
    row: its columns and its plan item's `beneficiary_limit`, read as plain values (the desk's
    hot path; nothing on it is loaded later)."""

    credit: Credit | sa.Row
    remaining: int
    value_minor: int
    expires_at: datetime

    def covers(self, treatment_id: int) -> bool:
        if self.credit.treatment_id is not None:
            return self.credit.treatment_id == treatment_id
        item = self.credit.plan_item
        return item is not None and any(o.treatment_id == treatment_id for o in item.options)

    @property
    def is_choice(self) -> bool:
        return self.credit.treatment_id is None

    def is_live(self, now: datetime) -> bool:
        return self.remaining > 0 and self.expires_at > now


@dataclass
class Redemption:
    entries: list[LedgerEntry] = field(default_factory=list)

    @property
    def quantity(self) -> int:
        return -sum(e.quantity for e in self.entries)

    @property
    def value_minor(self) -> int:
        return -sum(e.value_minor for e in self.entries)


# ---------------------------------------------------------------------------------------------
# Reading the ledger


_LOCKED = "billing.locked_memberships"


@sa.event.listens_for(Session, "after_transaction_end")
def _forget_locks_at_end(session: Session, transaction) -> None:
    """Row locks last until the transaction ends: then forget what we held."""
    if transaction.parent is None:
        session.info.pop(_LOCKED, None)


@sa.event.listens_for(Session, "after_soft_rollback")
def _forget_locks_on_rollback(session: Session, _previous) -> None:
    """A savepoint rolled back releases the row locks taken inside it: forget them all, so the
    next locker locks (again)."""
    session.info.pop(_LOCKED, None)


def lock_memberships(ids: Iterable[int]) -> None:
    """Serialise writers per membership (in id order, so two lockers never deadlock).

    The locked rows are re-read (populate_existing), so a writer that waited for the lock acts
    on what the previous writer committed, not on what it had read before. Rows this
    transaction already holds are not locked (nor re-read) again: nobody else can have changed
    them since."""
    held = db.session.info.setdefault(_LOCKED, set())
    ids = sorted(set(ids) - held)
    if ids:
        db.session.execute(
            sa.select(Membership)
            .where(Membership.id.in_(ids))
            .order_by(Membership.id)
            .with_for_update()
            .execution_options(populate_existing=True)
        ).all()
        db.session.info.setdefault(_LOCKED, set()).update(ids)


def lock_selected(query: sa.Select, params: dict | None = None) -> list[Membership]:
    """Read and lock, in one statement, the memberships a query selects (in id order, as
    lock_memberships does), and note them as held. For a hot path that would otherwise read
    the rows and then lock them: under READ COMMITTED a row changed while we waited is re-checked
    against the query's conditions, so what comes back is what is locked, as it now is. The
    query may join eager loads of collections (a membership's catalogue): each row once."""
    rows = list(db.session.execute(_locking(query), params).unique().scalars())
    note_locked(m.id for m in rows)
    return rows


def note_locked(ids: Iterable[int]) -> None:
    """Note memberships as held by this transaction, for a statement that locked them itself
    (with other rows: the desk's visit), so no later writer locks or re-reads them again."""
    db.session.info.setdefault(_LOCKED, set()).update(ids)


@functools.lru_cache(maxsize=32)
def _locking(query: sa.Select) -> sa.Select:
    """The locking form of a (prebuilt, so cached by identity) query."""
    return (
        query.order_by(None)  # whatever order it had: locks are taken in id order
        .order_by(Membership.id)
        .with_for_update(of=Membership)
        .execution_options(populate_existing=True)
    )


def holds_locks(ids: Iterable[int]) -> bool:
    """Does this transaction already hold the row locks of all these memberships?"""
    return set(ids) <= db.session.info.get(_LOCKED, set())


def _memberships(ids: Iterable[int]) -> dict[int, Membership]:
    """These memberships, from the session when it has them (a locked row was just read),
    else in one query."""
    found: dict[int, Membership] = {}
    missing = []
    for mid in set(ids):
        m = db.session.identity_map.get(db.session.identity_key(Membership, mid))
        if m is not None and not sa.inspect(m).expired:
            found[mid] = m
        else:
            missing.append(mid)
    if missing:
        found.update(
            (m.id, m)
            for m in db.session.execute(
                sa.select(Membership).where(Membership.id.in_(missing))
            ).scalars()
        )
    return found


def lots(
    membership_ids: Sequence[int],
    *,
    include_empty: bool = False,
    treatment_id: int | None = None,
) -> list[Lot]:
    """Every credit of these memberships with its derived balance, value and expiry; with
    `treatment_id`, only the credits that cover that treatment (filtered in SQL).

    One query: the ledger summed per credit, joined to the credit and its plan item. A
    treatment's lots come as rows, read on the session's connection, not as Credit objects: the
    desk reads them on every redemption, and the ORM's part of that read cost more than the
    statement (see Lot)."""
    if not membership_ids:
        return []
    params = {"membership_ids": list(membership_ids), "treatment_id": treatment_id}
    if treatment_id is None:
        rows = db.session.execute(_lots_query(include_empty), params).all()
        result = [
            Lot(credit=credit, remaining=int(qty), value_minor=int(val), expires_at=exp)
            for credit, qty, val, exp in rows
        ]
    else:
        db.session.flush()  # read on the connection, which does not autoflush as the session does
        rows = db.session.connection().execute(_treatment_lots_query(include_empty), params).all()
        result = [
            Lot(
                credit=row,
                remaining=int(row.remaining),
                value_minor=int(row.value),
                expires_at=row.lot_expires_at,
            )
            for row in rows
        ]
    result.sort(key=_consumption_order)
    return result


def _ledger_sums(include_empty: bool) -> sa.Subquery:
    """Each credit of the memberships (bound: `membership_ids`) with its ledger summed."""
    sums = (
        sa.select(
            LedgerEntry.credit_id.label("credit_id"),
            sa.func.sum(LedgerEntry.quantity).label("remaining"),
            sa.func.sum(LedgerEntry.value_minor).label("value"),
            sa.func.max(LedgerEntry.expires_at).label("expires_at"),
        )
        .where(LedgerEntry.membership_id.in_(sa.bindparam("membership_ids", expanding=True)))
        .group_by(LedgerEntry.credit_id)
    )
    if not include_empty:
        sums = sums.having(sa.func.sum(LedgerEntry.quantity) > 0)
    return sums.subquery()


@functools.cache
def _lots_query(include_empty: bool) -> sa.Select:
    """lots()'s statement, built once per shape with bound parameters: building and
    fingerprinting it cost more than running it."""
    sums = _ledger_sums(include_empty)
    return (
        sa.select(Credit, sums.c.remaining, sums.c.value, sums.c.expires_at)
        .join(sums, sums.c.credit_id == Credit.id)
        .options(joinedload(Credit.plan_item).selectinload(PlanItem.options))
    )


@functools.cache
def _treatment_lots_query(include_empty: bool) -> sa.Select:
    """The lots that cover one treatment (bound: `treatment_id`), as rows: the credit's
    columns, its item's household limit and the ledger's sums."""
    sums = _ledger_sums(include_empty)
    credits, items = Credit.__table__, PlanItem.__table__
    treatment_id = sa.bindparam("treatment_id")
    return (
        sa.select(
            credits,
            items.c.beneficiary_limit,
            sums.c.remaining,
            sums.c.value,
            sums.c.expires_at.label("lot_expires_at"),
        )
        .join_from(credits, sums, sums.c.credit_id == credits.c.id)
        .outerjoin(items, items.c.id == credits.c.plan_item_id)
        .where(
            sa.or_(
                credits.c.treatment_id == treatment_id,
                sa.and_(
                    credits.c.treatment_id.is_(None),
                    sa.exists().where(
                        PlanItemOption.item_id == credits.c.plan_item_id,
                        PlanItemOption.treatment_id == treatment_id,
                    ),
                ),
            )
        )
    )


def _consumption_order(lot: Lot):
    # The credit that expires first is used first; on a tie a single-treatment credit before a
    # choice credit (which keeps the client's options open), then the oldest.
    return (lot.expires_at, 1 if lot.is_choice else 0, lot.credit.id)


def live_lots(membership_ids: Sequence[int], now: datetime, treatment_id: int | None = None):
    return [lot for lot in lots(membership_ids, treatment_id=treatment_id) if lot.is_live(now)]


def balance(membership_ids: Sequence[int], treatment_id: int, now: datetime) -> int:
    return sum(lot.remaining for lot in live_lots(membership_ids, now, treatment_id))


# ---------------------------------------------------------------------------------------------
# Granting


def version_net_price(version: PlanVersion, settings: ClinicSettings) -> int:
    if version.tax_inclusive:
        return net_of_tax(version.price_minor, settings.tax_rate_bp)
    return version.price_minor


def credit_expiry(version: PlanVersion, period_start: datetime, period_end: datetime, settings):
    """Series credits last a fixed time from purchase; tier credits until their period ends
    (or, with a slower grant cadence, until the cadence's last billing period ends)."""
    if version.plan.kind == PlanKind.SERIES and version.credit_validity_days:
        return period_start + timedelta(days=version.credit_validity_days)
    if version.grant_every_periods > 1:
        return add_interval(
            period_start,
            version.interval,
            version.interval_count * version.grant_every_periods,
            settings.tz,
        )
    return period_end


@dataclass(frozen=True)
class _GrantPlan:
    """What one grant writes, worked out before anything is written."""

    version: PlanVersion
    lines: list[tuple[PlanItem, int]]
    ssps: list[int]
    shares: list[int]
    net: int
    expires_at: datetime
    product_type: str


def _plan_grant(
    membership: Membership,
    period_start: datetime,
    period_end: datetime,
    source: GrantSource,
    items: Sequence[tuple[PlanItem, int]] | None,
    settings: ClinicSettings,
) -> _GrantPlan:
    """The rules of a grant: a grantable membership, its items (or those given), the net fee
    allocated by standalone selling price to the cent, the credits' expiry. Raises before
    anything is written."""
    if membership.state not in GRANTABLE_STATES:
        raise Conflict(
            f"Membership {membership.id} is {membership.state}: it cannot be granted credits.",
            slug="membership-not-grantable",
        )
    version = membership.plan_version
    lines = list(items) if items is not None else [(i, i.quantity) for i in version.items]
    lines = [(item, qty) for item, qty in lines if qty > 0]  # an empty line gets no share
    net = source.net_amount_minor
    if net is None:
        net = version_net_price(version, settings)
    if net < 0:
        raise InvalidInput("The amount to allocate cannot be negative.")
    if not lines:
        # A tier with no credits (a discount-only tier) still records its paid period, once;
        # there is nothing for its fee to be deferred against.
        if source.net_amount_minor:
            raise InvalidInput(
                "There is nothing to allocate the amount to: no item with a quantity above zero."
            )
        net = 0
    ssps = [ssp_per_credit(item) for item, _ in lines]
    shares = allocate(net, [ssp * qty for ssp, (_, qty) in zip(ssps, lines, strict=True)])
    expires_at = credit_expiry(version, period_start, period_end, settings)
    product_type = ProductType.SERIES if version.plan.kind == PlanKind.SERIES else ProductType.TIER
    if membership.source == "gift":
        product_type = ProductType.GIFT
    return _GrantPlan(version, lines, ssps, shares, net, expires_at, product_type)


def _grant_row(
    membership: Membership,
    period_start: datetime,
    period_end: datetime,
    source: GrantSource,
    plan: _GrantPlan,
    now: datetime,
) -> dict:
    return {
        "membership_id": membership.id,
        "period_start": period_start,
        "period_end": period_end,
        "source_ref": source.ref,
        "invoice_id": source.invoice_id,
        "plan_version_id": plan.version.id,
        "net_amount_minor": plan.net,
        "currency": plan.version.currency,
        "actor": source.actor,
        "reason": source.reason,
        "created_at": now,
    }


def _credit_rows(
    grant_id: int,
    membership: Membership,
    period_start: datetime,
    period_end: datetime,
    plan: _GrantPlan,
    now: datetime,
) -> list[dict]:
    return [
        {
            "grant_id": grant_id,
            "membership_id": membership.id,
            "plan_item_id": item.id,
            "treatment_id": item.treatment_id if item.kind == ItemKind.TREATMENT else None,
            "product_type": plan.product_type,
            "unit_label": item.treatment.unit_label if item.treatment else "session",
            "quantity": qty,
            "ssp_unit_minor": ssp,
            "allocated_minor": share,
            "currency": plan.version.currency,
            "period_start": period_start,
            "period_end": period_end,
            "expires_at": plan.expires_at,
            "created_at": now,
        }
        for (item, qty), ssp, share in zip(plan.lines, plan.ssps, plan.shares, strict=True)
    ]


def _grant_entry_row(credit: dict, credit_id: int, source: GrantSource, now: datetime) -> dict:
    """The `grant` ledger entry of a credit row (what _entry would make for it)."""
    return {
        "credit_id": credit_id,
        "membership_id": credit["membership_id"],
        "kind": EntryKind.GRANT,
        "quantity": credit["quantity"],
        "value_minor": credit["allocated_minor"],
        "currency": credit["currency"],
        "expires_at": credit["expires_at"],
        "period_start": credit["period_start"],
        "period_end": credit["period_end"],
        "actor": source.actor,
        "created_at": now,
        "reason": source.reason or f"granted for {source.ref}",
        "invoice_id": source.invoice_id,
    }


def grant_period(
    membership: Membership,
    period_start: datetime,
    period_end: datetime,
    source: GrantSource,
    *,
    now: datetime,
    items: Sequence[tuple[PlanItem, int]] | None = None,
    settings: ClinicSettings | None = None,
    commit: bool = True,
    found_none: bool = False,
) -> CreditGrant:
    """Grant a period's credits once per (membership, period, source); a repeat returns the first.

    The period's net fee is allocated across the credits by standalone selling price, to the
    cent, and stored with them: what a credit is worth never changes after it is granted.

    `found_none`: the caller holds the membership's lock and has just looked for this grant and
    found none (record_paid_period, on every paid invoice): it is not looked for again, and no
    race can be lost (every granter takes that lock first), so it is inserted without a
    savepoint."""
    settings = settings or clinic_settings()
    if period_end <= period_start:
        raise InvalidInput("A period must end after it starts.")
    found_none = found_none and holds_locks([membership.id])
    if not found_none:
        if not holds_locks([membership.id]):
            existing = _find_grant(membership.id, period_start, source.ref)
            if existing is not None:  # a repeat: no need to wait for the lock
                return existing
            lock_memberships([membership.id])
        existing = _find_grant(membership.id, period_start, source.ref)
        if existing is not None:
            return existing
    plan = _plan_grant(membership, period_start, period_end, source, items, settings)
    row = _grant_row(membership, period_start, period_end, source, plan, now)
    if found_none:
        grant = insert_persistent(CreditGrant(**row))
    else:
        grant = CreditGrant(**row)
        try:
            with db.session.begin_nested():
                db.session.add(grant)
                db.session.flush()
        except IntegrityError:  # a concurrent delivery of the same source won the race
            existing = _find_grant(membership.id, period_start, source.ref)
            if existing is None:
                raise
            return existing
    credit_rows = _credit_rows(grant.id, membership, period_start, period_end, plan, now)
    _insert_credits(credit_rows, [source] * len(credit_rows), now)
    if commit:
        db.session.commit()
    return grant


@dataclass(frozen=True)
class PeriodToGrant:
    """One membership's paid period, for grant_periods."""

    membership: Membership
    period_start: datetime
    period_end: datetime
    source: GrantSource


def grant_periods(
    batch: Sequence[PeriodToGrant],
    *,
    now: datetime,
    settings: ClinicSettings | None = None,
    commit: bool = True,
) -> list[CreditGrant]:
    """grant_period for many memberships at once (a renewal day): the same rules, the same rows,
    the same idempotency (one grant per membership, period and source; a repeat returns the
    first), in a handful of statements instead of a dozen per membership.

    All or nothing: a membership that cannot be granted raises before anything is written.
    Returns the grants in the order of `batch`."""
    if not batch:
        return []
    settings = settings or clinic_settings()
    for p in batch:
        if p.period_end <= p.period_start:
            raise InvalidInput("A period must end after it starts.")
    lock_memberships(p.membership.id for p in batch)
    _load_versions([p.membership for p in batch])
    existing = _find_grants(batch)
    keys = [(p.membership.id, p.period_start, p.source.ref) for p in batch]
    todo: dict[tuple, tuple[PeriodToGrant, _GrantPlan]] = {}
    for key, p in zip(keys, batch, strict=True):
        if key not in existing and key not in todo:
            todo[key] = (
                p,
                _plan_grant(p.membership, p.period_start, p.period_end, p.source, None, settings),
            )
    if todo:
        table = CreditGrant.__table__
        rows = [
            _grant_row(p.membership, p.period_start, p.period_end, p.source, plan, now)
            for p, plan in todo.values()
        ]
        try:
            with db.session.begin_nested():
                grant_ids = _insert_returning_ids(table, rows)
        except IntegrityError:  # a concurrent grant won a race: one at a time, each idempotent
            result = [
                grant_period(
                    p.membership,
                    p.period_start,
                    p.period_end,
                    p.source,
                    now=now,
                    settings=settings,
                    commit=False,
                )
                for p in batch
            ]
            if commit:
                db.session.commit()
            return result
        by_id = {
            g.id: g
            for g in db.session.execute(
                sa.select(CreditGrant).where(CreditGrant.id.in_(grant_ids))
            ).scalars()
        }
        grants = [by_id[gid] for gid in grant_ids]
        credit_rows, sources = [], []
        for grant, (p, plan) in zip(grants, todo.values(), strict=True):
            existing[(p.membership.id, p.period_start, p.source.ref)] = grant
            rows = _credit_rows(grant.id, p.membership, p.period_start, p.period_end, plan, now)
            credit_rows.extend(rows)
            sources.extend([p.source] * len(rows))
        _insert_credits(credit_rows, sources, now)
    result = [existing[key] for key in keys]
    if commit:
        db.session.commit()
    return result


def _insert_credits(credit_rows: list[dict], sources: list[GrantSource], now: datetime) -> None:
    """Credits and their `grant` entries, a few statements for any number of them (executemany;
    the credits' ids come back in the order of the rows)."""
    if not credit_rows:
        return
    conn = db.session.connection()
    credit_ids = _insert_returning_ids(Credit.__table__, credit_rows)
    conn.execute(
        _append_statement(),
        [
            _grant_entry_row(row, cid, source, now)
            for row, cid, source in zip(credit_rows, credit_ids, sources, strict=True)
        ],
    )


# Up to this many rows, one INSERT ... RETURNING (a period's few credits on every paid invoice).
_FEW_ROWS = 50


def _insert_returning_ids(table: sa.Table, rows: list[dict]) -> list[int]:
    """Insert the rows; their ids, in the order of the rows.

    A few rows: one INSERT ... RETURNING. Many on PostgreSQL: the ids are drawn from the table's
    sequence first (one statement) and the rows sent with the driver's pipelined executemany: a
    multi-row INSERT ... RETURNING of thousands of rows spends more time building its SQL text
    (a placeholder per value) than the database spends running it (bench/grant_scale.py: most
    of a renewal batch)."""
    conn = db.session.connection()
    if conn.dialect.name != "postgresql" or len(rows) <= _FEW_ROWS:
        return [row[0] for row in conn.execute(returning_ids(table), rows)]
    ids = list(
        conn.execute(
            sa.text("SELECT nextval(pg_get_serial_sequence(:t, 'id')) FROM generate_series(1, :n)"),
            {"t": table.name, "n": len(rows)},
        ).scalars()
    )
    conn.execute(table.insert(), [{**row, "id": i} for row, i in zip(rows, ids, strict=True)])
    return ids


def _load_versions(memberships: Sequence[Membership]) -> None:
    """The plan versions of these memberships with their plan, items, treatments and options,
    in a few queries for all of them (instead of lazy loads per membership)."""
    ids = {m.plan_version_id for m in memberships}
    db.session.execute(
        sa.select(PlanVersion)
        .where(PlanVersion.id.in_(ids))
        .options(
            joinedload(PlanVersion.plan),
            selectinload(PlanVersion.items).options(
                joinedload(PlanItem.treatment),
                selectinload(PlanItem.options).joinedload(PlanItemOption.treatment),
            ),
        )
    ).unique().all()


def _find_grants(batch: Sequence[PeriodToGrant]) -> dict[tuple, CreditGrant]:
    """The grants already made for these (membership, period, source), keyed so."""
    found: dict[tuple, CreditGrant] = {}
    ids = sorted({p.membership.id for p in batch})
    refs = sorted({p.source.ref for p in batch})
    for i in range(0, len(ids), 1000):
        for grant in db.session.execute(
            sa.select(CreditGrant).where(
                CreditGrant.membership_id.in_(ids[i : i + 1000]),
                CreditGrant.source_ref.in_(refs),
            )
        ).scalars():
            found[(grant.membership_id, grant.period_start, grant.source_ref)] = grant
    return found


def _find_grant(membership_id: int, period_start: datetime, ref: str) -> CreditGrant | None:
    return db.session.execute(
        _find_grant_query(),
        {"membership_id": membership_id, "period_start": period_start, "ref": ref},
    ).scalar_one_or_none()


@functools.cache
def _find_grant_query() -> sa.Select:
    """Built once (every paid invoice looks for its grant)."""
    return sa.select(CreditGrant).where(
        CreditGrant.membership_id == sa.bindparam("membership_id"),
        CreditGrant.period_start == sa.bindparam("period_start"),
        CreditGrant.source_ref == sa.bindparam("ref"),
    )


def _entry(
    credit: Credit,
    kind: EntryKind,
    quantity: int,
    value: int,
    expires_at: datetime,
    now: datetime,
    actor: str,
    **fields,
) -> LedgerEntry:
    return LedgerEntry(
        credit_id=credit.id,
        membership_id=credit.membership_id,
        kind=kind,
        quantity=quantity,
        value_minor=value,
        currency=credit.currency,
        expires_at=expires_at,
        period_start=credit.period_start,
        period_end=credit.period_end,
        actor=actor,
        created_at=now,
        **fields,
    )


def granted_this_period(membership: Membership, period_start: datetime) -> dict[tuple, int]:
    """What this membership was granted for the period, keyed like `item_key`."""
    rows = db.session.execute(
        sa.select(Credit)
        .join(CreditGrant, Credit.grant_id == CreditGrant.id)
        .where(CreditGrant.membership_id == membership.id, CreditGrant.period_start == period_start)
        .options(selectinload(Credit.plan_item).selectinload(PlanItem.options))
    ).scalars()
    totals: dict[tuple, int] = defaultdict(int)
    for credit in rows:
        if credit.plan_item is not None:
            totals[item_key(credit.plan_item)] += credit.quantity
    return totals


def item_key(item: PlanItem) -> tuple:
    """Items of two versions are 'the same' when they cover the same treatments."""
    if item.kind == ItemKind.CHOICE:
        return ("choice", frozenset(o.treatment_id for o in item.options))
    return ("treatment", item.treatment_id)


def upgrade_difference(
    membership: Membership, new_version: PlanVersion, period_start: datetime
) -> list[tuple[PlanItem, int]]:
    """What the new version includes beyond what this period already granted."""
    already = granted_this_period(membership, period_start)
    extra = []
    for item in new_version.items:
        missing = item.quantity - already.get(item_key(item), 0)
        if missing > 0:
            extra.append((item, missing))
    return extra


# ---------------------------------------------------------------------------------------------
# Spending


def redeem(
    *,
    membership_ids: Sequence[int],
    treatment: Treatment,
    quantity: int,
    member_id: int,
    now: datetime,
    actor: str,
    visit_line_id: int | None = None,
    reason: str = "",
    commit: bool = True,
    covering: Sequence[Lot] | None = None,
    unwritten: bool = False,
) -> Redemption:
    """Consume `quantity` credits for a treatment, the credits that expire first first.

    All or nothing: if the live balance is short, InsufficientCredits and nothing is written.
    `covering`: the lots for this treatment the caller has just read while holding the locks
    of these memberships (checkout has them for its rules), so they are not read again.
    `unwritten`: the entries are returned NOT written, for the caller to write with what they
    belong to (checkout: once the line is, with `append`; commit must be False)."""
    if not isinstance(quantity, int) or isinstance(quantity, bool) or quantity <= 0:
        raise InvalidInput("The quantity to redeem must be a whole number above zero.")
    if covering is not None and holds_locks(membership_ids):
        ids = set(membership_ids)
        candidates = [
            lot for lot in covering if lot.is_live(now) and lot.credit.membership_id in ids
        ]
    else:
        lock_memberships(membership_ids)
        candidates = live_lots(membership_ids, now, treatment.id)
    memberships = _memberships(membership_ids)
    usable = [lot for lot in candidates if _beneficiary_room(lot, memberships, member_id) > 0]
    available = sum(
        min(lot.remaining, _beneficiary_room(lot, memberships, member_id)) for lot in usable
    )
    if available < quantity and not _ever_covered(membership_ids, treatment.id):
        raise TreatmentNotIncluded(
            f"{treatment.name} is not included in this membership: it never had a credit for "
            "it. Charge it as a paid treatment instead.",
            available=0,
            treatment_id=treatment.id,
        )
    if available < quantity:
        unit = treatment.unit_label if treatment.in_units else "session"
        have = f"{available} {unit}{'' if available == 1 else 's'}"
        on_the_membership = sum(lot.remaining for lot in candidates)
        if on_the_membership >= quantity:
            # The credits are there, but this household member has used their share.
            raise InsufficientCredits(
                f"The household limit is reached for {treatment.name}: this member may use "
                f"{have} more this period, {quantity} asked ({on_the_membership} left on the "
                "membership for its other members).",
                slug="beneficiary-limit",
                available=available,
            )
        raise InsufficientCredits(
            f"Not enough credits for {treatment.name}: {have} left, {quantity} asked.",
            available=available,
        )
    result = Redemption()
    wanted = quantity
    for lot in usable:
        if wanted == 0:
            break
        take = min(wanted, lot.remaining, _beneficiary_room(lot, memberships, member_id))
        if take <= 0:
            continue
        value = (
            lot.value_minor
            if take == lot.remaining
            else div_round_half_up(lot.value_minor * take, lot.remaining)
        )
        entry = _entry(
            lot.credit,
            EntryKind.REDEEM,
            -take,
            -value,
            lot.expires_at,
            now,
            actor,
            member_id=member_id,
            reason=reason or f"redeemed: {treatment.name}",
            visit_line_id=visit_line_id,
        )
        if not unwritten:
            db.session.add(entry)
        result.entries.append(entry)
        wanted -= take
    if unwritten:
        return result
    db.session.flush()
    if commit:
        db.session.commit()
    return result


ENTRIES = LedgerEntry.__table__
_ENTRY_COLUMNS = [c.key for c in ENTRIES.c if c.key != "id"]


def entry_rows(entries: Sequence[LedgerEntry]) -> list[dict]:
    """New entries as rows, for the caller that writes them in the statement that writes what
    they belong to (the desk's hot path: `redeem(unwritten=True)` hands its entries to checkout,
    which writes them with the line, rows.insert_with_children). Append only: rows to insert,
    nothing that could change an entry once written."""
    return [{key: getattr(entry, key) for key in _ENTRY_COLUMNS} for entry in entries]


@functools.cache
def _append_statement() -> sa.Insert:
    return ENTRIES.insert()


def _ever_covered(membership_ids: Sequence[int], treatment_id: int) -> bool:
    """Did any credit of these memberships, live, used up or expired, ever cover the treatment,
    or does their tier include it (a membership waiting for its first payment has no credit)?"""
    if lots(membership_ids, include_empty=True, treatment_id=treatment_id):
        return True
    versions = db.session.execute(
        sa.select(PlanVersion)
        .join(Membership, Membership.plan_version_id == PlanVersion.id)
        .where(Membership.id.in_(list(membership_ids)))
    ).scalars()
    return any(
        t.id == treatment_id
        for version in versions
        for item in version.items
        for t in item.treatments
    )


def _beneficiary_room(lot: Lot, memberships: dict[int, Membership], member_id: int) -> int:
    """A household partner may be limited to N credits of an item per period. `lot`: one of a
    treatment's lots (its credit a row that carries the item's limit)."""
    membership = memberships[lot.credit.membership_id]
    limit = lot.credit.beneficiary_limit
    if member_id == membership.member_id or limit is None:
        return lot.remaining
    used = -(
        db.session.execute(
            sa.select(sa.func.coalesce(sa.func.sum(LedgerEntry.quantity), 0))
            .join(Credit, LedgerEntry.credit_id == Credit.id)
            .where(
                Credit.membership_id == membership.id,
                Credit.plan_item_id == lot.credit.plan_item_id,
                Credit.period_start == lot.credit.period_start,
                LedgerEntry.member_id == member_id,
                LedgerEntry.kind.in_([EntryKind.REDEEM, EntryKind.REVERSE]),
            )
        ).scalar_one()
    )
    return max(0, limit - used)


def reverse(
    entry: LedgerEntry, *, actor: str, reason: str, now: datetime, commit: bool = True
) -> LedgerEntry:
    """Undo a redemption with an opposite entry (never a delete); each redemption once."""
    if entry.kind != EntryKind.REDEEM:
        raise InvalidInput("Only a redemption can be reversed.")
    if not reason:
        raise InvalidInput("A reversal needs a reason.", errors={"reason": ["required"]})
    lock_memberships([entry.membership_id])
    already, clawed, current_expiry = db.session.execute(
        _reversal_facts_query(),
        {
            "entry_id": entry.id,
            "credit_id": entry.credit_id,
            "grant_id": entry.credit.grant_id,
            "since": entry.created_at,
        },
    ).one()
    if already:
        raise Conflict("This redemption was already reversed.", slug="already-reversed")
    if clawed:
        # The invoice behind this credit was refunded after the treatment, and the member now
        # owes for it: handing the credit back would give away a refunded credit. An admin
        # settles it on the member's receivable instead.
        raise Conflict(
            "This credit's invoice was refunded after the treatment: the redemption cannot be "
            "reversed. Settle it on the member's outstanding balance instead.",
            slug="credit-clawed-back",
        )
    back = _entry(
        entry.credit,
        EntryKind.REVERSE,
        -entry.quantity,
        -entry.value_minor,
        current_expiry,
        now,
        actor,
        visit_line_id=entry.visit_line_id,
        member_id=entry.member_id,
        reverses_entry_id=entry.id,
        reason=reason,
        dedupe_key=f"reverse:{entry.id}",
    )
    db.session.add(back)
    db.session.flush()
    if commit:
        db.session.commit()
    return back


@functools.cache
def _reversal_facts_query() -> sa.Select:
    """What reverse() must know, in one statement: is the redemption reversed already, was its
    grant clawed back after it, and the credit's expiry now."""
    reversed_ = sa.select(LedgerEntry.id).where(
        LedgerEntry.reverses_entry_id == sa.bindparam("entry_id")
    )
    same_grant = sa.select(Credit.id).where(Credit.grant_id == sa.bindparam("grant_id"))
    clawed = sa.select(LedgerEntry.id).where(
        LedgerEntry.credit_id.in_(same_grant),
        LedgerEntry.kind == EntryKind.CLAWBACK,
        LedgerEntry.created_at >= sa.bindparam("since", type_=LedgerEntry.created_at.type),
    )
    expiry = sa.select(sa.func.max(LedgerEntry.expires_at)).where(
        LedgerEntry.credit_id == sa.bindparam("credit_id")
    )
    return sa.select(
        reversed_.limit(1).scalar_subquery(),
        clawed.limit(1).scalar_subquery(),
        expiry.scalar_subquery().label("expires_at"),
    )


# ---------------------------------------------------------------------------------------------
# Time passing: expiry, rollover, pauses


def expire_unused(
    membership: Membership,
    *,
    now: datetime,
    actor: str = "system:expire_credits",
    settings: ClinicSettings | None = None,
    commit: bool = True,
) -> list[LedgerEntry]:
    """Credits past their expiry either roll over (by the tier's rule) or expire as breakage.

    Safe to run late or twice: it only acts on credits whose balance is still above zero and
    whose expiry has passed, under the membership's lock. A paused membership's credits wait:
    its expiries move when it resumes."""
    settings = settings or clinic_settings()
    if membership.state == State.PAUSED:
        return []
    lock_memberships([membership.id])
    version = membership.plan_version
    written: list[LedgerEntry] = []
    carried_by_item: dict[tuple, int] = defaultdict(int)
    for lot in lots([membership.id]):
        if lot.expires_at > now:
            continue
        # A run that comes late may find a credit whose next expiry has also passed: it rolls
        # over period by period (each counts towards the tier's limit) and expires if it still
        # ends in the past, so nothing past its expiry survives a run.
        carry, expiries = 0, []
        left = _rollovers_left(lot, membership, version)
        expiry = lot.expires_at
        while left and expiry <= now:
            expiry = add_interval(expiry, version.interval, version.interval_count, settings.tz)
            expiries.append(expiry)
            left -= 1
        if expiries and expiry > now:
            cap = version.rollover_cap
            key = (
                item_key(lot.credit.plan_item)
                if lot.credit.plan_item
                else ("credit", lot.credit.id)
            )
            room = lot.remaining if cap is None else max(0, cap - carried_by_item[key])
            carry = min(lot.remaining, room)
            carried_by_item[key] += carry
        if carry:
            written.extend(
                _entry(
                    lot.credit,
                    EntryKind.ROLLOVER,
                    0,
                    0,
                    new_expiry,
                    now,
                    actor,
                    reason=f"{carry} rolled over to {new_expiry.date().isoformat()}",
                )
                for new_expiry in expiries
            )
        excess = lot.remaining - carry
        if excess:
            value = (
                lot.value_minor
                if carry == 0
                else div_round_half_up(lot.value_minor * excess, lot.remaining)
            )
            written.append(
                _entry(
                    lot.credit,
                    EntryKind.EXPIRE,
                    -excess,
                    -value,
                    lot.expires_at,
                    now,
                    actor,
                    reason="expired unused",
                )
            )
    db.session.add_all(written)
    db.session.flush()
    if commit:
        db.session.commit()
    return written


def _rollovers_left(lot: Lot, membership: Membership, version: PlanVersion) -> int:
    """How many more periods this credit may still roll over by the tier's rule."""
    if lot.credit.product_type != ProductType.TIER or membership.state == State.CANCELED:
        return 0
    if version.unused_rule != UnusedRule.ROLLOVER:
        return 0
    times = db.session.execute(
        sa.select(sa.func.count()).where(
            LedgerEntry.credit_id == lot.credit.id, LedgerEntry.kind == EntryKind.ROLLOVER
        )
    ).scalar_one()
    return max(0, version.rollover_max_periods - times)


def end_all_credits(
    membership: Membership, *, now: datetime, actor: str, reason: str, commit: bool = True
) -> list[LedgerEntry]:
    """An immediate cancellation forfeits what is left: each live credit expires now (breakage)."""
    lock_memberships([membership.id])
    written = [
        _entry(
            lot.credit,
            EntryKind.EXPIRE,
            -lot.remaining,
            -lot.value_minor,
            lot.expires_at,
            now,
            actor,
            reason=reason,
        )
        for lot in lots([membership.id])
    ]
    db.session.add_all(written)
    db.session.flush()
    if commit:
        db.session.commit()
    return written


def extend_for_pause(
    membership: Membership, *, paused_for: timedelta, now: datetime, actor: str, commit: bool = True
) -> list[LedgerEntry]:
    """A pause freezes the clock on live credits: their expiry moves later by the pause's length.

    Only credits still live when the pause began move: one that had already expired stays
    expired (expire_unused deals with it)."""
    if paused_for <= timedelta(0):
        return []
    lock_memberships([membership.id])
    paused_at = now - paused_for
    written = [
        _entry(
            lot.credit,
            EntryKind.ADJUST,
            0,
            0,
            lot.expires_at + paused_for,
            now,
            actor,
            reason=f"expiry extended by the pause ({paused_for.days} days)",
        )
        for lot in lots([membership.id])
        if lot.expires_at > paused_at
    ]
    db.session.add_all(written)
    db.session.flush()
    if commit:
        db.session.commit()
    return written


def honour_expired(
    lot: Lot, quantity: int, *, until: datetime, actor: str, reason: str, now: datetime
) -> LedgerEntry:
    """An admin honours an expired credit: an `adjust` entry moves its expiry to `until`, and
    puts back what the expiry job already wrote off (at no deferred value: that revenue was
    already recognised as breakage). Does not commit: it is part of the checkout's write."""
    back = 0
    if lot.remaining == 0:
        written_off = -db.session.execute(
            sa.select(sa.func.coalesce(sa.func.sum(LedgerEntry.quantity), 0)).where(
                LedgerEntry.credit_id == lot.credit.id, LedgerEntry.kind == EntryKind.EXPIRE
            )
        ).scalar_one()
        back = min(quantity, int(written_off))
    entry = _entry(
        lot.credit,
        EntryKind.ADJUST,
        back,
        0,
        until,
        now,
        actor,
        reason=f"expired credit honoured: {reason}",
    )
    db.session.add(entry)
    db.session.flush()
    return entry


def adjust(
    credit: Credit, delta: int, *, actor: str, reason: str, now: datetime, commit: bool = True
) -> LedgerEntry:
    """An admin's correction of a credit's quantity, with a reason; never below zero."""
    if not reason:
        raise InvalidInput("An adjustment needs a reason.", errors={"reason": ["required"]})
    if delta == 0:
        raise InvalidInput("An adjustment must change the quantity.")
    lock_memberships([credit.membership_id])
    lot = next(
        (x for x in lots([credit.membership_id], include_empty=True) if x.credit.id == credit.id),
        None,
    )
    if lot is None:
        raise NotFound(f"No credit {credit.id}.")
    if lot.remaining + delta < 0:
        raise InvalidInput(f"Only {lot.remaining} left on this credit; cannot remove {-delta}.")
    value = 0
    if delta < 0:
        value = -(
            lot.value_minor
            if -delta == lot.remaining
            else div_round_half_up(lot.value_minor * -delta, lot.remaining)
        )
    entry = _entry(
        credit, EntryKind.ADJUST, delta, value, lot.expires_at, now, actor, reason=reason
    )
    db.session.add(entry)
    db.session.flush()
    if commit:
        db.session.commit()
    return entry


# ---------------------------------------------------------------------------------------------
# Refunds and disputes


@dataclass
class ClawbackResult:
    entries: list[LedgerEntry]
    clawed_value_minor: int
    shortfall_minor: int  # ex-tax value of credits already used: the member owes it
    receivable_id: int | None = None


def clawback(
    invoice_id: int,
    *,
    source_ref: str,
    now: datetime,
    actor: str,
    refunded_net_minor: int | None = None,
    settings: ClinicSettings | None = None,
    commit: bool = True,
) -> ClawbackResult:
    """A refunded or disputed invoice takes back the credits it granted that are still unused.

    Credits already used cannot be taken back: their value (up to what was refunded) is recorded
    as an amount the member owes, shown to staff, never silently ignored. Once per source."""
    from billing.payments.models import Invoice, Receivable

    settings = settings or clinic_settings()
    invoice = db.session.get(Invoice, invoice_id)
    if invoice is None:
        raise NotFound(f"No invoice {invoice_id}.")
    grants = (
        db.session.execute(sa.select(CreditGrant).where(CreditGrant.invoice_id == invoice_id))
        .scalars()
        .all()
    )
    membership_ids = sorted({g.membership_id for g in grants})
    lock_memberships(membership_ids)
    done = db.session.execute(
        sa.select(LedgerEntry.id).where(LedgerEntry.dedupe_key.like(f"clawback:{source_ref}:%"))
    ).first()
    receivable_done = db.session.execute(
        sa.select(Receivable.id).where(Receivable.dedupe_key == f"clawback:{source_ref}")
    ).first()
    if done or receivable_done:
        return ClawbackResult([], 0, 0)
    credit_ids = {c.id for g in grants for c in g.credits}
    granted_value = sum(c.allocated_minor for g in grants for c in g.credits)
    target = granted_value if refunded_net_minor is None else min(refunded_net_minor, granted_value)
    all_lots = [
        lot for lot in lots(membership_ids, include_empty=True) if lot.credit.id in credit_ids
    ]
    # Take back the credits that would be used last first: they are the least likely promised.
    live = sorted(
        (lot for lot in all_lots if lot.remaining > 0), key=_consumption_order, reverse=True
    )
    entries, clawed = [], 0
    for lot in live:
        if clawed >= target:
            break
        entries.append(
            _entry(
                lot.credit,
                EntryKind.CLAWBACK,
                -lot.remaining,
                -lot.value_minor,
                lot.expires_at,
                now,
                actor,
                invoice_id=invoice_id,
                reason=f"clawed back: {source_ref}",
                dedupe_key=f"clawback:{source_ref}:{lot.credit.id}",
            )
        )
        clawed += lot.value_minor
    used_value = _used_value(credit_ids)
    shortfall = max(0, min(target - clawed, used_value))
    if not entries and all_lots and (not shortfall or invoice.member_id is None):
        # Nothing to take back (all used up or expired): still mark the refund as handled, so
        # a redelivery after a credit came back (a reversed redemption) takes nothing then.
        lot = min(all_lots, key=lambda x: x.credit.id)
        db.session.add(
            _entry(
                lot.credit,
                EntryKind.CLAWBACK,
                0,
                0,
                lot.expires_at,
                now,
                actor,
                invoice_id=invoice_id,
                reason=f"refund {source_ref}: nothing left to take back",
                dedupe_key=f"clawback:{source_ref}:{lot.credit.id}",
            )
        )
    db.session.add_all(entries)
    result = ClawbackResult(entries, clawed, shortfall)
    if shortfall > 0 and invoice.member_id is not None:
        owed = (
            shortfall + tax_on_net(shortfall, settings.tax_rate_bp)
            if settings.prices_include_tax
            else shortfall
        )
        receivable = Receivable(
            member_id=invoice.member_id,
            membership_id=invoice.membership_id,
            invoice_id=invoice.id,
            amount_minor=owed,
            currency=invoice.currency,
            reason=f"Treatments already received from refunded invoice ({source_ref})",
            dedupe_key=f"clawback:{source_ref}",
            created_at=now,
        )
        db.session.add(receivable)
        db.session.flush()
        result.receivable_id = receivable.id
    db.session.flush()
    if commit:
        db.session.commit()
    return result


def _used_value(credit_ids: set[int]) -> int:
    if not credit_ids:
        return 0
    return -int(
        db.session.execute(
            sa.select(sa.func.coalesce(sa.func.sum(LedgerEntry.value_minor), 0)).where(
                LedgerEntry.credit_id.in_(credit_ids),
                LedgerEntry.kind.in_([EntryKind.REDEEM, EntryKind.REVERSE]),
            )
        ).scalar_one()
    )


# ---------------------------------------------------------------------------------------------
# What a member sees


@dataclass
class Entitlement:
    """One line of "what I have left": a treatment (or choice group) across its live credits."""

    label: str
    treatment_ids: list[int]
    unit_label: str
    remaining: int
    next_expiry: datetime | None
    value_at_list_minor: int
    currency: str
    lots: list[Lot]
    granted: int = 0  # what the live lots were granted with ("2 of 3 left")


def entitlements(membership_ids: Sequence[int], now: datetime) -> list[Entitlement]:
    grouped: dict[tuple, list[Lot]] = defaultdict(list)
    for lot in live_lots(membership_ids, now):
        credit = lot.credit
        if is_holding(credit):
            continue  # a gift's prepaid months: nothing to redeem until a month is converted
        key = (
            ("treatment", credit.treatment_id)
            if credit.treatment_id
            else item_key(credit.plan_item)
        )
        grouped[key].append(lot)
    result = []
    for _key, group in grouped.items():
        credit = group[0].credit
        if credit.treatment_id:
            treatments = [credit.treatment]
            label = credit.treatment.name
        else:
            treatments = [o.treatment for o in credit.plan_item.options]
            label = credit.plan_item.label or "Any of: " + ", ".join(t.name for t in treatments)
        list_price = max(t.list_price_minor for t in treatments) if treatments else 0
        remaining = sum(lot.remaining for lot in group)
        result.append(
            Entitlement(
                label=label,
                treatment_ids=[t.id for t in treatments],
                unit_label=credit.unit_label,
                remaining=remaining,
                next_expiry=min(lot.expires_at for lot in group),
                value_at_list_minor=remaining * list_price,
                currency=credit.currency,
                lots=group,
                granted=sum(lot.credit.quantity for lot in group),
            )
        )
    result.sort(key=lambda e: (e.next_expiry, e.label))
    return result


# ---------------------------------------------------------------------------------------------
# For the API: what a member may use, a membership's history, an admin's corrections.


@dataclass
class MembershipEntitlements:
    """One usable membership and what is left on it, as its owner or a beneficiary sees it."""

    membership: Membership
    role: str  # owner | beneficiary
    balances: list[Entitlement]


@dataclass
class LedgerPage:
    items: list[LedgerEntry]
    limit: int
    offset: int
    next_offset: int | None


def member_entitlements(member_id: int, now: datetime) -> list[MembershipEntitlements]:
    """For each membership the member may redeem from (their own, and any naming them as a
    beneficiary): what is left, per treatment or choice group, with every live credit lot."""
    from billing.members.models import Member
    from billing.memberships.service import memberships_usable_by

    if db.session.get(Member, member_id) is None:
        raise NotFound(f"No member {member_id}.")
    return [
        MembershipEntitlements(
            membership=m,
            role="owner" if m.member_id == member_id else "beneficiary",
            balances=entitlements([m.id], now),
        )
        for m in memberships_usable_by(member_id)
    ]


def ledger_page(membership_id: int, *, limit: int = 50, offset: int = 0) -> LedgerPage:
    """A membership's ledger, newest first, a page at a time (at most 200 entries)."""
    limit = max(1, min(limit, 200))
    offset = max(0, offset)
    rows = (
        db.session.execute(
            sa.select(LedgerEntry)
            .where(LedgerEntry.membership_id == membership_id)
            .order_by(LedgerEntry.created_at.desc(), LedgerEntry.id.desc())
            .options(
                selectinload(LedgerEntry.credit).selectinload(Credit.treatment),
                selectinload(LedgerEntry.credit).selectinload(Credit.plan_item),
            )
            .limit(limit + 1)
            .offset(offset)
        )
        .scalars()
        .all()
    )
    more = len(rows) > limit
    return LedgerPage(rows[:limit], limit, offset, offset + limit if more else None)


def credit_label(credit: Credit) -> str:
    if credit.treatment is not None:
        return credit.treatment.name
    item = credit.plan_item
    if item is None:
        return "credit"
    return item.label or "Any of: " + ", ".join(o.treatment.name for o in item.options)


@dataclass
class Adjustment:
    entry: LedgerEntry
    remaining: int


def adjust_credit(
    credit_id: int, delta: int, *, actor: str, reason: str, now: datetime
) -> Adjustment:
    """adjust, with the credit named by its id; says what is left on it afterwards."""
    credit = db.session.get(Credit, credit_id)
    if credit is None:
        raise NotFound(f"No credit {credit_id}.")
    entry = adjust(credit, delta, actor=actor, reason=reason, now=now)
    remaining = db.session.execute(
        sa.select(sa.func.coalesce(sa.func.sum(LedgerEntry.quantity), 0)).where(
            LedgerEntry.credit_id == credit_id
        )
    ).scalar_one()
    return Adjustment(entry, int(remaining))


def manual_grant(
    membership: Membership,
    *,
    reason: str,
    actor: str,
    now: datetime,
    period_start: datetime | None = None,
    period_end: datetime | None = None,
    net_amount_minor: int = 0,
    items: Sequence[dict] | None = None,
) -> CreditGrant:
    """An admin grants a period's credits by hand (a goodwill period, a payment taken outside
    Stripe), with a reason. Worth nothing unless the admin says money was received for it.

    The period defaults to the membership's current one; the items to the whole tier, or to
    chosen items of it ({plan_item_id, quantity})."""
    if not (reason or "").strip():
        raise InvalidInput("A manual grant needs a reason.", errors={"reason": ["required"]})
    period_start = period_start or membership.current_period_start
    period_end = period_end or membership.current_period_end
    if period_start is None or period_end is None:
        raise InvalidInput(
            "This membership has no current period: give period_start and period_end.",
            errors={"period_start": ["required"], "period_end": ["required"]},
        )
    lines = None
    if items is not None:
        by_id = {item.id: item for item in membership.plan_version.items}
        unknown = [line["plan_item_id"] for line in items if line["plan_item_id"] not in by_id]
        if unknown:
            raise InvalidInput(
                f"Plan items {unknown} are not part of this membership's tier.",
                errors={"items": [f"unknown plan_item_id {i}" for i in unknown]},
            )
        lines = [(by_id[line["plan_item_id"]], line["quantity"]) for line in items]
    return grant_period(
        membership,
        period_start,
        period_end,
        GrantSource(
            ref=f"admin:{actor}:{now.isoformat()}",
            actor=actor,
            net_amount_minor=net_amount_minor,
            reason=reason.strip(),
        ),
        now=now,
        items=lines,
    )


# ---------------------------------------------------------------------------------------------
# Prepaid holdings: a gift's months, paid before anyone can use them


def is_holding(credit: Credit) -> bool:
    """A lot that covers no treatment (no treatment, no plan item): money held for a gift until
    its months are converted into a period's credits. Nothing can be redeemed from it."""
    return credit.treatment_id is None and credit.plan_item_id is None


def hold_prepaid(
    membership: Membership,
    *,
    quantity: int,
    unit_label: str,
    net_amount_minor: int,
    expires_at: datetime,
    source: GrantSource,
    now: datetime,
    commit: bool = True,
) -> CreditGrant:
    """Put a prepaid purchase on the ledger as one holding lot (a gift of N months: N "month"
    units worth the purchase's net amount), so its deferred revenue is there from the payment.

    Unlike grant_period, the membership need not be active: a gift waits, pending, until it is
    claimed. Once per (membership, source ref); a repeat returns the first grant."""
    if quantity < 1:
        raise InvalidInput("A holding needs a quantity of at least 1.")
    if net_amount_minor < 0:
        raise InvalidInput("The amount to hold cannot be negative.")
    existing = db.session.execute(
        sa.select(CreditGrant).where(
            CreditGrant.membership_id == membership.id, CreditGrant.source_ref == source.ref
        )
    ).scalar_one_or_none()
    if existing is not None:
        return existing
    lock_memberships([membership.id])
    version = membership.plan_version
    grant = CreditGrant(
        membership_id=membership.id,
        period_start=now,
        period_end=expires_at,
        source_ref=source.ref,
        invoice_id=source.invoice_id,
        plan_version_id=version.id,
        net_amount_minor=net_amount_minor,
        currency=version.currency,
        actor=source.actor,
        reason=source.reason,
        created_at=now,
    )
    db.session.add(grant)
    db.session.flush()
    credit = Credit(
        grant_id=grant.id,
        membership_id=membership.id,
        plan_item_id=None,
        treatment_id=None,
        product_type=ProductType.GIFT,
        unit_label=unit_label,
        quantity=quantity,
        ssp_unit_minor=div_round_half_up(net_amount_minor, quantity),
        allocated_minor=net_amount_minor,
        currency=version.currency,
        period_start=now,
        period_end=expires_at,
        expires_at=expires_at,
        created_at=now,
    )
    db.session.add(credit)
    db.session.flush()
    db.session.add(
        _entry(
            credit,
            EntryKind.GRANT,
            quantity,
            net_amount_minor,
            expires_at,
            now,
            source.actor,
            reason=source.reason or f"held for {source.ref}",
            invoice_id=source.invoice_id,
        )
    )
    db.session.flush()
    if commit:
        db.session.commit()
    return grant


def holding_lot(credit: Credit) -> Lot:
    lot = next(
        (x for x in lots([credit.membership_id], include_empty=True) if x.credit.id == credit.id),
        None,
    )
    if lot is None:
        raise NotFound(f"No credit {credit.id}.")
    return lot


def take_from_holding(
    credit: Credit, *, ref: str, actor: str, reason: str, now: datetime
) -> LedgerEntry:
    """Take one unit (a month) off a holding lot at its share of the value: an `adjust` entry
    -1 / -value. The caller grants that value as a period's credits in the same transaction,
    so deferred revenue does not change. Once per ref (the entry's dedupe key). Does not commit."""
    key = f"convert:{ref}"
    done = db.session.execute(
        sa.select(LedgerEntry).where(LedgerEntry.dedupe_key == key)
    ).scalar_one_or_none()
    if done is not None:
        return done
    lock_memberships([credit.membership_id])
    lot = holding_lot(credit)
    if lot.remaining < 1:
        raise Conflict("Nothing is left on this holding to convert.", slug="holding-empty")
    value = (
        lot.value_minor if lot.remaining == 1 else div_round_half_up(lot.value_minor, lot.remaining)
    )
    entry = _entry(
        credit,
        EntryKind.ADJUST,
        -1,
        -value,
        lot.expires_at,
        now,
        actor,
        reason=reason,
        dedupe_key=key,
    )
    db.session.add(entry)
    db.session.flush()
    return entry


def extend_expiry(
    credit: Credit, until: datetime, *, actor: str, reason: str, now: datetime
) -> LedgerEntry | None:
    """Move a credit's expiry later (never earlier) with a 0/0 `adjust` entry. Does not commit."""
    lot = holding_lot(credit)
    if until <= lot.expires_at:
        return None
    entry = _entry(credit, EntryKind.ADJUST, 0, 0, until, now, actor, reason=reason)
    db.session.add(entry)
    db.session.flush()
    return entry
