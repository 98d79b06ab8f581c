"""The Stripe event worker (`flask --app wsgi billing stripe work`): acts on the events the
webhook stored (STRIPE_WEBHOOK_PROCESSING=queued), batch by batch, in Stripe's created order.

Several workers may run against one PostgreSQL database: each claims its batch with
FOR UPDATE SKIP LOCKED and marks it done in the transaction that acted on it, so an event is
acted on by one worker, once. With nothing to do it sleeps STRIPE_WORKER_POLL_SECONDS; SIGTERM
lets the batch in hand commit, then it exits.

Acknowledging Stripe comes first. When deliveries come in faster than the worker acts on them
(a storm: the backlog is past STRIPE_WORKER_STORM_BACKLOG and grew since the worker last
looked), the worker stands aside for up to STRIPE_WORKER_STORM_DEFER_SECONDS, so the webhook
and the front desk keep the CPU and the database; then it works flat out until it has caught
up. A nice value alone did not do it: the worker's PostgreSQL backend runs at the server's
priority, and it took a quarter of the CPU a storm's intake had (bench/webhook_ingest.py)."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from flask import Flask

from billing import clock
from billing.extensions import db
from billing.stripe_sync import service

log = logging.getLogger("billing.stripe.worker")

# After an error outside any one event's handler (the database went away): wait, then go on.
ERROR_PAUSE_SECONDS = 5.0


def run(
    app: Flask,
    *,
    once: bool = False,
    batch: int | None = None,
    poll_seconds: float | None = None,
    stop: threading.Event | None = None,
    report: Callable[[str], None] = log.info,
) -> Counter:
    """Work until stopped (or, with `once`, until nothing is due). Returns what came of the
    events it acted on, counted by status."""
    config = app.config
    batch = batch or int(config.get("STRIPE_WORKER_BATCH", 50))
    poll = config.get("STRIPE_WORKER_POLL_SECONDS", 0.5) if poll_seconds is None else poll_seconds
    stop = stop or threading.Event()
    storm = IntakeFirst(
        backlog=int(config.get("STRIPE_WORKER_STORM_BACKLOG", 200)),
        defer_seconds=0.0 if once else float(config.get("STRIPE_WORKER_STORM_DEFER_SECONDS", 30)),
    )
    yield_cpu()
    previous = _stop_on_sigterm(stop)
    counts: Counter = Counter()
    report(f"stripe worker started: batches of {batch}, polling every {poll}s")

    def stand_aside() -> bool:
        """Before each batch (drain asks): stop while a storm comes in, or when told to stop;
        the loop then waits `poll` and drain asks again."""
        return stop.is_set() or (storm.active and storm.should_wait(service.waiting()))

    try:
        while not stop.is_set():
            try:
                done = service.drain(now=clock.now, limit=batch, should_stop=stand_aside)
            except Exception:
                db.session.rollback()
                log.exception("stripe worker: a batch failed; trying again shortly")
                if once:
                    raise
                stop.wait(ERROR_PAUSE_SECONDS)
                continue
            finally:
                db.session.remove()
            counts.update(done)
            if done:
                report("stripe worker: " + ", ".join(f"{k} {v}" for k, v in sorted(done.items())))
            if once:
                break
            stop.wait(poll)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    report("stripe worker stopped")
    return counts


@dataclass
class IntakeFirst:
    """Whether the worker should wait, given the backlog it sees before a batch: yes while the
    backlog is past `backlog` and grew since the last look, for at most `defer_seconds` in a
    row; then no, until it has shrunk again. A trickle of events (a backlog under `backlog`)
    is acted on at once, as always."""

    backlog: int
    defer_seconds: float
    clock: Callable[[], float] = time.monotonic
    _last: int | None = field(default=None, init=False)
    _since: float | None = field(default=None, init=False)

    @property
    def active(self) -> bool:
        return self.defer_seconds > 0

    def should_wait(self, waiting: int) -> bool:
        storming = self._last is not None and waiting > self._last and waiting > self.backlog
        self._last = waiting
        if not storming:
            self._since = None
            return False
        now = self.clock()
        if self._since is None:
            self._since = now
            log.info("stripe worker: %s events waiting and more coming; standing aside", waiting)
        return now - self._since < self.defer_seconds


AUTOGROUP = "/proc/self/autogroup"


def yield_cpu(path: str = AUTOGROUP) -> int | None:
    """Make the worker's nice value (`Nice=10`, `nice -n 10`) count. On Linux with autogroup
    scheduling (kernel.sched_autogroup_enabled=1, common outside systemd's cgroups) a process
    started in a session of its own is weighed against gunicorn and PostgreSQL as a group, and
    a nice value counts only inside its group: measured, a nice-10 worker took a third of the
    machine while Stripe's deliveries waited. So the group takes the process's nice value too.
    Returns the nice value set on the group, or None where there is no autogroup (or no nice)."""
    niceness = os.nice(0) if hasattr(os, "nice") else 0
    if niceness <= 0:
        return None
    with contextlib.suppress(OSError):
        with open(path, "w") as group:
            group.write(str(niceness))
        log.info("stripe worker: autogroup nice set to %s", niceness)
        return niceness
    return None


def _stop_on_sigterm(stop: threading.Event):
    """SIGTERM (systemd, a deploy) ends the loop after the batch in hand; only the main thread
    may set a handler (a test running the loop in a thread just uses `stop`)."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def on_term(_signum, _frame) -> None:
        stop.set()

    return signal.signal(signal.SIGTERM, on_term)


def wait_until_idle(app: Flask, *, timeout: float) -> bool:
    """True once no event is waiting to be acted on (received); for tests and benchmarks."""
    deadline = time.monotonic() + timeout
    with app.app_context():
        while time.monotonic() < deadline:
            waiting = service.waiting()
            db.session.remove()
            if not waiting:
                return True
            time.sleep(0.1)
    return False
