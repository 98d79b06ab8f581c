"""/api/v1/memberships: joining, the life of a membership, its household, its history; who may
do what, and the requests that are refused without writing anything."""

from datetime import timedelta

import pytest

from billing.entitlements.models import LedgerEntry
from billing.extensions import db
from billing.memberships import service as memberships
from billing.memberships.models import Beneficiary, Membership, MembershipEvent
from tests import factories as f


def _counts() -> tuple[int, int, int, int]:
    """Everything a membership request could write."""
    return tuple(
        db.session.query(model).count()
        for model in (Membership, MembershipEvent, Beneficiary, LedgerEntry)
    )


def _problem(response, status: int, *words: str) -> dict:
    assert response.status_code == status, response.get_json()
    assert response.mimetype == "application/problem+json"
    body = response.get_json()
    for word in words:
        assert word.lower() in body["detail"].lower(), body["detail"]
    return body


@pytest.fixture
def catalogue(app):
    facial = f.treatment("hydrafacial", price=20000)
    peel = f.treatment("glow-peel", price=8000)
    glow = f.plan([(facial, 1)], code="glow", price=21800)
    radiance = f.plan([(facial, 2), (peel, 1)], code="radiance", price=43600)
    db.session.commit()
    return {"glow": glow, "radiance": radiance, "facial": facial, "peel": peel}


@pytest.fixture
def mei(app):
    member = f.member("Mei", "Tan")
    db.session.commit()
    return member


@pytest.fixture
def active(catalogue, mei, clock):
    membership = f.active_membership(catalogue["glow"], now=clock(), owner=mei, period_days=30)
    return membership


def _client_of(keys, member):
    return keys.headers("client", member_id=member.id)


# -------------------------------------------------------------------------------------- join


def test_staff_join_a_member_to_the_current_version_of_a_plan(client, staff, catalogue, mei):
    newer = f.revise(catalogue["glow"], price=23800, items=[(catalogue["facial"], 1)])
    db.session.commit()
    response = client.post(
        "/api/v1/memberships", json={"member_id": mei.id, "plan": "glow"}, headers=staff
    )
    assert response.status_code == 201, response.get_json()
    data = response.get_json()
    assert (data["state"], data["state_text"]) == ("pending", "waiting for its first payment")
    assert data["plan"]["code"] == "glow"
    assert (data["plan"]["plan_version_id"], data["plan"]["version"]) == (newer.id, 2)
    assert data["plan"]["price_display"] == "SGD 238.00"
    assert data["member"] == {"id": mei.id, "full_name": "Mei Tan"}
    assert data["source"] == "desk"
    assert data["next_payment_at"] is None


def test_joining_by_an_old_version_id_is_refused(client, staff, catalogue, mei):
    old = catalogue["glow"]
    newer = f.revise(old, price=23800, items=[(catalogue["facial"], 1)])
    db.session.commit()
    before = _counts()
    body = {"member_id": mei.id, "plan_version_id": old.id}
    response = client.post("/api/v1/memberships", json=body, headers=staff)
    problem = _problem(response, 409, "no longer sold")
    assert problem["current_plan_version_id"] == newer.id
    assert _counts() == before
    body["plan_version_id"] = newer.id
    assert client.post("/api/v1/memberships", json=body, headers=staff).status_code == 201


def test_joining_a_retired_tier_is_refused_and_writes_nothing(client, staff, catalogue, mei, clock):
    catalogue["glow"].plan.retired_at = clock()
    db.session.commit()
    before = _counts()
    response = client.post(
        "/api/v1/memberships", json={"member_id": mei.id, "plan": "glow"}, headers=staff
    )
    body = _problem(response, 409, "retired")
    assert body["type"].endswith("/plan-retired")
    assert _counts() == before


def test_a_member_cannot_hold_two_tiers(client, staff, active, mei):
    before = _counts()
    response = client.post(
        "/api/v1/memberships", json={"member_id": mei.id, "plan": "radiance"}, headers=staff
    )
    assert _problem(response, 409, "change its tier")["membership_id"] == active.id
    assert _counts() == before


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"plan": "glow"}, "member_id"),
        ({"member_id": "{mei}", "plan": "no-such-plan"}, "plan"),
        ({"member_id": "{mei}", "plan": "glow", "plan_version_id": 1}, "plan"),
        ({"member_id": "{mei}"}, "plan"),
        ({"member_id": "{mei}", "plan": "glow", "coupon": "X"}, "coupon"),
        ({"member_id": 999999, "plan": "glow"}, "member_id"),
    ],
)
def test_join_bad_input(client, staff, catalogue, mei, body, field):
    body = {k: (mei.id if v == "{mei}" else v) for k, v in body.items()}
    before = _counts()
    response = client.post("/api/v1/memberships", json=body, headers=staff)
    assert field in _problem(response, 422)["errors"]
    assert _counts() == before


def test_a_client_joins_only_for_themselves(client, keys, catalogue, mei):
    other = f.member("Wei", "Lim")
    db.session.commit()
    own = _client_of(keys, mei)
    response = client.post(
        "/api/v1/memberships", json={"member_id": other.id, "plan": "glow"}, headers=own
    )
    assert response.status_code == 403
    mine = client.post(
        "/api/v1/memberships", json={"member_id": mei.id, "plan": "glow"}, headers=own
    )
    assert mine.status_code == 201
    assert mine.get_json()["source"] == "online"
    assert (
        client.post("/api/v1/memberships", json={"member_id": mei.id, "plan": "glow"}).status_code
        == 401
    )
    finance = keys.headers("finance")
    body = {"member_id": other.id, "plan": "glow"}
    assert client.post("/api/v1/memberships", json=body, headers=finance).status_code == 403


# -------------------------------------------------------------------------------------- read


def test_a_membership_shows_its_period_payment_commitment_and_household(
    client, staff, catalogue, mei, clock
):
    committed = f.plan(
        [(catalogue["facial"], 1)],
        code="glow-12",
        price=19800,
        min_commitment_periods=6,
        early_termination_fee_minor=15000,
    )
    membership = f.active_membership(committed, now=clock(), owner=mei, period_days=30)
    partner = f.member("Jun", "Tan")
    memberships.add_beneficiary(membership, partner, actor="desk", now=clock())
    data = client.get(f"/api/v1/memberships/{membership.id}", headers=staff).get_json()
    assert (data["state"], data["state_text"]) == ("active", "active")
    assert data["current_period_start"] == clock().isoformat()
    assert data["current_period_end"] == (clock() + timedelta(days=30)).isoformat()
    assert data["next_payment_at"] == data["current_period_end"]
    assert data["paid_periods"] == 1
    assert data["commitment"] == {
        "min_commitment_periods": 6,
        "periods_remaining": 5,
        "early_termination_fee_minor": 15000,
    }
    assert [(b["member_id"], b["full_name"]) for b in data["beneficiaries"]] == [
        (partner.id, "Jun Tan")
    ]
    assert data["pending_downgrade"] is None


def test_reading_needs_a_key_and_a_client_sees_only_their_own(client, keys, active, mei):
    url = f"/api/v1/memberships/{active.id}"
    assert client.get(url).status_code == 401
    assert client.get(url, headers=_client_of(keys, mei)).status_code == 200
    stranger = f.member("Wei", "Lim")
    db.session.commit()
    assert client.get(url, headers=_client_of(keys, stranger)).status_code == 403
    assert client.get(url, headers=keys.headers("finance")).status_code == 200
    assert (
        client.get("/api/v1/memberships/999999", headers=keys.headers("staff")).status_code == 404
    )


def test_a_members_memberships_include_the_ones_shared_with_them(
    client, staff, keys, active, mei, catalogue, clock
):
    partner = f.member("Jun", "Tan")
    db.session.commit()
    own = f.active_membership(catalogue["radiance"], now=clock(), owner=partner)
    memberships.add_beneficiary(active, partner, actor="desk", now=clock())
    response = client.get(f"/api/v1/members/{partner.id}/memberships", headers=staff)
    assert response.status_code == 200
    rows = response.get_json()
    assert sorted((m["id"], m["member"]["id"]) for m in rows) == sorted(
        [(own.id, partner.id), (active.id, mei.id)]
    )
    url = f"/api/v1/members/{mei.id}/memberships"
    assert client.get(url, headers=_client_of(keys, partner)).status_code == 403
    assert [m["id"] for m in client.get(url, headers=_client_of(keys, mei)).get_json()] == [
        active.id
    ]
    assert client.get("/api/v1/members/999999/memberships", headers=staff).status_code == 404


# ----------------------------------------------------------------------------- pause, resume


def test_pause_and_resume(client, staff, active, clock):
    resume_at = (clock() + timedelta(days=20)).isoformat()
    response = client.post(
        f"/api/v1/memberships/{active.id}/pause",
        json={"resume_at": resume_at, "reason": "travelling"},
        headers=staff,
    )
    assert response.status_code == 200, response.get_json()
    data = response.get_json()
    assert (data["state"], data["resume_at"], data["next_payment_at"]) == (
        "paused",
        resume_at,
        None,
    )
    clock.advance(days=10)
    resumed = client.post(f"/api/v1/memberships/{active.id}/resume", json={}, headers=staff)
    assert resumed.get_json()["state"] == "active"
    events = client.get(f"/api/v1/memberships/{active.id}/events", headers=staff).get_json()
    assert [(e["from_state"], e["to_state"]) for e in events if e["kind"] == "transition"][-2:] == [
        ("active", "paused"),
        ("paused", "active"),
    ]
    assert events[-2]["reason"] == "travelling"


def test_pausing_a_past_due_membership_is_refused(client, staff, active, clock):
    memberships.mark_past_due(active, actor="stripe", now=clock())
    before = _counts()
    response = client.post(f"/api/v1/memberships/{active.id}/pause", json={}, headers=staff)
    body = _problem(response, 409, "past due")
    assert body["type"].endswith("/illegal-transition")
    assert _counts() == before


def test_resuming_a_membership_that_is_not_paused_is_refused(client, staff, active):
    before = _counts()
    response = client.post(f"/api/v1/memberships/{active.id}/resume", json={}, headers=staff)
    _problem(response, 409, "not paused")
    assert _counts() == before


@pytest.mark.parametrize(
    "body", [{"resume_at": "2026-01-01T00:00:00+00:00"}, {"resume_at": "2026-09-01T00:00:00"}]
)
def test_pause_with_a_bad_resume_date(client, staff, active, body):
    before = _counts()
    response = client.post(f"/api/v1/memberships/{active.id}/pause", json=body, headers=staff)
    assert "resume_at" in _problem(response, 422)["errors"]
    assert _counts() == before


def test_a_client_acts_only_on_their_own_membership(client, keys, active, mei):
    stranger = f.member("Wei", "Lim")
    db.session.commit()
    before = _counts()
    url = f"/api/v1/memberships/{active.id}"
    for path in ("/pause", "/resume", "/cancel", "/change-tier"):
        body = {"plan": "radiance"} if path == "/change-tier" else {}
        response = client.post(url + path, json=body, headers=_client_of(keys, stranger))
        assert response.status_code == 403, path
    assert client.get(url + "/events", headers=_client_of(keys, stranger)).status_code == 403
    assert _counts() == before
    own = client.post(url + "/pause", json={}, headers=_client_of(keys, mei))
    assert own.status_code == 200


# ------------------------------------------------------------------------------------ cancel


def test_cancel_at_period_end_by_default(client, staff, active):
    terms = client.get(f"/api/v1/memberships/{active.id}/cancellation-terms", headers=staff)
    assert terms.get_json()["allowed_without_override"] is True
    response = client.post(
        f"/api/v1/memberships/{active.id}/cancel", json={"reason": "moving"}, headers=staff
    )
    data = response.get_json()
    assert (data["state"], data["state_text"]) == (
        "cancel_at_period_end",
        "ending at the close of this period",
    )
    assert data["cancel_at"] == data["current_period_end"]
    assert data["next_payment_at"] is None


def test_cancel_inside_the_commitment(client, keys, catalogue, mei, clock):
    version = f.plan([(catalogue["facial"], 1)], code="glow-6", min_commitment_periods=6)
    membership = f.active_membership(version, now=clock(), owner=mei)
    url = f"/api/v1/memberships/{membership.id}"
    terms = client.get(url + "/cancellation-terms", headers=_client_of(keys, mei)).get_json()
    assert terms["periods_remaining"] == 5
    assert terms["allowed_without_override"] is False
    assert terms["early_termination_fee_display"] == "SGD 0.00"

    before = _counts()
    refused = client.post(url + "/cancel", json={}, headers=_client_of(keys, mei))
    assert _problem(refused, 409, "minimum commitment")["periods_remaining"] == 5
    staff_override = client.post(
        url + "/cancel", json={"override_reason": "moving abroad"}, headers=keys.headers("staff")
    )
    assert staff_override.status_code == 403
    assert _counts() == before

    admin = client.post(
        url + "/cancel",
        json={"at_period_end": False, "override_reason": "moving abroad"},
        headers=keys.headers("admin"),
    )
    assert admin.status_code == 200
    assert admin.get_json()["state"] == "canceled"


def test_cancel_bad_input(client, staff, active):
    before = _counts()
    url = f"/api/v1/memberships/{active.id}/cancel"
    assert client.post(url, json={"at_period_end": "soon"}, headers=staff).status_code == 422
    assert client.post(url, json={"when": "now"}, headers=staff).status_code == 422
    assert _counts() == before


# ------------------------------------------------------------------------------- change tier


def test_upgrade_applies_now_and_downgrade_waits(client, staff, active, catalogue, clock):
    url = f"/api/v1/memberships/{active.id}/change-tier"
    up = client.post(url, json={"plan": "radiance"}, headers=staff)
    assert up.status_code == 200, up.get_json()
    assert up.get_json()["plan"]["code"] == "radiance"
    down = client.post(url, json={"plan": "glow"}, headers=staff).get_json()
    assert down["plan"]["code"] == "radiance"
    assert down["pending_downgrade"]["plan"]["code"] == "glow"
    assert down["pending_downgrade"]["effective_at"] == down["current_period_end"]
    kinds = [
        (e["kind"], e["reason"])
        for e in client.get(f"/api/v1/memberships/{active.id}/events", headers=staff).get_json()
    ]
    assert kinds[-2:] == [("tier_change", "upgrade"), ("tier_change", "downgrade")]


def test_a_tier_change_to_the_same_tier_is_refused(client, staff, active):
    before = _counts()
    response = client.post(
        f"/api/v1/memberships/{active.id}/change-tier", json={"plan": "glow"}, headers=staff
    )
    assert _problem(response, 409, "already on")["type"].endswith("/same-tier")
    assert _counts() == before


def test_a_tier_change_to_an_unknown_plan(client, staff, active):
    before = _counts()
    url = f"/api/v1/memberships/{active.id}/change-tier"
    assert "plan" in _problem(client.post(url, json={"plan": "gold"}, headers=staff), 422)["errors"]
    assert client.post(url, json={}, headers=staff).status_code == 422
    assert _counts() == before


# ------------------------------------------------------------------------------ beneficiaries


def test_add_and_remove_a_beneficiary(client, staff, active):
    partner = f.member("Jun", "Tan")
    db.session.commit()
    url = f"/api/v1/memberships/{active.id}/beneficiaries"
    added = client.post(url, json={"member_id": partner.id}, headers=staff)
    assert added.status_code == 201
    assert [b["member_id"] for b in added.get_json()["beneficiaries"]] == [partner.id]
    again = client.post(url, json={"member_id": partner.id}, headers=staff)
    _problem(again, 409, "already a beneficiary")
    removed = client.delete(f"{url}/{partner.id}", headers=staff)
    assert removed.status_code == 200
    assert removed.get_json()["beneficiaries"] == []
    _problem(client.delete(f"{url}/{partner.id}", headers=staff), 404, "not a beneficiary")
    kinds = [e.kind for e in memberships.events_of(active)]
    assert kinds[-2:] == ["beneficiary_added", "beneficiary_removed"]


def test_the_owner_cannot_be_their_own_beneficiary(client, staff, active, mei):
    before = _counts()
    response = client.post(
        f"/api/v1/memberships/{active.id}/beneficiaries", json={"member_id": mei.id}, headers=staff
    )
    body = _problem(response, 422, "owns this membership")
    assert body["errors"] == {"member_id": ["is the owner"]}
    assert _counts() == before


def test_beneficiaries_are_managed_by_staff(client, keys, active, mei):
    partner = f.member("Jun", "Tan")
    db.session.commit()
    url = f"/api/v1/memberships/{active.id}/beneficiaries"
    response = client.post(url, json={"member_id": partner.id}, headers=_client_of(keys, mei))
    assert response.status_code == 403
    assert client.post(url, json={"member_id": partner.id}).status_code == 401
    bad = client.post(url, json={"member_id": "Jun"}, headers=keys.headers("staff"))
    assert bad.status_code == 422
    assert db.session.query(Beneficiary).count() == 0


# ------------------------------------------------------------------------------------ events


def test_events_record_each_change_with_who_and_why(client, keys, catalogue, mei):
    staff = keys.headers("staff")
    created = client.post(
        "/api/v1/memberships", json={"member_id": mei.id, "plan": "glow"}, headers=staff
    ).get_json()
    client.post(f"/api/v1/memberships/{created['id']}/cancel", json={}, headers=staff)
    events = client.get(
        f"/api/v1/memberships/{created['id']}/events", headers=_client_of(keys, mei)
    ).get_json()
    assert [(e["kind"], e["from_state"], e["to_state"]) for e in events] == [
        ("joined", None, "pending"),
        ("transition", "pending", "canceled"),
    ]
    assert all(e["actor"].startswith("key:") for e in events)
