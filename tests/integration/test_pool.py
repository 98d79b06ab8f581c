"""Pooled connections are pinged before use only after sitting idle (billing/pool.py)."""

from __future__ import annotations

import time

import pytest
import sqlalchemy as sa

from billing.extensions import db


@pytest.fixture
def pings(app, monkeypatch):
    count = {"n": 0}
    dialect = db.engine.dialect
    real = dialect.do_ping

    def counted(dbapi_connection):
        count["n"] += 1
        return real(dbapi_connection)

    monkeypatch.setattr(dialect, "do_ping", counted)
    return count


def _idle_seconds(seconds: float) -> None:
    """A second listener with a short threshold (the app's, 1 s, never fires within a test)."""
    from billing.pool import ping_when_idle

    db.session.remove()
    ping_when_idle(db.engine, seconds)


def _request(client, headers) -> None:
    """A request, and its connection handed back to the pool as at the end of a real one (the
    tests share one app context, whose session would otherwise keep it)."""
    assert client.get("/api/v1/plans", headers=headers).status_code == 200
    db.session.remove()


def test_a_connection_just_handed_back_is_not_pinged_and_an_idle_one_is(app, client, admin, pings):
    _idle_seconds(0.3)
    for _ in range(3):
        _request(client, admin)
    assert pings["n"] == 0
    time.sleep(0.4)
    _request(client, admin)
    assert pings["n"] == 1


@pytest.mark.postgres_only
def test_a_connection_the_database_dropped_while_idle_is_replaced_unseen(
    app, client, admin, pings, database_url
):
    _idle_seconds(0.3)
    _request(client, admin)
    with db.engine.connect() as conn:  # the pooled connection the request used
        pid = conn.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()
    other = sa.create_engine(database_url)
    with other.connect() as conn:
        assert conn.execute(sa.text("SELECT pg_terminate_backend(:p)"), {"p": pid}).scalar()
    other.dispose()
    time.sleep(0.4)
    _request(client, admin)  # answered, on a new connection
    assert pings["n"] == 1


@pytest.mark.postgres_only
def test_prepared_statements_are_planned_once_not_on_every_execution(app, client, admin):
    """The app's connections plan prepared statements generically (DB_PLAN_CACHE_MODE): a
    statement run many times on one connection is planned once, never again per execution
    (under PostgreSQL's `auto` the desk's lookups were planned afresh every time)."""
    db.session.remove()
    with db.engine.connect() as conn:
        assert conn.execute(sa.text("SHOW plan_cache_mode")).scalar_one() == "force_generic_plan"
        for _ in range(12):  # psycopg prepares a statement on its fifth run
            conn.execute(sa.text("SELECT id FROM plans WHERE code = :code"), {"code": "x"}).all()
        generic, custom = conn.execute(
            sa.text(
                "SELECT generic_plans, custom_plans FROM pg_prepared_statements "
                "WHERE statement LIKE 'SELECT id FROM plans WHERE code = %'"
            )
        ).one()
    assert custom == 0 and generic >= 6  # planned once, then reused on every later run


@pytest.mark.postgres_only
def test_an_unknown_plan_cache_mode_stops_the_start(database_url):
    from billing import create_app
    from tests.conftest import _config

    with pytest.raises(RuntimeError, match="DB_PLAN_CACHE_MODE"):
        create_app(_config(database_url, DB_PLAN_CACHE_MODE="sometimes"))


@pytest.mark.postgres_only
def test_requests_that_only_read_keep_the_statements_prepared(database_url, clock):
    """A request that wrote nothing ends with a COMMIT, not a ROLLBACK (on which psycopg drops
    every prepared statement): the same read over many requests on one connection is prepared
    once and stays prepared. A request that wrote and failed is still rolled back."""
    from billing import create_app
    from tests.conftest import _config, _truncate_all

    app = create_app(
        _config(
            database_url, CLOCK=clock, SQLALCHEMY_ENGINE_OPTIONS={"pool_size": 1, "max_overflow": 0}
        )
    )
    with app.app_context():
        try:
            _read_only_requests_keep_statements(app)
        finally:  # this test's own app: empty the tables as the app fixture would
            db.session.remove()
            _truncate_all()
            db.engine.dispose()


def _read_only_requests_keep_statements(app) -> None:
    from billing.auth.service import create_api_key
    from billing.plans.models import Plan
    from tests import factories as f

    f.plan([(f.treatment("hydrafacial"), 1)], code="gold")
    db.session.commit()
    key = create_api_key(name="test-admin", role="admin")[1]
    db.session.remove()
    client = app.test_client()
    headers = {"Authorization": f"Bearer {key}"}
    for _ in range(12):  # each handed back to the pool as at the end of a real request
        assert client.get("/api/v1/plans", headers=headers).status_code == 200
        db.session.remove()
    assert _runs_of_plans_lookup() >= 6  # prepared on the 5th request and kept since
    # A retry replayed from its Idempotency-Key wrote nothing (its claim inserted no row):
    # it keeps them too.
    retry = {**headers, "Idempotency-Key": "add-mei"}
    body = {"first_name": "Mei", "last_name": "Tan", "email": "mei@example.com"}
    for _ in range(3):
        assert client.post("/api/v1/members", json=body, headers=retry).status_code == 201
        db.session.remove()
    assert _runs_of_plans_lookup() >= 6
    # A write that fails is rolled back: nothing of it is kept.
    r = client.post("/api/v1/plans", json={"code": "gold", "name": "Gold again"}, headers=headers)
    assert r.status_code >= 400
    assert db.session.execute(sa.select(sa.func.count(Plan.id))).scalar_one() == 1


def _runs_of_plans_lookup() -> int:
    """How often the one pooled connection ran the plans lookup as a prepared statement (0 when
    it holds none); read in a transaction that ends with a COMMIT, so reading keeps them."""
    with db.engine.connect() as conn:
        runs = conn.execute(
            sa.text(
                "SELECT coalesce(max(generic_plans + custom_plans), 0) FROM pg_prepared_statements "
                "WHERE statement LIKE 'SELECT plans.%'"
            )
        ).scalar_one()
        conn.commit()
    db.session.remove()
    return int(runs)


# ---------------------------------------------------------------------------------------------
# Autocommitted connections kept for one-statement writes (Stripe's door)

_STORE = (
    "INSERT INTO stripe_events (id, type, object_id, stripe_created, livemode, payload, status, "
    "attempts, received_at) VALUES ($1, 'invoice.paid', NULL, $2, false, $3::json, 'received', "
    "0, $2) ON CONFLICT (id) DO NOTHING"
)


@pytest.mark.postgres_only
def test_a_kept_connection_stores_a_body_as_large_as_the_limit_whole_and_only_once(app):
    """The statement goes through libpq's own call: a parameter larger than the socket's buffers
    (a body of MAX_CONTENT_LENGTH) arrives whole, and the row count says whether it was new."""
    from datetime import UTC, datetime

    from billing.pool import autocommit_connections

    kept = autocommit_connections(db.engine)
    body = '{"note": "%s"}' % ("é✓" * (app.config["MAX_CONTENT_LENGTH"] // 6))
    now = datetime.now(UTC)

    assert kept.execute(_STORE, ("evt_big", now, body)) == 1
    assert kept.execute(_STORE, ("evt_big", now, body)) == 0

    stored = db.session.execute(
        sa.text("SELECT payload::text, received_at FROM stripe_events WHERE id = 'evt_big'")
    ).one()
    assert stored.payload == body
    assert stored.received_at == now


@pytest.mark.postgres_only
def test_a_statement_the_database_refuses_raises_what_psycopg_would_and_is_sent_once(
    app, database_url
):
    """Only a connection lost is worth a second try: an error of the statement's own is raised,
    as psycopg's class for its SQLSTATE, after one execution (a sequence, which no rollback
    undoes, counts them)."""
    import psycopg

    from billing.pool import autocommit_connections

    kept = autocommit_connections(db.engine)
    other = sa.create_engine(database_url, isolation_level="AUTOCOMMIT")
    with other.connect() as conn:
        conn.execute(sa.text("CREATE SEQUENCE kept_sent"))
    try:
        with pytest.raises(psycopg.errors.DivisionByZero, match="division by zero"):
            kept.execute("SELECT nextval('kept_sent') / $1::int", (0,))
        with pytest.raises(psycopg.errors.UndefinedTable):
            kept.execute("INSERT INTO no_such_table VALUES ($1)", (1,))
        assert kept.execute("SELECT nextval('kept_sent') / $1::int", (1,)) == 1
        with other.connect() as conn:
            assert conn.execute(sa.text("SELECT last_value FROM kept_sent")).scalar() == 2
    finally:
        with other.connect() as conn:
            conn.execute(sa.text("DROP SEQUENCE kept_sent"))
        other.dispose()
