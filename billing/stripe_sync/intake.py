"""Stripe's door for queued intake, a WSGI app in front of Flask.

In queued mode (production's default) a delivery is verified, stored and answered 200; Flask's
request machinery around those few steps (request context, routing, the request guard's walk of
every string and number of a 4 KB event, the error handlers) was most of the request's CPU, and
Stripe's deliveries share the cores with the front desk. So `POST /webhooks/stripe` is answered
here, by the same verbs the Flask view calls (service.verified_event, service.enqueue), on one
of the autocommitted connections the app's engine keeps for that insert (billing/pool.py's
AutocommitConnections: one the database dropped while idle is replaced unseen).

The door answers only what it can answer exactly as Flask would, and passes everything else on
with the body it read, so Flask answers as it always has:

* anything but a POST to the path, inline mode, or a database that is not PostgreSQL;
* a body without a Content-Length or larger than MAX_CONTENT_LENGTH (Flask's 413), a query
  string, a Content-Type other than application/json;
* a body the request guard (billing/guards.py) might refuse: not strict UTF-8 or with a NUL byte,
  a `\\u0000` or surrogate escape, a run of 19 digits (an integer past BIGINT), nesting too deep
  to parse. Without any of these the guard's walk cannot refuse the body, so it is not walked;
* an error the door did not foresee (Flask answers it; storing again is harmless).

It answers itself, with the view's problem details (billing/errors.py's shape, app.json's
encoding): a missing or bad signature, a stale timestamp, a body that is not JSON or not an
event (400), Stripe not configured (503), the database unavailable (503: Stripe delivers
again). tests/integration/test_webhook_door.py holds each case against the Flask view."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from flask import Flask

from billing.errors import PROBLEM_BASE, DomainError
from billing.guards import plain_json
from billing.stripe_sync import service

log = logging.getLogger("billing.stripe.intake")

PATH = "/webhooks/stripe"
WSGIApp = Callable[[dict, Callable], Iterable[bytes]]


class WebhookIntake:
    """`app.wsgi_app = WebhookIntake(app, app.wsgi_app)`: answers queued deliveries itself,
    passes everything else to `downstream` (Flask)."""

    def __init__(self, app: Flask, downstream: WSGIApp) -> None:
        self.app = app
        self.downstream = downstream
        self._engine: sa.Engine | None = None
        self._postgres = False

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        config = self.app.config
        if (
            environ.get("PATH_INFO") != PATH
            or environ.get("REQUEST_METHOD") != "POST"
            or config.get("STRIPE_WEBHOOK_PROCESSING") != "queued"
            or environ.get("QUERY_STRING")
            or not self._on_postgres()
        ):
            return self.downstream(environ, start_response)
        body = self._body(environ, config.get("MAX_CONTENT_LENGTH"))
        if body is None or not self._plain(environ, body):
            return self._to_flask(environ, start_response, body)
        try:
            return self._take(environ, start_response, body, config)
        except _ToFlask:
            return self._to_flask(environ, start_response, body)
        except Exception:  # unforeseen: Flask answers (the store is idempotent)
            log.exception("webhook intake passed a delivery to Flask")
            return self._to_flask(environ, start_response, body)

    # -- what the door answers --------------------------------------------------------------

    def _take(
        self, environ: dict, start_response: Callable, body: bytes, config: Any
    ) -> Iterable[bytes]:
        try:
            parsed = self.app.json.loads(body)  # as Flask's get_json: the bytes, any encoding
        except RecursionError:
            raise _ToFlask from None  # the guard's 422 json-too-deep
        except ValueError:
            parsed = None  # verified_event says not-json, after the signature
        try:
            event = service.verified_event(
                body,
                environ.get("HTTP_STRIPE_SIGNATURE"),
                secret=config.get("STRIPE_WEBHOOK_SECRET"),
                tolerance=int(config.get("STRIPE_WEBHOOK_TOLERANCE", 300)),
                parsed=parsed,
            )
            receipt = service.enqueue(self._engine, event, body, _now(config))
        except DomainError as error:
            return self._problem(
                environ, start_response, error.status, error.title, error.detail, error.slug
            )
        answer = acknowledgement(receipt).encode()
        start_response(
            "200 OK",
            [("Content-Type", "application/json"), ("Content-Length", str(len(answer)))],
        )
        return [answer]

    def _problem(
        self,
        environ: dict,
        start_response: Callable,
        status: int,
        title: str,
        detail: str,
        slug: str,
    ) -> Iterable[bytes]:
        """billing.errors.problem's body, without a request context."""
        body = {"type": PROBLEM_BASE + slug, "title": title, "status": status}
        if detail:
            body["detail"] = detail
        body["instance"] = environ.get("PATH_INFO")
        response = self.app.json.response(body)
        response.status_code = status
        response.mimetype = "application/problem+json"
        return response(environ, start_response)

    # -- what goes to Flask -------------------------------------------------------------------

    def _on_postgres(self) -> bool:
        """The app's engine, found once (Flask-SQLAlchemy hands it out in an app context only);
        SQLite deliveries stay with Flask, which stores them through the session."""
        if self._engine is None:
            from billing.extensions import db

            with self.app.app_context():
                self._engine = db.engine
            self._postgres = self._engine.dialect.name == "postgresql"
        return self._postgres

    @staticmethod
    def _body(environ: dict, limit: int | None) -> bytes | None:
        """The body, when it has a plain Content-Length within the limit; else None (Flask
        reads it, and answers 413 or whatever else it would)."""
        try:
            length = int(environ.get("CONTENT_LENGTH") or "")
        except ValueError:
            return None
        if length < 0 or (limit is not None and length > limit):
            return None
        body = environ["wsgi.input"].read(length) if length else b""
        environ["billing.intake_read"] = body
        return body if len(body) == length else None  # cut short: Flask's 400

    @staticmethod
    def _plain(environ: dict, body: bytes) -> bool:
        """A JSON body the request guard cannot refuse (guards.plain_json)."""
        mimetype = environ.get("CONTENT_TYPE", "").split(";", 1)[0].strip().lower()
        return mimetype == "application/json" and plain_json(body)

    def _to_flask(
        self, environ: dict, start_response: Callable, body: bytes | None
    ) -> Iterable[bytes]:
        if "billing.intake_read" in environ:  # what the door read, for Flask to read again
            environ["wsgi.input"] = io.BytesIO(environ.pop("billing.intake_read"))
        return self.downstream(environ, start_response)


def acknowledgement(receipt: service.Receipt) -> str:
    """{"received": true, "event_id": ..., "status": "received", "duplicate": ...}, written out
    (the view's answer too): jsonify's encoder was a tenth of the whole request's CPU."""
    duplicate = "true" if receipt.duplicate else "false"
    return (
        f'{{"received":true,"event_id":{json.dumps(receipt.event_id)},'
        f'"status":"{receipt.status}","duplicate":{duplicate}}}\n'
    )


class _ToFlask(Exception):
    """This delivery is Flask's to answer."""


def _now(config: Any) -> datetime:
    """billing.clock.now() without an app context: the app's CLOCK (tests) or the time."""
    clock = config.get("CLOCK")
    value = clock() if clock else datetime.now(UTC)
    if value.tzinfo is None:
        raise ValueError("the clock must return timezone-aware datetimes")
    return value.astimezone(UTC)
