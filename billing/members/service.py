"""Members (the clinic's clients): created and kept by the front desk, found by the search box.

The searched columns (search_name, last_name_lower, email_normalized, phone_digits) are derived
from the member's own fields on every write, so a search never scans or lower-cases a table."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
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
    # The items' home locations, read with them: held here so the session still has them when
    # the page is serialised (its identity map keeps only what something else refers to).
    locations: list[Location] = field(default_factory=list)


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
    "+65 9123 4567"). Ordered by last name, then full name; at most 50 a page.

    One statement. Each way of matching is its own arm, answered by its own index (see the
    model) and made not to repeat an earlier arm's members; the arms together give the matches'
    sort keys, the page is sorted out of them (a top-N sort), and only the page's rows are read.
    A single `OR` over the columns would let PostgreSQL walk the list's index in order,
    filtering row by row until a page is full: quick when most members match, a walk of the
    whole table when few do (an email, "first last"), or when the matches come late in the list
    (a last name starting with "s")."""
    limit = max(1, min(limit, MAX_PAGE))
    offset = max(0, offset)
    text = " ".join((q or "").strip().lower().split())
    if text:
        arms = _arms(text)
        found = sa.union_all(
            *(
                sa.select(*_list_order(Member)).where(
                    arm, *(sa.not_(before) for before in arms[:i])
                )
                for i, arm in enumerate(arms)
            )
        )
        # OFFSET 0 keeps the arms apart from the ORDER BY ... LIMIT below, so that PostgreSQL
        # answers each arm by its index and sorts only the matches; otherwise it may push the
        # order into the arms and walk the list's index from the start, filtering.
        source = found.offset(0).subquery("found")
    else:  # the whole list, read in the order of its index
        source = sa.select(*_list_order(Member)).subquery("everyone")
    page = (
        sa.select(source.c.id, source.c.last_name_lower, source.c.search_name)
        .order_by(*_list_order(source.c))
        .limit(limit + 1)
        .offset(offset)
        .subquery("page")
    )
    rows = db.session.execute(
        sa.select(Member, Location)
        .join(page, page.c.id == Member.id)
        .outerjoin(Location, Location.id == Member.home_location_id)
        .order_by(*_list_order(page.c))
    ).all()
    more = len(rows) > limit
    rows = rows[:limit]
    return MemberPage(
        [member for member, _ in rows],
        limit,
        offset,
        offset + limit if more else None,
        locations=[location for _, location in rows if location is not None],
    )


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


def _list_order(rows) -> tuple:
    """The order of the list and of every search: last name, full name, id."""
    return (rows.last_name_lower, rows.search_name, rows.id)


def _arms(text: str) -> list:
    """What the box matches, one condition per index: an email prefix when there is an @; phone
    digits from the start or the end when there are only digits and separators; otherwise a
    prefix of the full name ("first last"), of the last name or of the email. `text` is
    lower-case with single spaces, as the searched columns are."""
    if "@" in text:
        return [_starts_with(Member.email_normalized, text)]
    digits = phone_digits(text)
    if digits and not any(ch.isalpha() for ch in text):
        if len(digits) < 3:
            raise InvalidInput(
                "Give at least 3 digits to search by phone.", errors={"q": ["too short"]}
            )
        return [
            _starts_with(Member.phone_digits, digits),
            Member.phone_digits.endswith(digits, autoescape=True),  # trigram index
        ]
    return [
        _starts_with(Member.search_name, text),
        _starts_with(Member.last_name_lower, text),
        _starts_with(Member.email_normalized, text),
    ]


def _starts_with(column, prefix: str):
    """`column` starts with `prefix`, written as the range of strings that do: prefix <= value <
    the prefix with its last character one higher, compared byte by byte (code point order).

    Not `LIKE 'prefix%'`: PostgreSQL turns a LIKE into an index range only when it plans with
    the pattern in hand, and the app's statements are prepared and may be planned once for any
    pattern (a generic plan), which then reads whole indexes. A range of parameters is an index
    range in every plan. On PostgreSQL the byte-order operators (~>=~, ~<~) match the pattern
    operator class of the indexes; SQLite compares text byte by byte already. No character is a
    wildcard here, so nothing needs escaping."""
    postgres = db.session.get_bind(Member).dialect.name == "postgresql"
    at_least, below = ("~>=~", "~<~") if postgres else (">=", "<")
    condition = column.op(at_least, is_comparison=True)(prefix)
    upper = _next_prefix(prefix)
    if upper is None:  # the prefix is all U+10FFFF: nothing sorts after it
        return condition
    return sa.and_(condition, column.op(below, is_comparison=True)(upper))


def _next_prefix(prefix: str) -> str | None:
    """The first string after every string that starts with `prefix`, in code point order."""
    while prefix and prefix[-1] == "\U0010ffff":
        prefix = prefix[:-1]
    if not prefix:
        return None
    code = ord(prefix[-1]) + 1
    if 0xD800 <= code <= 0xDFFF:  # surrogates are not characters (nor storable): skip them
        code = 0xE000
    return prefix[:-1] + chr(code)


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
