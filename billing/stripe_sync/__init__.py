"""Stripe: recurring billing driven by webhooks. Stripe is the source of truth for money; this
service for treatments."""


def init_app(app) -> None:
    from billing.cli import billing_cli
    from billing.extensions import api
    from billing.stripe_sync.api import blp, webhooks
    from billing.stripe_sync.cli import stripe_cli

    mode = app.config.get("STRIPE_WEBHOOK_PROCESSING", "inline")
    if mode not in ("inline", "queued"):
        raise RuntimeError(f"STRIPE_WEBHOOK_PROCESSING must be inline or queued, not {mode!r}")
    app.register_blueprint(webhooks)
    from billing.stripe_sync.intake import WebhookIntake

    # Queued deliveries are taken before Flask (intake.py); the rest, and inline mode, pass on.
    app.wsgi_app = WebhookIntake(app, app.wsgi_app)
    api.register_blueprint(blp)
    if "stripe" not in billing_cli.commands:
        billing_cli.add_command(stripe_cli)
    _say_what_is_off(app)


def _say_what_is_off(app) -> None:
    """Missing Stripe settings are said once at start-up; the rest of the service runs, and the
    Stripe features answer 503 with the same explanation when used."""
    import logging

    missing = [
        key for key in ("STRIPE_API_KEY", "STRIPE_WEBHOOK_SECRET") if not app.config.get(key)
    ]
    if missing:
        logging.getLogger("billing.stripe").error(
            "Stripe is not configured (%s not set): joining with a card, member actions through "
            "Stripe, webhooks and reconciliation answer 503 until it is; everything else runs.",
            ", ".join(missing),
        )
