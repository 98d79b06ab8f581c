"""Queued intake (STRIPE_WEBHOOK_PROCESSING=queued) and the worker that acts on stored events.

The webhook only verifies and stores: Stripe gets its 200 once the event is durable, and
nothing is acted on in the request. The worker (`flask billing stripe work`, the scheduled
drain_stripe_events) claims what is waiting in Stripe's created order, acts on each once, and
tries a failed one again later, up to a limit. Two workers racing on PostgreSQL use real
concurrent connections."""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from datetime import timedelta

import pytest
import sqlalchemy as sa

from billing.entitlements.models import CreditGrant
from billing.extensions import db
from billing.jobs import service as jobs
from billing.memberships.models import Membership
from billing.stripe_sync import handlers, service
from billing.stripe_sync.models import StripeEvent
from tests import stripe_fixtures as sf

MONTH = timedelta(days=31)


@pytest.fixture
def queued(app):
    app.config["STRIPE_WEBHOOK_PROCESSING"] = "queued"
    return app


def _grants(membership_id: int) -> list[CreditGrant]:
    return list(
        db.session.execute(
            sa.select(CreditGrant).where(CreditGrant.membership_id == membership_id)
        ).scalars()
    )


def _stored(event_id: str) -> StripeEvent:
    db.session.expire_all()
    return db.session.get(StripeEvent, event_id)


def _work(clock, **kw) -> Counter:
    return service.drain(now=clock, **kw)


def _a_month_of_events(billed, clock) -> list[dict]:
    """What Stripe sends for one member's first two months, each a second or a month apart."""
    t0 = clock()
    return [
        sf.event("customer.subscription.updated", billed.subscription(t0, t0 + MONTH), created=t0),
        sf.event(
            "invoice.paid",
            billed.invoice(t0, t0 + MONTH, billing_reason="subscription_create"),
            created=t0 + timedelta(seconds=1),
        ),
        sf.event(
            "invoice.paid",
            billed.invoice(t0 + MONTH, t0 + 2 * MONTH, billing_reason="subscription_cycle"),
            created=t0 + MONTH,
        ),
        sf.event(
            "customer.subscription.updated",
            billed.subscription(t0 + MONTH, t0 + 2 * MONTH, cancel_at_period_end=True),
            created=t0 + MONTH + timedelta(seconds=1),
        ),
    ]


def test_queued_intake_stores_the_event_answers_200_and_acts_on_nothing(queued, client, clock):
    billed = sf.Billed(clock())
    evt = sf.event("invoice.paid", billed.invoice(clock(), clock() + MONTH), created=clock())

    response = sf.post(client, evt)

    assert response.status_code == 200
    assert response.get_json() == {
        "received": True,
        "event_id": evt["id"],
        "status": "received",
        "duplicate": False,
    }
    stored = _stored(evt["id"])
    assert (stored.status, stored.attempts, stored.type) == ("received", 0, "invoice.paid")
    assert stored.payload["data"]["object"]["id"] == evt["data"]["object"]["id"]
    assert db.session.get(Membership, billed.membership.id).state == "pending"
    assert _grants(billed.membership.id) == []


def test_a_duplicate_delivery_is_acknowledged_and_grants_once(queued, client, clock):
    billed = sf.Billed(clock())
    evt = sf.event("invoice.paid", billed.invoice(clock(), clock() + MONTH), created=clock())
    assert sf.post(client, evt).get_json()["duplicate"] is False
    assert sf.post(client, evt).get_json()["duplicate"] is True

    assert _work(clock) == Counter(processed=1)
    again = sf.post(client, evt)  # a late duplicate, after the worker acted

    assert again.status_code == 200 and again.get_json()["duplicate"] is True
    assert _work(clock) == Counter()
    assert _stored(evt["id"]).status == "processed"
    assert db.session.execute(sa.select(sa.func.count()).select_from(StripeEvent)).scalar() == 1
    assert len(_grants(billed.membership.id)) == 1


def test_the_worker_acts_on_each_event_once_in_created_order(queued, client, clock, monkeypatch):
    billed = sf.Billed(clock())
    events = _a_month_of_events(billed, clock)
    acted: list[str] = []

    def recording(handler):
        def wrapped(obj, ctx):
            acted.append(ctx.event_id)
            return handler(obj, ctx)

        return wrapped

    for name, handler in list(handlers.HANDLERS.items()):
        monkeypatch.setitem(handlers.HANDLERS, name, recording(handler))
    shuffled = events + events[:2]
    random.Random(3).shuffle(shuffled)
    for evt in shuffled:
        assert sf.post(client, evt).status_code == 200

    counts = _work(clock, limit=3)  # two batches
    assert _work(clock) == Counter()

    assert acted == [e["id"] for e in events]
    assert sum(counts.values()) == 4 and counts["failed"] == 0
    membership = db.session.get(Membership, billed.membership.id)
    assert membership.state == "cancel_at_period_end" and membership.paid_periods == 2
    assert len(_grants(billed.membership.id)) == 2
    stored = [_stored(e["id"]) for e in events]
    assert [s.attempts for s in stored] == [1, 1, 1, 1]
    assert all(s.processed_at == clock() for s in stored)


def test_a_handler_that_raises_is_retried_later_then_left_failed_for_replay(
    queued, client, clock, runner, monkeypatch
):
    app = queued
    app.config.update(STRIPE_EVENT_RETRY_SECONDS=60, STRIPE_EVENT_MAX_ATTEMPTS=3)
    billed = sf.Billed(clock())
    evt = sf.event("invoice.paid", billed.invoice(clock(), clock() + MONTH), created=clock())

    def broken(obj, ctx):
        raise RuntimeError("database hiccup")

    monkeypatch.setitem(handlers.HANDLERS, "invoice.paid", broken)
    assert sf.post(client, evt).status_code == 200  # Stripe is answered: the failure is ours

    assert _work(clock) == Counter(failed=1)
    stored = _stored(evt["id"])
    assert (stored.status, stored.attempts) == ("failed", 1)
    assert "database hiccup" in stored.error and "broken" in stored.traceback
    assert stored.next_attempt_at == clock() + timedelta(seconds=60)
    assert _work(clock) == Counter()  # not due yet

    clock.advance(seconds=60)
    assert _work(clock) == Counter(failed=1)
    assert _stored(evt["id"]).next_attempt_at == clock() + timedelta(seconds=120)
    clock.advance(seconds=120)
    assert _work(clock) == Counter(failed=1)
    stored = _stored(evt["id"])
    assert (stored.status, stored.attempts, stored.next_attempt_at) == ("failed", 3, None)
    clock.advance(days=3)
    assert _work(clock) == Counter()  # out of tries: left for staff
    assert db.session.get(Membership, billed.membership.id).state == "pending"

    monkeypatch.setitem(handlers.HANDLERS, "invoice.paid", handlers.on_invoice_paid)
    result = runner.invoke(args=["billing", "stripe", "replay", "--failed"])

    assert result.exit_code == 0, result.output
    assert f"{evt['id']} invoice.paid: processed" in result.output
    assert _stored(evt["id"]).status == "processed"
    assert len(_grants(billed.membership.id)) == 1


def test_a_failure_in_one_event_leaves_the_others_of_its_batch_done(
    queued, client, clock, monkeypatch
):
    one, two = sf.Billed(clock()), sf.Billed(clock())
    first = sf.event("invoice.paid", one.invoice(clock(), clock() + MONTH), created=clock())
    second = sf.event("invoice.paid", two.invoice(clock(), clock() + MONTH), created=clock())
    original = handlers.HANDLERS["invoice.paid"]

    def half_then_raise(obj, ctx):
        original(obj, ctx)  # writes the grant, then fails: the grant must be undone
        if ctx.event_id == first["id"]:
            raise RuntimeError("after writing")
        return "ok"

    monkeypatch.setitem(handlers.HANDLERS, "invoice.paid", half_then_raise)
    for evt in (first, second):
        sf.post(client, evt)

    assert _work(clock) == Counter(failed=1, processed=1)
    assert _grants(one.membership.id) == []
    assert len(_grants(two.membership.id)) == 1
    assert db.session.get(Membership, one.membership.id).state == "pending"


@pytest.mark.parametrize(
    ("body", "header", "slug"),
    [
        ('{"id": "evt_1"}', "t=1,v1=forged", "bad-signature"),
        ("this is not json", None, "not-json"),
        ('{"hello": "world"}', None, "not-an-event"),
    ],
)
def test_bad_input_is_400_and_stores_nothing_when_queued(queued, client, body, header, slug):
    response = sf.post(client, body=body, **({"header": header} if header else {}))

    assert response.status_code == 400
    assert response.mimetype == "application/problem+json"
    assert response.get_json()["type"].endswith(slug)
    assert db.session.execute(sa.select(sa.func.count()).select_from(StripeEvent)).scalar() == 0


def test_a_queued_webhook_without_a_configured_secret_is_503(queued, client):
    queued.config["STRIPE_WEBHOOK_SECRET"] = None
    evt = sf.event("invoice.paid", sf.resource("invoice"))
    assert sf.post(client, evt).status_code == 503
    assert db.session.get(StripeEvent, evt["id"]) is None


def test_the_work_command_once_acts_on_everything_due_and_exits(queued, client, clock, runner):
    billed = sf.Billed(clock())
    membership_id = billed.membership.id
    for evt in _a_month_of_events(billed, clock):
        sf.post(client, evt)

    result = runner.invoke(args=["billing", "stripe", "work", "--once", "--batch", "2"])

    assert result.exit_code == 0, result.output
    assert "processed: 4" in result.output
    assert db.session.get(Membership, membership_id).paid_periods == 2
    again = runner.invoke(args=["billing", "stripe", "work", "--once"])
    assert "Nothing due." in again.output


def test_the_scheduled_drain_acts_on_what_no_worker_took(queued, client, clock):
    billed = sf.Billed(clock())
    for evt in _a_month_of_events(billed, clock):
        sf.post(client, evt)

    run = jobs.run_job("drain_stripe_events", slot=jobs.manual_slot())

    assert run.outcome == "succeeded", run.detail
    assert run.counts["processed"] == 4 and run.counts["failed"] == 0
    db.session.expire_all()
    assert db.session.get(Membership, billed.membership.id).state == "cancel_at_period_end"


def test_inline_mode_still_acts_in_the_request(app, client, clock):
    billed = sf.Billed(clock())
    evt = sf.event("invoice.paid", billed.invoice(clock(), clock() + MONTH), created=clock())

    body = sf.post(client, evt).get_json()

    assert body["status"] == "processed" and body["outcome"]
    assert _work(clock) == Counter()
    assert len(_grants(billed.membership.id)) == 1


@pytest.mark.postgres_only
def test_two_workers_racing_never_act_on_one_event_twice(queued, client, clock, monkeypatch):
    from bench import common

    seeded = common.seed_stripe_members(40)
    events = [e for e in common.storm_events(seeded["pairs"]) if e["id"].endswith("_1")]
    for evt in events:  # each member's first invoice.paid: one event a membership
        body, headers = common.signed_delivery(evt)
        assert client.post("/webhooks/stripe", data=body, headers=headers).status_code == 200
    db.session.remove()

    calls: Counter = Counter()
    by_worker: dict[str, set] = {"a": set(), "b": set()}
    lock = threading.Lock()
    start = threading.Barrier(2)
    original = handlers.HANDLERS["invoice.paid"]

    def counted(obj, ctx):
        with lock:
            calls[ctx.event_id] += 1
            by_worker[threading.current_thread().name].add(ctx.event_id)
        threading.Event().wait(0.002)  # hold the batch open long enough to overlap
        return original(obj, ctx)

    monkeypatch.setitem(handlers.HANDLERS, "invoice.paid", counted)
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            with queued.app_context():
                start.wait(timeout=10)
                service.drain(now=clock, limit=3)
                db.session.remove()
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, name=n) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)

    assert errors == []
    assert set(calls) == {e["id"] for e in events}
    assert set(calls.values()) == {1}  # none acted on twice
    assert by_worker["a"] and by_worker["b"]  # both workers took part
    statuses = Counter(db.session.execute(sa.select(StripeEvent.status)).scalars())
    assert statuses == Counter(processed=len(events))
    per_membership = db.session.execute(
        sa.select(CreditGrant.membership_id, sa.func.count()).group_by(CreditGrant.membership_id)
    ).all()
    assert len(per_membership) == len(events) and {n for _, n in per_membership} == {1}


def test_a_stored_event_without_its_object_fails_alone_and_its_batch_goes_on(queued, client, clock):
    billed = sf.Billed(clock())
    good = sf.event("invoice.paid", billed.invoice(clock(), clock() + MONTH), created=clock())
    db.session.add(
        StripeEvent(
            id="evt_truncated",
            type="invoice.paid",
            stripe_created=clock() - timedelta(minutes=1),
            payload={"id": "evt_truncated"},
            status="received",
            attempts=0,
            received_at=clock(),
        )
    )
    db.session.commit()
    sf.post(client, good)

    assert _work(clock) == Counter(failed=1, processed=1)
    assert _stored("evt_truncated").status == "failed"
    assert len(_grants(billed.membership.id)) == 1


@pytest.mark.parametrize("niceness, written", [(10, "10"), (0, None)])
def test_a_niced_worker_lowers_its_whole_autogroup(tmp_path, monkeypatch, niceness, written):
    """With autogroup scheduling a nice value counts only inside the process's group: a nice-10
    worker in a session of its own took a third of the machine from the webhook intake."""
    from billing.stripe_sync import worker

    group = tmp_path / "autogroup"
    group.write_text("")
    monkeypatch.setattr(worker.os, "nice", lambda increment: niceness)
    assert worker.yield_cpu(str(group)) == (int(written) if written else None)
    assert group.read_text() == (written or "")


def test_a_worker_without_an_autogroup_runs_on(tmp_path, monkeypatch):
    from billing.stripe_sync import worker

    monkeypatch.setattr(worker.os, "nice", lambda increment: 10)
    assert worker.yield_cpu(str(tmp_path / "no-such-dir" / "autogroup")) is None


class _Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_the_worker_stands_aside_while_a_storm_grows_then_works_flat_out():
    from billing.stripe_sync.worker import IntakeFirst

    clock = _Clock()
    storm = IntakeFirst(backlog=200, defer_seconds=30, clock=clock)
    assert storm.should_wait(0) is False  # the first look: nothing to compare with
    assert storm.should_wait(900) is True  # 900 waiting, and more than a moment ago
    clock.t += 10
    assert storm.should_wait(4000) is True
    clock.t += 21  # 31 s standing aside: enough, whatever keeps coming
    assert storm.should_wait(6000) is False
    assert storm.should_wait(6050) is False
    assert storm.should_wait(5900) is False  # catching up: the storm is over for it
    assert storm.should_wait(7000) is True  # a new one: stands aside again


def test_a_trickle_of_events_is_acted_on_at_once():
    from billing.stripe_sync.worker import IntakeFirst

    storm = IntakeFirst(backlog=200, defer_seconds=30, clock=_Clock())
    assert [storm.should_wait(n) for n in (0, 1, 3, 40, 199, 150)] == [False] * 6
    off = IntakeFirst(backlog=200, defer_seconds=0, clock=_Clock())
    assert off.active is False


def test_the_worker_loop_waits_out_a_storm_then_acts_on_every_event(queued, client, monkeypatch):
    """The loop itself: while the backlog grows past the threshold it starts no batch; once
    the storm has passed (no more growth) it acts on what is waiting."""
    from billing.stripe_sync import worker

    looks: list[int] = []
    backlog = iter([0, 5, 10, 12])  # growing from the second look, then still

    def waiting(cap: int = 100_000) -> int:
        looks.append(next(backlog, 12))
        return looks[-1]

    started_at: list[int] = []  # the backlog last seen when a batch started
    real_batch = worker.service.work_batch

    def work_batch(**kw):
        started_at.append(looks[-1])
        return real_batch(**kw)

    monkeypatch.setattr(worker.service, "waiting", waiting)
    monkeypatch.setattr(worker.service, "work_batch", work_batch)
    queued.config.update(STRIPE_WORKER_STORM_BACKLOG=3, STRIPE_WORKER_STORM_DEFER_SECONDS=30)
    stop = threading.Event()

    def work() -> None:
        with queued.app_context():  # as the CLI command runs it
            worker.run(queued, poll_seconds=0.01, stop=stop, report=lambda _m: None)

    runner = threading.Thread(target=work)
    runner.start()
    deadline = time.monotonic() + 5
    while len(looks) < 8 and time.monotonic() < deadline:
        time.sleep(0.01)
    stop.set()
    runner.join(5)
    assert looks[:4] == [0, 5, 10, 12]
    assert started_at[0] == 0  # nothing waiting yet: it looks, and drains
    assert 5 not in started_at and 10 not in started_at  # the storm: no batch
    assert 12 in started_at  # the storm over: back to work


def _generic_plan(statement, arguments: str) -> str:
    """EXPLAIN of `statement` prepared and planned for any parameters (plan_cache_mode
    force_generic_plan, as the app's pooled connections run what psycopg has prepared), with
    sequential scans discouraged: the index shows in the plan if the plan can use it."""
    from sqlalchemy.dialects import postgresql

    sql = str(statement.compile(dialect=postgresql.psycopg.dialect(paramstyle="numeric_dollar")))
    with db.engine.connect() as conn:
        conn.exec_driver_sql("SET plan_cache_mode = force_generic_plan")
        conn.exec_driver_sql("SET enable_seqscan = off")
        conn.exec_driver_sql(f"PREPARE prepared AS {sql}")
        plan = "\n".join(
            row[0] for row in conn.exec_driver_sql(f"EXPLAIN EXECUTE prepared({arguments})")
        )
        conn.rollback()
    return plan


@pytest.mark.postgres_only
def test_the_workers_prepared_claim_reads_the_pending_index_not_the_history(queued, client):
    """The worker runs its claim over and over, so psycopg prepares it and (plan_cache_mode
    force_generic_plan) PostgreSQL plans it once for any parameters: the claim must still be
    one the pending index can answer, or every batch reads every event ever received."""
    plan = _generic_plan(service._CLAIM, "'received', now(), 8, 50")
    assert "ix_stripe_events_pending" in plan, plan
    assert "Seq Scan" not in plan, plan


@pytest.mark.postgres_only
@pytest.mark.parametrize("status", ["failed", "flagged"])
def test_the_prepared_list_of_events_needing_attention_reads_their_index(queued, client, status):
    """Staff's list of failed or flagged events, prepared on a pooled connection and planned for
    any status, must still be answered by the partial index of those few events, not by reading
    every event ever received."""
    plan = _generic_plan(
        service._events_query(status).limit(sa.bindparam("limit")), f"'{status}', 100"
    )
    assert "ix_stripe_events_attention" in plan, plan
    assert "Seq Scan" not in plan, plan
