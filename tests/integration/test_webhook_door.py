"""The queued-intake door (billing/stripe_sync/intake.py) answers every delivery exactly as the
Flask view behind it does: each case is sent through the door and through Flask alone, and the
two answers (status line, headers, body) must be equal, and the door must have answered itself
what it is meant to (on PostgreSQL; on SQLite it passes every delivery to Flask).

What the door answers: a new event and a duplicate (200), a bad, missing or stale signature, a
body that is not JSON or not an event (400), Stripe not configured (503), the database
unavailable (503). What it passes to Flask: a body over MAX_CONTENT_LENGTH (413), bodies the
request guard refuses (422), other methods, a query string, inline mode."""

from __future__ import annotations

import json
import threading
import time
from contextlib import contextmanager

import pytest
import sqlalchemy as sa

from billing.extensions import db
from billing.stripe_sync import service
from billing.stripe_sync.intake import WebhookIntake
from billing.stripe_sync.models import StripeEvent
from tests import stripe_fixtures as sf
from tests.conftest import IS_POSTGRES


@pytest.fixture
def queued(app):
    app.config["STRIPE_WEBHOOK_PROCESSING"] = "queued"
    return app


@pytest.fixture
def door(queued, monkeypatch) -> WebhookIntake:
    """The door, counting what it passes on to Flask in `door.passed`."""
    door = queued.wsgi_app
    assert isinstance(door, WebhookIntake)
    flask_app = door.downstream
    door.passed = 0

    def counting(environ, start_response):
        door.passed += 1
        return flask_app(environ, start_response)

    monkeypatch.setattr(door, "downstream", counting)
    door.flask_app = flask_app
    return door


@contextmanager
def _flask_only(app, door: WebhookIntake):
    app.wsgi_app = door.flask_app
    try:
        yield
    finally:
        app.wsgi_app = door


def _post(client, body: str | bytes, header: str | None = "sign", **kw):
    """POST to the webhook: signed now unless `header` is given (None: no header at all)."""
    text = body.decode() if isinstance(body, bytes) else body
    headers = {"Content-Type": kw.pop("content_type", "application/json")}
    path = kw.pop("path", "/webhooks/stripe")
    if header == "sign":
        headers["Stripe-Signature"] = sf.signature(text, **kw)
    elif header is not None:
        headers["Stripe-Signature"] = header
    return client.post(path, data=body, headers=headers)


def _answer(response) -> tuple:
    return response.status, sorted(response.headers.items()), response.data


def _both(app, client, door, send) -> tuple:
    """The answer through the door (and whether the door answered it), then through Flask."""
    before = door.passed
    through_door = send()
    answered_by_door = door.passed == before
    with _flask_only(app, door):
        through_flask = send()
    return _answer(through_door), _answer(through_flask), answered_by_door


def _aside(database_url: str, sql: str, **params) -> sa.Row | None:
    """The first row of `sql`, run on a connection of its own (not the app's pool)."""
    other = sa.create_engine(database_url, poolclass=sa.pool.NullPool)
    with other.connect() as conn:
        row = conn.execute(sa.text(sql), params).first()
    other.dispose()
    return row


def _count_events() -> int:
    db.session.remove()
    return db.session.execute(sa.select(sa.func.count()).select_from(StripeEvent)).scalar()


def _an_event() -> dict:
    return sf.event("invoice.paid", sf.resource("invoice"))


# ---------------------------------------------------------------------------------------------
# The door answers these itself (PostgreSQL)

REFUSED = {
    "forged signature": lambda c: _post(c, json.dumps(_an_event()), header="t=1,v1=forged"),
    "no signature header": lambda c: _post(c, json.dumps(_an_event()), header=None),
    "garbled signature header": lambda c: _post(c, json.dumps(_an_event()), header="v1"),
    "stale timestamp": lambda c: _post(
        c, json.dumps(_an_event()), timestamp=int(time.time()) - 3600
    ),
    "signed with another secret": lambda c: _post(c, json.dumps(_an_event()), secret="whsec_other"),
    "not JSON": lambda c: _post(c, "this is not json"),
    "not an event": lambda c: _post(c, '{"hello": "world"}'),
    "an event without data.object": lambda c: _post(
        c, '{"id": "evt_1", "type": "invoice.paid", "created": 1, "data": {}}'
    ),
    "JSON null": lambda c: _post(c, "null"),
    "empty body": lambda c: _post(c, ""),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_a_refused_delivery_is_answered_as_flask_answers_it(queued, client, door, case):
    through_door, through_flask, by_door = _both(
        queued, client, door, lambda: REFUSED[case](client)
    )

    assert through_door == through_flask
    status, headers, body = through_door
    assert status.startswith("400 ")
    assert ("Content-Type", "application/problem+json") in headers
    problem = json.loads(body)
    assert problem["type"].startswith("/problems/") and problem["instance"] == "/webhooks/stripe"
    # The test client sends no Content-Length for an empty body: Flask's to read (a real
    # client's "Content-Length: 0" is the door's).
    assert by_door is (IS_POSTGRES and case != "empty body")
    assert _count_events() == 0


def test_a_new_event_and_its_duplicate_are_answered_as_flask_answers_them(queued, client, door):
    first, second = _an_event(), _an_event()
    sends = iter([first, second, second, first])  # door new, Flask new, door dup, Flask dup

    def send():
        return _post(client, json.dumps(next(sends)))

    new_door, new_flask, by_door = _both(queued, client, door, send)
    dup_door, dup_flask, _ = _both(queued, client, door, send)

    def same_but_id(a, b, id_a, id_b):
        return a[:2] == b[:2] and a[2].replace(id_a.encode(), b"X") == b[2].replace(
            id_b.encode(), b"X"
        )

    assert same_but_id(new_door, new_flask, first["id"], second["id"])
    assert same_but_id(dup_door, dup_flask, second["id"], first["id"])
    assert json.loads(new_door[2]) == {
        "received": True,
        "event_id": first["id"],
        "status": "received",
        "duplicate": False,
    }
    assert json.loads(dup_door[2])["duplicate"] is True
    assert by_door is IS_POSTGRES
    assert _count_events() == 2


@pytest.mark.postgres_only
def test_the_event_is_committed_before_the_200(queued, client, door, database_url):
    evt = _an_event()
    body = json.dumps(evt)

    response = _post(client, body)

    assert response.status_code == 200 and door.passed == 0
    stored = _aside(
        database_url,
        "SELECT status, attempts, payload::text FROM stripe_events WHERE id = :id",
        id=evt["id"],
    )
    assert stored.status == "received" and stored.attempts == 0
    assert stored.payload == body  # the text Stripe signed (json, not jsonb: kept as sent)


def test_stripe_not_configured_is_the_same_503(queued, client, door):
    queued.config["STRIPE_WEBHOOK_SECRET"] = None
    through_door, through_flask, by_door = _both(
        queued, client, door, lambda: _post(client, json.dumps(_an_event()))
    )

    assert through_door == through_flask
    assert through_door[0].startswith("503 ")
    assert json.loads(through_door[2])["type"] == "/problems/stripe-not-configured"
    assert by_door is IS_POSTGRES


@pytest.mark.postgres_only
def test_a_database_that_drops_the_connection_is_the_same_503_and_the_pool_recovers(
    queued, client, door, monkeypatch
):
    """The statement's connection dies under it: 503 (Stripe delivers again), the connection is
    invalidated, not pooled, and the next delivery is stored on a fresh one."""
    monkeypatch.setattr(service, "_ENQUEUE_PG", "SELECT pg_terminate_backend(pg_backend_pid())")
    through_door, through_flask, by_door = _both(
        queued, client, door, lambda: _post(client, json.dumps(_an_event()))
    )

    assert through_door == through_flask
    assert through_door[0].startswith("503 ")
    assert json.loads(through_door[2])["type"] == "/problems/webhook-not-stored"
    assert by_door
    monkeypatch.undo()
    queued.config["STRIPE_WEBHOOK_PROCESSING"] = "queued"
    assert _post(client, json.dumps(_an_event())).status_code == 200
    assert _count_events() == 1


@pytest.mark.postgres_only
def test_a_database_that_cannot_be_reached_is_the_same_503(queued, client, door, monkeypatch):
    """No connection to be had (the pool raises the driver's own error, unwrapped: the view
    answered 500 before the door was built)."""
    from flask_sqlalchemy import SQLAlchemy

    unreachable = sa.create_engine(
        "postgresql+psycopg://postgres@127.0.0.1:1/nowhere", connect_args={"connect_timeout": 2}
    )
    monkeypatch.setattr(door, "_engine", unreachable)
    monkeypatch.setattr(door, "_postgres", True)
    monkeypatch.setattr(SQLAlchemy, "engine", property(lambda self: unreachable))
    through_door, through_flask, by_door = _both(
        queued, client, door, lambda: _post(client, json.dumps(_an_event()))
    )
    unreachable.dispose()

    assert through_door == through_flask
    assert through_door[0].startswith("503 ")
    assert json.loads(through_door[2])["type"] == "/problems/webhook-not-stored"
    assert by_door


# The test database's backends whose last statement was the door's insert: the connections
# kept for it (billing.pool.AutocommitConnections).
_DOORS_BACKENDS = (
    "FROM pg_stat_activity WHERE datname = current_database() "
    "AND query LIKE 'INSERT INTO stripe_events%'"
)


def _held_backends(database_url: str) -> int:
    """How many of the door's connections sit idle on the database."""
    return _aside(database_url, f"SELECT count(*) {_DOORS_BACKENDS} AND state = 'idle'")[0]


@pytest.mark.postgres_only
def test_a_kept_connection_the_database_dropped_while_idle_is_replaced_unseen(
    queued, client, door, database_url
):
    """The door keeps its connection between deliveries (no pool checkout, no ping): when the
    database has dropped it meanwhile (a restart, an idle timeout), the delivery is still
    stored and answered 200, on a new connection, not refused with a 503."""
    assert _post(client, json.dumps(_an_event())).status_code == 200
    assert _held_backends(database_url) == 1
    _aside(database_url, f"SELECT pg_terminate_backend(pid) {_DOORS_BACKENDS}")

    response = _post(client, json.dumps(_an_event()))

    assert response.status_code == 200
    assert response.get_json()["duplicate"] is False
    assert door.passed == 0
    assert _count_events() == 2


@pytest.mark.postgres_only
def test_the_kept_connections_close_with_the_engine(queued, client, door, database_url):
    """Disposing of the app's engine (a worker shutting down, a test's teardown) closes the
    door's connections too: none is left behind on the database."""
    assert _post(client, json.dumps(_an_event())).status_code == 200
    assert _held_backends(database_url) == 1

    db.engine.dispose()

    deadline = time.monotonic() + 5
    while _held_backends(database_url) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _held_backends(database_url) == 0
    assert _post(client, json.dumps(_an_event())).status_code == 200


# ---------------------------------------------------------------------------------------------
# The door passes these to Flask (and Flask answers as it always has)

PASSED = {
    "a body over MAX_CONTENT_LENGTH": lambda c: _post(c, json.dumps(_an_event()) + " " * 10_000),
    "a NUL in a string": lambda c: _post(c, json.dumps({**_an_event(), "note": "a\x00b"})),
    "a lone surrogate": lambda c: _post(c, json.dumps({**_an_event(), "note": "\ud800"})),
    "an integer past BIGINT": lambda c: _post(c, json.dumps({**_an_event(), "amount": 10**20})),
    "nesting too deep": lambda c: _post(c, "[" * 100_000 + "]" * 100_000),
    "a query string": lambda c: _post(c, json.dumps(_an_event()), path="/webhooks/stripe?a=%00"),
    "text/plain": lambda c: _post(c, json.dumps(_an_event()), content_type="text/plain"),
}


@pytest.mark.parametrize("case", list(PASSED))
def test_what_the_guards_or_flask_decide_is_passed_to_flask(queued, client, door, case):
    queued.config["MAX_CONTENT_LENGTH"] = 8 * 1024
    count = _count_events()

    through_door, through_flask, by_door = _both(queued, client, door, lambda: PASSED[case](client))

    assert not by_door
    assert through_door[0] == through_flask[0] and through_door[1] == through_flask[1]
    if not through_door[0].startswith("200"):  # a text/plain event is stored, then a duplicate
        assert through_door == through_flask
        assert _count_events() == count


def test_other_methods_and_inline_mode_are_flasks(queued, client, door):
    assert client.get("/webhooks/stripe").status_code == 405
    queued.config["STRIPE_WEBHOOK_PROCESSING"] = "inline"
    response = _post(client, json.dumps(_an_event()))
    assert response.status_code == 200 and "outcome" in response.get_json()
    assert door.passed == 2


@pytest.mark.postgres_only
def test_concurrent_deliveries_of_one_event_store_it_once(queued, door):
    evt = _an_event()
    body = json.dumps(evt)
    answers: list[bool] = []
    start = threading.Barrier(8)

    def deliver() -> None:
        client = queued.test_client()
        start.wait(timeout=10)
        answers.append(_post(client, body).get_json()["duplicate"])

    threads = [threading.Thread(target=deliver) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)

    assert sorted(answers) == [False] + [True] * 7
    assert _count_events() == 1
    assert door.passed == 0
