"""Ping a pooled connection before use only when it has sat idle.

SQLAlchemy's pool_pre_ping pings on every checkout: a round trip to the database on every request
(under load it costs what any statement of a redemption costs), to guard against a connection the
database dropped while it sat in the pool. A connection handed back a moment ago is as alive as
the database: if the database has gone since, the request fails as it would have with a ping (the
database is down), and SQLAlchemy, seeing the disconnect, invalidates the whole pool. So only a
connection idle for longer than `idle_seconds` is pinged (a restart takes longer than that); a
dead one is replaced before the request sees it."""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Sequence

import psycopg
import sqlalchemy as sa
from flask import Flask
from psycopg import pq
from psycopg.adapt import PyFormat, Transformer

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


PLAN_CACHE_MODES = ("auto", "force_generic_plan", "force_custom_plan")


def plan_cache_mode(engine: sa.Engine, mode: str | None) -> None:
    """Install on a PostgreSQL engine: each new connection plans prepared statements `mode`.

    psycopg prepares a statement the fifth time a connection runs it; under PostgreSQL's default
    (`auto`) a prepared statement is still planned again on every execution while a plan made
    for its parameters looks cheaper than a generic one, which the desk's statements always do
    (a redemption's few rows, by key). Planning was a quarter of PostgreSQL's time in a
    redemption (perf, bench/README.md): `force_generic_plan` plans each statement once per
    connection. Every query the app prepares is written for that: lookups by key, and the
    members' search in index ranges rather than LIKE patterns."""
    if not mode or engine.dialect.name != "postgresql":
        return
    if mode not in PLAN_CACHE_MODES:
        raise RuntimeError(
            f"DB_PLAN_CACHE_MODE must be one of {', '.join(PLAN_CACHE_MODES)} (or empty), not {mode!r}"
        )

    @sa.event.listens_for(engine, "connect")
    def _set_plan_cache_mode(dbapi_connection, _record) -> None:
        autocommit = dbapi_connection.autocommit
        dbapi_connection.autocommit = True
        dbapi_connection.execute(f"SET plan_cache_mode = {mode}")
        dbapi_connection.autocommit = autocommit


# ---------------------------------------------------------------------------------------------
# psycopg cursors that describe their columns only when asked to


def lean_cursors(engine: sa.Engine) -> None:
    """Install on a psycopg engine: its connections make LeanCursor cursors.

    SQLAlchemy reads `cursor.description` after every statement, but for a compiled statement it
    has already seen (every statement of the app's hot paths) it only asks whether the result
    has rows: the column metadata it needs is cached. psycopg builds a Column object per column
    on every read of `description`, about 1 microsecond each: ~180 of them a redemption for
    nothing."""
    if engine.dialect.driver != "psycopg":
        return

    @sa.event.listens_for(engine, "connect")
    def _lean(dbapi_connection, _record) -> None:
        dbapi_connection.cursor_factory = LeanCursor


_ROWS = (pq.ExecStatus.TUPLES_OK, pq.ExecStatus.SINGLE_TUPLE, pq.ExecStatus.TUPLES_CHUNK)


class LazyDescription(Sequence):
    """A result's columns, each made when first read (as psycopg's own list would be)."""

    __slots__ = ("_cursor", "_n", "_made")

    def __init__(self, cursor: psycopg.Cursor, n: int) -> None:
        self._cursor, self._n, self._made = cursor, n, None

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, index):
        if self._made is None:
            self._made = [psycopg.Column(self._cursor, i) for i in range(self._n)]
        return self._made[index]


class LeanCursor(psycopg.Cursor):
    @property
    def description(self) -> LazyDescription | None:
        res = self.pgresult
        if res and (res.nfields or res.status in _ROWS):
            return LazyDescription(self, res.nfields)
        return None


# ---------------------------------------------------------------------------------------------
# Requests that only read end with a COMMIT

_WROTE = "billing.wrote"
_COUNTED = ("INSERT", "UPDATE", "DELETE")  # a row count of 0: nothing changed


def commit_reads(app: Flask, db) -> None:
    """A request that succeeded and wrote nothing ends its transaction with a COMMIT, which
    changes nothing, instead of the teardown's ROLLBACK.

    On a rollback psycopg forgets every statement it prepared on the connection (DEALLOCATE ALL,
    in case the transaction dropped what they name; the app's never do), so every desk lookup,
    page and replayed retry made the statements of the next requests be parsed and planned again
    until their fifth run: in the redemption bench (a tenth of the calls are retries) close to
    half the statements ran unprepared. A transaction that changed a row, or sent anything but
    a SELECT or an INSERT, UPDATE or DELETE (whose row count says whether it changed one), or
    whose session holds changes not yet sent, is rolled back as before. So a replayed retry,
    whose claim on its Idempotency-Key inserted nothing, commits too."""
    for engine in db.engines.values():
        if engine.dialect.driver != "psycopg":
            continue

        @sa.event.listens_for(engine, "after_cursor_execute")
        def _note_writes(conn, cursor, statement, _params, _context, _many) -> None:
            verb = statement.lstrip()[:6].upper()
            if verb == "SELECT" or (verb in _COUNTED and cursor.rowcount == 0):
                return
            conn.info[_WROTE] = True

        @sa.event.listens_for(engine, "commit")
        @sa.event.listens_for(engine, "rollback")
        def _forget(conn) -> None:
            conn.info.pop(_WROTE, None)

    @app.teardown_request
    def _end_reads_with_commit(exc: BaseException | None) -> None:
        if exc is not None or not db.session.registry.has():
            return
        session = db.session()
        if not session.in_transaction() or session.new or session.dirty or session.deleted:
            return
        connection = session.connection()
        if connection.dialect.driver == "psycopg" and not connection.info.get(_WROTE):
            session.commit()


# ---------------------------------------------------------------------------------------------
# Autocommitted connections for one-statement writes


class AutocommitConnections:
    """A few driver connections kept in autocommit, apart from the engine's pool, for a write
    that is one idempotent statement: Stripe's door stores each delivery with one.

    Taking a connection from SQLAlchemy's pool for each delivery, switching it to autocommit and
    back and handing it back cost ~0.05 ms of the door's ~0.2 ms of CPU (bench/HISTORY.md). These
    are made by the engine's pool, so its connect hooks apply (the plan cache mode), then
    detached from it, switched to autocommit once and kept in a plain list.

    The statement is prepared once on each connection and run through libpq's own call
    (psycopg.pq), its parameters dumped by psycopg's adapters as its `execute` would: around the
    same round trip, `execute` cost the door's insert 91 µs of CPU in process against 49, and
    ~10 % more of gunicorn's CPU a delivery (bench/HISTORY.md, the eleventh session). The wait
    for the database is one call without the GIL.

    A connection whose statement fails is closed, never kept. `execute` tries once more on a new
    connection when the first fails for the connection's sake (the database restarted or dropped
    it while it sat idle, which the pool's ping would have caught): only an idempotent statement
    may be sent twice. They are closed when the engine is disposed, and with this object."""

    KEEP = 16  # more than any worker's threads

    def __init__(self, engine: sa.Engine) -> None:
        self._engine = engine
        self._idle: list[_Kept] = []
        self._lock = threading.Lock()
        self._generation = 0
        sa.event.listen(engine, "engine_disposed", self._close_idle)
        weakref.finalize(self, _close_each, self._idle)

    def execute(self, statement: str, params: Sequence) -> int:
        """Run `statement` (idempotent; placeholders $1, $2, ...) in its own transaction; its
        row count."""
        for attempt in (1, 2):
            kept, generation = self._take()
            try:
                rowcount = kept.run(statement, params)
            except psycopg.OperationalError:
                kept.close()
                if attempt == 2:
                    raise
                continue
            except BaseException:
                kept.close()
                raise
            self._give_back(kept, generation)
            return rowcount
        raise AssertionError("unreachable")

    def _take(self) -> tuple[_Kept, int]:
        with self._lock:
            if self._idle:
                return self._idle.pop(), self._generation
            generation = self._generation
        fairy = self._engine.raw_connection()
        conn = fairy.driver_connection
        fairy.detach()  # from here on, closing it is this object's job
        try:
            conn.autocommit = True
        except BaseException:
            conn.close()
            raise
        return _Kept(conn), generation

    def _give_back(self, kept: _Kept, generation: int) -> None:
        with self._lock:
            if generation == self._generation and len(self._idle) < self.KEEP:
                self._idle.append(kept)
                return
        kept.close()

    def _close_idle(self, *_) -> None:
        with self._lock:
            idle = self._idle[:]
            self._idle.clear()
            self._generation += 1
        _close_each(idle)


class _Kept:
    """A kept connection, the statements prepared on it and its parameter dumper."""

    __slots__ = ("conn", "prepared", "dumper")

    def __init__(self, conn: psycopg.Connection) -> None:
        self.conn = conn
        self.prepared: dict[tuple, bytes] = {}
        self.dumper = Transformer.from_context(conn)

    def run(self, statement: str, params: Sequence) -> int:
        """Dumped as psycopg's `execute` would (binary where it has a binary dumper), prepared
        once for these parameter types."""
        pgconn, dumper = self.conn.pgconn, self.dumper
        values = dumper.dump_sequence(params, [PyFormat.AUTO] * len(params))
        key = (statement, dumper.types)
        name = self.prepared.get(key)
        if name is None:
            name = b"billing_kept_%d" % len(self.prepared)
            _checked(pgconn, pgconn.prepare(name, statement.encode(), dumper.types))
            self.prepared[key] = name
        result = pgconn.exec_prepared(name, values, dumper.formats)
        return _checked(pgconn, result).command_tuples or 0

    def close(self) -> None:
        self.conn.close()


def _checked(pgconn: pq.abc.PGconn, result: pq.abc.PGresult) -> pq.abc.PGresult:
    """The result, or the error psycopg would have raised for it: OperationalError when the
    connection is lost (so `execute` tries a new one), else the class of its SQLSTATE."""
    if result.status in (pq.ExecStatus.COMMAND_OK, pq.ExecStatus.TUPLES_OK):
        return result
    message = result.error_message.decode("utf-8", "replace").strip() or "no result"
    if pgconn.status != pq.ConnStatus.OK:
        raise psycopg.OperationalError(message)
    sqlstate = result.error_field(pq.DiagnosticField.SQLSTATE)
    try:
        error = psycopg.errors.lookup(sqlstate.decode()) if sqlstate else psycopg.DatabaseError
    except KeyError:
        error = psycopg.DatabaseError
    raise error(message)


def _close_each(connections: list) -> None:
    for conn in connections:
        conn.close()


_MAKING = threading.Lock()


def autocommit_connections(engine: sa.Engine) -> AutocommitConnections:
    """The engine's own AutocommitConnections, made on first use (once, whichever thread asks)."""
    held = engine.__dict__.get("_billing_autocommit")
    if held is None:
        with _MAKING:
            held = engine.__dict__.get("_billing_autocommit")
            if held is None:
                held = engine.__dict__["_billing_autocommit"] = AutocommitConnections(engine)
    return held
