"""Members (the clinic's clients): created and kept by the front desk, found by the search box.

The searched columns (search_name, last_name_lower, email_normalized, phone_digits) are derived
from the member's own fields on every write, so a search never scans or lower-cases a table."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from billing.clinic.models import Location
from billing.errors import Conflict, Forbidden, InvalidInput, NotFound
from billing.extensions import db
from billing.members.models import Member, normalize_email, phone_digits

MAX_PAGE = 50
EDITABLE = (
    "first_name",
    "last_name",
    "email",
    "phone",
    "date_of_birth",
    "home_location",
    "notes",
)


@dataclass
class MemberPage:
    items: list[Member]
    limit: int
    offset: int
    next_offset: int | None


def get_member(member_id: int) -> Member:
    member = db.session.get(Member, member_id)
    if member is None:
        raise NotFound(f"No member {member_id}.")
    return member


def create_member(data: Mapping[str, Any], *, today: date) -> Member:
    """A new client. The email is their identity at the clinic: one member per address, in any
    letter case."""
    values = _checked(data, today=today)
    member = Member(**{"notes": "", **values})
    member.refresh_search_columns()
    _refuse_taken_email(member.email_normalized)
    db.session.add(member)
    _commit_unique(member.email_normalized)
    return member


def update_member(
    member_id: int, changes: Mapping[str, Any], *, today: date, by_client: bool = False
) -> Member:
    """Change what was sent (PATCH); the searched columns follow. The notes are the clinic's:
    a client may correct their own details but not the notes."""
    member = get_member(member_id)
    if by_client and "notes" in changes:
        raise Forbidden("The notes are kept by the clinic; a client key cannot change them.")
    values = _checked(changes, today=today)
    new_email = normalize_email(values["email"]) if "email" in values else None
    if new_email is not None and new_email != member.email_normalized:
        _refuse_taken_email(new_email, except_id=member.id)
    for name, value in values.items():
        setattr(member, name, value)
    member.refresh_search_columns()
    _commit_unique(member.email_normalized)
    return member


def search_members(q: str | None = None, *, limit: int = 20, offset: int = 0) -> MemberPage:
    """The front-desk search box: a name (first, last or "first last", by prefix), an email (by
    prefix) or phone digits (the start or the end of the number, so "9123 4567" finds
    "+65 9123 4567"). Ordered by last name, then full name; at most 50 a page."""
    limit = max(1, min(limit, MAX_PAGE))
    offset = max(0, offset)
    query = sa.select(Member)
    condition = _search_condition(q or "")
    if condition is not None:
        query = query.where(condition)
    rows = (
        db.session.execute(
            query.order_by(Member.last_name_lower, Member.search_name, Member.id)
            .limit(limit + 1)
            .offset(offset)
        )
        .scalars()
        .all()
    )
    more = len(rows) > limit
    return MemberPage(rows[:limit], limit, offset, offset + limit if more else None)


def client_view(member: Member) -> dict[str, Any]:
    """What a client sees of their own record: everything except the clinic's notes."""
    names = (
        "id",
        "first_name",
        "last_name",
        "full_name",
        "email",
        "phone",
        "date_of_birth",
        "home_location_id",
        "stripe_customer_id",
        "created_at",
        "updated_at",
    )
    return {name: getattr(member, name) for name in names}


# ---------------------------------------------------------------------------------------------


def _search_condition(q: str):
    text = " ".join(q.strip().lower().split())
    if not text:
        return None
    if "@" in text:
        return Member.email_normalized.startswith(text, autoescape=True)
    digits = phone_digits(text)
    if digits and not any(ch.isalpha() for ch in text):
        if len(digits) < 3:
            raise InvalidInput(
                "Give at least 3 digits to search by phone.", errors={"q": ["too short"]}
            )
        return sa.or_(
            Member.phone_digits.startswith(digits, autoescape=True),
            Member.phone_digits.endswith(digits, autoescape=True),
        )
    return sa.or_(
        Member.search_name.startswith(text, autoescape=True),
        Member.last_name_lower.startswith(text, autoescape=True),
        Member.email_normalized.startswith(text, autoescape=True),
    )


def _checked(data: Mapping[str, Any], *, today: date) -> dict[str, Any]:
    """Rules that need the database or today's date (the schema checked shapes already)."""
    values = {k: v for k, v in data.items() if k in EDITABLE}
    for name in ("first_name", "last_name", "email"):
        if name in values:
            values[name] = (values[name] or "").strip()
            if not values[name]:
                raise InvalidInput(f"{name} must not be blank.", errors={name: ["blank"]})
    born = values.get("date_of_birth")
    if born is not None and born > today:
        raise InvalidInput(
            f"date_of_birth {born.isoformat()} is in the future.",
            errors={"date_of_birth": ["must not be in the future"]},
        )
    if "phone" in values and values["phone"] is not None:
        values["phone"] = values["phone"].strip() or None
    if "home_location" in values:
        values["home_location_id"] = _location_id(values.pop("home_location"))
    return values


def _location_id(ref: int | str | None) -> int | None:
    """A location by its id or its code."""
    if ref is None:
        return None
    if isinstance(ref, int) or (isinstance(ref, str) and ref.isdigit()):
        row = db.session.get(Location, int(ref))
    else:
        row = db.session.execute(
            sa.select(Location).where(Location.code == ref.strip().lower())
        ).scalar_one_or_none()
    if row is None:
        raise InvalidInput(
            f"No clinic location {ref!r}.", errors={"home_location": ["unknown location"]}
        )
    return row.id


def _refuse_taken_email(email_normalized: str, except_id: int | None = None) -> None:
    query = sa.select(Member.id).where(Member.email_normalized == email_normalized)
    if except_id is not None:
        query = query.where(Member.id != except_id)
    other = db.session.execute(query).scalar()
    if other is not None:
        raise _email_taken(email_normalized, other)


def _email_taken(email_normalized: str, other_id: int | None) -> Conflict:
    return Conflict(
        f"Another member already uses {email_normalized}.",
        slug="email-taken",
        errors={"email": ["already used by another member"]},
        member_id=other_id,
    )


def _commit_unique(email_normalized: str) -> None:
    """Commit; a concurrent request that took the same email first is a 409, not a 500."""
    try:
        db.session.commit()
    except IntegrityError:
        db.session.rollback()
        raise _email_taken(email_normalized, None) from None
