"""Idempotency-Key for API writes: a retry gets the first response and changes nothing more.

The record, the view's writes and the response the retry will be given commit in ONE transaction:
while the view runs, the services' own commits only flush, and the decorator commits once when it
has the response. A crash anywhere leaves either all of it or none of it, so a retry either
replays the first response or does the work for the first time. A concurrent second request with
the same key blocks on the unique key and then sees the first one's record."""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Callable
from contextlib import contextmanager

import sqlalchemy as sa
from flask import Response, make_response, request
from sqlalchemy.dialects import postgresql, sqlite

from billing.auth.access import current_principal
from billing.auth.models import IdempotencyRecord
from billing.errors import Conflict, InvalidInput
from billing.extensions import db

HEADER = "Idempotency-Key"


def _request_hash() -> str:
    digest = hashlib.sha256()
    digest.update(request.method.encode())
    digest.update(request.path.encode())
    digest.update(request.get_data() or b"")
    return digest.hexdigest()


def _lookup(principal: str, key: str) -> sa.Row | None:
    """The key's record as a row (what a replay needs of it), by a statement built once: every
    retried call at the desk runs it."""
    return (
        db.session.connection()
        .execute(_lookup_statement(), {"principal": principal, "key": key})
        .one_or_none()
    )


@functools.cache
def _lookup_statement() -> sa.Select:
    table = IdempotencyRecord.__table__
    return sa.select(table.c.request_hash, table.c.status_code, table.c.response_body).where(
        table.c.principal == sa.bindparam("principal"), table.c.key == sa.bindparam("key")
    )


def _replay(record: sa.Row, request_hash: str) -> Response:
    if record.request_hash != request_hash:
        raise InvalidInput(
            f"This {HEADER} was used before for a different request; use a new key.",
            slug="idempotency-key-reused",
        )
    if record.status_code is None:
        raise Conflict(
            f"A request with this {HEADER} is still being processed; retry in a moment.",
            slug="idempotency-in-progress",
        )
    response = Response(
        json.dumps(record.response_body), status=record.status_code, mimetype="application/json"
    )
    response.headers["Idempotent-Replayed"] = "true"
    return response


def _claim(principal: str, key: str, request_hash: str) -> int | None:
    """Record the key (one statement): its id, or None when it was recorded before. A concurrent
    first request with the same key holds the unique key until it commits or rolls back; this
    waits for it, then finds its record (or, if it rolled back, records the key itself)."""
    connection = db.session.connection()
    return connection.execute(
        _claim_statement(connection.dialect.name),
        {"principal": principal, "key": key, "request_hash": request_hash},
    ).scalar_one_or_none()


@functools.cache
def _claim_statement(dialect: str) -> sa.Insert:
    """Built once per dialect (every API write runs it), on the table: no ORM objects."""
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    table = IdempotencyRecord.__table__
    return (
        insert(table)
        .on_conflict_do_nothing(index_elements=["principal", "key"])
        .returning(table.c.id)
    )


def _record_response(record_id: int, response: Response) -> None:
    """Keep the response a retry will be given. On PostgreSQL its body goes in as the text that
    was sent (cast to json), not parsed and serialised again."""
    connection = db.session.connection()
    if connection.dialect.name == "postgresql":
        body = response.get_data(as_text=True)
    else:
        body = response.get_json()
    connection.execute(
        _record_response_statement(connection.dialect.name),
        {"record_id": record_id, "status_code": response.status_code, "response_body": body},
    )


@functools.cache
def _record_response_statement(dialect: str) -> sa.Update:
    table = IdempotencyRecord.__table__
    update = table.update().where(table.c.id == sa.bindparam("record_id"))
    if dialect != "postgresql":
        return update
    text = sa.bindparam("response_body", type_=sa.Text)
    return update.values(
        status_code=sa.bindparam("status_code"), response_body=sa.cast(text, sa.JSON)
    )


@contextmanager
def _one_transaction():
    """Inside, `db.session.commit()` flushes instead, so nothing is committed half-way."""
    session = db.session()
    session.commit = session.flush
    try:
        yield
    finally:
        del session.commit


def idempotent(required: bool = False) -> Callable:
    def decorate(view: Callable) -> Callable:
        @functools.wraps(view)
        def wrapper(*args, **kwargs):
            key = request.headers.get(HEADER)
            if not key:
                if required:
                    raise InvalidInput(
                        f"This request needs an {HEADER} header.", slug="idempotency-key-required"
                    )
                return view(*args, **kwargs)
            if len(key) > 255:
                raise InvalidInput(f"{HEADER} is at most 255 characters.")
            principal = current_principal()
            who = principal.actor if principal else "anonymous"
            request_hash = _request_hash()
            record_id = _claim(who, key, request_hash)
            if record_id is None:
                existing = _lookup(who, key)
                if existing is None:
                    raise Conflict(
                        f"A request with this {HEADER} is still being processed; retry in a "
                        "moment.",
                        slug="idempotency-in-progress",
                    )
                return _replay(existing, request_hash)
            with _one_transaction():
                result = view(*args, **kwargs)
                response = result if isinstance(result, Response) else make_response(result)
            if response.status_code < 500 and response.is_json:
                _record_response(record_id, response)
                db.session.commit()
            else:
                db.session.rollback()
            return response

        wrapper._idempotent = True
        for attr in ("_roles",):
            if hasattr(view, attr):
                setattr(wrapper, attr, getattr(view, attr))
        return wrapper

    return decorate
