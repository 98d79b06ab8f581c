"""Staff, credentials, duty shifts and category policies."""


def init_app(app) -> None:
    from billing.cli import billing_cli
    from billing.extensions import api
    from billing.staff.api import blp
    from billing.staff.cli import staff_cli

    api.register_blueprint(blp)
    if "staff" not in billing_cli.commands:
        billing_cli.add_command(staff_cli)
