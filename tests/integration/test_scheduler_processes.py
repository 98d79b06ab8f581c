"""Real processes against one PostgreSQL database, as on two app servers:
- two `flask billing scheduler` processes sharing the schedule run every slot exactly once;
- an expire_credits run killed half-way and started again leaves the same ledger as a run
  that was never interrupted."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path

import pytest
import sqlalchemy as sa

from billing.entitlements.models import LedgerEntry
from billing.extensions import db
from billing.jobs import scheduler
from billing.jobs.jobs import JOBS, expire_credits
from billing.jobs.models import JobRun, Outcome
from billing.memberships import service as memberships
from billing.memberships.models import Membership, State
from tests import factories as f

pytestmark = pytest.mark.postgres_only

ROOT = Path(__file__).resolve().parents[2]
UNSET = (
    "BILLING_TEST_CRASH_AFTER",
    "SCHEDULER_ENABLED",
    "SCHEDULER_TEST_INTERVAL_SECONDS",
    "SCHEDULER_RUN_SECONDS",
    "STRIPE_API_KEY",
    "MAIL_SERVER",
    "MAIL_FROM",
)


def _env(database_url: str, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in UNSET}
    env.update(BILLING_ENV="development", DATABASE_URL=database_url, PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def _flask(*args: str) -> list[str]:
    return [sys.executable, "-m", "flask", "--app", "wsgi", "billing", *args]


@pytest.fixture
def fresh_schedule(app):
    """No stored schedule and no runs from an earlier test."""
    with db.engine.begin() as conn:
        conn.execute(sa.text(f"DROP TABLE IF EXISTS {scheduler.JOBSTORE_TABLE}"))
    scheduler.ensure_jobstore_table(db.engine)
    yield
    with db.engine.begin() as conn:
        conn.execute(sa.text(f"DROP TABLE IF EXISTS {scheduler.JOBSTORE_TABLE}"))


def test_two_scheduler_processes_run_every_slot_exactly_once(app, database_url, fresh_schedule):
    env = _env(database_url, SCHEDULER_TEST_INTERVAL_SECONDS="1", SCHEDULER_RUN_SECONDS="6")
    procs = [
        subprocess.Popen(
            _flask("scheduler"), cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=40)[0].decode() for p in procs]
    for p, out in zip(procs, outputs, strict=True):
        assert p.returncode == 0, out[-3000:]

    db.session.rollback()
    runs = db.session.execute(sa.select(JobRun)).scalars().all()
    for name in JOBS:
        slots = [datetime.fromisoformat(r.slot) for r in runs if r.job == name]
        assert len(slots) == len(set(slots)), f"{name}: a slot ran twice"
        assert len(slots) >= 3, f"{name}: ran {len(slots)} times in 6 seconds"
        gaps = [b - a for a, b in pairwise(sorted(slots))]
        assert set(gaps) == {timedelta(seconds=1)}, f"{name}: slots skipped: {sorted(slots)}"
    assert {r.outcome for r in runs if r.job != "reconcile_stripe"} == {Outcome.SUCCEEDED}
    assert {r.outcome for r in runs if r.job == "reconcile_stripe"} == {Outcome.SKIPPED}
    # Both processes were up and scheduling: each ran slots, or found them claimed.
    for out in outputs:
        assert "scheduler started" in out and "scheduler stopped" in out


# ---------------------------------------------------------------------------------------------
# Killed in the middle of expire_credits


def _seed(clock) -> None:
    """Memberships whose credits expired ten days ago (some partly used, some on a tier that
    rolls one credit over), one ending at its period end, and one not expired yet."""
    facial = f.treatment("crash-facial", price=20000)
    peel = f.treatment("crash-peel", price=8000)
    expiring = f.plan([(facial, 1), (peel, 3)], code="crash-expiring", price=32700)
    rolling = f.plan(
        [(facial, 2), (peel, 2)],
        code="crash-rolling",
        price=32700,
        unused_rule="rollover",
        rollover_max_periods=1,
        rollover_cap=1,
    )
    for i in range(3):
        f.active_membership(expiring, now=clock(), period_days=30, invoice_ref=f"invoice:e{i}")
        f.active_membership(rolling, now=clock(), period_days=30, invoice_ref=f"invoice:r{i}")
    ending = f.active_membership(expiring, now=clock(), period_days=30, invoice_ref="invoice:c")
    memberships.cancel(ending, at_period_end=True, actor="member", now=clock())
    f.active_membership(expiring, now=clock(), period_days=60, invoice_ref="invoice:later")
    db.session.commit()


def _digest() -> list[tuple]:
    db.session.rollback()
    rows = db.session.execute(
        sa.select(
            LedgerEntry.credit_id, LedgerEntry.kind, LedgerEntry.quantity, LedgerEntry.value_minor
        )
    ).all()
    return sorted(tuple(r) for r in rows)


def _states() -> dict:
    rows = db.session.execute(
        sa.select(Membership.state, sa.func.count()).group_by(Membership.state)
    ).all()
    return dict(rows)


def _reset_database() -> None:
    db.session.remove()
    tables = ", ".join(f'"{t.name}"' for t in db.metadata.sorted_tables)
    with db.engine.begin() as conn:
        conn.execute(sa.text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))


def test_a_killed_expiry_run_resumes_to_the_same_ledger(app, clock, database_url):
    real_now = datetime.now(UTC)
    clock.set(real_now - timedelta(days=40))
    _seed(clock)
    untouched = _digest()

    crashed = subprocess.run(
        _flask("jobs", "run", "expire_credits"),
        cwd=ROOT,
        env=_env(database_url, BILLING_TEST_CRASH_AFTER="3"),
        capture_output=True,
        timeout=60,
    )
    assert crashed.returncode == 17, crashed.stderr.decode()[-3000:]
    partial = _digest()
    assert untouched != partial  # it had done some memberships...
    unfinished = db.session.execute(sa.select(JobRun)).scalar_one()
    assert unfinished.outcome == Outcome.RUNNING  # ...and died before recording an outcome

    resumed = subprocess.run(
        _flask("jobs", "run", "expire_credits"),
        cwd=ROOT,
        env=_env(database_url),
        capture_output=True,
        timeout=60,
    )
    assert resumed.returncode == 0, resumed.stderr.decode()[-3000:]
    after_resume = _digest()
    assert partial != after_resume  # ...not all of them
    assert _states() == {State.ACTIVE: 7, State.CANCELED: 1}

    # The same data, fresh, and one run that nobody interrupts.
    _reset_database()
    clock.set(real_now - timedelta(days=40))
    _seed(clock)
    assert _digest() == untouched
    expire_credits(now=datetime.now(UTC))
    assert _digest() == after_resume
