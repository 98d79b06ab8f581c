"""The floor under Stripe's door, for bench/webhook_ingest.py: what the least a durable intake
of a delivery costs on this server. POST /bench/floor reads the body, stores it as one row
(a random id and the body, cast to json) in one autocommitted INSERT on the same kept
connections the door uses (billing/pool.py), and answers a constant 200. Nothing of the door's
own work: no signature, no JSON parsed in Python, no Flask.

The production app answers every other request, unchanged: gunicorn serves `bench.floor_app:app`
instead of `billing:create_app()`, and the only difference for them is this module's path
check. The share of the floor that the door reaches says what its own work costs; the floor's
share of /healthz says what any durable intake can reach on this server."""

from __future__ import annotations

import uuid

from bench.webhook_ingest import FLOOR_PATH, FLOOR_TABLE
from billing import create_app
from billing.extensions import db
from billing.pool import autocommit_connections

_STORE = f"INSERT INTO {FLOOR_TABLE} (id, payload) VALUES ($1, $2::json)"
_ANSWER = b'{"stored":true}\n'

billing_app = create_app()
with billing_app.app_context():
    _kept = autocommit_connections(db.engine)


def app(environ: dict, start_response):
    if environ.get("PATH_INFO") != FLOOR_PATH:
        return billing_app(environ, start_response)
    body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
    _kept.execute(_STORE, (uuid.uuid4().hex, body.decode()))
    start_response(
        "200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(_ANSWER)))]
    )
    return [_ANSWER]
