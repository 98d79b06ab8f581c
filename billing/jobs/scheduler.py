"""APScheduler 3 wiring: the schedule lives in the database (table apscheduler_jobs, same
DATABASE_URL), so a job whose time passed while every scheduler was down runs once when one
starts again (coalesce=True, and a misfire grace of at least the job's interval).

Two ways to run it:
- production: `flask --app wsgi billing scheduler`, a BlockingScheduler in its own process (one
  per app server is fine: job_runs lets exactly one of them run each slot);
- development: SCHEDULER_ENABLED=true starts a BackgroundScheduler inside `flask run`.

The stored job is a textual reference to `run_scheduled_job` (module level), which runs inside
the app it was given by `bind_app`, or builds one with create_app(). A custom executor hands it
the fire time APScheduler scheduled it for, which names the slot."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from apscheduler.events import EVENT_SCHEDULER_STARTED
from apscheduler.executors.base import run_job
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.jobstores.base import ConflictingIdError
from apscheduler.jobstores.memory import MemoryJobStore
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.schedulers.base import STATE_STOPPED, BaseScheduler
from apscheduler.schedulers.blocking import BlockingScheduler
from apscheduler.triggers.interval import IntervalTrigger
from flask import Flask

log = logging.getLogger("billing.jobs.scheduler")

JOBSTORE_TABLE = "apscheduler_jobs"
JOB_FUNC_REF = "billing.jobs.scheduler:run_scheduled_job"
# Slots are counted from a clinic-local midnight (plus the job's offset): a daily job's slot is
# a clinic day, an hourly job's a clinic hour.
ANCHOR_DAY = date(2024, 1, 1)
MIN_MISFIRE_GRACE = timedelta(seconds=60)

_bound_app: Flask | None = None


@dataclass(frozen=True)
class Schedule:
    name: str
    every: timedelta
    anchor: datetime  # aware, in the clinic's timezone

    @property
    def misfire_grace_seconds(self) -> int:
        # At least one interval: after downtime the newest missed fire time is less than one
        # interval old, so the coalesced run is never dropped as "missed".
        return int(max(self.every, MIN_MISFIRE_GRACE).total_seconds())

    @property
    def kwargs(self) -> dict:
        return {"every_seconds": self.every.total_seconds(), "anchor": self.anchor.isoformat()}

    def trigger(self) -> IntervalTrigger:
        return IntervalTrigger(
            seconds=self.every.total_seconds(), start_date=self.anchor, timezone=self.anchor.tzinfo
        )


def schedules(app: Flask) -> list[Schedule]:
    """Every job's schedule. SCHEDULER_TEST_INTERVAL_SECONDS (config or environment) runs all
    of them every N seconds: for tests and demos, never for production."""
    from billing.jobs.jobs import JOBS

    tz = ZoneInfo(app.config.get("CLINIC_TIMEZONE") or "UTC")
    test_every = app.config.get("SCHEDULER_TEST_INTERVAL_SECONDS") or os.environ.get(
        "SCHEDULER_TEST_INTERVAL_SECONDS"
    )
    midnight = datetime.combine(ANCHOR_DAY, time.min, tzinfo=tz)
    result = []
    for spec in JOBS.values():
        if test_every:
            result.append(Schedule(spec.name, timedelta(seconds=float(test_every)), midnight))
        else:
            result.append(Schedule(spec.name, spec.every, midnight + spec.offset))
    return result


def schedule_for(app: Flask, name: str) -> Schedule:
    return next(s for s in schedules(app) if s.name == name)


# ---------------------------------------------------------------------------------------------
# The stored job's callable


def bind_app(app: Flask) -> None:
    """Scheduled runs in this process use this app (its config, its database)."""
    global _bound_app
    _bound_app = app


def _app() -> Flask:
    global _bound_app
    if _bound_app is None:
        from billing import create_app

        _bound_app = create_app()
    return _bound_app


def run_scheduled_job(
    name: str,
    every_seconds: float,
    anchor: str,
    scheduled_for: datetime | None = None,
) -> dict | None:
    """What APScheduler calls (by its textual reference). Runs job `name` for the slot its fire
    time falls in, unless another scheduler process has already claimed that slot."""
    from billing import clock
    from billing.jobs import service

    app = _app()
    with app.app_context():
        fired = scheduled_for or clock.utcnow()
        slot = service.slot_for(
            fired, every=timedelta(seconds=every_seconds), anchor=datetime.fromisoformat(anchor)
        )
        run = service.run_job(name, slot=slot, now=clock.now())
        return None if run is None else {"outcome": run.outcome, "counts": run.counts}


class _AtRunTime:
    """The job as run for one fire time: the same job, with scheduled_for in its kwargs."""

    def __init__(self, job, run_time: datetime) -> None:
        self._job = job
        self.kwargs = {**job.kwargs, "scheduled_for": run_time}

    def __getattr__(self, name):
        return getattr(self._job, name)

    def __str__(self) -> str:
        return str(self._job)


def _run_at_each_time(job, jobstore_alias, run_times, logger_name):
    events = []
    for run_time in run_times:
        events += run_job(_AtRunTime(job, run_time), jobstore_alias, [run_time], logger_name)
    return events


class SlotExecutor(ThreadPoolExecutor):
    """A thread pool that tells our job callable which fire time it is running for
    (APScheduler 3 does not pass it), so every server computes the same slot."""

    def _do_submit_job(self, job, run_times):
        def callback(f):
            exc = f.exception()
            if exc:
                self._run_job_error(job.id, exc, getattr(exc, "__traceback__", None))
            else:
                self._run_job_success(job.id, f.result())

        future = self._pool.submit(
            _run_at_each_time, job, job._jobstore_alias, run_times, self._logger.name
        )
        future.add_done_callback(callback)


# ---------------------------------------------------------------------------------------------
# Building and starting


def _database_url(app: Flask) -> str:
    return app.config["SQLALCHEMY_DATABASE_URI"]


def _in_memory(url: str) -> bool:
    parsed = sa.engine.make_url(url)
    return parsed.get_backend_name() == "sqlite" and parsed.database in (None, "", ":memory:")


def jobstore_engine(app: Flask) -> sa.Engine:
    return sa.create_engine(_database_url(app), pool_pre_ping=True)


def ensure_jobstore_table(engine: sa.Engine) -> None:
    """Create apscheduler_jobs if missing; two servers starting at once may race to create it."""
    table = SQLAlchemyJobStore(engine=engine, tablename=JOBSTORE_TABLE).jobs_t
    try:
        table.create(engine, checkfirst=True)
    except sa.exc.DBAPIError:
        if not sa.inspect(engine).has_table(JOBSTORE_TABLE):
            raise


class _StopsCleanly:
    """APScheduler 3 looks for due jobs once more after shutdown, submits them to the stopped
    executor (which refuses) and still moves their next run time on: a slot lost at every
    restart. A stopped scheduler here looks for nothing."""

    def _process_jobs(self):
        if self.state == STATE_STOPPED:
            return None
        return super()._process_jobs()


class Blocking(_StopsCleanly, BlockingScheduler):
    pass


class Background(_StopsCleanly, BackgroundScheduler):
    pass


def build_scheduler(app: Flask, *, background: bool) -> BaseScheduler:
    url = _database_url(app)
    if _in_memory(url):  # a private in-memory database cannot be shared with another engine
        store = MemoryJobStore()
    else:
        engine = jobstore_engine(app)
        ensure_jobstore_table(engine)
        store = SQLAlchemyJobStore(engine=engine, tablename=JOBSTORE_TABLE)
    cls = Background if background else Blocking
    return cls(
        jobstores={"default": store},
        executors={"default": SlotExecutor(max_workers=4)},
        job_defaults={"coalesce": True, "max_instances": 1},
        timezone=UTC,
    )


def _same(job, schedule: Schedule) -> bool:
    trigger = job.trigger
    return (
        job.func_ref == JOB_FUNC_REF
        and tuple(job.args) == (schedule.name,)
        and job.kwargs == schedule.kwargs
        and isinstance(trigger, IntervalTrigger)
        and trigger.interval == schedule.every
        and trigger.start_date == schedule.anchor
        and job.coalesce is True
        and job.misfire_grace_time == schedule.misfire_grace_seconds
    )


def install_jobs(scheduler: BaseScheduler, app: Flask) -> None:
    """Make the stored schedule match the code. A stored job that already matches is kept as it
    is, with its next run time: if that is in the past (we were down), it runs once now."""
    wanted = {s.name: s for s in schedules(app)}
    for job in scheduler.get_jobs():
        if job.id not in wanted:
            log.info("removing job %s: no longer defined", job.id)
            scheduler.remove_job(job.id)
    for name, schedule in wanted.items():
        existing = scheduler.get_job(name)
        if existing is not None and _same(existing, schedule):
            continue
        options = dict(
            trigger=schedule.trigger(),
            args=[name],
            kwargs=schedule.kwargs,
            id=name,
            name=name,
            coalesce=True,
            max_instances=1,
            misfire_grace_time=schedule.misfire_grace_seconds,
        )
        # ConflictingIdError: another server stored it a moment ago; keep theirs.
        with contextlib.suppress(ConflictingIdError):
            scheduler.add_job(JOB_FUNC_REF, replace_existing=existing is not None, **options)


def _start(scheduler: BaseScheduler, app: Flask) -> None:
    """Start paused, bring the stored jobs up to date, then run: so a job that is already due
    is seen with its stored (past) next run time, and runs once."""
    failure: list[BaseException] = []

    def on_started(_event) -> None:
        try:
            install_jobs(scheduler, app)
            scheduler.resume()
        except BaseException as exc:  # noqa: BLE001  (re-raised after start returns)
            failure.append(exc)
            scheduler.shutdown(wait=False)

    scheduler.add_listener(on_started, EVENT_SCHEDULER_STARTED)
    scheduler.start(paused=True)
    if failure:
        raise failure[0]


def run_blocking(app: Flask, *, run_seconds: float | None = None) -> None:
    """The production scheduler: blocks until SIGTERM/SIGINT (or run_seconds, for tests)."""
    bind_app(app)
    scheduler = build_scheduler(app, background=False)

    def stop(*_args) -> None:
        if scheduler.running:
            scheduler.shutdown(wait=True)

    signal.signal(signal.SIGTERM, stop)
    if run_seconds:
        timer = threading.Timer(run_seconds, stop)
        timer.daemon = True
        timer.start()
    log.info("scheduler started: %s", ", ".join(s.name for s in schedules(app)))
    try:
        _start(scheduler, app)
    except KeyboardInterrupt:
        stop()
    log.info("scheduler stopped")


def start_background(app: Flask) -> BackgroundScheduler:
    """The development scheduler, inside the dev server's process."""
    import atexit

    bind_app(app)
    scheduler = build_scheduler(app, background=True)
    _start(scheduler, app)
    atexit.register(lambda: scheduler.running and scheduler.shutdown(wait=False))
    log.info("background scheduler started (SCHEDULER_ENABLED)")
    return scheduler


def stored_next_runs(engine: sa.Engine) -> dict[str, datetime | None]:
    """Each stored job's next run time, read from apscheduler_jobs (empty if never started)."""
    if not sa.inspect(engine).has_table(JOBSTORE_TABLE):
        return {}
    with engine.connect() as conn:
        rows = conn.execute(sa.text(f"SELECT id, next_run_time FROM {JOBSTORE_TABLE}")).all()
    return {
        job_id: datetime.fromtimestamp(ts, UTC) if ts is not None else None for job_id, ts in rows
    }
