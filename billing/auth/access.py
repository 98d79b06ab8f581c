"""The `requires` decorator: every endpoint declares the roles it admits.

The declared roles are kept on the view function (`view._roles`), so a test can walk the route
map and fail for any endpoint that has no rule."""

from __future__ import annotations

import functools
from collections.abc import Callable

from flask import current_app, g, request

from billing.auth.models import Role
from billing.auth.service import Principal, authenticate_key
from billing.errors import Forbidden, Unauthorized

PUBLIC = "public"


_ENV_KEY = "billing.principal"


def current_principal() -> Principal | None:
    """Who is calling, worked out once per request (cached on the request, not on `g`, which can
    outlive a request when an app context is shared)."""
    if _ENV_KEY not in request.environ:
        request.environ[_ENV_KEY] = _from_request()
    return request.environ[_ENV_KEY]


def _from_request() -> Principal | None:
    header = request.headers.get("Authorization", "")
    key = None
    if header.lower().startswith("bearer "):
        key = header[7:].strip()
    elif request.headers.get("X-API-Key"):
        key = request.headers["X-API-Key"].strip()
    if key:
        return authenticate_key(
            key, cache_seconds=current_app.config.get("API_KEY_CACHE_SECONDS", 0)
        )
    loader = getattr(g, "session_principal_loader", None)
    return loader() if loader else None


def requires(*roles: str) -> Callable:
    """Admit the named roles (admin is always admitted). `requires(PUBLIC)` admits anyone."""
    for role in roles:
        if role != PUBLIC:
            Role(role)

    def decorate(view: Callable) -> Callable:
        @functools.wraps(view)
        def wrapper(*args, **kwargs):
            if PUBLIC not in roles:
                principal = current_principal()
                if principal is None:
                    raise Unauthorized(
                        "Send an API key: 'Authorization: Bearer <key>'.",
                    )
                if not principal.has_role(*roles):
                    raise Forbidden(
                        f"This needs the role {' or '.join(roles)}; your key is {principal.role}."
                    )
            return view(*args, **kwargs)

        wrapper._roles = frozenset(roles)
        return wrapper

    return decorate


def ensure_member_access(principal: Principal, member_id: int) -> None:
    """A client sees only their own member; staff, finance and admin see all."""
    if principal.role == Role.CLIENT and principal.member_id != member_id:
        raise Forbidden("A client key can only see its own membership.")
