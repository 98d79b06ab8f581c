"""Membership billing for medical spas: the app factory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flask import Flask


def create_app(config: Any = None) -> Flask:
    """Build the app. `config` is a config class, a dict of overrides, or None (BILLING_ENV)."""
    import config as config_module

    app = Flask(__name__, instance_relative_config=False)
    app.instance_path = str(Path(config_module.BASE_DIR) / "instance")
    if config is None or isinstance(config, dict):
        cls = config_module.config_for()
        app.config.from_object(cls)
        if isinstance(config, dict):
            app.config.update(config)
    else:
        cls = config
        app.config.from_object(config)
    if hasattr(cls, "validate"):
        cls.validate()
    if not app.config.get("SQLALCHEMY_DATABASE_URI"):
        raise RuntimeError("no database configured: set DATABASE_URL")
    Path(app.instance_path).mkdir(parents=True, exist_ok=True)

    from billing import errors, guards, models  # noqa: F401  (models: the whole schema for Alembic)
    from billing.cli import billing_cli
    from billing.extensions import api, db, migrate

    db.init_app(app)
    from billing.pool import commit_reads, lean_cursors, ping_when_idle, plan_cache_mode

    with app.app_context():
        for engine in db.engines.values():
            ping_when_idle(engine, app.config.get("DB_PING_IDLE_SECONDS", 0))
            lean_cursors(engine)
            plan_cache_mode(engine, app.config.get("DB_PLAN_CACHE_MODE"))
        commit_reads(app, db)
    migrate.init_app(
        app,
        db,
        directory=str(Path(config_module.BASE_DIR) / "migrations"),
        render_as_batch=True,
        compare_type=True,
    )
    api.init_app(app)
    errors.init_app(app)
    guards.init_app(app)

    from billing import health

    app.register_blueprint(health.bp)
    for module in _domain_modules():
        module.init_app(app)
    app.cli.add_command(billing_cli)
    return app


def _domain_modules() -> list:
    """Each domain binds its blueprint and CLI itself (init_app), in dependency order."""
    import importlib

    names = [
        "billing.plans",
        "billing.members",
        "billing.memberships",
        "billing.entitlements",
        "billing.staff",
        "billing.checkout",
        "billing.series",
        "billing.gifts",
        "billing.stripe_sync",
        "billing.finance",
        "billing.jobs",
        "billing.web",
    ]
    modules = []
    for name in names:
        module = importlib.import_module(name)
        if hasattr(module, "init_app"):
            modules.append(module)
    return modules
