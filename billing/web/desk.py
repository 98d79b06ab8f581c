"""The front desk (staff): find a client as you type, see their card (membership state in plain
words, what is left and until when, and why a treatment cannot be redeemed today), redeem with
one click, run the visit, void a line, close and print the receipt.

Every change is a billing.checkout.service verb; a refusal (a clinic rule, not enough credits) is
shown in the service's own words, which a receptionist can read aloud."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

import sqlalchemy as sa
from flask import (
    abort,
    flash,
    redirect,
    render_template,
    request,
    session,
    url_for,
)

from billing import clock
from billing.auth.access import current_principal, requires
from billing.checkout import service as checkout
from billing.checkout.models import LineStatus, Visit, VisitState
from billing.clinic.models import Location
from billing.errors import DomainError, InvalidInput
from billing.extensions import db
from billing.members import service as members
from billing.memberships.models import Membership, State
from billing.plans.models import Plan, PlanKind, Treatment
from billing.settings import clinic_settings
from billing.staff.models import Staff
from billing.web import web_blueprint
from billing.web.forms import ActionForm, AddLineForm, VoidLineForm, choices

bp = web_blueprint("web_desk", __name__, url_prefix="/desk")


def _actor() -> str:
    return current_principal().actor


def _is_admin() -> bool:
    return current_principal().is_admin


def _say(error: DomainError) -> None:
    """Flash a refusal in the service's words; every blocking rule if there are several."""
    blocked = error.extra.get("blocked_by") if error.extra else None
    if blocked:
        for item in blocked:
            flash(item["detail"], "error")
    else:
        flash(error.detail, "error")


def _desk_location() -> Location:
    """Where this desk is: the signed-in staff member's location, else the clinic's first."""
    principal = current_principal()
    if principal.staff_id:
        staff = db.session.get(Staff, principal.staff_id)
        if staff is not None:
            return db.session.get(Location, staff.location_id)
    location = db.session.scalar(sa.select(Location).order_by(Location.id).limit(1))
    if location is None:
        raise InvalidInput("No clinic location is set up yet: an admin must add one first.")
    return location


def _providers(location_id: int) -> list[Staff]:
    return list(
        db.session.scalars(
            sa.select(Staff)
            .where(Staff.active.is_(True), Staff.location_id == location_id)
            .order_by(Staff.name)
        )
    )


# ------------------------------------------------------------------------------ search


@dataclass
class Found:
    member: object
    membership: Membership | None


def _search(q: str) -> list[Found]:
    if not q.strip():
        return []
    page = members.search_members(q, limit=12)
    ids = [m.id for m in page.items]
    tiers: dict[int, Membership] = {}
    if ids:
        for membership in db.session.scalars(
            sa.select(Membership)
            .where(Membership.member_id.in_(ids), Membership.state != State.CANCELED)
            .order_by(Membership.id)
        ):
            tiers.setdefault(membership.member_id, membership)
    return [Found(m, tiers.get(m.id)) for m in page.items]


def _open_visits(location_id: int) -> list[tuple[Visit, object]]:
    """Today's open visits at this desk, with their client."""
    from billing.members.models import Member

    rows = db.session.execute(
        sa.select(Visit, Member)
        .join(Member, Member.id == Visit.member_id)
        .where(Visit.state == VisitState.OPEN, Visit.location_id == location_id)
        .order_by(Visit.opened_at)
    )
    return [(visit, member) for visit, member in rows]


@bp.get("")
@requires("staff")
def home():
    q = request.args.get("q", "")
    location = db.session.scalar(sa.select(Location).order_by(Location.id).limit(1))
    visits = _open_visits(_desk_location().id) if location else []
    return render_template(
        "desk/home.html", q=q, results=_search(q), open_visits=visits, now=clock.now()
    )


@bp.get("/search")
@requires("staff")
def search():
    """The results fragment the search box fetches as you type."""
    q = request.args.get("q", "")
    return render_template("desk/_results.html", q=q, results=_search(q), now=clock.now())


# ------------------------------------------------------------------------------ the card


@dataclass
class TreatmentRow:
    code: str
    name: str
    in_units: bool
    unit_label: str
    blocked_by: list[dict] = field(default_factory=list)


@dataclass
class BalanceRow:
    label: str
    remaining: int
    unit_label: str
    next_expiry: datetime | None
    treatments: list[TreatmentRow]
    granted: int = 0
    summary: str = ""  # "BBL: 2 of 3 left, next possible from 14 Jan"


def _card(member_id: int, now: datetime) -> dict:
    settings = clinic_settings()
    lookup = checkout.desk_lookup(member_id=member_id, q=None, now=now, settings=settings)
    treatments = {t["code"]: t for t in lookup["treatments"]}
    codes = {
        code
        for balance in lookup["balances"]
        for code in [t["code"] for t in balance["treatments"]]
    }
    by_code = {
        t.code: t
        for t in db.session.scalars(
            sa.select(Treatment).where(Treatment.code.in_(codes | set(treatments)))
        )
    }

    def row(code: str) -> TreatmentRow:
        t = by_code[code]
        return TreatmentRow(
            code=code,
            name=t.name,
            in_units=t.in_units,
            unit_label=t.unit_label,
            blocked_by=treatments.get(code, {}).get("blocked_by", []),
        )

    balances = []
    for balance in lookup["balances"]:
        expiry = balance["next_expiry"]["at"] if balance["next_expiry"] else None
        balances.append(
            BalanceRow(
                label=balance["label"],
                remaining=balance["remaining"],
                unit_label=balance["unit_label"],
                next_expiry=datetime.fromisoformat(expiry) if expiry else None,
                treatments=[row(t["code"]) for t in balance["treatments"]],
                granted=balance.get("granted", 0),
                summary=balance.get("summary", ""),
            )
        )
    in_balances = {t.code for b in balances for t in b.treatments}
    none_left = [
        row(code)
        for code, t in sorted(treatments.items(), key=lambda kv: kv[1]["name"])
        if code not in in_balances
    ]
    ids = [m["id"] for m in lookup["memberships"]]
    memberships = (
        list(db.session.scalars(sa.select(Membership).where(Membership.id.in_(ids)))) if ids else []
    )
    return {
        "lookup": lookup,
        "balances": balances,
        "none_left": none_left,
        "memberships": memberships,
        "discount_bp": lookup["member_discount_bp"],
    }


def _open_visit_of(member_id: int) -> Visit | None:
    return db.session.scalar(
        sa.select(Visit)
        .where(Visit.member_id == member_id, Visit.state == VisitState.OPEN)
        .order_by(Visit.opened_at.desc())
        .limit(1)
    )


@bp.get("/members/<int:member_id>")
@requires("staff")
def member(member_id: int):
    now = clock.now()
    client = members.get_member(member_id)
    location = _desk_location()
    providers = _providers(location.id)
    return render_template(
        "desk/member.html",
        client=client,
        card=_card(member_id, now),
        visit=_open_visit_of(member_id),
        providers=providers,
        provider_id=session.get("desk_provider"),
        action=ActionForm(),
        series_on_sale=_series_on_sale(),
        now=now,
        State=State,
    )


# ------------------------------------------------------------------------------ selling a series


def _series_on_sale() -> list[Plan]:
    return [
        plan
        for plan in db.session.scalars(
            sa.select(Plan)
            .where(Plan.kind == PlanKind.SERIES, Plan.retired_at.is_(None))
            .order_by(Plan.name)
        )
        if plan.current_version is not None
    ]


@bp.post("/members/<int:member_id>/series")
@requires("staff")
def sell_series(member_id: int):
    """Sell a treatment series from the client's card: paid now at the desk or by the card on
    file, in full or in the plan's instalments."""
    from billing.series import service as series

    ActionForm().validate_on_submit()
    back = redirect(url_for("web_desk.member", member_id=member_id) + "#series")
    try:
        instalments = int(request.form.get("instalments") or "1")
    except ValueError:
        instalments = 0
    payment = request.form.get("payment", "desk")
    if payment not in series.LATER_PAYMENT_METHODS:
        flash("Take the payment at the desk or by the card on file.", "error")
        return back
    try:
        sold = series.purchase(
            member_id,
            plan_code=request.form.get("plan", ""),
            payment=payment,
            instalments=instalments,
            actor=_actor(),
            now=clock.now(),
            settings=clinic_settings(),
        )
    except DomainError as exc:
        db.session.rollback()
        _say(exc)
        return back
    plan = sold.membership.plan_version.plan
    until = sold.credits_expire_at
    left = "; ".join(b["summary"] for b in sold.balances)
    paid = (
        f"paid in full ({_money(sold.purchase.total_minor, sold.purchase.currency)})"
        if sold.purchase.instalments == 1
        else f"instalment 1 of {sold.purchase.instalments} paid "
        f"({_money(sold.purchase.instalment_rows[0].total_minor, sold.purchase.currency)})"
    )
    valid = f", valid until {until.astimezone(clinic_settings().tz):%-d %B %Y}" if until else ""
    flash(f"Sold {plan.name}: {paid}{valid}. {left}".strip(), "success")
    return back


@bp.post("/members/<int:member_id>/visits")
@requires("staff")
def open_visit(member_id: int):
    visit = checkout.open_visit(
        member_id=member_id,
        location=_desk_location().code,
        supervising_staff_id=None,
        actor=_actor(),
        now=clock.now(),
        settings=clinic_settings(),
    )
    return redirect(url_for("web_desk.visit", visit_id=visit.id))


@bp.post("/members/<int:member_id>/redeem")
@requires("staff")
def redeem(member_id: int):
    """One click from the card: into today's open visit (opened if need be), paid by credits."""
    code = request.form.get("treatment", "")
    back = redirect(url_for("web_desk.member", member_id=member_id) + "#included")
    try:
        provider_id = int(request.form.get("provider_id", ""))
    except ValueError:
        flash("Choose who is performing the treatment first.", "error")
        return back
    try:
        quantity = int(request.form.get(f"qty-{code}", "1") or "1")
    except ValueError:
        quantity = 0
    session["desk_provider"] = provider_id
    try:
        line = checkout.redeem_at_desk(
            member_id=member_id,
            location=_desk_location().code,
            treatment=code,
            provider_id=provider_id,
            quantity=quantity,
            pay_with="credits",
            is_admin=_is_admin(),
            actor=_actor(),
            now=clock.now(),
            settings=clinic_settings(),
        )
    except DomainError as exc:
        db.session.rollback()
        _say(exc)
        return back
    amount = f"{line.quantity} × " if line.quantity > 1 else ""
    flash(f"Redeemed {amount}{line.treatment.name} (performed by {line.provider.name}).", "success")
    return back


# ------------------------------------------------------------------------------ the visit


def _visit(visit_id: int) -> Visit:
    return checkout.get_visit(visit_id)


@bp.get("/visits/<int:visit_id>")
@requires("staff")
def visit(visit_id: int):
    visit = _visit(visit_id)
    client = members.get_member(visit.member_id)
    form = AddLineForm()
    _fill_line_choices(form, visit)
    form.provider_id.data = session.get("desk_provider")
    return render_template(
        "desk/visit.html",
        visit=visit,
        client=client,
        form=form,
        void_form=VoidLineForm(),
        action=ActionForm(),
        supervisors=_providers(visit.location_id),
        receipt=checkout.receipt(visit.id, now=clock.now(), settings=clinic_settings()),
        LineStatus=LineStatus,
    )


def _fill_line_choices(form: AddLineForm, visit: Visit) -> None:
    treatments = db.session.scalars(
        sa.select(Treatment).where(Treatment.retired_at.is_(None)).order_by(Treatment.name)
    )
    form.treatment_id.choices = choices((t.id, t.name) for t in treatments)
    form.provider_id.choices = choices(
        (s.id, f"{s.name} ({s.role.replace('_', ' ')})") for s in _providers(visit.location_id)
    )


@bp.post("/visits/<int:visit_id>/lines")
@requires("staff")
def add_line(visit_id: int):
    visit = _visit(visit_id)
    form = AddLineForm()
    _fill_line_choices(form, visit)
    back = redirect(url_for("web_desk.visit", visit_id=visit_id))
    if not form.validate_on_submit():
        for name, errors in form.errors.items():
            label = getattr(form, name).label.text if hasattr(form, name) else name
            flash(f"{label}: {'; '.join(errors)}", "error")
        return back
    treatment = db.session.get(Treatment, form.treatment_id.data)
    pay_with = request.form.get("pay_with", "auto")
    session["desk_provider"] = form.provider_id.data
    try:
        line = checkout.add_line(
            visit.id,
            treatment=treatment.code,
            provider_id=form.provider_id.data,
            quantity=form.quantity.data,
            pay_with=pay_with if pay_with in checkout.PAY_WITH else "auto",
            is_admin=_is_admin(),
            actor=_actor(),
            now=clock.now(),
            settings=clinic_settings(),
        )
    except DomainError as exc:
        db.session.rollback()
        _say(exc)
        return back
    if line.status == LineStatus.REDEEMED:
        flash(f"{treatment.name}: covered by the membership.", "success")
    else:
        flash(f"{treatment.name}: charged, {_money(line.amount_minor, line.currency)}.", "success")
    return back


def _money(amount: int, currency: str) -> str:
    from billing.web.present import money

    return money(amount, currency)


@bp.post("/visits/<int:visit_id>/lines/<int:line_id>/void")
@requires("staff")
def void_line(visit_id: int, line_id: int):
    form = VoidLineForm()
    back = redirect(
        request.form.get("back_to") == "card"
        and _card_url(visit_id)
        or url_for("web_desk.visit", visit_id=visit_id)
    )
    if not form.validate_on_submit():
        flash("Say why the line is voided (a few words are enough).", "error")
        return back
    try:
        line = checkout.void_line(
            visit_id,
            line_id,
            reason=form.reason.data,
            is_admin=_is_admin(),
            actor=_actor(),
            now=clock.now(),
        )
    except DomainError as exc:
        db.session.rollback()
        _say(exc)
        return back
    flash(f"{line.treatment.name} voided; any credit used is back in the balance.", "success")
    return back


def _card_url(visit_id: int) -> str:
    return url_for("web_desk.member", member_id=_visit(visit_id).member_id)


@bp.post("/visits/<int:visit_id>/supervisor")
@requires("staff")
def set_supervisor(visit_id: int):
    ActionForm().validate_on_submit()
    raw = request.form.get("supervising_staff_id", "")
    try:
        checkout.set_supervisor(
            visit_id,
            supervising_staff_id=int(raw) if raw else None,
            actor=_actor(),
            now=clock.now(),
        )
    except (DomainError, ValueError) as exc:
        db.session.rollback()
        flash(getattr(exc, "detail", "Choose a supervisor from the list."), "error")
    else:
        flash("Supervising physician recorded.", "success")
    return redirect(url_for("web_desk.visit", visit_id=visit_id))


@bp.post("/visits/<int:visit_id>/close")
@requires("staff")
def close_visit(visit_id: int):
    ActionForm().validate_on_submit()
    payment = request.form.get("payment", "desk")
    try:
        checkout.close_visit(
            visit_id,
            payment=payment,
            actor=_actor(),
            now=clock.now(),
            settings=clinic_settings(),
        )
    except DomainError as exc:
        db.session.rollback()
        _say(exc)
        return redirect(url_for("web_desk.visit", visit_id=visit_id))
    flash("Visit closed.", "success")
    return redirect(url_for("web_desk.receipt", visit_id=visit_id))


@bp.get("/visits/<int:visit_id>/receipt")
@requires("staff")
def receipt(visit_id: int):
    visit = _visit(visit_id)
    if visit is None:
        abort(404)
    return render_template(
        "desk/receipt.html",
        visit=visit,
        receipt=checkout.receipt(visit.id, now=clock.now(), settings=clinic_settings()),
    )
