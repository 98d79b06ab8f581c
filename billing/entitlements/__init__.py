"""The entitlement ledger: credits granted, redeemed, expired, adjusted, clawed back."""


def init_app(app) -> None:
    from billing.entitlements.api import blp
    from billing.extensions import api

    api.register_blueprint(blp)
