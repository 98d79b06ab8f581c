"""The domain's exceptions and the one error shape: RFC 9457 problem details.

Services raise these; nothing in a service knows about HTTP. The handlers below turn them, and
every werkzeug/webargs error, into `application/problem+json`, and roll the session back so a
failed request leaves the database as it was."""

from __future__ import annotations

import logging
from typing import Any

import flask_smorest
import marshmallow as ma
from flask import Flask, jsonify, request
from werkzeug.exceptions import HTTPException

log = logging.getLogger(__name__)
PROBLEM_BASE = "/problems/"


class DomainError(Exception):
    """A rule of the business said no. `slug` names the rule; `detail` can be read aloud."""

    status = 400
    slug = "bad-request"
    title = "Bad request"

    def __init__(
        self,
        detail: str,
        *,
        slug: str | None = None,
        errors: dict[str, Any] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        if slug:
            self.slug = slug
        self.errors = errors
        self.extra = extra


class InvalidInput(DomainError):
    status, slug, title = 422, "invalid-input", "Invalid input"


class NotFound(DomainError):
    status, slug, title = 404, "not-found", "Not found"


class Conflict(DomainError):
    status, slug, title = 409, "conflict", "Conflict"


class RuleViolation(Conflict):
    """A clinic rule blocks the action (medical credential, consultation, interval...).

    An admin may override it with a written reason; `rule` names which one."""

    slug, title = "rule-violation", "Blocked by a clinic rule"

    def __init__(self, detail: str, *, rule: str, **extra: Any) -> None:
        super().__init__(detail, rule=rule, overridable=True, **extra)
        self.rule = rule


class Unauthorized(DomainError):
    status, slug, title = 401, "unauthorized", "Authentication required"


class Forbidden(DomainError):
    status, slug, title = 403, "forbidden", "Forbidden"


class ServiceUnavailable(DomainError):
    status, slug, title = 503, "service-unavailable", "Service unavailable"


def _rollback() -> None:
    """A failed request leaves the database as it was (even when the connection itself is gone)."""
    from billing.extensions import db

    try:
        db.session.rollback()
    except Exception:
        db.session.remove()


def problem(
    status: int,
    title: str,
    detail: str | None = None,
    *,
    slug: str | None = None,
    errors: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
):
    body: dict[str, Any] = {
        "type": PROBLEM_BASE + slug if slug else "about:blank",
        "title": title,
        "status": status,
    }
    if detail:
        body["detail"] = detail
    body["instance"] = request.path
    if errors:
        body["errors"] = errors
    body.update({k: v for k, v in extra.items() if v is not None})
    response = jsonify(body)
    response.status_code = status
    response.mimetype = "application/problem+json"
    for key, value in (headers or {}).items():
        response.headers[key] = value
    return response


def _flatten_webargs(messages: dict[str, Any]) -> dict[str, Any]:
    """webargs nests errors by location ({"json": {"price": [...]}}); a client wants the field."""
    flat: dict[str, Any] = {}
    for location, fields in messages.items():
        if isinstance(fields, dict):
            flat.update(fields)
        else:
            flat[location] = fields
    return flat


def _describe(errors: dict[str, Any]) -> str:
    parts = []
    for field, msgs in errors.items():
        if isinstance(msgs, list):
            text = "; ".join(str(m) for m in msgs)
        elif isinstance(msgs, dict):
            text = _describe(msgs)
        else:
            text = str(msgs)
        parts.append(f"{field}: {text}")
    return ". ".join(parts)


class ProblemSchema(ma.Schema):
    """RFC 9457 problem details (documentation only)."""

    type = ma.fields.String()
    title = ma.fields.String()
    status = ma.fields.Integer()
    detail = ma.fields.String()
    instance = ma.fields.String()
    errors = ma.fields.Dict()


class Api(flask_smorest.Api):
    ERROR_SCHEMA = ProblemSchema

    def handle_http_exception(self, error: HTTPException):
        return handle_http_exception(error)


def handle_http_exception(error: HTTPException):
    _rollback()
    data = getattr(error, "data", None) or {}
    errors = data.get("errors") or data.get("messages")
    if errors and isinstance(errors, dict):
        errors = _flatten_webargs(errors)
    status = error.code or 500
    detail = data.get("message") or (_describe(errors) if errors else error.description)
    slug = {
        400: "bad-request",
        401: "unauthorized",
        403: "forbidden",
        404: "not-found",
        405: "method-not-allowed",
        409: "conflict",
        413: "payload-too-large",
        415: "unsupported-media-type",
        422: "invalid-input",
        429: "too-many-requests",
    }.get(status, "http-error")
    return problem(
        status, error.name, detail, slug=slug, errors=errors, headers=data.get("headers")
    )


def handle_domain_error(error: DomainError):
    _rollback()
    return problem(
        error.status, error.title, error.detail, slug=error.slug, errors=error.errors, **error.extra
    )


def handle_unexpected(error: Exception):
    _rollback()
    log.exception("unhandled error on %s %s", request.method, request.path)
    return problem(
        500,
        "Internal server error",
        "Something went wrong; nothing was saved.",
        slug="internal-error",
    )


def handle_validation_error(error: ma.ValidationError):
    _rollback()
    errors = error.messages if isinstance(error.messages, dict) else {"_schema": error.messages}
    return problem(422, "Invalid input", _describe(errors), slug="invalid-input", errors=errors)


def handle_data_error(error: Exception):
    """A value the database cannot hold (a number beyond its column, say): the caller's input."""
    _rollback()
    return problem(
        422, "Invalid input", "A value is out of range or cannot be stored.", slug="invalid-input"
    )


def handle_database_unavailable(error: Exception):
    """The database is not answering (or chose this transaction as a deadlock victim): nothing
    was saved, and the same request may simply be sent again."""
    _rollback()
    log.warning("database unavailable on %s %s: %s", request.method, request.path, error)
    return problem(
        503,
        "Service unavailable",
        "The database is not answering; nothing was saved. Try again in a moment.",
        slug="database-unavailable",
        headers={"Retry-After": "5"},
    )


def init_app(app: Flask) -> None:
    import sqlalchemy.exc as sa_exc

    app.register_error_handler(sa_exc.DataError, handle_data_error)
    app.register_error_handler(OverflowError, handle_data_error)
    app.register_error_handler(sa_exc.OperationalError, handle_database_unavailable)
    app.register_error_handler(sa_exc.InterfaceError, handle_database_unavailable)
    app.register_error_handler(DomainError, handle_domain_error)
    app.register_error_handler(ma.ValidationError, handle_validation_error)
    app.register_error_handler(HTTPException, handle_http_exception)
    if not app.config.get("PROPAGATE_EXCEPTIONS"):
        app.register_error_handler(Exception, handle_unexpected)
