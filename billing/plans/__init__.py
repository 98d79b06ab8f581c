"""The treatment catalogue: treatments, tiers and series (see service.py)."""

from __future__ import annotations

from flask import Flask


def init_app(app: Flask) -> None:
    from billing.cli import billing_cli
    from billing.extensions import api
    from billing.plans.api import plans_blp, treatments_blp
    from billing.plans.cli import catalog_cli

    api.register_blueprint(treatments_blp)
    api.register_blueprint(plans_blp)
    billing_cli.add_command(catalog_cli)
