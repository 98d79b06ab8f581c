"""Desks racing for the last credit, on PostgreSQL with real concurrent connections.

Each thread is a desk with its own app context (so its own session and connection) and its own
test client; a barrier releases them at the same moment."""

from __future__ import annotations

import threading
import uuid

import pytest
import sqlalchemy as sa

from billing.checkout.models import Visit, VisitLine
from billing.entitlements import service as ledger
from billing.entitlements.models import EntryKind, LedgerEntry
from billing.extensions import db
from billing.staff.models import Staff
from tests import factories as f

pytestmark = pytest.mark.postgres_only

DESKS = 8
ROUNDS = 4


@pytest.fixture
def shop(app, clock):
    orchard = f.location("orchard")
    facial = f.treatment("hydrafacial", name="HydraFacial", price=20000, category="spa_facial")
    tier = f.plan([(facial, 1)], code="glow")
    therapist = Staff(name="Bea", role="aesthetician", location_id=orchard.id)
    db.session.add(therapist)
    db.session.commit()
    return facial, tier, therapist


def _client_with_credits(tier, clock, visits: int) -> tuple[int, int, list[int]]:
    m = f.active_membership(tier, now=clock())
    ids = []
    for _ in range(visits):
        visit = Visit(member_id=m.member_id, location_id=f.location("orchard").id, opened_by="t")
        visit.currency = "SGD"
        db.session.add(visit)
        db.session.flush()
        ids.append(visit.id)
    db.session.commit()
    return m.id, m.member_id, ids


def _race(app, requests: list[tuple[str, dict, dict]]) -> list[tuple[int, dict]]:
    """Send each (url, json, headers) from its own thread at the same moment."""
    barrier = threading.Barrier(len(requests), timeout=30)
    results: list = [None] * len(requests)

    def desk(i: int) -> None:
        url, body, headers = requests[i]
        with app.app_context():
            client = app.test_client()
            barrier.wait()
            response = client.post(url, json=body, headers=headers)
            results[i] = (response.status_code, response.get_json())
            db.session.remove()

    threads = [threading.Thread(target=desk, args=(i,)) for i in range(len(requests))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert all(r is not None for r in results), "a desk never answered"
    return results


def test_desks_racing_for_the_last_credit_exactly_one_wins(app, shop, keys, clock):
    facial, tier, therapist = shop
    staff = keys.headers("staff")
    for _ in range(ROUNDS):
        membership_id, _, visits = _client_with_credits(tier, clock, visits=2)  # two desks
        requests = [
            (
                f"/api/v1/visits/{visits[i % 2]}/lines",
                {"treatment": "hydrafacial", "provider_id": therapist.id, "pay_with": "credits"},
                {**staff, "Idempotency-Key": uuid.uuid4().hex},
            )
            for i in range(DESKS)
        ]
        results = _race(app, requests)
        codes = sorted(code for code, _ in results)
        assert codes == [201] + [409] * (DESKS - 1), results
        losers = [body for code, body in results if code == 409]
        assert all(b["type"].endswith("/insufficient-credits") for b in losers)
        assert all("0 sessions left, 1 asked" in b["detail"] for b in losers)
        db.session.expire_all()
        assert ledger.balance([membership_id], facial.id, clock()) == 0
        redeemed = db.session.execute(
            sa.select(sa.func.count(LedgerEntry.id)).where(
                LedgerEntry.membership_id == membership_id, LedgerEntry.kind == EntryKind.REDEEM
            )
        ).scalar_one()
        assert redeemed == 1
    never_negative = db.session.execute(
        sa.select(LedgerEntry.credit_id)
        .group_by(LedgerEntry.credit_id)
        .having(sa.func.sum(LedgerEntry.quantity) < 0)
    ).all()
    assert never_negative == []


def test_in_auto_mode_the_losers_are_charged_and_the_credit_is_spent_once(app, shop, keys, clock):
    facial, tier, therapist = shop
    staff = keys.headers("staff")
    membership_id, _, visits = _client_with_credits(tier, clock, visits=2)
    requests = [
        (
            f"/api/v1/visits/{visits[i % 2]}/lines",
            {"treatment": "hydrafacial", "provider_id": therapist.id},
            {**staff, "Idempotency-Key": uuid.uuid4().hex},
        )
        for i in range(DESKS)
    ]
    results = _race(app, requests)
    statuses = sorted(body["status"] for code, body in results if code == 201)
    assert statuses == ["charged"] * (DESKS - 1) + ["redeemed"]
    db.session.expire_all()
    assert ledger.balance([membership_id], facial.id, clock()) == 0


def test_the_same_idempotency_key_sent_by_several_desks_at_once_redeems_once(
    app, shop, keys, clock
):
    facial, tier, therapist = shop
    tier2 = f.plan([(facial, 5)], code="glow-five")
    staff = keys.headers("staff")
    membership_id, _, visits = _client_with_credits(tier2, clock, visits=1)
    headers = {**staff, "Idempotency-Key": "retry-storm"}
    body = {"treatment": "hydrafacial", "provider_id": therapist.id}
    results = _race(app, [(f"/api/v1/visits/{visits[0]}/lines", body, headers)] * DESKS)
    created = {b["id"] for code, b in results if code == 201}
    assert len(created) == 1
    others = [b for code, b in results if code != 201]
    assert all(b["type"].endswith("/idempotency-in-progress") for b in others)
    db.session.expire_all()
    assert ledger.balance([membership_id], facial.id, clock()) == 4
    assert db.session.execute(sa.select(sa.func.count(VisitLine.id))).scalar_one() == 1


def _one_call_race(app, member_id: int, therapist, staff: dict) -> list[tuple[int, dict]]:
    """Every desk rings up the same client's hydrafacial through /desk/redemptions at once."""
    body = {
        "member_id": member_id,
        "location": "orchard",
        "treatment": "hydrafacial",
        "provider_id": therapist.id,
        "pay_with": "credits",
    }
    requests = [
        ("/api/v1/desk/redemptions", body, {**staff, "Idempotency-Key": uuid.uuid4().hex})
        for _ in range(DESKS)
    ]
    return _race(app, requests)


def test_desks_racing_with_the_one_call_endpoint_spend_the_last_credit_once(app, shop, keys, clock):
    """Eight desks ring up the same client at once through /desk/redemptions: one redemption,
    seven clear 409s, and every line lands in a visit of that client (a new visit or today's)."""
    facial, tier, therapist = shop
    staff = keys.headers("staff")
    for _ in range(ROUNDS):
        membership_id, member_id, _ = _client_with_credits(tier, clock, visits=0)
        results = _one_call_race(app, member_id, therapist, staff)
        assert sorted(code for code, _ in results) == [201] + [409] * (DESKS - 1), results
        db.session.expire_all()
        assert ledger.balance([membership_id], facial.id, clock()) == 0
        (line,) = [body for code, body in results if code == 201]
        visit = db.session.get(Visit, line["visit_id"])
        assert visit.member_id == member_id and visit.is_open


def test_desks_ringing_up_the_same_client_at_once_share_one_visit(app, shop, keys, clock):
    """Eight desks each add a treatment for the same client through /desk/redemptions at the
    same moment, with credits enough for all: eight lines, all in ONE visit of today (not one
    visit per desk), eight credits spent."""
    facial, _, therapist = shop
    eight = f.plan([(facial, DESKS)], code="glow8")
    staff = keys.headers("staff")
    for _ in range(ROUNDS):
        membership_id, member_id, _ = _client_with_credits(eight, clock, visits=0)
        results = _one_call_race(app, member_id, therapist, staff)
        assert [code for code, _ in results] == [201] * DESKS, results
        assert len({line["visit_id"] for _, line in results}) == 1
        db.session.expire_all()
        visits = db.session.execute(
            sa.select(sa.func.count(Visit.id)).where(Visit.member_id == member_id)
        ).scalar_one()
        assert visits == 1
        assert ledger.balance([membership_id], facial.id, clock()) == 0


def test_voids_and_desk_redemptions_on_one_visit_at_once_all_answer(app, shop, keys, clock):
    """Half the desks void lines of the client's visit of today while the other half ring up
    more treatments into it, all at the same moment. Every writer takes the visit's lock before
    the memberships' (the desk's call locks both in one statement), so none waits on another in
    a cycle: every call is answered, none is a deadlock's victim, and the credits add up."""
    facial, _, therapist = shop
    plenty = f.plan([(facial, 2 * DESKS)], code="glow16")
    staff = keys.headers("staff")
    body = {
        "location": "orchard",
        "treatment": "hydrafacial",
        "provider_id": therapist.id,
        "pay_with": "credits",
    }
    for _ in range(ROUNDS):
        membership_id, member_id, _ = _client_with_credits(plenty, clock, visits=0)
        client = app.test_client()
        earlier = []
        for _ in range(DESKS // 2):
            r = client.post(
                "/api/v1/desk/redemptions",
                json={**body, "member_id": member_id},
                headers={**staff, "Idempotency-Key": uuid.uuid4().hex},
            )
            assert r.status_code == 201, r.get_json()
            earlier.append(r.get_json())
        voids = [
            (
                f"/api/v1/visits/{line['visit_id']}/lines/{line['id']}/void",
                {"reason": "rang up twice"},
                {**staff, "Idempotency-Key": uuid.uuid4().hex},
            )
            for line in earlier
        ]
        more = [
            (
                "/api/v1/desk/redemptions",
                {**body, "member_id": member_id},
                {**staff, "Idempotency-Key": uuid.uuid4().hex},
            )
            for _ in range(DESKS // 2)
        ]
        results = _race(app, [x for pair in zip(voids, more, strict=True) for x in pair])
        assert sorted(code for code, _ in results) == [200] * len(voids) + [201] * len(more), [
            problem for code, problem in results if code >= 300
        ]
        assert {line["visit_id"] for code, line in results if code == 201} == {
            earlier[0]["visit_id"]
        }
        db.session.expire_all()
        assert ledger.balance([membership_id], facial.id, clock()) == 2 * DESKS - len(more)
