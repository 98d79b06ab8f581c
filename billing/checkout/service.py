"""Front-desk checkout: open a visit, add lines (redeemed from credits or charged), void, close.

A line is decided the moment it is added: the clinic's rules are checked (rules.py), then it is
either redeemed from the client's credits (their own membership or a household one naming them)
or charged at list price less their tier's member discount. Nothing is ever deleted: a void is a
reversing ledger entry, an override is a row with the admin's reason.

Writers lock the visit row, then the memberships (the ledger's lock), in that order, so two desks
can never both spend the last credit and never deadlock."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.orm import aliased, defer, joinedload, load_only
from sqlalchemy.orm.attributes import set_committed_value

from billing.checkout import rules
from billing.checkout.models import (
    Consultation,
    LineStatus,
    RuleOverride,
    Visit,
    VisitLine,
    VisitState,
)
from billing.clinic.models import Location
from billing.clock import local_date, start_of_local_day
from billing.entitlements import service as ledger
from billing.entitlements.models import Credit, CreditGrant, EntryKind, LedgerEntry
from billing.errors import Conflict, Forbidden, InvalidInput, NotFound
from billing.extensions import db
from billing.members.models import Member
from billing.members.service import search_members
from billing.memberships.models import Membership, State
from billing.memberships.service import memberships_usable_by, usable_select
from billing.money import Money, div_round_half_up, net_of_tax, tax_on_net
from billing.plans.models import Category, PlanVersion, Treatment
from billing.rows import insert_persistent, insert_persistent_unless, insert_with_children
from billing.settings import ClinicSettings
from billing.staff import service as staff_service
from billing.staff.models import Staff

PAY_WITH = ("auto", "credits", "charge")
PAYMENT_METHODS = ("desk", "card_on_file")


# ---------------------------------------------------------------------------------------------
# Looking things up


def get_visit(visit_id: int) -> Visit:
    visit = db.session.get(Visit, visit_id)
    if visit is None:
        raise NotFound(f"There is no visit {visit_id}.")
    return visit


def _lock_visit(visit_id: int) -> Visit:
    """The visit row, locked for this transaction (and re-read, not taken from the cache), with
    its client in the same statement."""
    visit = db.session.execute(_lock_visit_query(), {"visit_id": visit_id}).scalar_one_or_none()
    if visit is None:
        raise NotFound(f"There is no visit {visit_id}.")
    return visit


@functools.cache
def _lock_visit_query() -> sa.Select:
    return (
        sa.select(Visit)
        .where(Visit.id == sa.bindparam("visit_id"))
        .options(joinedload(Visit.member, innerjoin=True).load_only(*_CLIENT_NAME_ONLY))
        .with_for_update(of=Visit)
        .execution_options(populate_existing=True)
    )


def get_member(member_id: int) -> Member:
    member = db.session.get(Member, member_id)
    if member is None:
        raise NotFound(f"There is no client {member_id}.")
    return member


def _treatment(code: str) -> Treatment:
    row = db.session.execute(
        sa.select(Treatment).where(Treatment.code == code)
    ).scalar_one_or_none()
    if row is None:
        raise InvalidInput(
            f"There is no treatment with code {code!r}.",
            errors={"treatment": ["unknown treatment"]},
        )
    return row


def _staff(staff_id: int, field: str) -> Staff:
    row = db.session.get(Staff, staff_id)
    if row is None:
        raise InvalidInput(f"There is no staff member {staff_id}.", errors={field: ["unknown"]})
    return _active(row, field)


def _active(row: Staff, field: str) -> Staff:
    if not row.active:
        raise InvalidInput(
            f"{row.name} no longer works at the clinic.", errors={field: ["not active"]}
        )
    return row


# ---------------------------------------------------------------------------------------------
# Visits


def open_visit(
    *,
    member_id: int,
    location: str,
    supervising_staff_id: int | None,
    actor: str,
    now: datetime,
    settings: ClinicSettings,
) -> Visit:
    """A client arrives at a location: an open visit to which the desk adds what was done."""
    member, loc, _, _ = _client_and_location(member_id, location)
    return _open(member, loc, supervising_staff_id, actor=actor, now=now, settings=settings)


def _client_and_location(
    member_id: int, location: str, *, hold_opening: bool = False, line: dict | None = None
) -> tuple[Member, Location, bool, _LineParties | None]:
    """The client and the location in one statement (when either is missing, each is looked up
    on its own to say which). `hold_opening`: the same statement takes, on PostgreSQL, the
    client's "opening a visit" lock until the transaction ends; the third value says it did.
    `line` (the desk's one call): the same statement reads its treatment and provider too."""
    hold = hold_opening and db.session.get_bind().dialect.name == "postgresql"
    params = {"member_id": member_id, "code": location, **_parties_params(line)}
    row = db.session.execute(_member_and_location_query(hold, line is not None), params).first()
    if row is None:
        return get_member(member_id), staff_service.location_by_code(location), False, None
    parties = _LineParties(row.Treatment, row.Staff) if line is not None else None
    return row.Member, row.Location, hold, parties


@dataclass(frozen=True)
class _LineParties:
    """A line's treatment and provider, read with the visit (or the client) in the desk's one
    call instead of by a statement of their own; None where the code or id matched nothing."""

    treatment: Treatment | None
    provider: Staff | None


def _parties_params(line: dict | None) -> dict:
    if line is None:
        return {}
    return {"treatment_code": line.get("treatment"), "provider_id": line.get("provider_id")}


def _with_parties(query: sa.Select) -> sa.Select:
    """The line's treatment and provider outer-joined by their code and id: a row either way."""
    return (
        query.add_columns(Treatment, Staff)
        .outerjoin(Treatment, Treatment.code == sa.bindparam("treatment_code"))
        .outerjoin(Staff, Staff.id == sa.bindparam("provider_id", type_=sa.Integer))
        .options(*_DESK_COLUMNS_ONLY)
    )


# What the desk's hot statements leave out of a client, a treatment and a provider: nothing a
# line needs (a column left out is read if something asks for it), and each column costs about
# a microsecond a statement to describe, read and set.
_DESK_COLUMNS_ONLY = (
    defer(Treatment.description),
    defer(Treatment.duration_minutes),
    defer(Treatment.created_at),
    defer(Treatment.updated_at),
    defer(Staff.email),
    defer(Staff.created_at),
)
_CLIENT_NAME_ONLY = (Member.first_name, Member.last_name)


def _open(
    member: Member,
    loc: Location,
    supervising_staff_id: int | None,
    *,
    actor: str,
    now: datetime,
    settings: ClinicSettings,
    unless_opened_since: datetime | None = None,
) -> Visit | None:
    """`unless_opened_since`: open it only if the client has no open visit at this location
    opened since then (None when there is one), checked by the statement that inserts it."""
    if supervising_staff_id is not None:
        _staff(supervising_staff_id, "supervising_staff_id")
    visit = Visit(
        member_id=member.id,
        member=member,
        location_id=loc.id,
        state=VisitState.OPEN,
        supervising_staff_id=supervising_staff_id,
        opened_at=now,
        opened_by=actor,
        currency=settings.currency,
        amount_due_minor=0,
        payment_status="none",
    )
    if unless_opened_since is None:
        insert_persistent(visit)  # the desk's hot path: no unit of work
    else:
        twin = {"member_id": member.id, "location_id": loc.id, "since": unless_opened_since}
        if insert_persistent_unless(visit, _open_visit_today(), twin) is None:
            return None
    db.session.commit()
    return visit


def set_supervisor(
    visit_id: int, *, supervising_staff_id: int | None, actor: str, now: datetime
) -> Visit:
    """Record (or change) the supervising physician of an open visit."""
    visit = _lock_visit(visit_id)
    _ensure_open(visit)
    if supervising_staff_id is not None:
        _staff(supervising_staff_id, "supervising_staff_id")
    visit.supervising_staff_id = supervising_staff_id
    db.session.commit()
    return visit


def _ensure_open(visit: Visit) -> None:
    if not visit.is_open:
        raise Conflict(
            f"Visit {visit.id} is closed: nothing more can be added to it. Open a new visit.",
            slug="visit-closed",
        )


# ---------------------------------------------------------------------------------------------
# What the rules need to know about one line


@dataclass
class CreditPicture:
    """The client's credits for one treatment right now."""

    usable: list[Membership]
    redeemable_ids: list[int]  # memberships that may redeem now
    redeemable_balance: int
    blocked: list[Membership]  # hold live credits for it but may not redeem now
    expired_on: date | None
    expired_lots: list[ledger.Lot]
    covering: list[ledger.Lot]  # every lot for the treatment, read under the memberships' locks

    @property
    def has_live_credit(self) -> bool:
        return self.redeemable_balance > 0 or bool(self.blocked)


def _credit_picture(
    treatment: Treatment, usable: Sequence[Membership], now: datetime, settings: ClinicSettings
) -> CreditPicture:
    ids = [m.id for m in usable]
    by_id = {m.id: m for m in usable}
    covering = ledger.lots(ids, include_empty=True, treatment_id=treatment.id)
    live = [lot for lot in covering if lot.is_live(now)]
    redeemable_ids = [m.id for m in usable if m.can_redeem(now)]
    balance = sum(lot.remaining for lot in live if lot.credit.membership_id in redeemable_ids)
    blocked_ids = {
        lot.credit.membership_id for lot in live if lot.credit.membership_id not in redeemable_ids
    }
    expired_on, expired_lots = None, []
    if not live and covering:
        newest = max(covering, key=lambda lot: (lot.expires_at, lot.credit.id))
        if newest.expires_at <= now and _expired_unused(newest):
            expired_on = local_date(newest.expires_at, settings.tz)
            expired_lots = [newest]
    return CreditPicture(
        usable=list(usable),
        redeemable_ids=redeemable_ids,
        redeemable_balance=balance,
        blocked=[by_id[i] for i in sorted(blocked_ids)],
        expired_on=expired_on,
        expired_lots=expired_lots,
        covering=covering,
    )


def _expired_unused(lot: ledger.Lot) -> bool:
    if lot.remaining > 0:
        return True
    return (
        db.session.execute(
            sa.select(LedgerEntry.id).where(
                LedgerEntry.credit_id == lot.credit.id, LedgerEntry.kind == EntryKind.EXPIRE
            )
        ).first()
        is not None
    )


def state_words(membership: Membership, now: datetime, settings: ClinicSettings) -> str:
    """A membership's state as the desk would say it."""
    tz = settings.tz
    state = membership.state
    if state == State.ACTIVE:
        return "active"
    if state == State.CANCEL_AT_PERIOD_END:
        end = membership.cancel_at or membership.current_period_end
        return f"active, ending on {rules.say(local_date(end, tz))}" if end else "active, ending"
    if state == State.PAST_DUE:
        since = membership.past_due_since or now
        text = f"past due since {rules.say(local_date(since, tz))}"
        if membership.grace_ends_at is None:
            return text
        grace = rules.say(local_date(membership.grace_ends_at, tz))
        if membership.in_grace(now):
            return f"{text} (credits usable until {grace})"
        return f"{text} (the grace period ended on {grace})"
    if state == State.PAUSED:
        if membership.resume_at:
            return f"paused until {rules.say(local_date(membership.resume_at, tz))}"
        return "paused (no resume date set)"
    if state == State.PENDING:
        return "waiting for its first payment"
    return "canceled"


def _person(staff: Staff, day) -> rules.Person:
    return rules.Person(
        name=staff.name,
        credentials=frozenset(staff.valid_credentials(day)),
        lapsed=staff.lapsed_credentials(day),
    )


def _last_done_on(member_id: int, treatment_id: int, settings: ClinicSettings):
    last = db.session.execute(
        sa.select(sa.func.max(VisitLine.performed_at))
        .join(Visit, VisitLine.visit_id == Visit.id)
        .where(
            Visit.member_id == member_id,
            VisitLine.treatment_id == treatment_id,
            VisitLine.status != LineStatus.VOIDED,
        )
    ).scalar_one()
    if last is None:
        return None
    return local_date(_aware(last), settings.tz)


def _aware(value) -> datetime:
    """MAX() of a UTC column, whatever the driver hands back (SQLite may lose the type)."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def _consultation_on(member_id: int, treatment_id: int, settings: ClinicSettings):
    last = db.session.execute(
        sa.select(sa.func.max(Consultation.held_at)).where(
            Consultation.member_id == member_id,
            sa.or_(Consultation.treatment_id.is_(None), Consultation.treatment_id == treatment_id),
        )
    ).scalar_one()
    return None if last is None else local_date(_aware(last), settings.tz)


def _uses_credits(pay_with: str, picture: CreditPicture) -> bool:
    if pay_with == "charge":
        return False
    if pay_with == "credits":
        return True
    return picture.has_live_credit or picture.expired_on is not None


def _facts(
    *,
    member: Member,
    treatment: Treatment,
    quantity: int,
    uses_credits: bool,
    picture: CreditPicture,
    location_name: str,
    now: datetime,
    settings: ClinicSettings,
    provider: Staff | None = None,
    supervisor: Staff | None = None,
    supervisor_on_duty: bool = False,
) -> rules.LineFacts:
    today = local_date(now, settings.tz)
    # A fact is only looked up when a rule can use it: who may perform or supervise matters only
    # for a medical treatment, the last session only with an interval, the consultation only
    # when one is required (each rule returns None without looking otherwise).
    medical = treatment.is_medical
    return rules.LineFacts(
        client=member.full_name,
        treatment=treatment.name,
        category=treatment.category,
        today=today,
        location=location_name,
        quantity=quantity,
        is_medical=treatment.is_medical,
        requires_consultation=treatment.requires_consultation,
        min_interval_days=treatment.min_interval_days,
        uses_credits=uses_credits,
        redeemable_balance=picture.redeemable_balance,
        blocked=tuple(
            rules.BlockedMembership(m.plan_version.plan.name, state_words(m, now, settings))
            for m in picture.blocked
        ),
        expired_on=picture.expired_on,
        policy=staff_service.policy_for(treatment.category) if medical else None,
        provider=_person(provider, today) if provider and medical else None,
        supervisor=_person(supervisor, today) if supervisor and medical else None,
        supervisor_on_duty=supervisor_on_duty,
        last_done_on=(
            _last_done_on(member.id, treatment.id, settings)
            if treatment.min_interval_days > 0
            else None
        ),
        consultation_on=(
            _consultation_on(member.id, treatment.id, settings)
            if treatment.requires_consultation
            else None
        ),
        consultation_valid_days=settings.consultation_valid_days,
    )


# ---------------------------------------------------------------------------------------------
# Adding, voiding, closing


def redeem_at_desk(
    *,
    member_id: int,
    location: str,
    supervising_staff_id: int | None = None,
    actor: str,
    now: datetime,
    settings: ClinicSettings,
    **line,
) -> VisitLine:
    """The desk's one click: add a treatment to the client's visit of today at this location,
    opening the visit when there is none yet. One request instead of two at the front desk.

    Two desks ringing up the same client at the same moment share one visit: the one that finds
    none opens it while holding the client's lock, and the other, waiting on that lock, finds
    it."""
    visit, parties, usable = _todays_open_visit(member_id, location, now, settings, line)
    if visit is None:
        member, loc, held, parties = _client_and_location(
            member_id, location, hold_opening=True, line=line
        )
        # Holding the client's lock, open the visit unless another desk opened it while this
        # one waited for the lock; then it is that desk's visit that this line goes on.
        visit = _open(
            member,
            loc,
            supervising_staff_id,
            actor=actor,
            now=now,
            settings=settings,
            unless_opened_since=_start_of_today(now, settings) if held else None,
        )
        if visit is None:
            visit, _, usable = _todays_open_visit(member_id, location, now, settings)
    return add_line(
        visit.id,
        locked_visit=visit,
        parties=parties,
        usable=usable,
        actor=actor,
        now=now,
        settings=settings,
        **line,
    )


def _todays_open_visit(
    member_id: int,
    location: str,
    now: datetime,
    settings: ClinicSettings,
    line: dict | None = None,
) -> tuple[Visit | None, _LineParties | None, list[Membership] | None]:
    """The client's newest open visit opened today (the clinic's day) at this location and the
    memberships they may redeem from, locked by one statement: the visit, then the memberships
    in id order (the order in which every writer of a visit's lines takes them, so two never
    deadlock). With `line`, its treatment and provider are read by the same statement.

    The memberships are None when there is no visit: an opened visit's line locks them itself."""
    params = {"member_id": member_id, "location": location, "since": _start_of_today(now, settings)}
    dialect = db.session.get_bind().dialect.name
    rows = db.session.execute(
        _todays_visit_query(dialect, line is not None),
        params | _parties_params(line),
        # Rows the session already holds (a second look, after waiting for the client's lock)
        # are refreshed from the locked read; on the first look it holds none, and refreshing
        # costs more than the rest of loading them.
        execution_options={"populate_existing": bool(db.session.identity_map)},
    ).all()
    if not rows:
        return None, None, None
    visit = rows[0].visit
    # The visit holds its client, as a joined load would have: the session holds objects
    # weakly, and the client the line's rules name would otherwise be gone, and read again.
    set_committed_value(visit, "member", rows[0].Member)
    usable = [row.membership for row in rows if row.membership is not None]
    ledger.note_locked(m.id for m in usable)
    parties = _LineParties(rows[0].Treatment, rows[0].Staff) if line is not None else None
    return visit, parties, usable


def _start_of_today(now: datetime, settings: ClinicSettings) -> datetime:
    return start_of_local_day(local_date(now, settings.tz), settings.tz)


def _open_since() -> tuple:
    """The client's visit still open, opened since `since` (the clinic's day began): today's
    visit, as the desk's one call finds it and as opening one checks it is not there yet."""
    return (
        Visit.member_id == sa.bindparam("member_id"),
        Visit.state == VisitState.OPEN,
        Visit.opened_at >= sa.bindparam("since", type_=Visit.opened_at.type),
    )


@functools.cache
def _open_visit_today() -> sa.Exists:
    """The client's open visit of today at this location (by its id)."""
    return sa.exists().where(*_open_since(), Visit.location_id == sa.bindparam("location_id"))


_OPENING_VISIT = 0x5649_5354  # the advisory lock's first key: "opening a visit for member N"


@functools.cache
def _todays_visit_query(dialect: str, with_parties: bool) -> sa.Select:
    """Built once with bound parameters (the desk's hot path).

    On PostgreSQL the visit is locked in its own sub-select, and the memberships in a LATERAL
    one that names the visit's client, so it can only run after the visit's row is locked: the
    lock order holds whatever plan is chosen. A client with no membership still gets the row of
    the visit (FOR UPDATE cannot lock the nullable side of an outer join; a sub-select can).
    SQLite has neither row locks nor LATERAL: there the memberships are selected by the bound
    `member_id`."""
    todays = (
        sa.select(Visit)
        .join(Location, Visit.location_id == Location.id)
        .where(*_open_since(), Location.code == sa.bindparam("location"))
        .order_by(Visit.id.desc())
        .limit(1)
        .with_for_update(of=Visit)
        .subquery("todays_visit")
    )
    if dialect == "postgresql":
        usable = usable_select(todays.c.member_id).with_for_update(of=Membership).lateral("usable")
    else:
        usable = usable_select(sa.bindparam("member_id")).subquery("usable")
    visit = aliased(Visit, todays, name="visit")
    membership = aliased(Membership, usable, name="membership")
    # The client (their name) is an entity of the row, not joined-loaded onto the visit: the
    # eager loader cost more than the read. _todays_open_visit then gives the visit its client.
    query = (
        sa.select(visit, membership, Member)
        .join_from(visit, membership, sa.true(), isouter=True)
        .join(Member, Member.id == visit.member_id)
        .options(load_only(*_CLIENT_NAME_ONLY))
        .order_by(membership.id)
    )
    return _with_parties(query) if with_parties else query


@functools.cache
def _treatment_and_provider_query() -> sa.Select:
    return (
        sa.select(Treatment, Staff)
        .join_from(Treatment, Staff, sa.true())
        .where(Treatment.code == sa.bindparam("code"), Staff.id == sa.bindparam("staff_id"))
    )


@functools.cache
def _member_and_location_query(hold_opening: bool, with_parties: bool = False) -> sa.Select:
    """With hold_opening, the row also takes the client's "opening a visit" advisory lock: only
    a call about to open a visit pays for it (a visit found is locked by its own row)."""
    query = (
        sa.select(Member, Location)
        .join_from(Member, Location, sa.true())
        .where(Member.id == sa.bindparam("member_id"), Location.code == sa.bindparam("code"))
        .options(load_only(*_CLIENT_NAME_ONLY))
    )
    if hold_opening:
        query = query.add_columns(sa.func.pg_advisory_xact_lock(_OPENING_VISIT, Member.id))
    return _with_parties(query) if with_parties else query


def add_line(
    visit_id: int,
    *,
    treatment: str,
    provider_id: int,
    quantity: int = 1,
    pay_with: str = "auto",
    override: dict | None = None,
    overrides: Sequence[dict] = (),
    is_admin: bool,
    actor: str,
    now: datetime,
    settings: ClinicSettings,
    locked_visit: Visit | None = None,
    parties: _LineParties | None = None,
    usable: list[Membership] | None = None,
) -> VisitLine:
    """Add what was done to an open visit; it is redeemed or charged at once.

    Redeemed when credits cover it (the credit that expires first first), charged otherwise
    (or when the desk says pay_with="charge"). Every clinic rule that blocks it is reported
    together; an admin may let it through one rule at a time with a written reason.
    `locked_visit`: the visit, when the caller has just read and locked it; `parties`: the
    treatment and provider, when the caller read them in the same statement; `usable`: the
    client's memberships, when the caller locked them with the visit."""
    overridden = _overrides([*overrides, *([override] if override else [])], is_admin)
    if pay_with not in PAY_WITH:
        raise InvalidInput(f"pay_with must be one of {', '.join(PAY_WITH)}.")
    if not isinstance(quantity, int) or isinstance(quantity, bool) or quantity <= 0:
        raise InvalidInput(
            "The quantity must be a whole number above zero.",
            errors={"quantity": ["a whole number above zero"]},
        )
    visit = locked_visit if locked_visit is not None else _lock_visit(visit_id)
    _ensure_open(visit)
    # The treatment and the provider in one statement (unless the caller read them); when
    # either is missing, each is looked up on its own to say which.
    if parties is None:
        pair = db.session.execute(
            _treatment_and_provider_query(), {"code": treatment, "staff_id": provider_id}
        ).first()
        parties = _LineParties(pair.Treatment, pair.Staff) if pair else _LineParties(None, None)
    t = parties.treatment or _treatment(treatment)
    if quantity > 1 and not t.in_units:
        raise InvalidInput(
            f"{t.name} is counted in sessions: add one line per session. A quantity above 1 "
            "is only for treatments counted in units (e.g. toxin units).",
            errors={"quantity": ["only 1 for a treatment counted in sessions"]},
        )
    if t.currency != visit.currency:
        raise InvalidInput(f"{t.name} is priced in {t.currency}, the visit in {visit.currency}.")
    provider = (
        _active(parties.provider, "provider_id")
        if parties.provider
        else _staff(provider_id, "provider_id")
    )
    if provider.location_id != visit.location_id:
        raise InvalidInput(
            f"{provider.name} works at {provider.location.name}, not at the visit's location.",
            errors={"provider_id": ["works at another location"]},
        )
    member = get_member(visit.member_id)
    if usable is None:
        usable = memberships_usable_by(member.id, lock=True)
    picture = _credit_picture(t, usable, now, settings)
    uses_credits = _uses_credits(pay_with, picture)
    supervisor = (
        db.session.get(Staff, visit.supervising_staff_id)
        if visit.supervising_staff_id and t.is_medical
        else None
    )
    today = local_date(now, settings.tz)
    facts = _facts(
        member=member,
        treatment=t,
        quantity=quantity,
        uses_credits=uses_credits,
        picture=picture,
        location_name=_location_name(visit) if t.is_medical else "",  # named by supervision
        now=now,
        settings=settings,
        provider=provider,
        supervisor=supervisor,
        supervisor_on_duty=bool(
            supervisor and staff_service.is_on_duty(supervisor.id, visit.location_id, today)
        ),
    )
    violations = rules.check(facts)
    blocking = [v for v in violations if v.rule not in overridden]
    if blocking:
        first = blocking[0]
        raise type(first)(
            first.detail,
            rule=first.rule,
            blocked_by=[{"rule": v.rule, "detail": v.detail} for v in blocking],
            **{k: v for k, v in first.extra.items() if k not in ("rule", "overridable")},
        )
    line = VisitLine(
        visit_id=visit.id,
        treatment_id=t.id,
        treatment=t,  # kept on the line: the response names it without a query
        provider_id=provider.id,
        quantity=quantity,
        status=LineStatus.OPEN,
        currency=visit.currency,
        list_price_minor=t.list_price_minor * quantity,
        discount_minor=0,
        amount_minor=0,
        performed_at=now,
        created_by=actor,
    )
    entries = []
    if uses_credits:
        entries = _redeem_line(
            line, t, member, picture, overridden, pay_with, actor=actor, now=now, settings=settings
        )
    else:
        _charge_line(line, t, picture.usable, now=now, settings=settings)
    # The line and the entries that redeem it: one statement on PostgreSQL.
    insert_with_children(line, ledger.entry_rows(entries), ledger.ENTRIES, "visit_line_id")
    for violation in violations:
        db.session.add(
            RuleOverride(
                visit_line_id=line.id,
                rule=violation.rule,
                detail=violation.detail,
                actor=actor,
                reason=overridden[violation.rule],
                at=now,
            )
        )
    db.session.commit()
    return line


def _overrides(overrides: Sequence[dict], is_admin: bool) -> dict[str, str]:
    if not overrides:
        return {}
    if not is_admin:
        raise Forbidden(
            "Only an admin may override a clinic rule. Ask an admin, or fix what the rule says."
        )
    result = {}
    for o in overrides:
        rule, reason = o.get("rule"), (o.get("reason") or "").strip()
        if rule not in rules.RULES:
            raise InvalidInput(
                f"There is no rule {rule!r}; the rules are: {', '.join(rules.RULES)}.",
                errors={"override": {"rule": ["unknown rule"]}},
            )
        if not reason:
            raise InvalidInput(
                "An override needs a written reason.",
                errors={"override": {"reason": ["required"]}},
            )
        result[rule] = reason
    return result


def _redeem_line(
    line, treatment, member, picture, overridden, pay_with, *, actor, now, settings
) -> list[LedgerEntry]:
    """Redeem the line from the client's credits: the ledger entries to write with it (none
    when, a household partner's share being used up, it is charged instead)."""
    ids = list(picture.redeemable_ids)
    covering = picture.covering
    if "membership_state" in overridden:
        ids = [m.id for m in picture.usable]
    if "expired_credit" in overridden and picture.expired_lots:
        covering = None  # honouring writes new entries: the ledger reads the lots again
        for lot in picture.expired_lots:
            _honour_expired(
                lot,
                line.quantity,
                actor=actor,
                reason=overridden["expired_credit"],
                now=now,
                settings=settings,
            )
        ids = sorted({*ids, *(lot.credit.membership_id for lot in picture.expired_lots)})
    try:
        redemption = ledger.redeem(
            membership_ids=ids,
            treatment=treatment,
            quantity=line.quantity,
            member_id=member.id,
            now=now,
            actor=actor,
            commit=False,
            covering=covering,
            unwritten=True,  # written with the line: rows.insert_with_children
        )
    except ledger.InsufficientCredits as short:
        # A household partner may have used up their share: with nothing usable, charge it.
        if pay_with == "auto" and short.extra.get("available") == 0:
            _charge_line(line, treatment, picture.usable, now=now, settings=settings)
            return []
        raise
    line.status = LineStatus.REDEEMED
    line.membership_id = redemption.entries[0].membership_id
    line.discount_minor = 0
    line.amount_minor = 0
    return redemption.entries


def _honour_expired(
    lot: ledger.Lot,
    quantity: int,
    *,
    actor: str,
    reason: str,
    now: datetime,
    settings: ClinicSettings,
) -> None:
    """An admin honours an expired credit: usable again until the end of the clinic's today."""
    until = start_of_local_day(local_date(now, settings.tz) + timedelta(days=1), settings.tz)
    ledger.honour_expired(lot, quantity, until=until, actor=actor, reason=reason, now=now)


def _member_discount_bp(usable: Sequence[Membership], now: datetime) -> int:
    """The best member discount among the tiers the client may use now (none for non-members)."""
    return max((m.plan_version.member_discount_bp for m in usable if m.can_redeem(now)), default=0)


def _charge_line(line, treatment, usable, *, now, settings) -> None:
    bp = _member_discount_bp(usable, now)
    price = line.list_price_minor
    discount = div_round_half_up(price * bp, 10_000) if bp else 0
    amount = price - discount
    if not treatment.tax_inclusive:
        amount += tax_on_net(amount, settings.tax_rate_bp)
    line.status = LineStatus.CHARGED
    line.discount_minor = discount
    line.amount_minor = amount


def void_line(
    visit_id: int,
    line_id: int,
    *,
    reason: str,
    is_admin: bool,
    actor: str,
    now: datetime,
) -> VisitLine:
    """Take a line back: its credits are given back by reversing entries (never a delete).

    On a closed visit only an admin may, with a written reason."""
    reason = (reason or "").strip()
    if not reason:
        raise InvalidInput("A void needs a reason.", errors={"reason": ["required"]})
    visit = _lock_visit(visit_id)
    line = db.session.get(VisitLine, line_id, options=[joinedload(VisitLine.treatment)])
    if line is None or line.visit_id != visit.id:
        raise NotFound(f"Visit {visit_id} has no line {line_id}.")
    if line.status == LineStatus.VOIDED:
        raise Conflict("This line was already voided.", slug="already-voided")
    if not visit.is_open and not is_admin:
        raise Forbidden(
            f"Visit {visit.id} is closed: only an admin may void one of its lines, with a reason."
        )
    # The line's entries by the line alone (a handful), the redemptions picked here: a plan
    # choosing between the line's index and the kinds' is at the mercy of the statistics.
    entries = db.session.execute(_line_entries_query(), {"line_id": line.id}).scalars()
    for entry in [e for e in entries if e.kind == EntryKind.REDEEM]:
        ledger.reverse(entry, actor=actor, reason=f"void: {reason}", now=now, commit=False)
    line.status = LineStatus.VOIDED
    line.voided_at = now
    line.voided_by = actor
    line.void_reason = reason
    db.session.commit()
    return line


@functools.cache
def _line_entries_query() -> sa.Select:
    return (
        sa.select(LedgerEntry)
        .where(LedgerEntry.visit_line_id == sa.bindparam("line_id"))
        .options(joinedload(LedgerEntry.credit))
        .order_by(LedgerEntry.id)
    )


def close_visit(
    visit_id: int, *, payment: str, actor: str, now: datetime, settings: ClinicSettings
) -> Visit:
    """The client leaves: what is owed is paid at the desk or charged to the card on file.

    A consultation done in this visit is put on file. If the card cannot be charged (Stripe not
    configured, card declined), the visit stays open."""
    if payment not in PAYMENT_METHODS:
        raise InvalidInput(f"payment must be one of {', '.join(PAYMENT_METHODS)}.")
    visit = _lock_visit(visit_id)
    _ensure_open(visit)
    due = sum(line.amount_minor for line in visit.lines if line.status == LineStatus.CHARGED)
    visit.amount_due_minor = due
    if due == 0:
        visit.payment_status, visit.payment_method = "nothing_due", None
    elif payment == "desk":
        visit.payment_status, visit.payment_method = "paid", "desk"
    else:
        intent_id, status = _charge_card(visit, due)
        visit.stripe_payment_intent_id = intent_id
        visit.payment_method = "card_on_file"
        visit.payment_status = "paid" if status in (None, "succeeded", "processing") else "pending"
    for line in visit.lines:
        if line.status != LineStatus.VOIDED and line.treatment.category == Category.CONSULTATION:
            db.session.add(
                Consultation(
                    member_id=visit.member_id,
                    staff_id=line.provider_id,
                    held_at=line.performed_at,
                    notes=f"{line.treatment.name} (visit {visit.id})",
                    recorded_by=actor,
                )
            )
    visit.state = VisitState.CLOSED
    visit.closed_at = now
    visit.closed_by = actor
    db.session.commit()
    return visit


def _charge_card(visit: Visit, amount_minor: int) -> tuple[str | None, str | None]:
    """Charge the card on file through the Stripe gateway (ServiceUnavailable if Stripe is not
    set up; a decline raises): either way the visit stays open to pay at the desk."""
    from billing.stripe_sync import gateway

    intent_id = gateway.current().charge_off_session(
        get_member(visit.member_id),
        amount_minor=amount_minor,
        currency=visit.currency,
        description=f"Visit {visit.id} at {_location_name(visit)}",
        idempotency_key=f"visit-{visit.id}-close",
    )
    return intent_id, None


def _location_name(visit: Visit) -> str:
    from billing.clinic.models import Location

    loc = db.session.get(Location, visit.location_id)
    return loc.name if loc else str(visit.location_id)


def record_consultation(
    member_id: int,
    *,
    held_at: datetime | None,
    treatment: str | None,
    staff_id: int | None,
    notes: str,
    actor: str,
    now: datetime,
) -> Consultation:
    """Put a consultation on file (some treatments need one first)."""
    member = get_member(member_id)
    held_at = held_at or now
    if held_at > now:
        raise InvalidInput(
            "A consultation cannot be on file before it happens.",
            errors={"held_at": ["in the future"]},
        )
    row = Consultation(
        member_id=member.id,
        treatment_id=_treatment(treatment).id if treatment else None,
        staff_id=_staff(staff_id, "staff_id").id if staff_id is not None else None,
        held_at=held_at,
        notes=notes or "",
        recorded_by=actor,
    )
    db.session.add(row)
    db.session.commit()
    return row


def list_consultations(member_id: int) -> list[Consultation]:
    get_member(member_id)
    return list(
        db.session.execute(
            sa.select(Consultation)
            .where(Consultation.member_id == member_id)
            .order_by(Consultation.held_at.desc())
        ).scalars()
    )


# ---------------------------------------------------------------------------------------------
# Receipt and desk lookup


def _money(amount: int, currency: str) -> dict:
    return Money(amount, currency).as_dict()


def _when(moment: datetime | None, settings: ClinicSettings) -> dict | None:
    if moment is None:
        return None
    return {"at": moment.isoformat(), "on": local_date(moment, settings.tz).isoformat()}


def next_possible_on(
    member: Member, treatment: Treatment, now: datetime, settings: ClinicSettings
) -> date | None:
    """The min_interval rule's first possible date for this client, when it blocks today."""
    facts = rules.LineFacts(
        client=member.full_name,
        treatment=treatment.name,
        category=treatment.category,
        today=local_date(now, settings.tz),
        location="",
        min_interval_days=treatment.min_interval_days,
        last_done_on=_last_done_on(member.id, treatment.id, settings),
    )
    violation = rules.min_interval(facts)
    if violation is None:
        return None
    return date.fromisoformat(violation.extra["first_possible_on"])


def _short_day(day: date, today: date) -> str:
    """14 Jan (this year), 14 Jan 2027 (another year)."""
    return f"{day.day} {day:%b}" + ("" if day.year == today.year else f" {day.year}")


def balance_summary(
    ent: ledger.Entitlement, member: Member, now: datetime, settings: ClinicSettings
) -> dict:
    """One balance as a client reads it: "BBL: 2 of 3 left, next possible from 14 Jan" (the
    next date is the min_interval rule's, for this client, when it blocks today)."""
    treatments = [db.session.get(Treatment, tid) for tid in ent.treatment_ids]
    dates = [next_possible_on(member, t, now, settings) for t in treatments]
    # A choice credit is possible as soon as any of its treatments is.
    nxt = None if not dates or any(d is None for d in dates) else min(dates)
    units = "" if ent.unit_label == "session" else f" {ent.unit_label}s"
    text = f"{ent.label}: {ent.remaining} of {ent.granted}{units} left"
    if nxt is not None:
        text += f", next possible from {_short_day(nxt, local_date(now, settings.tz))}"
    return {
        "granted": ent.granted,
        "next_possible_on": nxt.isoformat() if nxt else None,
        "summary": text,
    }


def _remaining(
    usable_ids: list[int],
    now: datetime,
    settings: ClinicSettings,
    member: Member | None = None,
) -> list[dict]:
    result = []
    for ent in ledger.entitlements(usable_ids, now):
        said = balance_summary(ent, member, now, settings) if member is not None else {}
        result.append(
            {
                "label": ent.label,
                "treatments": [
                    {"code": t.code, "name": t.name}
                    for t in db.session.execute(
                        sa.select(Treatment).where(Treatment.id.in_(ent.treatment_ids))
                    ).scalars()
                ],
                "remaining": ent.remaining,
                "unit_label": ent.unit_label,
                "next_expiry": _when(ent.next_expiry, settings),
                "credits": [
                    {
                        "credit_id": lot.credit.id,
                        "kind": lot.credit.product_type,
                        "remaining": lot.remaining,
                        "expires": _when(lot.expires_at, settings),
                    }
                    for lot in ent.lots
                ],
                **said,
            }
        )
    return result


def _plan_name_of(credit: Credit) -> str:
    grant = db.session.get(CreditGrant, credit.grant_id)
    version = db.session.get(PlanVersion, grant.plan_version_id)
    return version.plan.name


def receipt(visit_id: int, *, now: datetime, settings: ClinicSettings) -> dict:
    """What was redeemed (from which credit, expiring when), what remains, and what is owed."""
    visit = get_visit(visit_id)
    member = get_member(visit.member_id)
    cur = visit.currency
    lines, charged, discount, total, tax = [], 0, 0, 0, 0
    for line in visit.lines:
        entries = db.session.execute(
            sa.select(LedgerEntry)
            .where(LedgerEntry.visit_line_id == line.id)
            .order_by(LedgerEntry.id)
        ).scalars()
        redeemed = [
            {
                "credit_id": e.credit_id,
                "kind": e.credit.product_type,
                "plan": _plan_name_of(e.credit),
                "membership_id": e.membership_id,
                "quantity": -e.quantity,
                "expires": _when(e.expires_at, settings),
            }
            for e in entries
            if e.kind == EntryKind.REDEEM
        ]
        overrides = db.session.execute(
            sa.select(RuleOverride).where(RuleOverride.visit_line_id == line.id)
        ).scalars()
        if line.status == LineStatus.CHARGED:
            charged += line.list_price_minor
            discount += line.discount_minor
            total += line.amount_minor
            if line.treatment.tax_inclusive:
                tax += line.amount_minor - net_of_tax(line.amount_minor, settings.tax_rate_bp)
            else:
                tax += line.amount_minor - (line.list_price_minor - line.discount_minor)
        lines.append(
            {
                "id": line.id,
                "treatment": {"code": line.treatment.code, "name": line.treatment.name},
                "quantity": line.quantity,
                "unit_label": line.treatment.unit_label if line.treatment.in_units else "session",
                "provider": {"id": line.provider_id, "name": line.provider.name},
                "status": line.status,
                "redeemed_from": redeemed,
                "list_price": _money(line.list_price_minor, cur),
                "discount": _money(line.discount_minor, cur),
                "amount": _money(line.amount_minor, cur),
                "overrides": [
                    {"rule": o.rule, "reason": o.reason, "actor": o.actor, "at": o.at.isoformat()}
                    for o in overrides
                ],
                "voided": None
                if line.status != LineStatus.VOIDED
                else {
                    "at": line.voided_at.isoformat(),
                    "by": line.voided_by,
                    "reason": line.void_reason,
                },
            }
        )
    paid = visit.amount_due_minor if visit.payment_status == "paid" else 0
    usable = [m.id for m in memberships_usable_by(member.id)]
    return {
        "visit_id": visit.id,
        "state": visit.state,
        "client": {"id": member.id, "name": member.full_name},
        "location": _location_name(visit),
        "opened": _when(visit.opened_at, settings),
        "closed": _when(visit.closed_at, settings),
        "lines": lines,
        "remaining": _remaining(usable, now, settings),
        "owed": {
            "list_price": _money(charged, cur),
            "member_discount": _money(discount, cur),
            "total": _money(total, cur),
            "tax_included": _money(tax, cur),
            "paid": _money(paid, cur),
            "refund_due": _money(max(0, paid - total), cur),
        },
        "payment": {"status": visit.payment_status, "method": visit.payment_method},
    }


def find_members(q: str, *, limit: int = 10) -> list[Member]:
    """The desk's search box: the members' search (name, email or phone digits, each by its
    index), so the lookup finds what the search page finds, as fast."""
    if not q.strip():
        raise InvalidInput("Type a name, email or phone number.", errors={"q": ["empty"]})
    return search_members(q, limit=limit).items


def desk_lookup(
    *, member_id: int | None, q: str | None, now: datetime, settings: ClinicSettings
) -> dict:
    """Everything the desk needs in one call: who, membership state in words, balances with
    expiry, and for each included treatment what would block it today."""
    if member_id is None:
        if not q:
            raise InvalidInput("Give member_id or q.", errors={"member_id": ["or q"]})
        found = find_members(q)
        if not found:
            raise NotFound(f"No client matches {q!r}.")
        if len(found) > 1:
            return {
                "client": None,
                "candidates": [
                    {"id": m.id, "name": m.full_name, "email": m.email, "phone": m.phone}
                    for m in found
                ],
            }
        member = found[0]
    else:
        member = get_member(member_id)
    usable = memberships_usable_by(member.id)
    memberships = [
        {
            "id": m.id,
            "plan": m.plan_version.plan.name,
            "kind": m.plan_version.plan.kind,
            "holder": "own" if m.member_id == member.id else "household",
            "state": m.state,
            "state_words": state_words(m, now, settings),
            "can_redeem": m.can_redeem(now),
        }
        for m in usable
    ]
    included: dict[int, Treatment] = {}
    for m in usable:
        for item in m.plan_version.items:
            for t in item.treatments:
                included[t.id] = t
    for ent in ledger.entitlements([m.id for m in usable], now):
        for tid in ent.treatment_ids:
            included.setdefault(tid, db.session.get(Treatment, tid))
    treatments = []
    for t in sorted(included.values(), key=lambda t: t.name):
        picture = _credit_picture(t, usable, now, settings)
        uses_credits = _uses_credits("auto", picture)
        facts = _facts(
            member=member,
            treatment=t,
            quantity=1,
            uses_credits=uses_credits,
            picture=picture,
            location_name="",
            now=now,
            settings=settings,
        )
        blocked_by = rules.check(facts)
        interval = next((v for v in blocked_by if v.rule == "min_interval"), None)
        treatments.append(
            {
                "code": t.code,
                "name": t.name,
                "remaining": picture.redeemable_balance,
                "would_pay_with": "credits" if uses_credits else "charge",
                "blocked_by": [{"rule": v.rule, "detail": v.detail} for v in blocked_by],
                "next_possible_on": interval.extra["first_possible_on"] if interval else None,
            }
        )
    return {
        "client": {
            "id": member.id,
            "name": member.full_name,
            "email": member.email,
            "phone": member.phone,
        },
        "candidates": [],
        "memberships": memberships,
        "member_discount_bp": _member_discount_bp(usable, now),
        "balances": _remaining([m.id for m in usable], now, settings, member),
        "treatments": treatments,
    }
