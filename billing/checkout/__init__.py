"""Front-desk checkout: visits, lines, the clinic's rules, receipts."""


def init_app(app) -> None:
    from billing.checkout.api import consultations_blp, desk_blp, visits_blp
    from billing.extensions import api

    api.register_blueprint(visits_blp)
    api.register_blueprint(desk_blp)
    api.register_blueprint(consultations_blp)
