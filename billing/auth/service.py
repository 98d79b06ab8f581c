"""Who is calling, and what they may do."""

from __future__ import annotations

import functools
import hashlib
import hmac
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import datetime

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
    """Built once: every API request runs it. Only the columns a principal needs."""
    t = ApiKey.__table__
    return sa.select(
        t.c.id, t.c.name, t.c.key_hash, t.c.role, t.c.member_id, t.c.staff_id, t.c.revoked_at
    ).where(t.c.prefix == sa.bindparam("prefix"))


class _KeyCache:
    """Keys that verified in the last few seconds, by the key's hash, in this process.

    Every API request authenticates, and the desk sends one request per click: remembering a
    verified key for `ttl` seconds saves a statement per request. A key revoked here is
    forgotten at once; another process stops accepting it when its entry is `ttl` old."""

    MAX = 4096

    def __init__(self) -> None:
        self._entries: dict[str, tuple[float, int, Principal]] = {}
        self._lock = threading.Lock()

    def get(self, digest: str) -> Principal | None:
        found = self._entries.get(digest)
        if found is None or found[0] < time.monotonic():
            return None
        return found[2]

    def put(self, digest: str, key_id: int, principal: Principal, ttl: float) -> None:
        with self._lock:
            if len(self._entries) >= self.MAX:
                self._entries.clear()
            self._entries[digest] = (time.monotonic() + ttl, key_id, principal)

    def forget(self, key_id: int) -> None:
        with self._lock:
            for digest in [d for d, entry in self._entries.items() if entry[1] == key_id]:
                del self._entries[digest]


key_cache = _KeyCache()


def authenticate_key(plaintext: str, *, cache_seconds: float = 0) -> Principal:
    """The principal a key stands for; Unauthorized when it is unknown, wrong or revoked.
    `cache_seconds`: how long this process may go on trusting a key it has verified."""
    parts = plaintext.split("_", 2)
    if len(parts) != 3 or parts[0] != "mk":
        raise Unauthorized("That API key is not valid.")
    digest = _hash(plaintext)
    if cache_seconds > 0 and (cached := key_cache.get(digest)) is not None:
        return cached
    row = db.session.execute(_key_query(), {"prefix": parts[1]}).one_or_none()
    if row is None or row.revoked_at is not None:
        raise Unauthorized("That API key is not valid.")
    if not hmac.compare_digest(row.key_hash, digest):
        raise Unauthorized("That API key is not valid.")
    principal = Principal(
        role=Role(row.role),
        actor=f"key:{row.id}:{row.name}",
        member_id=row.member_id,
        staff_id=row.staff_id,
    )
    if cache_seconds > 0:
        key_cache.put(digest, row.id, principal, cache_seconds)
    return principal


def revoke_api_key(key_id: int, *, now: datetime) -> ApiKey:
    """A key that leaked or whose holder left: refused from now on (within the cache's few
    seconds in other processes). The row stays, so the audit trail still names it."""
    row = db.session.get(ApiKey, key_id)
    if row is None:
        raise NotFound(f"There is no API key {key_id}.")
    if row.revoked_at is None:
        row.revoked_at = now
        db.session.commit()
    key_cache.forget(key_id)
    return row
