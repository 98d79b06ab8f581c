"""Ping a pooled connection before use only when it has sat idle.

SQLAlchemy's pool_pre_ping pings on every checkout: a round trip to the database on every request
(under load it costs what any statement of a redemption costs), to guard against a connection the
database dropped while it sat in the pool. A connection handed back a moment ago is as alive as
the database: if the database has gone since, the request fails as it would have with a ping (the
database is down), and SQLAlchemy, seeing the disconnect, invalidates the whole pool. So only a
connection idle for longer than `idle_seconds` is pinged (a restart takes longer than that); a
dead one is replaced before the request sees it."""

from __future__ import annotations

import time

import sqlalchemy as sa

_IDLE_SINCE = "billing.idle_since"


def ping_when_idle(engine: sa.Engine, idle_seconds: float) -> None:
    """Install on `engine`. idle_seconds=0 pings on every checkout (pool_pre_ping)."""
    dialect = engine.dialect

    @sa.event.listens_for(engine, "checkin")
    def _handed_back(dbapi_connection, record) -> None:
        record.info[_IDLE_SINCE] = time.monotonic()

    @sa.event.listens_for(engine, "checkout")
    def _ping_if_idle(dbapi_connection, record, proxy) -> None:
        since = record.info.get(_IDLE_SINCE)
        if since is None or time.monotonic() - since < idle_seconds:
            return  # just connected, or just used
        try:
            dialect.do_ping(dbapi_connection)
        except dialect.loaded_dbapi.Error as exc:  # the pool replaces it and tries again
            raise sa.exc.DisconnectionError(f"stale pooled connection: {exc}") from exc
