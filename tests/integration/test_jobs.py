"""The scheduled jobs as the clinic would notice them: credits expire or roll over when a period
ends (once, however often the job runs), a past-due member is blocked after the grace period,
members get each email once, and a job whose time passed while nothing ran runs once."""

from __future__ import annotations

import dataclasses
import sys
import time
import types
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from billing import create_app
from billing.entitlements import service as ledger
from billing.entitlements.models import EntryKind, LedgerEntry
from billing.extensions import db
from billing.jobs import scheduler, service
from billing.jobs.jobs import JOBS, end_grace_periods, expire_credits, notify
from billing.jobs.models import JobRun, Notification, NotificationStatus, Outcome
from billing.memberships import service as memberships
from billing.memberships.models import MembershipEvent, State
from config import TestingConfig
from tests import factories as f
from tests.conftest import IS_POSTGRES


def _ledger(membership=None) -> list[tuple]:
    """What an accountant would compare: (credit, kind, quantity, value) of every entry."""
    q = sa.select(
        LedgerEntry.credit_id, LedgerEntry.kind, LedgerEntry.quantity, LedgerEntry.value_minor
    )
    if membership is not None:
        q = q.where(LedgerEntry.membership_id == membership.id)
    return sorted(tuple(row) for row in db.session.execute(q).all())


def _kinds(membership) -> Counter:
    return Counter(kind for _, kind, _, _ in _ledger(membership))


@pytest.fixture
def tiers(app):
    facial = f.treatment("hydrafacial", price=20000)
    peel = f.treatment("peel", price=8000)
    expiring = f.plan([(facial, 1), (peel, 2)], price=32700)
    rolling = f.plan(
        [(facial, 1), (peel, 2)],
        price=32700,
        unused_rule="rollover",
        rollover_max_periods=1,
        rollover_cap=1,
    )
    return expiring, rolling, facial, peel


# ---------------------------------------------------------------------------------------------
# expire_credits


def test_period_end_expires_or_rolls_over_unused_credits_once(tiers, clock):
    expiring, rolling, facial, peel = tiers
    start = clock()
    plain = f.active_membership(expiring, now=start, period_days=30)
    carried = f.active_membership(rolling, now=start, period_days=30)
    ledger.redeem(
        membership_ids=[plain.id],
        treatment=peel,
        quantity=1,
        member_id=plain.member_id,
        now=clock.advance(days=3),
        actor="desk",
    )

    clock.set(start + timedelta(days=30) - timedelta(minutes=1))
    assert expire_credits(now=clock())["memberships"] == 0  # the period has not ended yet
    assert _kinds(plain)[EntryKind.EXPIRE] == 0

    clock.set(start + timedelta(days=30, minutes=1))
    counts = expire_credits(now=clock(), batch_size=1)  # a page per membership
    assert counts["memberships"] == 2
    # The expiring tier: the facial and the one peel left expire, with their remaining value.
    expired = [e for e in _ledger(plain) if e[1] == EntryKind.EXPIRE]
    assert sorted(q for _, _, q, _ in expired) == [-1, -1]
    assert ledger.balance([plain.id], facial.id, clock()) == 0
    assert ledger.balance([plain.id], peel.id, clock()) == 0
    # The rollover tier (cap 1 per item): one of each item carries into the next period, the
    # second peel expires.
    kinds = _kinds(carried)
    assert kinds[EntryKind.ROLLOVER] == 2 and kinds[EntryKind.EXPIRE] == 1
    assert ledger.balance([carried.id], facial.id, clock()) == 1
    assert ledger.balance([carried.id], peel.id, clock()) == 1
    assert counts["expired_quantity"] == 3 and counts["rollover_entries"] == 2

    before = _ledger()
    again = expire_credits(now=clock.advance(hours=1))
    assert _ledger() == before
    assert again["memberships"] == 0 and again["expired_entries"] == 0


def test_a_run_months_late_catches_up_in_one_go(tiers, clock):
    _, rolling, facial, peel = tiers
    carried = f.active_membership(rolling, now=clock(), period_days=30)
    # Nothing ran for 75 days: even the period a credit could have rolled into has ended.
    clock.advance(days=75)
    counts = expire_credits(now=clock())
    assert counts["expired_quantity"] == 3
    assert not ledger.lots([carried.id])  # nothing past its expiry survives the run
    assert ledger.balance([carried.id], facial.id, clock()) == 0
    assert ledger.balance([carried.id], peel.id, clock()) == 0
    before = _ledger()
    assert expire_credits(now=clock())["memberships"] == 0
    assert _ledger() == before


def test_a_cancellation_at_period_end_is_finished_when_the_period_ends(tiers, clock):
    expiring, _, facial, _ = tiers
    m = f.active_membership(expiring, now=clock(), period_days=30)
    memberships.cancel(m, at_period_end=True, actor="member", now=clock.advance(days=2))
    assert m.state == State.CANCEL_AT_PERIOD_END

    expire_credits(now=clock.advance(days=10))
    assert m.state == State.CANCEL_AT_PERIOD_END  # still theirs until the period ends
    assert ledger.balance([m.id], facial.id, clock()) == 1

    counts = expire_credits(now=clock.advance(days=19))
    db.session.refresh(m)
    assert m.state == State.CANCELED
    assert counts["cancellations_finished"] == 1
    assert not ledger.lots([m.id])  # what was left expired with the membership
    assert counts["expired_quantity"] == 3

    before = _ledger()
    assert expire_credits(now=clock.advance(days=1))["cancellations_finished"] == 0
    assert _ledger() == before


def test_a_paused_membership_keeps_its_credits_past_their_expiry(tiers, clock):
    expiring, _, facial, _ = tiers
    m = f.active_membership(expiring, now=clock(), period_days=30)
    memberships.pause(m, actor="desk", now=clock.advance(days=5))
    expire_credits(now=clock.advance(days=40))
    assert _kinds(m)[EntryKind.EXPIRE] == 0
    memberships.resume(m, actor="desk", now=clock())
    assert ledger.balance([m.id], facial.id, clock()) == 1  # the pause moved the expiry


# ---------------------------------------------------------------------------------------------
# end_grace_periods


def _grace_events(m) -> list[MembershipEvent]:
    return (
        db.session.execute(
            sa.select(MembershipEvent).where(
                MembershipEvent.membership_id == m.id, MembershipEvent.kind == "grace_ended"
            )
        )
        .scalars()
        .all()
    )


def test_past_due_beyond_grace_is_blocked_and_recorded_once(app, tiers, clock):
    expiring, *_ = tiers
    m = f.active_membership(expiring, now=clock(), period_days=30)
    memberships.mark_past_due(m, actor="stripe", now=clock.advance(days=30))
    grace_days = app.config["GRACE_PERIOD_DAYS"]

    assert end_grace_periods(now=clock.advance(days=grace_days - 1))["grace_ended"] == 0
    assert not m.redemption_blocked(clock()) and m.can_redeem(clock())

    assert end_grace_periods(now=clock.advance(days=2))["grace_ended"] == 1
    db.session.refresh(m)
    assert m.redemption_blocked(clock()) and not m.can_redeem(clock())
    [event] = _grace_events(m)
    assert event.effective_at == m.grace_ends_at and event.at == clock()

    assert end_grace_periods(now=clock.advance(hours=1))["grace_ended"] == 0
    assert len(_grace_events(m)) == 1

    # Paid, then a later payment fails again: a new grace period, ended (and recorded) anew.
    start = m.current_period_end
    memberships.record_paid_period(
        m,
        period_start=start,
        period_end=start + timedelta(days=30),
        source=ledger.GrantSource(ref="invoice:late", actor="stripe"),
        now=clock(),
    )
    assert not m.redemption_blocked(clock())
    memberships.mark_past_due(m, actor="stripe", now=clock.advance(days=30))
    end_grace_periods(now=clock.advance(days=grace_days + 1))
    assert len(_grace_events(m)) == 2


# ---------------------------------------------------------------------------------------------
# notify (without a mail server: written, kept pending)


def notify_scenario(clock):
    """Three members, three things to tell them, at clock() (returned as the notify time)."""
    facial = f.treatment(price=20000)
    tier = f.plan([(facial, 2)], price=21800)
    t = clock()
    expiring = f.active_membership(tier, now=t - timedelta(days=26), period_days=30)
    renewing = f.active_membership(tier, now=t - timedelta(days=30), period_days=30)
    memberships.record_paid_period(
        renewing,
        period_start=t,
        period_end=t + timedelta(days=30),
        source=ledger.GrantSource(ref="invoice:renewal", actor="stripe"),
        now=t,
    )
    failing = f.active_membership(tier, now=t - timedelta(days=20), period_days=60)
    memberships.mark_past_due(failing, actor="stripe", now=t - timedelta(days=1))
    return {
        ("credits_expiring", expiring.member.email),
        ("renewed", renewing.member.email),
        ("payment_failed", failing.member.email),
    }


def _outbox() -> list[Notification]:
    return db.session.execute(sa.select(Notification).order_by(Notification.id)).scalars().all()


def test_notify_writes_each_notification_once(app, clock):
    expected = notify_scenario(clock)
    counts = notify(now=clock())
    rows = _outbox()
    assert {(n.kind, n.to_email) for n in rows} == expected
    assert len(rows) == 3
    assert counts["written_card_expiring"] == 0  # no card data is stored: nothing to say
    assert all(n.status == NotificationStatus.PENDING for n in rows)  # no mail server set
    assert "not configured" in counts["note"]
    expiring = next(n for n in rows if n.kind == "credits_expiring")
    assert "2 sessions" in expiring.body and "expire on" in expiring.body

    again = notify(now=clock.advance(minutes=15))
    assert len(_outbox()) == 3
    assert sum(v for k, v in again.items() if k.startswith("written_")) == 0


def test_old_events_are_not_announced_and_settled_ones_are_dropped(app, clock):
    facial = f.treatment(price=20000)
    tier = f.plan([(facial, 1)], price=10900)
    old = f.active_membership(tier, now=clock() - timedelta(days=40), period_days=60)
    memberships.mark_past_due(old, actor="stripe", now=clock() - timedelta(days=10))
    settled = f.active_membership(tier, now=clock() - timedelta(days=30), period_days=60)
    memberships.mark_past_due(settled, actor="stripe", now=clock() - timedelta(days=1))
    memberships.record_paid_period(
        settled,
        period_start=clock(),
        period_end=clock() + timedelta(days=60),
        source=ledger.GrantSource(ref="invoice:retry-paid", actor="stripe"),
        now=clock(),
    )
    notify(now=clock())
    kinds = {(n.kind, n.membership_id) for n in _outbox()}
    assert ("payment_failed", old.id) not in kinds  # ten days ago: older than the lookback
    assert ("payment_failed", settled.id) not in kinds  # the retry was paid before we ran
    assert ("renewed", settled.id) in kinds


# ---------------------------------------------------------------------------------------------
# Running and recording


def test_a_slot_runs_once_and_a_manual_run_always_runs(app, clock):
    slot = "2026-03-02T02:00:00+00:00"
    first = service.run_job("end_grace_periods", slot=slot)
    assert first.outcome == Outcome.SUCCEEDED and first.counts == {"grace_ended": 0}
    assert service.run_job("end_grace_periods", slot=slot) is None  # the second server skips
    assert service.run_job("end_grace_periods", slot=service.manual_slot()) is not None
    assert service.run_job("end_grace_periods", slot=service.manual_slot()) is not None
    runs = db.session.execute(sa.select(JobRun.slot)).scalars().all()
    assert len(runs) == 3 and runs.count(slot) == 1


def test_reconcile_without_stripe_is_recorded_as_skipped_with_the_reason(app):
    app.config["STRIPE_API_KEY"] = None
    run = service.run_job("reconcile_stripe", slot=service.manual_slot())
    assert run.outcome == Outcome.SKIPPED
    assert "STRIPE_API_KEY" in run.detail


def test_reconcile_records_what_stripe_sync_repaired(app, clock, monkeypatch):
    calls = []

    def reconcile(*, now, since=None, gateway=None):
        calls.append((since, now))
        return ["sub_1: tied to membership 3", "in_9: paid period granted"]

    fake = types.SimpleNamespace(reconcile=reconcile)
    monkeypatch.setitem(sys.modules, "billing.stripe_sync.service", fake)
    app.config.update(STRIPE_API_KEY="sk_test_x", STRIPE_RECONCILE_DAYS=2)
    run = service.run_job("reconcile_stripe", slot=service.manual_slot())
    assert run.outcome == Outcome.SUCCEEDED
    assert run.counts == {"since_days": 2, "repaired": 2}
    assert "sub_1: tied to membership 3" in run.detail and "in_9" in run.detail
    assert calls == [(clock() - timedelta(days=2), clock())]


def test_a_failing_job_is_recorded_with_its_error_and_its_work_undone(app, clock, monkeypatch):
    member = f.member()
    db.session.commit()

    def broken(*, now):
        member.first_name = "Changed"
        db.session.flush()
        raise RuntimeError("the ledger is on fire")

    monkeypatch.setitem(JOBS, "notify", dataclasses.replace(JOBS["notify"], func=broken))
    run = service.run_job("notify", slot=service.manual_slot())
    assert run.outcome == Outcome.FAILED and "the ledger is on fire" in run.error
    assert run.finished_at is not None
    db.session.refresh(member)
    assert member.first_name == "Mei"  # what the failed run had not committed is undone


def test_slots_are_fire_times_truncated_to_the_interval_in_clinic_time(app):
    hourly = scheduler.schedule_for(app, "expire_credits")
    daily = scheduler.schedule_for(app, "reconcile_stripe")
    fire = datetime(2026, 3, 2, 2, 1, 0, 400000, tzinfo=UTC)  # 10:01:00.4 in Singapore
    assert service.slot_for(fire, every=hourly.every, anchor=hourly.anchor) == (
        "2026-03-02T02:01:00+00:00"
    )
    # The daily job's day is the clinic's: 03:00 Singapore time, 19:00 UTC the day before.
    late_evening = datetime(2026, 3, 2, 18, 59, tzinfo=UTC)  # 02:59 on 3 March in Singapore
    assert service.slot_for(late_evening, every=daily.every, anchor=daily.anchor) == (
        "2026-03-01T19:00:00+00:00"
    )


def test_cli_lists_runs_and_shows_history(app, runner):
    listed = runner.invoke(args=["billing", "jobs", "list"])
    assert listed.exit_code == 0, listed.output
    for name in JOBS:
        assert name in listed.output
    ran = runner.invoke(args=["billing", "jobs", "run", "end_grace_periods"])
    assert ran.exit_code == 0, ran.output
    assert "succeeded" in ran.output and "grace_ended=0" in ran.output
    history = runner.invoke(args=["billing", "jobs", "history"])
    assert "end_grace_periods" in history.output and "manual:" in history.output
    unknown = runner.invoke(args=["billing", "jobs", "run", "make_coffee"])
    assert unknown.exit_code != 0 and "expire_credits" in unknown.output


# ---------------------------------------------------------------------------------------------
# The database job store: a job that should have run while nothing was running runs once.


@pytest.fixture
def store_app(app, tmp_path, clock, monkeypatch):
    """An app whose database a second engine can reach: the test's PostgreSQL database, or a
    SQLite file (an in-memory database is private to its connection)."""
    monkeypatch.setattr(scheduler, "_bound_app", None)
    if IS_POSTGRES:
        target = app
    else:
        config = {k: getattr(TestingConfig, k) for k in dir(TestingConfig) if k.isupper()}
        config.update(SQLALCHEMY_DATABASE_URI=f"sqlite:///{tmp_path / 'jobs.db'}", CLOCK=clock)
        target = create_app(config)
    with target.app_context():
        db.create_all()
        yield target
        engine = scheduler.jobstore_engine(target)
        with engine.begin() as conn:
            conn.execute(sa.text(f"DROP TABLE IF EXISTS {scheduler.JOBSTORE_TABLE}"))
        engine.dispose()
        db.session.remove()


def _clear_of_the_next_minute(seconds_needed: float = 20) -> None:
    """Wait, if need be, for a new minute: drain_stripe_events runs every minute, so a test that
    counts each job's runs must not be running when the next minute's slot comes due."""
    now = datetime.now(UTC)
    into_minute = now.second + now.microsecond / 1e6
    if into_minute > 60 - seconds_needed:
        time.sleep(60 - into_minute + 0.5)


def test_overdue_jobs_run_once_on_start_not_once_per_missed_slot(store_app):
    app = store_app
    _clear_of_the_next_minute()
    # A scheduler ran once, stored the jobs, and stopped; three days pass with nothing running.
    first = scheduler.build_scheduler(app, background=True)
    first.start(paused=True)
    scheduler.install_jobs(first, app)
    three_days_ago = datetime.now(UTC) - timedelta(days=3)
    for name in JOBS:
        trigger = scheduler.schedule_for(app, name).trigger()
        first.modify_job(name, next_run_time=trigger.get_next_fire_time(None, three_days_ago))
    first.shutdown()

    started = datetime.now(UTC)
    second = scheduler.start_background(app)
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            db.session.rollback()
            if db.session.execute(sa.select(sa.func.count(JobRun.id))).scalar_one() >= len(JOBS):
                break
            time.sleep(0.1)
        time.sleep(0.5)  # time for any extra run to show up
    finally:
        second.shutdown(wait=True)
    db.session.rollback()
    runs = db.session.execute(sa.select(JobRun)).scalars().all()
    assert Counter(r.job for r in runs) == Counter(list(JOBS))  # each job once
    for run in runs:
        s = scheduler.schedule_for(app, run.job)
        slot = datetime.fromisoformat(run.slot)
        assert started - s.every < slot <= started  # the newest missed slot, not 3 days ago
        assert run.outcome in (Outcome.SUCCEEDED, Outcome.SKIPPED)
    engine = scheduler.jobstore_engine(app)
    next_runs = scheduler.stored_next_runs(engine)
    engine.dispose()
    assert set(next_runs) == set(JOBS)
    assert all(when > started for when in next_runs.values())
