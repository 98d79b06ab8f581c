"""Running a job exactly once per slot, and remembering how it went.

Several app servers may run the scheduler against one database. Each of them may try to run the
same job for the same slot; the first to insert (job, slot) into job_runs runs it, the others
see the UNIQUE key refuse their row and skip. A manual run gets a slot of its own, so it always
runs. The job functions themselves are idempotent besides, so a run that died half-way is
finished by the next one."""

from __future__ import annotations

import logging
import os
import socket
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from billing import clock
from billing.errors import NotFound
from billing.extensions import db
from billing.jobs.models import JobRun, Outcome

log = logging.getLogger("billing.jobs")

JobFunction = Callable[..., dict]


class JobSkipped(Exception):
    """Raised by a job that has nothing it may do (e.g. Stripe not configured): not a failure."""

    def __init__(self, reason: str, counts: dict | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.counts = counts or {}


class JobFailed(Exception):
    """Raised by a job that did part of its work and then could not go on (e.g. SMTP down):
    the run is recorded as failed, with what it did and why it stopped."""

    def __init__(self, reason: str, counts: dict | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.counts = counts or {}


@dataclass(frozen=True)
class JobSpec:
    """A job and its schedule: every `every`, counted from the clinic's midnight plus `offset`
    (so a daily job's slots are clinic days, not UTC days)."""

    name: str
    func: JobFunction
    every: timedelta
    offset: timedelta
    description: str


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def slot_for(fire_time: datetime, *, every: timedelta, anchor: datetime) -> str:
    """The scheduled fire time truncated to the job's interval, counted from the anchor (a
    clinic-local midnight plus the job's offset): both servers name a run the same way even if
    one of them fires a little late."""
    steps = (fire_time - anchor) // every
    return (anchor + steps * every).astimezone(UTC).isoformat(timespec="seconds")


def manual_slot() -> str:
    """A slot no scheduled run can have, unique per call: a manual run always runs."""
    return f"manual:{clock.utcnow().isoformat(timespec='microseconds')}"


def get_spec(name: str) -> JobSpec:
    from billing.jobs.jobs import JOBS

    try:
        return JOBS[name]
    except KeyError:
        raise NotFound(f"No job {name!r}; the jobs are: {', '.join(sorted(JOBS))}.") from None


def run_job(name: str, *, slot: str, now: datetime | None = None) -> JobRun | None:
    """Run job `name` for `slot` unless some process already claimed that slot (then None).

    The claim is committed before the work starts, so a second server sees it at once; the
    outcome, the job's counts and any error are written when it ends. A job that raises is
    recorded as failed and its own uncommitted work rolled back (work it committed stays: the
    jobs commit per membership, and the next run carries on from there)."""
    spec = get_spec(name)
    now = now or clock.now()
    run = JobRun(job=name, slot=slot, started_at=now, outcome=Outcome.RUNNING, worker=worker_name())
    try:
        db.session.add(run)
        db.session.commit()
    except IntegrityError:
        db.session.rollback()
        log.info("%s %s: already claimed by another process, skipped", name, slot)
        return None
    run_id = run.id
    outcome, counts, detail, error = Outcome.SUCCEEDED, {}, "", None
    try:
        counts = dict(spec.func(now=now) or {})
        detail = str(counts.pop("note", "") or "")
    except JobSkipped as skip:
        db.session.rollback()
        outcome, counts, detail = Outcome.SKIPPED, skip.counts, skip.reason
    except JobFailed as failure:
        db.session.rollback()
        outcome, counts, error = Outcome.FAILED, failure.counts, failure.reason
    except Exception:
        db.session.rollback()
        outcome, error = Outcome.FAILED, traceback.format_exc()
        log.exception("%s %s failed", name, slot)
    run = db.session.get(JobRun, run_id)
    run.outcome = outcome
    run.counts = counts
    run.detail = detail
    run.error = error
    run.finished_at = clock.now()
    db.session.commit()
    log.info("%s %s: %s %s %s", name, slot, outcome, counts, detail)
    return run


def history(job: str | None = None, limit: int = 20) -> list[JobRun]:
    """The newest runs first (of one job, or of all)."""
    q = sa.select(JobRun).order_by(JobRun.started_at.desc(), JobRun.id.desc()).limit(limit)
    if job:
        get_spec(job)
        q = q.where(JobRun.job == job)
    return list(db.session.execute(q).scalars())


def last_runs() -> dict[str, JobRun]:
    """Each job's most recent run."""
    newest = (
        sa.select(JobRun.job, sa.func.max(JobRun.id).label("id")).group_by(JobRun.job).subquery()
    )
    rows = db.session.execute(sa.select(JobRun).join(newest, JobRun.id == newest.c.id)).scalars()
    return {run.job: run for run in rows}
