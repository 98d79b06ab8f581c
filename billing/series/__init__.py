"""Treatment series sold once (in full or in instalments): /api/v1/series-purchases."""


def init_app(app) -> None:
    from billing.extensions import api
    from billing.series.api import blp

    api.register_blueprint(blp)
