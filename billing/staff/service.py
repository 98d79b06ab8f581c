"""Staff verbs: profiles, credentials, duty shifts, and the category policies that say who may
perform and who may supervise each kind of treatment.

A category without a policy row uses the defaults below (medical procedures are performed by
licensed clinicians and supervised by a physician), so a fresh install is safe before anyone has
run `flask billing staff load-policies`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from billing.clinic.models import Location
from billing.errors import Conflict, InvalidInput, NotFound
from billing.extensions import db
from billing.plans.models import Category
from billing.staff.models import CategoryPolicy, Credential, CredentialKind, DutyShift, Staff

K = CredentialKind
_CLINICIANS = (K.PHYSICIAN, K.NURSE_PRACTITIONER, K.PHYSICIAN_ASSISTANT, K.REGISTERED_NURSE)
_WITH_MEDICAL_AESTHETICIAN = (*_CLINICIANS, K.MEDICAL_AESTHETICIAN)

# category -> (may perform, may supervise, a non-physician needs supervision). These apply to a
# treatment marked is_medical; a non-medical treatment needs no credential at all.
DEFAULT_POLICIES: dict[str, tuple[tuple[str, ...], tuple[str, ...], bool]] = {
    Category.INJECTABLE: (_CLINICIANS, (K.PHYSICIAN,), True),
    Category.LASER_LIGHT: (_CLINICIANS, (K.PHYSICIAN,), True),
    Category.DEVICE: (_WITH_MEDICAL_AESTHETICIAN, (K.PHYSICIAN,), True),
    Category.PEEL: (_WITH_MEDICAL_AESTHETICIAN, (K.PHYSICIAN,), True),
    Category.MEDICAL_FACIAL: (_WITH_MEDICAL_AESTHETICIAN, (K.PHYSICIAN,), True),
    Category.SPA_FACIAL: (_WITH_MEDICAL_AESTHETICIAN, (K.PHYSICIAN,), True),
    Category.MASK: (_WITH_MEDICAL_AESTHETICIAN, (K.PHYSICIAN,), True),
    Category.CONSULTATION: (_CLINICIANS, (K.PHYSICIAN,), True),
    Category.OTHER: (_CLINICIANS, (K.PHYSICIAN,), True),
}
_FALLBACK = (_CLINICIANS, (K.PHYSICIAN,), True)

CREDENTIAL_WORDS = {
    K.MEDICAL_AESTHETICIAN: "medical aesthetician",
    K.REGISTERED_NURSE: "registered nurse",
    K.NURSE_PRACTITIONER: "nurse practitioner",
    K.PHYSICIAN_ASSISTANT: "physician assistant",
    K.PHYSICIAN: "physician",
}


@dataclass(frozen=True)
class Policy:
    """The policy in force for a category: the clinic's row, or the default in code."""

    category: str
    may_perform: tuple[str, ...]
    may_supervise: tuple[str, ...]
    needs_supervision: bool
    source: str  # "clinic" or "default"


# ---------------------------------------------------------------------------------------------
# Locations (read only here; a location is referred to by its code)


def location_by_code(code: str, *, field: str = "location") -> Location:
    row = db.session.execute(sa.select(Location).where(Location.code == code)).scalar_one_or_none()
    if row is None:
        raise InvalidInput(
            f"There is no location with code {code!r}.", errors={field: ["unknown location"]}
        )
    return row


# ---------------------------------------------------------------------------------------------
# Profiles


def get_staff(staff_id: int) -> Staff:
    row = db.session.get(Staff, staff_id)
    if row is None:
        raise NotFound(f"There is no staff member {staff_id}.")
    return row


def list_staff(
    *, location: str | None = None, role: str | None = None, include_inactive: bool = False
) -> list[Staff]:
    q = sa.select(Staff).order_by(Staff.name, Staff.id)
    if location:
        q = q.where(Staff.location_id == location_by_code(location).id)
    if role:
        q = q.where(Staff.role == role)
    if not include_inactive:
        q = q.where(Staff.active.is_(True))
    return list(db.session.execute(q).scalars())


def create_staff(data: Mapping[str, Any], *, actor: str, now: datetime) -> Staff:
    """Add someone to the team at one location."""
    row = Staff(
        name=data["name"],
        email=_email(data.get("email")),
        role=data["role"],
        location_id=location_by_code(data["location"]).id,
        active=data.get("active", True),
        created_at=now,
    )
    db.session.add(row)
    _commit_unique_email(data.get("email"))
    return row


def update_staff(staff_id: int, changes: Mapping[str, Any], *, actor: str, now: datetime) -> Staff:
    row = get_staff(staff_id)
    for key in ("name", "role", "active"):
        if key in changes:
            setattr(row, key, changes[key])
    if "email" in changes:
        row.email = _email(changes["email"])
    if "location" in changes:
        row.location_id = location_by_code(changes["location"]).id
    _commit_unique_email(changes.get("email"))
    return row


def deactivate_staff(staff_id: int, *, actor: str, now: datetime) -> Staff:
    """Someone left: they stay on past visits (nothing is deleted) but cannot be chosen again."""
    row = get_staff(staff_id)
    row.active = False
    db.session.commit()
    return row


def _email(value: str | None) -> str | None:
    return value.strip().lower() if value else None


def _commit_unique_email(email: str | None) -> None:
    try:
        db.session.commit()
    except IntegrityError:
        db.session.rollback()
        raise Conflict(
            f"Another staff member already uses the email {email!r}.", slug="staff-email-taken"
        ) from None


# ---------------------------------------------------------------------------------------------
# Credentials


def add_credential(
    staff_id: int, data: Mapping[str, Any], *, actor: str, now: datetime
) -> Credential:
    """A licence with its number and expiry: it counts only until the day it expires."""
    staff = get_staff(staff_id)
    row = Credential(
        staff_id=staff.id,
        kind=data["kind"],
        number=data.get("number") or "",
        expires_on=data.get("expires_on"),
        created_at=now,
    )
    db.session.add(row)
    db.session.commit()
    return row


def _credential(staff_id: int, credential_id: int) -> Credential:
    row = db.session.get(Credential, credential_id)
    if row is None or row.staff_id != staff_id:
        raise NotFound(f"Staff member {staff_id} has no credential {credential_id}.")
    return row


def update_credential(
    staff_id: int, credential_id: int, changes: Mapping[str, Any], *, actor: str, now: datetime
) -> Credential:
    row = _credential(staff_id, credential_id)
    for key in ("number", "expires_on"):
        if key in changes:
            setattr(row, key, changes[key] if key != "number" else (changes[key] or ""))
    db.session.commit()
    return row


def remove_credential(staff_id: int, credential_id: int, *, actor: str, now: datetime) -> None:
    db.session.delete(_credential(staff_id, credential_id))
    db.session.commit()


# ---------------------------------------------------------------------------------------------
# Duty shifts


def add_shift(staff_id: int, *, location: str, day: date, actor: str, now: datetime) -> DutyShift:
    """Put someone on duty at a location on a clinic-local day; a repeat returns the same shift."""
    staff = get_staff(staff_id)
    loc = location_by_code(location)
    existing = _shift(staff.id, loc.id, day)
    if existing is not None:
        return existing
    row = DutyShift(staff_id=staff.id, location_id=loc.id, day=day)
    db.session.add(row)
    try:
        db.session.commit()
    except IntegrityError:  # the same shift added at the same moment elsewhere
        db.session.rollback()
        return _shift(staff.id, loc.id, day)
    return row


def _shift(staff_id: int, location_id: int, day: date) -> DutyShift | None:
    return db.session.execute(
        sa.select(DutyShift).where(
            DutyShift.staff_id == staff_id,
            DutyShift.location_id == location_id,
            DutyShift.day == day,
        )
    ).scalar_one_or_none()


def remove_shift(staff_id: int, shift_id: int, *, actor: str, now: datetime) -> None:
    row = db.session.get(DutyShift, shift_id)
    if row is None or row.staff_id != staff_id:
        raise NotFound(f"Staff member {staff_id} has no shift {shift_id}.")
    db.session.delete(row)
    db.session.commit()


def list_shifts(
    *,
    staff_id: int | None = None,
    location: str | None = None,
    day_from: date | None = None,
    day_to: date | None = None,
) -> list[DutyShift]:
    q = sa.select(DutyShift).order_by(DutyShift.day, DutyShift.staff_id)
    if staff_id is not None:
        get_staff(staff_id)
        q = q.where(DutyShift.staff_id == staff_id)
    if location:
        q = q.where(DutyShift.location_id == location_by_code(location).id)
    if day_from:
        q = q.where(DutyShift.day >= day_from)
    if day_to:
        q = q.where(DutyShift.day <= day_to)
    return list(db.session.execute(q).scalars())


def is_on_duty(staff_id: int, location_id: int, day: date) -> bool:
    return _shift(staff_id, location_id, day) is not None


# ---------------------------------------------------------------------------------------------
# Category policies


def default_policy(category: str) -> Policy:
    perform, supervise, needs = DEFAULT_POLICIES.get(category, _FALLBACK)
    return Policy(
        category,
        tuple(str(k) for k in perform),
        tuple(str(k) for k in supervise),
        needs,
        "default",
    )


def policy_for(category: str) -> Policy:
    """The clinic's row for this category if there is one, else the default in code."""
    row = db.session.execute(
        sa.select(CategoryPolicy).where(CategoryPolicy.category == category)
    ).scalar_one_or_none()
    if row is None:
        return default_policy(category)
    return Policy(
        row.category,
        tuple(row.may_perform or ()),
        tuple(row.may_supervise or ()),
        row.needs_supervision,
        "clinic",
    )


def get_policy(category: str) -> Policy:
    if category not in {c.value for c in Category}:
        raise NotFound(f"There is no treatment category {category!r}.")
    return policy_for(category)


def list_policies() -> list[Policy]:
    return [policy_for(c.value) for c in Category]


def set_policy(category: str, data: Mapping[str, Any], *, actor: str, now: datetime) -> Policy:
    """The clinic decides who may perform and supervise a category (admin)."""
    current = get_policy(category)
    row = db.session.execute(
        sa.select(CategoryPolicy).where(CategoryPolicy.category == category)
    ).scalar_one_or_none()
    if row is None:
        row = CategoryPolicy(category=category)
        db.session.add(row)
    row.may_perform = _kinds(data.get("may_perform", current.may_perform))
    row.may_supervise = _kinds(data.get("may_supervise", current.may_supervise))
    row.needs_supervision = data.get("needs_supervision", current.needs_supervision)
    db.session.commit()
    return policy_for(category)


def _kinds(values) -> list[str]:
    return sorted({str(CredentialKind(v)) for v in values})


def load_default_policies(*, overwrite: bool = False) -> tuple[int, int]:
    """Write the default policy rows. Idempotent: an existing row is kept unless `overwrite`.

    Returns (written, kept)."""
    written = kept = 0
    for category in Category:
        row = db.session.execute(
            sa.select(CategoryPolicy).where(CategoryPolicy.category == category.value)
        ).scalar_one_or_none()
        if row is not None and not overwrite:
            kept += 1
            continue
        policy = default_policy(category.value)
        if row is None:
            row = CategoryPolicy(category=category.value)
            db.session.add(row)
        row.may_perform = sorted(policy.may_perform)
        row.may_supervise = sorted(policy.may_supervise)
        row.needs_supervision = policy.needs_supervision
        written += 1
    db.session.commit()
    return written, kept


def credential_words(kinds) -> str:
    """('physician', 'registered_nurse') -> 'physician or registered nurse'."""
    words = [CREDENTIAL_WORDS.get(k, str(k).replace("_", " ")) for k in kinds]
    if not words:
        return "nobody"
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]
