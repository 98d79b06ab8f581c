"""Scheduled work: expiry, grace periods, Stripe reconciliation, member emails (see jobs.py),
run by APScheduler once per slot across however many app servers (see scheduler.py)."""

from __future__ import annotations

import logging

from flask import Flask


def init_app(app: Flask) -> None:
    from billing.cli import billing_cli
    from billing.jobs.cli import jobs_cli, scheduler_command

    billing_cli.add_command(jobs_cli)
    billing_cli.add_command(scheduler_command)
    if app.config.get("SCHEDULER_ENABLED") and _is_serving_dev_server():
        from billing.jobs.scheduler import start_background

        try:
            start_background(app)
        except Exception:  # the dev server still serves; the jobs can be run by hand
            logging.getLogger("billing.jobs").exception("the background scheduler did not start")


def _is_serving_dev_server() -> bool:
    """True in the process that serves `flask run` (the reloader's child when it reloads), so
    CLI commands (db upgrade, catalog load) and the reloader's watcher start no scheduler."""
    import click
    from flask.helpers import get_debug_flag
    from werkzeug.serving import is_running_from_reloader

    ctx = click.get_current_context(silent=True)
    if ctx is None or ctx.info_name != "run":
        return False
    reload = ctx.params.get("reload")
    if reload is None:
        reload = get_debug_flag()
    return not reload or is_running_from_reloader()
