"""Memberships: a member on a plan version, and the state machine that governs it."""


def init_app(app) -> None:
    from billing.extensions import api
    from billing.memberships.api import blp

    api.register_blueprint(blp)
