"""The schema comes from migrations: from empty to head and back, and head equals the models."""

import uuid

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from flask_migrate import downgrade, upgrade

from billing import create_app
from billing.extensions import db
from tests.conftest import ADMIN_URL, IS_POSTGRES, _config


@pytest.fixture
def empty_database_url(tmp_path):
    if not IS_POSTGRES:
        yield f"sqlite:///{tmp_path / 'migrations.db'}"
        return
    name = f"billing_mig_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    yield sa.engine.make_url(ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def _diff(connection) -> list:
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    return [
        d
        for d in compare_metadata(context, db.metadata)
        # APScheduler creates and owns its own job table at run time.
        if not (d[0] == "remove_table" and d[1].name == "apscheduler_jobs")
    ]


def _payload_compression(engine) -> str:
    with engine.connect() as conn:
        return conn.execute(
            sa.text(
                "SELECT attcompression FROM pg_attribute "
                "WHERE attrelid = 'stripe_events'::regclass AND attname = 'payload'"
            )
        ).scalar_one()


@pytest.mark.skipif(not IS_POSTGRES, reason="TOAST compression is PostgreSQL's")
def test_a_schema_built_from_the_models_stores_stripe_payloads_with_lz4(app):
    with app.app_context():
        assert _payload_compression(db.engine) == "l"


def test_upgrade_from_empty_matches_the_models_and_downgrades_to_base(empty_database_url):
    app = create_app(_config(empty_database_url, SCHEMA_FROM_MODELS=False))
    with app.app_context():
        upgrade()
        with db.engine.connect() as conn:
            assert _diff(conn) == []
            tables = set(sa.inspect(conn).get_table_names())
        assert {"ledger_entries", "credits", "memberships", "treatments"} <= tables
        if IS_POSTGRES:
            assert _payload_compression(db.engine) == "l"  # lz4: migration 0005
        assert app.test_client().get("/readyz").get_json()["migrations"] == "at head"
        downgrade(revision="base")
        with db.engine.connect() as conn:
            assert set(sa.inspect(conn).get_table_names()) <= {"alembic_version"}
        db.engine.dispose()
