"""Liveness and readiness."""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify
from sqlalchemy import text

from billing.auth.access import PUBLIC, requires
from billing.extensions import db

bp = Blueprint("health", __name__)


@bp.get("/healthz")
@requires(PUBLIC)
def healthz():
    return jsonify(status="ok")


@bp.get("/readyz")
@requires(PUBLIC)
def readyz():
    """Ready when the database answers and its schema is at the newest migration."""
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    try:
        with db.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
            current = set(MigrationContext.configure(conn).get_current_heads())
    except Exception as exc:  # the database is down: say so, don't crash
        return jsonify(status="unavailable", database=str(exc.__class__.__name__)), 503
    migrate = current_app.extensions["migrate"]
    script = ScriptDirectory.from_config(migrate.migrate.get_config(migrate.directory))
    heads = set(script.get_heads())
    if current_app.config.get("SCHEMA_FROM_MODELS"):
        return jsonify(status="ok", migrations="created from models (tests)")
    if current != heads:
        return jsonify(
            status="unavailable", migrations="behind", current=sorted(current), head=sorted(heads)
        ), 503
    return jsonify(status="ok", migrations="at head")
