"""Finance: revenue recognition read off the entitlement ledger, deferred revenue, and the
exports an accountant imports (see the README (Finance))."""

from __future__ import annotations

from flask import Flask


def init_app(app: Flask) -> None:
    from billing.cli import billing_cli
    from billing.extensions import api
    from billing.finance.api import blp
    from billing.finance.cli import export_command

    api.register_blueprint(blp)
    billing_cli.add_command(export_command)
