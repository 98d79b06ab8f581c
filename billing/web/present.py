"""How things read on a page: money with its currency, clinic-local dates, a membership's state in
plain words and a colour."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime

from flask import Flask, current_app
from markupsafe import Markup

from billing import clock
from billing.memberships.models import Membership, State
from billing.money import exponent, to_major_str

CURRENCY_SIGNS = {"SGD": "S$", "USD": "US$", "AUD": "A$", "EUR": "€", "GBP": "£", "MYR": "RM"}


def money(amount_minor: int | None, currency: str | None = None) -> str:
    """32700 SGD -> 'S$327.00'; 1238800 -> 'S$12,388.00'. Exact: no floats on the way."""
    if amount_minor is None:
        return "—"
    currency = currency or current_app.config.get("CLINIC_CURRENCY", "SGD")
    text = to_major_str(abs(amount_minor), currency)
    whole, _, frac = text.partition(".")
    whole = f"{int(whole):,}"
    sign = "−" if amount_minor < 0 else ""
    sign_or_code = CURRENCY_SIGNS.get(currency, currency + " ")
    return f"{sign}{sign_or_code}{whole}{'.' + frac if exponent(currency) else ''}"


def _local(moment: datetime) -> datetime:
    return moment.astimezone(clock.clinic_tz())


def day(value: datetime | date | None) -> str:
    """'Mon 2 Mar 2026' on the clinic's calendar."""
    if value is None:
        return "—"
    if isinstance(value, datetime):
        value = _local(value).date()
    return f"{value:%a} {value.day} {value:%b %Y}"


def when(value: datetime | None) -> str:
    """'2 Mar 2026, 10:05' in the clinic's time zone."""
    if value is None:
        return "—"
    local = _local(value)
    return f"{local.day} {local:%b %Y, %H:%M}"


def iso_day(value: datetime | date | None) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        value = _local(value).date()
    return value.isoformat()


@dataclass(frozen=True)
class Status:
    words: str  # what the receptionist reads aloud
    tone: str  # ok, warn, bad, info, muted: the badge colour
    label: str  # one or two words for the badge


def membership_status(membership: Membership, now: datetime) -> Status:
    state = State(membership.state)
    if state == State.ACTIVE:
        until = membership.current_period_end
        return Status(f"Active, paid until {day(until)}." if until else "Active.", "ok", "Active")
    if state == State.PAST_DUE:
        since = day(membership.past_due_since)
        if membership.in_grace(now):
            grace = membership.grace_ends_at
            return Status(
                f"Past due since {since}: a payment failed. Treatments can still be redeemed"
                + (f" until {day(grace)}." if grace else "."),
                "warn",
                "Past due",
            )
        return Status(
            f"Past due since {since}: a payment failed and the grace period is over. "
            "Treatments cannot be redeemed until the card is updated.",
            "bad",
            "Past due",
        )
    if state == State.PAUSED:
        until = membership.resume_at
        return Status(
            f"Paused since {day(membership.paused_at)}"
            + (f", until {day(until)}." if until else ", until the member resumes it.")
            + " Nothing is billed and nothing can be redeemed while paused.",
            "info",
            "Paused",
        )
    if state == State.CANCEL_AT_PERIOD_END:
        return Status(
            f"Active, ending on {day(membership.cancel_at)}: the member has cancelled.",
            "warn",
            "Ending",
        )
    if state == State.PENDING:
        return Status(
            "Waiting for the first payment: nothing can be redeemed yet.", "muted", "Pending"
        )
    return Status(f"Cancelled on {day(membership.canceled_at)}.", "muted", "Cancelled")


def badge(status: Status) -> Markup:
    return Markup('<span class="badge badge-{}">{}</span>').format(status.tone, status.label)


def plural(count: int, word: str) -> str:
    if count == 1 or word.endswith("s"):
        return f"{count} {word}"
    return f"{count} {word}s"


def register_template_helpers(app: Flask) -> None:
    app.jinja_env.filters.update(
        money=lambda amount, currency=None: money(amount, currency),
        day=day,
        when=when,
        iso_day=iso_day,
    )
    app.jinja_env.globals.update(
        membership_status=membership_status,
        badge=badge,
        plural=plural,
        now=clock.now,
        current_viewer=current_viewer,
        viewer_name=viewer_name,
    )

    @app.context_processor
    def clinic():
        return {"clinic_name": app.config.get("CLINIC_NAME", "The clinic")}


def current_viewer():
    """The signed-in principal on a web page (None elsewhere or when signed out)."""
    from flask import request

    from billing.auth.access import current_principal
    from billing.errors import DomainError
    from billing.web import WEB_BLUEPRINTS

    if request.blueprint not in WEB_BLUEPRINTS:
        return None
    try:
        return current_principal()
    except DomainError:
        return None


def viewer_name(principal) -> str:
    """What the top bar calls the signed-in person: their name if known, else their email."""
    from billing.extensions import db
    from billing.members.models import Member
    from billing.staff.models import Staff
    from billing.web.models import User

    if principal is None or not principal.actor.startswith("user:"):
        return principal.actor if principal else ""
    user = db.session.get(User, int(principal.actor.split(":", 1)[1]))
    if user is None:
        return ""
    if user.member_id:
        member = db.session.get(Member, user.member_id)
        return member.full_name if member else user.email
    if user.staff_id:
        staff = db.session.get(Staff, user.staff_id)
        return staff.name if staff else user.email
    return user.email
