"""Stripe: recurring billing driven by webhooks. Stripe is the source of truth for money; this
service for treatments."""


def init_app(app) -> None:
    from billing.cli import billing_cli
    from billing.extensions import api
    from billing.stripe_sync.api import blp, webhooks
    from billing.stripe_sync.cli import stripe_cli

    app.register_blueprint(webhooks)
    api.register_blueprint(blp)
    if "stripe" not in billing_cli.commands:
        billing_cli.add_command(stripe_cli)
