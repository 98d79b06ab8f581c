"""Who is calling, and what they may do."""

from __future__ import annotations

import functools
import hashlib
import hmac
import secrets
from dataclasses import dataclass

import sqlalchemy as sa

from billing.auth.models import ApiKey, Role
from billing.errors import InvalidInput, NotFound, Unauthorized
from billing.extensions import db


@dataclass(frozen=True)
class Principal:
    role: Role
    actor: str  # what the ledger and audit trail record: "key:3:front-desk", "user:5"
    member_id: int | None = None
    staff_id: int | None = None

    @property
    def is_admin(self) -> bool:
        return self.role == Role.ADMIN

    def has_role(self, *roles: str) -> bool:
        """Admin may do everything; everyone else only what is named."""
        return self.is_admin or self.role in roles


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_api_key(
    *, name: str, role: str, member_id: int | None = None, staff_id: int | None = None
) -> tuple[ApiKey, str]:
    """Returns the row and the plaintext key, which is never stored and cannot be shown again."""
    try:
        role = Role(role)
    except ValueError:
        raise InvalidInput(f"role must be one of {[r.value for r in Role]}") from None
    if role == Role.CLIENT and member_id is None:
        raise InvalidInput("a client key is bound to one member: give --member")
    if role != Role.CLIENT and member_id is not None:
        raise InvalidInput("only client keys are bound to a member")
    if member_id is not None:
        from billing.members.models import Member

        if db.session.get(Member, member_id) is None:
            raise NotFound(f"no member {member_id}")
    prefix = secrets.token_hex(6)
    plaintext = f"mk_{prefix}_{secrets.token_urlsafe(24)}"
    row = ApiKey(
        name=name,
        prefix=prefix,
        key_hash=_hash(plaintext),
        role=role,
        member_id=member_id,
        staff_id=staff_id,
    )
    db.session.add(row)
    db.session.commit()
    return row, plaintext


@functools.cache
def _key_query() -> sa.Select:
    """Built once: every API request runs it."""
    return sa.select(ApiKey).where(ApiKey.prefix == sa.bindparam("prefix"))


def authenticate_key(plaintext: str) -> Principal:
    parts = plaintext.split("_", 2)
    if len(parts) != 3 or parts[0] != "mk":
        raise Unauthorized("That API key is not valid.")
    row = db.session.execute(_key_query(), {"prefix": parts[1]}).scalar_one_or_none()
    if row is None or row.revoked_at is not None:
        raise Unauthorized("That API key is not valid.")
    if not hmac.compare_digest(row.key_hash, _hash(plaintext)):
        raise Unauthorized("That API key is not valid.")
    return Principal(
        role=Role(row.role),
        actor=f"key:{row.id}:{row.name}",
        member_id=row.member_id,
        staff_id=row.staff_id,
    )
