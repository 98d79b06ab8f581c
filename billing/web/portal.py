"""The member portal: my tier and price, my next payment, what I have left and until when, my
history, and the buttons to pause, resume, cancel, change tier and update my card.

A member acts only on memberships they own (a household beneficiary sees what they may use).
Every change shows what it means (cancellation terms, the prorated amount) before it is
confirmed, and is made by the same billing.memberships verbs as the API."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from flask import current_app, flash, redirect, render_template, request, url_for

from billing import clock
from billing.auth.access import current_principal, ensure_member_access, requires
from billing.checkout import service as checkout
from billing.entitlements import service as ledger
from billing.errors import DomainError, Forbidden, NotFound, ServiceUnavailable
from billing.extensions import db
from billing.members.models import Member
from billing.memberships import service as memberships
from billing.memberships.models import Membership, State
from billing.money import div_round_half_up
from billing.plans.models import Plan, PlanKind, PlanVersion
from billing.settings import clinic_settings
from billing.stripe_sync import service as stripe_billing
from billing.web import web_blueprint
from billing.web.forms import ActionForm, CancelForm, PauseForm

bp = web_blueprint("web_portal", __name__, url_prefix="/me")


def _me() -> Member:
    principal = current_principal()
    if principal.member_id is None:
        raise Forbidden("The member portal is for members.")
    member = db.session.get(Member, principal.member_id)
    if member is None:
        raise NotFound("Your member record was not found.")
    return member


def _my_membership(membership_id: int) -> Membership:
    """A membership the signed-in member owns; anybody else's is a 403."""
    membership = db.session.get(Membership, membership_id)
    if membership is None:
        raise NotFound("There is no such membership.")
    ensure_member_access(current_principal(), membership.member_id)
    return membership


def _actor() -> str:
    return current_principal().actor


def _back():
    return redirect(url_for("web_portal.home"))


# ------------------------------------------------------------------------------ reading


@dataclass
class HistoryItem:
    at: datetime
    kind: str  # visit, payment
    title: str
    detail: str
    amount_minor: int | None
    currency: str | None
    link: str | None = None


def history_of(member_id: int, *, limit: int = 25) -> list[HistoryItem]:
    """Visits and payments, newest first."""
    from billing.checkout.models import LineStatus, Visit
    from billing.payments.models import Payment

    items: list[HistoryItem] = []
    visits = db.session.scalars(
        sa.select(Visit)
        .where(Visit.member_id == member_id)
        .order_by(Visit.opened_at.desc())
        .limit(limit)
    )
    for visit in visits:
        lines = [line for line in visit.lines if line.status != LineStatus.VOIDED]
        names = ", ".join(
            f"{line.treatment.name}" + (f" × {line.quantity}" if line.quantity > 1 else "")
            for line in lines
        )
        covered = sum(1 for line in lines if line.status == LineStatus.REDEEMED)
        detail = names or "No treatments"
        if covered:
            detail += f" · {covered} covered by your membership"
        items.append(
            HistoryItem(
                at=visit.opened_at,
                kind="visit",
                title="Visit",
                detail=detail,
                amount_minor=visit.amount_due_minor or None,
                currency=visit.currency,
                link=url_for("web_portal.receipt", visit_id=visit.id),
            )
        )
    payments = db.session.scalars(
        sa.select(Payment)
        .where(Payment.member_id == member_id)
        .order_by(Payment.occurred_at.desc())
        .limit(limit)
    )
    words = {"charge": "Payment", "refund": "Refund", "dispute": "Disputed payment"}
    for payment in payments:
        status = "" if payment.status == "succeeded" else f" ({payment.status.replace('_', ' ')})"
        items.append(
            HistoryItem(
                at=payment.occurred_at,
                kind="payment",
                title=words.get(payment.kind, payment.kind.title()) + status,
                detail="Card" if payment.method == "card" else payment.method.replace("_", " "),
                amount_minor=-payment.amount_minor
                if payment.kind in ("refund", "dispute")
                else payment.amount_minor,
                currency=payment.currency,
            )
        )
    items.sort(key=lambda item: item.at, reverse=True)
    return items[:limit]


@dataclass
class TierChangePreview:
    """What changing tier would do, shown before the member confirms."""

    current: PlanVersion
    new: PlanVersion
    upgrade: bool
    prorated_minor: int  # charged now for the rest of this period (tax included as priced)
    effective_at: datetime | None


def _months(version: PlanVersion) -> int:
    return version.interval_count * (12 if version.interval == "year" else 1)


def preview_tier_change(
    membership: Membership, new: PlanVersion, *, now: datetime
) -> TierChangePreview:
    """An upgrade applies now and the price difference for the rest of the period is charged
    (what Stripe prorates); a downgrade waits for the next period and costs nothing now."""
    old = membership.plan_version
    upgrade = new.price_minor * _months(old) > old.price_minor * _months(new)
    start, end = membership.current_period_start, membership.current_period_end
    prorated = 0
    if upgrade and start and end and end > now and membership.state == State.ACTIVE:
        left = (end - max(now, start)) // timedelta(microseconds=1)
        total = (end - start) // timedelta(microseconds=1)
        prorated = div_round_half_up(max(0, new.price_minor - old.price_minor) * left, total)
    effective = now if upgrade or membership.state == State.PENDING or not end else end
    return TierChangePreview(old, new, upgrade, prorated, effective)


def _tiers_on_sale() -> list[Plan]:
    return list(
        db.session.scalars(
            sa.select(Plan)
            .where(Plan.kind == PlanKind.TIER, Plan.retired_at.is_(None))
            .order_by(Plan.id)
        )
    )


@bp.get("")
@requires("client")
def home():
    member = _me()
    now = clock.now()
    owned, shared = [], []
    for membership in memberships.memberships_of(member.id):
        if membership.state == State.CANCELED or _unclaimed_gift(membership):
            continue  # a gift bought for someone else is listed under "Gifts you gave"
        (owned if membership.member_id == member.id else shared).append(membership)
    settings = clinic_settings()
    cards = []
    for m in owned + shared:
        entitlements = ledger.entitlements([m.id], now)
        cards.append(
            {
                "membership": m,
                "entitlements": entitlements,
                # "BBL: 2 of 3 left, next possible from 14 Jan", one per balance
                "summaries": [
                    checkout.balance_summary(e, member, now, settings)["summary"]
                    for e in entitlements
                ],
                "next_payment": memberships.next_payment_at(m),
            }
        )
    return render_template(
        "portal/home.html",
        member=member,
        cards=cards,
        gifts_given=_gifts_given(member.id),
        history=history_of(member.id),
        action=ActionForm(),
        now=now,
        State=State,
    )


def _unclaimed_gift(membership: Membership) -> bool:
    return membership.source == memberships.GIFT_SOURCE and membership.state == State.PENDING


def _gifts_given(member_id: int) -> list:
    from billing.gifts.models import Gift

    return list(
        db.session.scalars(
            sa.select(Gift)
            .where(Gift.buyer_member_id == member_id)
            .order_by(Gift.purchased_at.desc())
            .limit(20)
        )
    )


@bp.post("/gifts/claim")
@requires("client")
def claim_gift():
    """Claim a gift code: the gift becomes the member's own (a new membership, or months added
    to theirs of the same tier) from today."""
    from billing.gifts import service as gifts

    member = _me()
    ActionForm().validate_on_submit()
    code = (request.form.get("code") or "").strip()
    if not code:
        flash("Type the gift code you were given.", "error")
        return _back()
    try:
        view = gifts.claim(
            code,
            member_id=member.id,
            actor=_actor(),
            now=clock.now(),
            settings=clinic_settings(),
        )
    except DomainError as exc:
        db.session.rollback()
        flash(exc.detail, "error")
        return _back()
    gift = view.gift
    plan = gift.plan_version.plan
    what = (
        plan.name
        if plan.kind == PlanKind.SERIES
        else f"{gift.months} month{'' if gift.months == 1 else 's'} of {plan.name}"
    )
    flash(f"Gift claimed: {what}, from today. Enjoy!", "success")
    return _back()


@bp.get("/visits/<int:visit_id>/receipt")
@requires("client")
def receipt(visit_id: int):
    from billing.checkout.models import Visit

    visit = db.session.get(Visit, visit_id)
    if visit is None:
        raise NotFound("There is no such visit.")
    ensure_member_access(current_principal(), visit.member_id)
    from billing.checkout import service as checkout
    from billing.settings import clinic_settings

    return render_template(
        "desk/receipt.html",
        visit=visit,
        receipt=checkout.receipt(visit.id, now=clock.now(), settings=clinic_settings()),
    )


# ------------------------------------------------------------------------------ changing


@bp.route("/memberships/<int:membership_id>/pause", methods=["GET", "POST"])
@requires("client")
def pause(membership_id: int):
    membership = _my_membership(membership_id)
    form = PauseForm()
    if form.validate_on_submit():
        resume_at = None
        if form.resume_on.data:
            resume_at = clock.start_of_local_day(form.resume_on.data)
        stripe_billing.pause(
            membership,
            actor=_actor(),
            now=clock.now(),
            reason=form.reason.data or "paused by the member",
            resume_at=resume_at,
        )
        until = f" until {form.resume_on.data:%-d %B %Y}" if form.resume_on.data else ""
        flash(
            f"Your membership is paused{until}. Nothing is billed while it is paused, and "
            "what you have left waits for you.",
            "success",
        )
        return _back()
    return render_template("portal/pause.html", membership=membership, form=form), (
        422 if request.method == "POST" else 200
    )


@bp.post("/memberships/<int:membership_id>/resume")
@requires("client")
def resume(membership_id: int):
    membership = _my_membership(membership_id)
    ActionForm().validate_on_submit()
    stripe_billing.resume(
        membership, actor=_actor(), now=clock.now(), reason="resumed by the member"
    )
    flash("Welcome back: your membership is active again.", "success")
    return _back()


@bp.route("/memberships/<int:membership_id>/cancel", methods=["GET", "POST"])
@requires("client")
def cancel(membership_id: int):
    membership = _my_membership(membership_id)
    terms = memberships.cancellation_terms(membership)
    form = CancelForm()
    if form.validate_on_submit():
        at_period_end = form.when.data == "period_end"
        stripe_billing.cancel(
            membership,
            at_period_end=at_period_end,
            actor=_actor(),
            now=clock.now(),
            reason=form.reason.data or "cancelled by the member",
            is_admin=False,
        )
        if membership.state == State.CANCEL_AT_PERIOD_END:
            flash(
                "Your membership will end on "
                f"{membership.cancel_at.astimezone(clock.clinic_tz()):%-d %B %Y}. Until then "
                "you can use what you have left. Changed your mind? Keep it from this page.",
                "success",
            )
        else:
            flash("Your membership is cancelled.", "success")
        return _back()
    return render_template("portal/cancel.html", membership=membership, terms=terms, form=form), (
        422 if request.method == "POST" else 200
    )


@bp.post("/memberships/<int:membership_id>/keep")
@requires("client")
def keep(membership_id: int):
    membership = _my_membership(membership_id)
    ActionForm().validate_on_submit()
    if membership.stripe_subscription_id:
        # Withdrawing a cancellation is not yet sent to Stripe: the clinic does it there.
        flash(
            "To keep your membership, please call or visit the clinic: we will withdraw the "
            "cancellation for you.",
            "info",
        )
        return _back()
    memberships.undo_cancellation(membership, actor=_actor(), now=clock.now())
    flash("Your membership continues: the cancellation is withdrawn.", "success")
    return _back()


@bp.get("/memberships/<int:membership_id>/tier")
@requires("client")
def choose_tier(membership_id: int):
    membership = _my_membership(membership_id)
    now = clock.now()
    options = [
        preview_tier_change(membership, plan.current_version, now=now)
        for plan in _tiers_on_sale()
        if plan.current_version is not None
        and plan.id != membership.plan_version.plan_id
        and plan.current_version.currency == membership.plan_version.currency
    ]
    return render_template(
        "portal/tier.html", membership=membership, options=options, chosen=None, form=None
    )


@bp.route("/memberships/<int:membership_id>/tier/<code>", methods=["GET", "POST"])
@requires("client")
def change_tier(membership_id: int, code: str):
    membership = _my_membership(membership_id)
    version = memberships.current_version(plan_code=code)
    preview = preview_tier_change(membership, version, now=clock.now())
    form = ActionForm()
    if form.validate_on_submit():
        stripe_billing.change_tier_to(membership, code, actor=_actor(), now=clock.now())
        if preview.upgrade:
            flash(
                f"You are now on {version.plan.name}: this period's extra treatments are "
                "already in your balance.",
                "success",
            )
        else:
            flash(
                f"You move to {version.plan.name} on "
                f"{preview.effective_at.astimezone(clock.clinic_tz()):%-d %B %Y}. Until then "
                "nothing changes.",
                "success",
            )
        return _back()
    return render_template(
        "portal/tier.html", membership=membership, options=None, chosen=preview, form=form
    )


@bp.post("/card")
@requires("client")
def update_card():
    """Hand over to Stripe's own card page; no card number ever touches this service."""
    member = _me()
    ActionForm().validate_on_submit()
    url = _card_update_url(member)
    if not url:
        flash(
            "Card updates online are not available yet: please call or visit the clinic and we "
            "will update your card for you.",
            "info",
        )
        return _back()
    return redirect(url, code=303)


# ------------------------------------------------------------------------------ Stripe


def _card_update_url(member: Member) -> str | None:
    """Stripe's own page where the member changes their card (None when Stripe is not set up,
    or the member has no membership billed there)."""
    owned = [
        m
        for m in memberships.memberships_of(member.id)
        if m.member_id == member.id and m.state != State.CANCELED
    ]
    if not owned or not current_app.config.get("STRIPE_API_KEY"):
        return None
    try:
        session_ = stripe_billing.update_card(
            owned[0],
            actor=_actor(),
            now=clock.now(),
            flow="portal",
            return_url=url_for("web_portal.home", _external=True),
        )
    except ServiceUnavailable:
        db.session.rollback()
        return None
    return session_.get("url")
