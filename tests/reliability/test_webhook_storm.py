"""A webhook storm ends where one clean delivery ends.

Stripe delivers at least once, in any order, concurrently, and retries what failed. So: two paid
months for each of many members (subscription updates and invoice.paid), delivered shuffled,
a fifth of them twice, some failing on their first try (before the app, after it with the
response lost, or inside the handler), retried until they succeed. The ledger, the memberships,
the invoices and payments (a digest by Stripe ids) must be identical to what one clean, in-order,
once-each delivery leaves; every event ends processed or ignored, none failed.

In process on both databases (shuffled, sequential); on PostgreSQL also against gunicorn with
16 sender threads (bench.common.faulty_app injects the failures), inline and queued (gunicorn
stores, a worker process acts: bench.common.Worker, failures in its handlers injected there)."""

from __future__ import annotations

import contextlib
import functools
import random
import threading
import time
from collections import Counter
from contextlib import contextmanager

import pytest

from bench import common
from billing.extensions import db
from tests.conftest import IS_POSTGRES, _config

DONE = {"processed", "ignored"}
QUICK_MEMBERS = 40  # x 4-5 events, + 20 % duplicates: about 250 deliveries


def _seed_and_events(members: int) -> list[dict]:
    seeded = common.seed_stripe_members(members)
    return common.storm_events(seeded["pairs"])


def _deliveries(events: list[dict], rnd: random.Random, duplicate_share: float) -> list[dict]:
    copies = events + [e for e in events if rnd.random() < duplicate_share]
    rnd.shuffle(copies)
    return copies


@contextmanager
def _reference_app():
    """A second, empty database for the clean delivery."""
    from billing import create_app

    url = common.create_database("storm_ref") if IS_POSTGRES else "sqlite://"
    app = create_app(_config(url))
    try:
        with app.app_context():
            if not IS_POSTGRES:
                db.create_all()
            yield app
            db.session.remove()
            db.engine.dispose()
    finally:
        if IS_POSTGRES:
            common.drop_database(url)


@functools.cache
def _clean_digest(members: int) -> tuple[dict, int]:
    """Seed the same members and deliver each event once, in order (once per size and run)."""
    with _reference_app() as ref:
        events = _seed_and_events(members)
        client = ref.test_client()
        for event in events:
            body, headers = common.signed_delivery(event)
            response = client.post("/webhooks/stripe", data=body, headers=headers)
            assert response.status_code == 200, response.get_json()
        digest = common.storm_digest()
    return digest, len(events)


def _deliver_until_accepted(send, delivery: dict, max_attempts: int = 6) -> int:
    """Stripe's behaviour: retry until a 2xx, a bounded number of times."""
    answers = []
    for attempt in range(1, max_attempts + 1):
        answers.append(send(delivery, attempt))
        if answers[-1] == 200:
            return attempt
        time.sleep(0.05 * attempt)
    raise AssertionError(f"{delivery['id']} was never accepted: {answers}")


def _assert_converged(digest: dict, reference: dict, events: list[dict]) -> None:
    statuses = common.event_statuses()
    assert set(statuses) == {e["id"] for e in events}
    assert Counter(statuses.values()).keys() <= DONE, Counter(statuses.values())
    assert digest["memberships"] == reference["memberships"]
    assert digest["grants"] == reference["grants"]
    assert digest["ledger"] == reference["ledger"]
    assert digest["invoices"] == reference["invoices"]
    assert digest["payments"] == reference["payments"]


# ------------------------------------------------------------------------------------------
# In process, both databases


def _storm_in_process(app, monkeypatch, members: int, seed: int) -> None:
    from billing.stripe_sync import handlers

    reference, _ = _clean_digest(members)
    events = _seed_and_events(members)
    rnd = random.Random(seed)
    fail_first = {e["id"] for e in events if rnd.random() < 0.1}
    failed_once: set[str] = set()

    def failing(handler):
        def wrapped(obj, ctx):
            if ctx.event_id in fail_first and ctx.event_id not in failed_once:
                failed_once.add(ctx.event_id)
                raise RuntimeError("injected: the handler failed on the first try")
            return handler(obj, ctx)

        return wrapped

    for name, handler in list(handlers.HANDLERS.items()):
        monkeypatch.setitem(handlers.HANDLERS, name, failing(handler))
    client = app.test_client()

    def send(event: dict, attempt: int) -> int:
        body, headers = common.signed_delivery(event, attempt)
        return client.post("/webhooks/stripe", data=body, headers=headers).status_code

    for delivery in _deliveries(events, rnd, 0.2):
        _deliver_until_accepted(send, delivery)
    assert failed_once == fail_first  # every injected failure happened, and was retried
    _assert_converged(common.storm_digest(), reference, events)


def test_a_shuffled_storm_with_duplicates_and_failures_ends_like_one_clean_delivery(
    app, monkeypatch
):
    _storm_in_process(app, monkeypatch, members=QUICK_MEMBERS, seed=7)


@pytest.mark.slow
def test_soak_a_large_shuffled_storm_ends_like_one_clean_delivery(app, monkeypatch):
    _storm_in_process(app, monkeypatch, members=800, seed=8)


# ------------------------------------------------------------------------------------------
# A real server, concurrent senders (PostgreSQL)


def storm_on_server(server: common.Server, deliveries: list[dict], senders: int) -> Counter:
    """Post every delivery from `senders` threads, each retrying until accepted. Returns how
    many attempts deliveries took."""
    import httpx

    queue = list(reversed(deliveries))
    lock = threading.Lock()
    attempts: Counter = Counter()
    errors: list[str] = []

    def sender() -> None:
        with httpx.Client(base_url=server.base_url, timeout=30) as client:

            def send(event: dict, attempt: int) -> int:
                body, headers = common.signed_delivery(event, attempt)
                try:
                    return client.post(
                        "/webhooks/stripe", content=body, headers=headers
                    ).status_code
                except httpx.HTTPError:
                    return 0

            while True:
                with lock:
                    if not queue:
                        return
                    delivery = queue.pop()
                try:
                    n = _deliver_until_accepted(send, delivery)
                except AssertionError as exc:
                    errors.append(str(exc))
                    continue
                with lock:
                    attempts[n] += 1

    threads = [threading.Thread(target=sender) for _ in range(senders)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors[:5]
    return attempts


def _storm_on_gunicorn(members: int, seed: int, mode: str) -> None:
    """inline: each delivery acted on in its request, a handler failure a 500 Stripe retries.
    queued (production's default): gunicorn only stores, a worker process acts, and a handler
    failure is the worker's to retry (injected in the worker); the senders see only the
    failures before the app and the lost responses."""
    reference, _ = _clean_digest(members)
    url = common.create_database("storm")
    try:
        app = common.make_app(url)
        with app.app_context():
            events = _seed_and_events(members)
            db.session.remove()
            db.engine.dispose()
        rnd = random.Random(seed)
        deliveries = _deliveries(events, rnd, 0.2)
        failures = {"BENCH_FAIL_FIRST_PERCENT": "15"}
        server = common.Server(
            url,
            app="bench.common:faulty_app()",
            env={**failures, "STRIPE_WEBHOOK_PROCESSING": mode},
        )
        worker = common.Worker(
            url, env={**failures, "STRIPE_EVENT_RETRY_SECONDS": "0.2"}, faulty=True, nice=0
        )
        with server, contextlib.ExitStack() as stack:
            if mode == "queued":
                stack.enter_context(worker)
            attempts = storm_on_server(server, deliveries, senders=16)
            if mode == "queued":
                worker.wait_idle(timeout=120)
        assert sum(n for k, n in attempts.items() if k > 1) > 0  # failures were injected
        with app.app_context():
            _assert_converged(common.storm_digest(), reference, events)
            retried = {e["id"] for e in events if common.chosen_for_failure(e["id"], 15) == 2}
            from billing.stripe_sync.models import StripeEvent

            rows = db.session.query(StripeEvent).filter(StripeEvent.id.in_(retried)).all()
            assert rows and all(r.attempts >= 2 for r in rows)  # failed in the handler, retried
            db.session.remove()
            db.engine.dispose()
    finally:
        common.drop_database(url)


@pytest.mark.postgres_only
@pytest.mark.parametrize("mode", ["inline", "queued"])
def test_a_concurrent_storm_on_gunicorn_ends_like_one_clean_delivery(mode):
    _storm_on_gunicorn(members=QUICK_MEMBERS, seed=11, mode=mode)


@pytest.mark.slow
@pytest.mark.postgres_only
@pytest.mark.parametrize("mode", ["inline", "queued"])
def test_soak_a_large_concurrent_storm_on_gunicorn(mode):
    _storm_on_gunicorn(members=1000, seed=12, mode=mode)


def test_a_cancel_that_outruns_the_first_payment_is_kept(app):
    """Found by the storm: a cancel-at-period-end update that arrives while the membership is
    still pending must still hold once the first payment activates it."""
    events = _seed_and_events(4)  # the 4th member cancels at the period's end
    cancel = next(e for e in events if e["data"]["object"].get("cancel_at_period_end"))
    sub = cancel["data"]["object"]["id"]
    mine = [e for e in events if e["id"].startswith(f"evt_{sub}_")]
    assert mine[-1] is cancel
    client = app.test_client()
    for event in [cancel, *mine[:-1]]:
        body, headers = common.signed_delivery(event)
        assert client.post("/webhooks/stripe", data=body, headers=headers).status_code == 200
    state = common.storm_digest()["memberships"][sub][0]
    assert state == "cancel_at_period_end"


@pytest.mark.postgres_only
def test_two_periods_paid_at_the_same_moment_are_both_counted():
    """Two paid invoices (two periods) of each membership delivered at the same moment from two
    threads: each membership must count two paid periods and be in the later one."""
    import httpx

    url = common.create_database("storm_race")
    try:
        ref = common.make_app(url)
        with ref.app_context():
            events = _seed_and_events(12)
            db.session.remove()
            db.engine.dispose()
        paid = [e for e in events if e["type"] == "invoice.paid"]
        pairs = [paid[i : i + 2] for i in range(0, len(paid), 2)]
        # Two handlers at once on one membership: inline, where the request acts.
        inline = {"STRIPE_WEBHOOK_PROCESSING": "inline"}
        with common.Server(url, workers=4, env=inline) as server:
            answers: list[tuple[int, str]] = []

            def deliver(event: dict, barrier: threading.Barrier) -> None:
                with httpx.Client(base_url=server.base_url, timeout=30) as client:
                    barrier.wait(timeout=30)
                    for attempt in range(1, 6):  # Stripe retries a 5xx
                        body, headers = common.signed_delivery(event, attempt)
                        r = client.post("/webhooks/stripe", content=body, headers=headers)
                        answers.append((r.status_code, r.text[:300]))
                        if r.status_code == 200:
                            return

            for pair in pairs:
                barrier = threading.Barrier(2)
                threads = [threading.Thread(target=deliver, args=(e, barrier)) for e in pair]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join(timeout=60)
        first_failures = [text for status, text in answers if status != 200]
        with ref.app_context():
            memberships = common.storm_digest()["memberships"]
            db.session.remove()
            db.engine.dispose()
        wrong = {
            sub: m
            for sub, m in memberships.items()
            if m[3] != 2 or m[1] != common.STORM_P2.isoformat()
        }
        assert wrong == {}, first_failures[:3]
    finally:
        common.drop_database(url)
