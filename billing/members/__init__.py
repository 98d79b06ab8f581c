"""Members: the clinic's clients."""


def init_app(app) -> None:
    from billing.extensions import api
    from billing.members.api import blp

    api.register_blueprint(blp)
