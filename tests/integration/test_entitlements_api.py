"""What a member has left, the ledger behind it, and an admin's corrections, over HTTP."""

from datetime import timedelta

import pytest

from billing.entitlements import service as ledger
from billing.entitlements.models import Credit, CreditGrant, LedgerEntry
from billing.errors import InvalidInput
from billing.extensions import db
from billing.memberships import service as memberships
from tests import factories as f


def _counts() -> tuple[int, int, int]:
    return tuple(db.session.query(m).count() for m in (CreditGrant, Credit, LedgerEntry))


def _redeem(membership, treatment, quantity, now, member_id=None):
    return ledger.redeem(
        membership_ids=[membership.id],
        treatment=treatment,
        quantity=quantity,
        member_id=member_id or membership.member_id,
        now=now,
        actor="desk:1",
    )


@pytest.fixture
def setup(app, clock):
    facial = f.treatment("hydrafacial", name="HydraFacial", price=20000)
    peel = f.treatment("glow-peel", name="Glow Peel", price=8000)
    botox = f.treatment(
        "botox", name="Botox", price=1500, counted_in="unit", unit_label="unit", is_medical=True
    )
    mask = f.treatment("led-mask", name="LED Mask", price=6000)
    tier = f.plan(
        [(facial, 1), ("choice", [peel, mask], 2, "Any 2 of peel or mask"), (botox, 20)],
        code="radiance",
        price=65400,
    )
    owner = f.member("Mei", "Tan")
    partner = f.member("Jun", "Tan")
    membership = f.active_membership(tier, now=clock(), owner=owner, period_days=30)
    memberships.add_beneficiary(membership, partner, actor="desk", now=clock())
    return {
        "facial": facial,
        "peel": peel,
        "botox": botox,
        "mask": mask,
        "tier": tier,
        "owner": owner,
        "partner": partner,
        "membership": membership,
    }


# ------------------------------------------------------------------------------ entitlements


def test_a_member_sees_what_is_left_per_treatment_with_each_lot(client, keys, setup, clock):
    m = setup["membership"]
    _redeem(m, setup["botox"], 8, clock())
    _redeem(m, setup["mask"], 1, clock())
    owner = setup["owner"]
    response = client.get(
        f"/api/v1/members/{owner.id}/entitlements",
        headers=keys.headers("client", member_id=owner.id),
    )
    assert response.status_code == 200, response.get_json()
    [row] = response.get_json()
    assert (row["membership_id"], row["role"], row["plan_code"]) == (m.id, "owner", "radiance")
    assert row["state_text"] == "active"
    balances = {b["label"]: b for b in row["balances"]}
    expiry = (clock() + timedelta(days=30)).isoformat()
    botox = balances["Botox"]
    assert (botox["remaining"], botox["unit"], botox["next_expiry"]) == (12, "unit", expiry)
    assert (botox["value_at_list_minor"], botox["value_at_list_display"]) == (18000, "SGD 180.00")
    choice = balances["Any 2 of peel or mask"]
    assert choice["remaining"] == 1
    assert sorted(t["code"] for t in choice["treatments"]) == ["glow-peel", "led-mask"]
    assert choice["value_at_list_minor"] == 8000  # the dearer option
    [lot] = balances["HydraFacial"]["lots"]
    assert (lot["remaining"], lot["expires_at"], lot["product_type"]) == (1, expiry, "tier")
    assert lot["period_start"] == clock().isoformat()


def test_a_beneficiary_sees_the_shared_membership(client, staff, setup):
    partner = setup["partner"]
    rows = client.get(f"/api/v1/members/{partner.id}/entitlements", headers=staff).get_json()
    assert [(r["membership_id"], r["role"], r["owner_id"]) for r in rows] == [
        (setup["membership"].id, "beneficiary", setup["owner"].id)
    ]
    assert {b["label"] for b in rows[0]["balances"]} == {
        "HydraFacial",
        "Botox",
        "Any 2 of peel or mask",
    }


def test_expired_credits_are_not_shown(client, staff, setup, clock):
    clock.advance(days=31)
    owner = setup["owner"]
    rows = client.get(f"/api/v1/members/{owner.id}/entitlements", headers=staff).get_json()
    assert rows[0]["balances"] == []


def test_entitlements_need_a_key_and_the_right_member(client, keys, setup):
    owner, partner = setup["owner"], setup["partner"]
    url = f"/api/v1/members/{owner.id}/entitlements"
    assert client.get(url).status_code == 401
    assert client.get(url, headers=keys.headers("client", member_id=partner.id)).status_code == 403
    assert client.get(url, headers=keys.headers("finance")).status_code == 200
    assert (
        client.get("/api/v1/members/999999/entitlements", headers=keys.headers("staff")).status_code
        == 404
    )


# ------------------------------------------------------------------------------------ ledger


def test_the_ledger_lists_every_entry_newest_first_in_pages(client, staff, setup, clock):
    m = setup["membership"]
    clock.advance(hours=1)
    redemption = _redeem(m, setup["facial"], 1, clock())
    clock.advance(hours=1)
    ledger.reverse(redemption.entries[0], actor="desk:2", reason="wrong client", now=clock())
    url = f"/api/v1/memberships/{m.id}/ledger"
    page = client.get(url, query_string={"limit": 2}, headers=staff).get_json()
    assert [(e["kind"], e["quantity"]) for e in page["items"]] == [("reverse", 1), ("redeem", -1)]
    reverse, redeem = page["items"]
    assert (reverse["actor"], reverse["reason"]) == ("desk:2", "wrong client")
    assert reverse["reverses_entry_id"] == redeem["id"]
    assert redeem["value_minor"] == -redemption.entries[0].credit.allocated_minor
    assert redeem["member_id"] == setup["owner"].id
    assert redeem["item"] == "HydraFacial"
    assert redeem["expires_at"] == (m.current_period_end).isoformat()
    assert set(redeem) >= {"invoice_id", "visit_line_id", "currency", "created_at"}
    assert page["next_offset"] == 2
    rest = client.get(url, query_string={"limit": 2, "offset": 2}, headers=staff).get_json()
    assert [e["kind"] for e in rest["items"]] == ["grant", "grant"]
    last = client.get(url, query_string={"offset": 4}, headers=staff).get_json()
    assert [e["kind"] for e in last["items"]] == ["grant"] and last["next_offset"] is None


def test_the_ledger_is_the_owners_to_read(client, keys, setup):
    m = setup["membership"]
    url = f"/api/v1/memberships/{m.id}/ledger"
    owner = keys.headers("client", member_id=setup["owner"].id)
    partner = keys.headers("client", member_id=setup["partner"].id)
    assert client.get(url, headers=owner).status_code == 200
    assert client.get(url, headers=partner).status_code == 403
    assert client.get(url).status_code == 401
    assert client.get(url, query_string={"limit": 0}, headers=owner).status_code == 422


# ------------------------------------------------------------------------------------ adjust


def _credit_for(membership, treatment):
    return db.session.execute(
        db.select(Credit).where(
            Credit.membership_id == membership.id, Credit.treatment_id == treatment.id
        )
    ).scalar_one()


def test_an_admin_adjusts_a_credit_with_a_reason(client, admin, setup, clock):
    m, botox = setup["membership"], setup["botox"]
    credit = _credit_for(m, botox)
    response = client.post(
        f"/api/v1/credits/{credit.id}/adjust",
        json={"delta": -5, "reason": "units wasted: vial dropped"},
        headers=admin,
    )
    assert response.status_code == 201, response.get_json()
    data = response.get_json()
    assert data["remaining"] == 15
    assert (data["entry"]["kind"], data["entry"]["quantity"]) == ("adjust", -5)
    assert data["entry"]["reason"] == "units wasted: vial dropped"
    assert data["entry"]["actor"].startswith("key:")
    assert ledger.balance([m.id], botox.id, clock()) == 15
    added = client.post(
        f"/api/v1/credits/{credit.id}/adjust",
        json={"delta": 2, "reason": "goodwill"},
        headers=admin,
    )
    assert added.get_json()["remaining"] == 17


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ({"delta": -21, "reason": "typo"}, 422, "only 20 left"),
        ({"delta": 0, "reason": "nothing"}, 422, "must change"),
        ({"delta": 1}, 422, "reason"),
        ({"delta": 1.5, "reason": "half"}, 422, "delta"),
        ({"delta": 1, "reason": "x", "unit": "ml"}, 422, "unit"),
    ],
)
def test_bad_adjustments_are_refused_and_write_nothing(client, admin, setup, body, status, words):
    credit = _credit_for(setup["membership"], setup["botox"])
    before = _counts()
    response = client.post(f"/api/v1/credits/{credit.id}/adjust", json=body, headers=admin)
    assert response.status_code == status, response.get_json()
    problem = response.get_json()
    assert words in (problem["detail"] + str(problem.get("errors"))).lower()
    assert _counts() == before


def test_only_an_admin_adjusts(client, keys, setup):
    credit = _credit_for(setup["membership"], setup["botox"])
    url = f"/api/v1/credits/{credit.id}/adjust"
    body = {"delta": 5, "reason": "why not"}
    before = _counts()
    assert client.post(url, json=body).status_code == 401
    for role in ("staff", "finance"):
        assert client.post(url, json=body, headers=keys.headers(role)).status_code == 403
    own = keys.headers("client", member_id=setup["owner"].id)
    assert client.post(url, json=body, headers=own).status_code == 403
    assert _counts() == before
    assert (
        client.post(
            "/api/v1/credits/999999/adjust", json=body, headers=keys.headers("admin")
        ).status_code
        == 404
    )


# ------------------------------------------------------------------------------------ grants


def test_an_admin_grants_a_period_by_hand(client, admin, setup, clock):
    m, facial = setup["membership"], setup["facial"]
    start = m.current_period_end
    body = {
        "reason": "payment taken at the desk while Stripe was down",
        "period_start": start.isoformat(),
        "period_end": (start + timedelta(days=30)).isoformat(),
    }
    response = client.post(f"/api/v1/memberships/{m.id}/grants", json=body, headers=admin)
    assert response.status_code == 201, response.get_json()
    data = response.get_json()
    assert data["source_ref"].startswith("admin:")
    assert data["net_amount_minor"] == 0
    assert sorted((c["item"], c["quantity"]) for c in data["credits"]) == [
        ("Any 2 of peel or mask", 2),
        ("Botox", 20),
        ("HydraFacial", 1),
    ]
    assert ledger.balance([m.id], facial.id, clock()) == 2


def test_a_manual_grant_of_chosen_items_with_the_money_received(client, admin, setup, clock):
    m, facial = setup["membership"], setup["facial"]
    item = next(i for i in m.plan_version.items if i.treatment_id == facial.id)
    body = {
        "reason": "comp",
        "net_amount_minor": 5000,
        "items": [{"plan_item_id": item.id, "quantity": 2}],
    }
    data = client.post(f"/api/v1/memberships/{m.id}/grants", json=body, headers=admin).get_json()
    assert [(c["item"], c["quantity"], c["allocated_minor"]) for c in data["credits"]] == [
        ("HydraFacial", 2, 5000)
    ]
    assert data["period_start"] == m.current_period_start.isoformat()
    assert ledger.balance([m.id], facial.id, clock()) == 3


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"reason": "x", "items": [{"plan_item_id": "{item}", "quantity": -1}]}, "items"),
        ({"reason": "x", "items": [{"plan_item_id": "{item}", "quantity": 0}]}, "items"),
        ({"reason": "x", "items": [{"plan_item_id": 999999, "quantity": 1}]}, "items"),
        ({"reason": "x", "net_amount_minor": -100}, "net_amount_minor"),
        ({"reason": ""}, "reason"),
        ({}, "reason"),
        ({"reason": "x", "bonus": True}, "bonus"),
    ],
)
def test_bad_manual_grants_are_refused_and_write_nothing(client, admin, setup, body, field):
    m = setup["membership"]
    item_id = m.plan_version.items[0].id
    for line in body.get("items", []):
        if line["plan_item_id"] == "{item}":
            line["plan_item_id"] = item_id
    before = _counts()
    response = client.post(f"/api/v1/memberships/{m.id}/grants", json=body, headers=admin)
    assert response.status_code == 422, response.get_json()
    assert field in str(response.get_json()["errors"])
    assert _counts() == before


def test_a_manual_grant_needs_an_admin_and_a_grantable_membership(client, keys, setup, clock):
    m = setup["membership"]
    url = f"/api/v1/memberships/{m.id}/grants"
    before = _counts()
    assert client.post(url, json={"reason": "x"}, headers=keys.headers("staff")).status_code == 403
    assert client.post(url, json={"reason": "x"}).status_code == 401
    pending = memberships.join(f.member(), setup["tier"], actor="t", now=clock())
    response = client.post(
        f"/api/v1/memberships/{pending.id}/grants",
        json={"reason": "x"},
        headers=keys.headers("admin"),
    )
    assert response.status_code == 422
    assert "no current period" in response.get_json()["detail"]
    memberships.pause(m, actor="t", now=clock())
    paused = client.post(url, json={"reason": "x"}, headers=keys.headers("admin"))
    assert paused.status_code == 409
    assert _counts() == before


# ---------------------------------------------------------------- redeeming (the ledger's verb)


def test_redeeming_a_treatment_the_tier_never_included_says_so(setup, clock):
    m = setup["membership"]
    laser = f.treatment("pico-laser", name="Pico Laser", price=50000)
    before = _counts()
    with pytest.raises(ledger.TreatmentNotIncluded, match="Pico Laser is not included") as caught:
        _redeem(m, laser, 1, clock())
    assert caught.value.status == 409
    assert caught.value.slug == "treatment-not-included"
    db.session.rollback()
    assert _counts() == before


def test_a_used_up_treatment_is_not_enough_credits_not_never_included(setup, clock):
    m, facial, peel = setup["membership"], setup["facial"], setup["peel"]
    _redeem(m, facial, 1, clock())
    _redeem(m, peel, 2, clock())  # through the choice credit
    for treatment in (facial, setup["mask"]):
        with pytest.raises(ledger.InsufficientCredits) as caught:
            _redeem(m, treatment, 1, clock())
        assert not isinstance(caught.value, ledger.TreatmentNotIncluded)
        assert "0 sessions left, 1 asked" in caught.value.detail
        db.session.rollback()
    clock.advance(days=31)  # expired credits still show the tier included it
    with pytest.raises(ledger.InsufficientCredits, match="0 units left, 1 asked"):
        _redeem(m, setup["botox"], 1, clock())


def test_a_negative_or_zero_quantity_is_refused(setup, clock):
    before = _counts()
    for quantity in (-1, 0):
        with pytest.raises(InvalidInput, match="whole number above zero"):
            _redeem(setup["membership"], setup["facial"], quantity, clock())
    assert _counts() == before
