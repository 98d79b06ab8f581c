"""Gift memberships: bought for someone else, claimed with a code: /api/v1/gifts."""


def init_app(app) -> None:
    from billing.extensions import api
    from billing.gifts.api import blp

    api.register_blueprint(blp)
