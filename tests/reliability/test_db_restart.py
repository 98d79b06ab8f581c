"""The database goes away under load and comes back (PostgreSQL).

gunicorn serves desks that search and redeem; the app's database is cut without touching the
server other work is using: new connections to that one database are refused (ALLOW_CONNECTIONS
false) and its open ones are ended (pg_terminate_backend). After a few seconds it is let back.
During the outage the service must say 503 (a problem, not a crash); afterwards it must recover
by itself (a disconnect invalidates the pool, and a pooled connection idle for a while is pinged
before use: billing/pool.py), and nothing may be half written: every redeemed line has its
ledger entries and every ledger entry its line."""

from __future__ import annotations

import threading
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from bench import common

pytestmark = pytest.mark.postgres_only

OUTAGE_S = 3.0


@pytest.fixture(scope="module")
def outage():
    """Run the scenario once: (answers as (t, kind, status, mimetype), outage window, url)."""
    import httpx

    from billing.extensions import db

    url = common.create_database("dbcut")
    try:
        app = common.make_app(url)
        now = datetime.now(UTC)
        with app.app_context():
            catalogue = common.seed_catalogue(credits_per_period=50)
            members = common.seed_members(40)
            ids = common.seed_memberships(
                members,
                catalogue.version_id,
                period_start=now - timedelta(days=1),
                period_end=now + timedelta(days=29),
            )
            common.grant_rows_bulk(
                ids, period_start=now - timedelta(days=1), period_end=now + timedelta(days=29)
            )
            headers = common.bearer(common.api_key("staff"))
            db.session.remove()
            db.engine.dispose()
        answers: list[tuple[float, str, int | str, str]] = []
        lock = threading.Lock()
        stop = time.monotonic() + 30
        window: dict[str, float] = {}

        with common.Server(url, workers=3) as server:

            def desk(n: int) -> None:
                with httpx.Client(base_url=server.base_url, headers=headers, timeout=10) as c:
                    i = 0
                    while time.monotonic() < stop and not window.get("done"):
                        i += 1
                        member = members[(n * 7 + i) % len(members)]
                        for kind, call in (
                            ("search", lambda: c.get("/api/v1/members", params={"q": "tan"})),
                            (
                                "visit",
                                lambda m=member: c.post(
                                    "/api/v1/visits", json={"member_id": m, "location": "orchard"}
                                ),
                            ),
                        ):
                            t = time.monotonic()
                            try:
                                r = call()
                                status, mime = r.status_code, r.headers.get("content-type", "")
                            except httpx.HTTPError as exc:
                                r, status, mime = None, type(exc).__name__, ""
                            with lock:
                                answers.append((t, kind, status, mime))
                            if kind == "visit" and r is not None and r.status_code == 201:
                                line = c.post(
                                    f"/api/v1/visits/{r.json()['id']}/lines",
                                    json={
                                        "treatment": "hydrafacial",
                                        "provider_id": catalogue.provider_id,
                                        "pay_with": "credits",
                                    },
                                    headers={"Idempotency-Key": uuid.uuid4().hex},
                                )
                                with lock:
                                    answers.append(
                                        (
                                            time.monotonic(),
                                            "redeem",
                                            line.status_code,
                                            line.headers.get("content-type", ""),
                                        )
                                    )
                        time.sleep(0.02)

            threads = [threading.Thread(target=desk, args=(n,)) for n in range(4)]
            for t in threads:
                t.start()
            time.sleep(2)
            window["cut"] = time.monotonic()
            common.set_connections_allowed(url, False)
            time.sleep(OUTAGE_S)
            common.set_connections_allowed(url, True)
            window["back"] = time.monotonic()
            time.sleep(5)
            window["done"] = time.monotonic()
            for t in threads:
                t.join(timeout=30)
        yield answers, window, url
    finally:
        common.set_connections_allowed(url, True)
        common.drop_database(url)


def _during(answers, window, margin: float = 0.3):
    return [a for a in answers if window["cut"] + margin < a[0] < window["back"] - margin]


def test_the_service_fails_cleanly_during_the_outage(outage):
    answers, window, _ = outage
    during = _during(answers, window)
    assert during, "no request was made during the outage"
    failed = [a for a in during if a[2] != 200 and a[2] != 201]
    assert failed, "the outage was not noticed"
    for _t, kind, status, mime in failed:
        assert isinstance(status, int), f"{kind}: the connection broke ({status}), no answer"
        assert 500 <= status < 600, (kind, status)
        assert "application/problem+json" in mime, (kind, status, mime)


def test_the_service_answers_503_during_the_outage(outage):
    answers, window, _ = outage
    statuses = {a[2] for a in _during(answers, window) if a[2] not in (200, 201)}
    assert statuses == {503}, statuses


def test_the_service_recovers_by_itself(outage):
    answers, window, _ = outage
    after = [a for a in answers if a[0] > window["back"] + 2.0]
    assert after, "no request after the database came back"
    ok = [a for a in after if a[2] in (200, 201)]
    assert len(ok) == len(after), sorted({(a[1], a[2]) for a in after if a not in ok})


def test_nothing_is_half_written(outage):
    _answers, _window, url = outage
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        lines_without_entries = conn.execute(
            sa.text(
                "SELECT COUNT(*) FROM visit_lines l WHERE l.status = 'redeemed' AND "
                "COALESCE((SELECT -SUM(quantity) FROM ledger_entries e WHERE e.visit_line_id = l.id "
                "AND e.kind = 'redeem'), 0) <> l.quantity"
            )
        ).scalar_one()
        entries_without_lines = conn.execute(
            sa.text(
                "SELECT COUNT(*) FROM ledger_entries e WHERE e.kind = 'redeem' AND NOT EXISTS "
                "(SELECT 1 FROM visit_lines l WHERE l.id = e.visit_line_id AND l.status = 'redeemed')"
            )
        ).scalar_one()
        redeemed = conn.execute(
            sa.text("SELECT COUNT(*) FROM visit_lines WHERE status = 'redeemed'")
        ).scalar_one()
    engine.dispose()
    assert redeemed > 0
    assert (lines_without_entries, entries_without_lines) == (0, 0)
    # Idempotency records left "in progress" by a cut between the service's commit and the
    # record's: see test_crash_recovery.test_a_lost_response_record_does_not_strand_the_key.
