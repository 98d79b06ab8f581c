"""kill -9 in the middle of a webhook storm (PostgreSQL), then recovery.

gunicorn (master and workers, its whole process group) is SIGKILLed while 8 senders deliver
Stripe events; it is started again on the same port; the senders keep retrying what was not
accepted, as Stripe does; then `flask billing stripe replay --failed` runs. Queued (production's
default): the worker process is killed with it and started again, and `flask billing stripe work
--once` drains what is left. Every verified event
must end processed (or ignored) exactly once, no credit may be granted twice, and the ledger must
equal one clean, in-order delivery's."""

from __future__ import annotations

import random
import subprocess
import threading
import time
from collections import Counter

import pytest
import sqlalchemy as sa

from bench import common
from billing.extensions import db
from tests.reliability.test_webhook_storm import (
    _assert_converged,
    _clean_digest,
    _deliveries,
    _seed_and_events,
)

MEMBERS = 40


def _storm_with_a_crash(members: int, seed: int, mode: str = "inline") -> dict:
    import httpx

    reference, _ = _clean_digest(members)
    url = common.create_database("crash")
    try:
        app = common.make_app(url)
        with app.app_context():
            events = _seed_and_events(members)
            db.session.remove()
            db.engine.dispose()
        deliveries = _deliveries(events, random.Random(seed), 0.2)
        server = common.Server(url, workers=3, env={"STRIPE_WEBHOOK_PROCESSING": mode}).start()
        # queued: the worker process acts on what gunicorn stored, and dies with it.
        worker = common.Worker(url, nice=0).start() if mode == "queued" else None
        queue = list(reversed(deliveries))
        lock = threading.Lock()
        accepted = Counter()
        unaccepted: list[str] = []
        deadline = time.monotonic() + 120

        def sender() -> None:
            with httpx.Client(timeout=10) as client:
                while time.monotonic() < deadline:
                    with lock:
                        if not queue:
                            return
                        delivery = queue.pop()
                    for attempt in range(1, 40):
                        body, headers = common.signed_delivery(delivery, attempt)
                        try:
                            r = client.post(
                                server.base_url + "/webhooks/stripe", content=body, headers=headers
                            )
                            if r.status_code == 200:
                                with lock:
                                    accepted[delivery["id"]] += 1
                                break
                        except httpx.HTTPError:
                            pass
                        time.sleep(0.1 * min(attempt, 5))
                    else:
                        unaccepted.append(delivery["id"])

        threads = [threading.Thread(target=sender) for _ in range(8)]
        for t in threads:
            t.start()
        while len(queue) > len(deliveries) * 0.6 and time.monotonic() < deadline:
            time.sleep(0.02)
        server.kill9()  # mid-storm: no graceful shutdown, requests in flight are lost
        if worker is not None:
            worker.kill9()  # and a batch in hand, uncommitted
        killed_with = len(queue)
        time.sleep(1.0)
        server.start()  # same port; the senders' retries find it again
        if worker is not None:
            worker.start()
        for t in threads:
            t.join(timeout=150)
        server.stop()
        if worker is not None:
            worker.wait_idle(timeout=120)
            worker.stop()

        replay = subprocess.run(
            [
                str(common.VENV_BIN / "flask"),
                "--app",
                "wsgi",
                "billing",
                "stripe",
                *(["replay", "--failed"] if mode == "inline" else ["work", "--once"]),
            ],
            env=common.server_env(url, STRIPE_WEBHOOK_PROCESSING=mode),
            cwd=str(common.ROOT),
            capture_output=True,
            text=True,
            timeout=120,
        )
        with app.app_context():
            digest = common.storm_digest()
            grants_per_period = db.session.execute(
                sa.text(
                    "SELECT membership_id, period_start, COUNT(*) FROM credit_grants "
                    "GROUP BY membership_id, period_start HAVING COUNT(*) > 1"
                )
            ).all()
            result = {
                "digest": digest,
                "events": events,
                "statuses": common.event_statuses(),
                "double_grants": grants_per_period,
                "attempts": dict(
                    db.session.execute(sa.text("SELECT id, attempts FROM stripe_events")).all()
                ),
                "unaccepted": unaccepted,
                "killed_with_left": killed_with,
                "replay": replay,
                "reference": reference,
            }
            _assert_converged(digest, reference, events)
            db.session.remove()
            db.engine.dispose()
        return result
    finally:
        common.drop_database(url)


@pytest.mark.postgres_only
@pytest.mark.parametrize("mode", ["inline", "queued"])
def test_a_kill_9_mid_storm_loses_nothing_and_grants_nothing_twice(mode):
    result = _storm_with_a_crash(MEMBERS, seed=21, mode=mode)
    assert 0 < result["killed_with_left"] < len(result["events"]), "the crash was not mid-storm"
    assert result["unaccepted"] == []
    assert result["replay"].returncode == 0, result["replay"].stderr[-2000:]
    statuses = result["statuses"]
    assert set(statuses) == {e["id"] for e in result["events"]}  # every event, once (its id)
    assert set(statuses.values()) <= {"processed", "ignored"}, Counter(statuses.values())
    assert result["double_grants"] == []
    assert result["digest"]["ledger"] == result["reference"]["ledger"]
    assert result["digest"]["grants"] == result["reference"]["grants"]
    if mode == "queued":  # a batch cut short by the kill was never committed: one try each
        assert set(result["attempts"].values()) == {1}, Counter(result["attempts"].values())


@pytest.mark.slow
@pytest.mark.postgres_only
@pytest.mark.parametrize("mode", ["inline", "queued"])
def test_soak_a_kill_9_mid_storm_at_scale(mode):
    result = _storm_with_a_crash(400, seed=22, mode=mode)
    assert result["unaccepted"] == []
    assert result["double_grants"] == []
    assert result["digest"]["ledger"] == result["reference"]["ledger"]


# ------------------------------------------------------------------------------------------
# A crash between the two commits of an idempotent request (both databases, in process)


def test_a_lost_response_record_does_not_strand_the_key(app, client, keys, monkeypatch):
    from sqlalchemy.exc import OperationalError

    from tests import factories as f

    f.location("orchard")
    db.session.commit()
    headers = keys.headers("staff", **{"Idempotency-Key": "retry-me"})
    body = {"first_name": "Mei", "last_name": "Tan", "email": "mei@example.com"}
    real_commit = db.session.commit
    calls = {"n": 0}

    def commit_then_crash():
        calls["n"] += 1
        if calls["n"] == 2:  # the idempotency record's own commit, after the service's
            raise OperationalError("COMMIT", {}, Exception("server closed the connection"))
        return real_commit()

    monkeypatch.setattr(db.session, "commit", commit_then_crash)
    first = client.post("/api/v1/members", json=body, headers=headers)
    monkeypatch.undo()
    assert first.status_code >= 500  # the client never saw the 201
    retry = client.post("/api/v1/members", json=body, headers=headers)
    assert retry.status_code == 201, retry.get_json()  # the retry gets the first result
