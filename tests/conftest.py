"""Fixtures shared by every test: an app per test with an isolated database, a movable clock,
and API keys per role.

The suite runs on SQLite (an in-memory database per test) and, when TEST_DATABASE_URL points at a
PostgreSQL server, on a database of its own created for this run and dropped after it."""

from __future__ import annotations

import os
import uuid
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from billing import create_app
from billing.extensions import db
from config import TestingConfig

ADMIN_URL = os.environ.get("TEST_DATABASE_URL", "")
IS_POSTGRES = ADMIN_URL.startswith("postgresql")


def pytest_report_header(config):
    return f"database: {'PostgreSQL' if IS_POSTGRES else 'SQLite (in-memory)'}"


def pytest_collection_modifyitems(config, items):
    if IS_POSTGRES:
        return
    skip = pytest.mark.skip(reason="needs PostgreSQL (make test runs it there too)")
    for item in items:
        if "postgres_only" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def database_url():
    """A fresh PostgreSQL database for this run, or in-memory SQLite."""
    if not IS_POSTGRES:
        yield "sqlite://"
        return
    name = f"billing_test_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    admin = sa.create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = sa.engine.make_url(ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    schema_app = create_app(_config(url))
    with schema_app.app_context():
        db.create_all()
        db.engine.dispose()
    yield url
    with admin.connect() as conn:
        conn.execute(
            sa.text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n "
                "AND pid <> pg_backend_pid()"
            ),
            {"n": name},
        )
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}"'))
    admin.dispose()


@contextmanager
def sql_sent():
    """The SQL statements (and commits) the app sends while the block runs: what a hot path
    costs in round trips, asserted where one more would be felt."""
    seen: dict[str, list] = {"sql": [], "commits": []}

    def on_execute(conn, cursor, statement, params, context, executemany):
        seen["sql"].append(statement)

    def on_commit(conn):
        seen["commits"].append(conn)

    engine = db.engine
    sa.event.listen(engine, "before_cursor_execute", on_execute)
    sa.event.listen(engine, "commit", on_commit)
    try:
        yield seen
    finally:
        sa.event.remove(engine, "before_cursor_execute", on_execute)
        sa.event.remove(engine, "commit", on_commit)


def _config(url: str, **overrides) -> dict:
    config = {k: getattr(TestingConfig, k) for k in dir(TestingConfig) if k.isupper()}
    config.update(SQLALCHEMY_DATABASE_URI=url, SCHEMA_FROM_MODELS=True)
    config.update(overrides)
    return config


class Clock:
    """A clock the tests move by hand."""

    def __init__(self, start: datetime) -> None:
        self.current = start

    def __call__(self) -> datetime:
        return self.current

    def advance(self, **delta) -> datetime:
        self.current = self.current + timedelta(**delta)
        return self.current

    def set(self, moment: datetime) -> datetime:
        self.current = moment.astimezone(UTC)
        return self.current


@pytest.fixture
def clock():
    return Clock(datetime(2026, 3, 2, 2, 0, tzinfo=UTC))  # 10:00 on a Monday in Singapore


@pytest.fixture
def app(database_url, clock):
    app = create_app(_config(database_url, CLOCK=clock))
    with app.app_context():
        if not IS_POSTGRES:
            db.create_all()
        yield app
        db.session.remove()
        if IS_POSTGRES:
            _truncate_all()
        db.engine.dispose()


def _truncate_all() -> None:
    """Empty every table between tests. DELETE, children first, is far cheaper than TRUNCATE
    here: most tables are empty, and TRUNCATE rewrites every table's files each time."""
    tables = db.metadata.sorted_tables
    restart = ", ".join(
        f"setval(pg_get_serial_sequence('\"{t.name}\"', 'id'), 1, false)"
        for t in tables
        if "id" in t.c and isinstance(t.c.id.type, sa.Integer)
    )
    with db.engine.begin() as conn:
        for table in reversed(tables):
            conn.execute(table.delete())
        conn.execute(sa.text(f"SELECT {restart}"))  # ids start at 1 again, as in a new database


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def runner(app):
    return app.test_cli_runner()


@pytest.fixture
def keys(app):
    """keys.headers("staff") -> {"Authorization": "Bearer ..."}; client keys take member_id."""
    from billing.auth.service import create_api_key

    class Keys:
        def headers(self, role: str, member_id: int | None = None, **extra) -> dict:
            _, plaintext = create_api_key(name=f"test-{role}", role=role, member_id=member_id)
            return {"Authorization": f"Bearer {plaintext}", **extra}

    return Keys()


@pytest.fixture
def admin(keys):
    return keys.headers("admin")


@pytest.fixture
def staff(keys):
    return keys.headers("staff")


@pytest.fixture
def finance(keys):
    return keys.headers("finance")
