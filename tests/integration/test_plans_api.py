"""The catalogue API: treatments and plans, versions, validation and who may do what."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from billing.extensions import db
from billing.members.models import Member
from billing.memberships.models import Membership
from billing.plans.models import Plan, PlanItem, PlanItemOption, PlanVersion, Treatment
from billing.plans.service import ssp_per_credit


def treatment_body(code_: str, **overrides) -> dict:
    body = {
        "code": code_,
        "name": code_.replace("-", " ").title(),
        "category": "medical_facial",
        "list_price_minor": 18800,
        "currency": "SGD",
        "duration_minutes": 60,
        "min_interval_days": 14,
    }
    body.update(overrides)
    return body


def plan_body(code_: str = "glow", **overrides) -> dict:
    body = {
        "code": code_,
        "name": "Glow Membership",
        "kind": "tier",
        "price_minor": 38800,
        "currency": "SGD",
        "min_commitment_periods": 6,
        "member_discount_bp": 1000,
        "items": [
            {"treatment": "hydrafacial", "sessions": 1},
            {"choice": ["hydrafacial", "clarifying-facial"], "sessions": 1, "label": "Any facial"},
            {"treatment": "botox", "units": 20},
        ],
    }
    body.update(overrides)
    return body


@pytest.fixture
def menu(client, admin):
    """Three treatments: two facials (session) and botox (per unit)."""
    for body in (
        treatment_body("hydrafacial", list_price_minor=22800),
        treatment_body("clarifying-facial", list_price_minor=18801),
        treatment_body(
            "botox",
            category="injectable",
            list_price_minor=1800,
            counted_in="unit",
            unit_label="unit",
            is_medical=True,
            requires_consultation=True,
            min_interval_days=90,
        ),
    ):
        response = client.post("/api/v1/treatments", json=body, headers=admin)
        assert response.status_code == 201, response.get_json()


@pytest.fixture
def glow(client, admin, menu):
    response = client.post("/api/v1/plans", json=plan_body(), headers=admin)
    assert response.status_code == 201, response.get_json()
    return response.get_json()


def snapshot() -> dict:
    """Everything the catalogue holds, to prove a refused request changed nothing."""
    models = (Treatment, Plan, PlanVersion, PlanItem, PlanItemOption)
    counts = {
        m.__tablename__: db.session.scalar(sa.select(sa.func.count()).select_from(m))
        for m in models
    }
    prices = db.session.execute(sa.select(Treatment.code, Treatment.list_price_minor)).all()
    names = db.session.execute(sa.select(Plan.code, Plan.name)).all()
    return {"counts": counts, "prices": sorted(prices), "names": sorted(names)}


def assert_problem(response, status: int, *path: str | int) -> dict:
    """A problem document with `status`, whose errors name the field at `path`."""
    assert response.status_code == status, response.get_json()
    assert response.mimetype == "application/problem+json"
    body = response.get_json()
    assert body["status"] == status
    node = body["errors"]
    for part in path:
        node = node[str(part)]
    assert node, body
    return body


def add_membership(plan_version_id: int, state: str, email: str) -> Membership:
    member = Member(first_name="Ada", last_name="Tan", email=email)
    member.refresh_search_columns()
    db.session.add(member)
    db.session.flush()
    membership = Membership(member_id=member.id, plan_version_id=plan_version_id, state=state)
    db.session.add(membership)
    db.session.commit()
    return membership


# ---------------------------------------------------------------------------- treatments


def test_admin_creates_a_treatment_and_every_role_reads_it(client, admin, keys, menu):
    response = client.get("/api/v1/treatments/botox", headers=keys.headers("finance"))
    assert response.status_code == 200
    botox = response.get_json()
    assert botox["list_price_minor"] == 1800
    assert botox["currency"] == "SGD"
    assert botox["list_price_display"] == "SGD 18.00 per unit"
    assert (botox["counted_in"], botox["unit_label"]) == ("unit", "unit")
    assert botox["is_medical"] and botox["requires_consultation"]
    assert botox["min_interval_days"] == 90

    listed = client.get("/api/v1/treatments", headers=keys.headers("staff")).get_json()
    assert [t["code"] for t in listed] == ["hydrafacial", "clarifying-facial", "botox"]
    hydra = listed[0]
    assert hydra["list_price_display"] == "SGD 228.00"
    assert hydra["unit_label"] == "session"


def test_patch_changes_a_treatment_but_never_its_code(client, admin, menu):
    response = client.patch(
        "/api/v1/treatments/hydrafacial",
        json={"list_price_minor": 23800, "min_interval_days": 21},
        headers=admin,
    )
    assert response.status_code == 200
    assert response.get_json()["list_price_minor"] == 23800
    assert (
        db.session.scalar(
            sa.select(Treatment.min_interval_days).where(Treatment.code == "hydrafacial")
        )
        == 21
    )

    before = snapshot()
    refused = client.patch("/api/v1/treatments/hydrafacial", json={"code": "x"}, headers=admin)
    assert_problem(refused, 422, "code")
    assert snapshot() == before


def test_retired_treatment_leaves_the_menu_but_is_kept(client, admin, staff, menu):
    response = client.post("/api/v1/treatments/hydrafacial/retire", headers=admin)
    assert response.status_code == 200
    assert response.get_json()["retired"] is True
    codes = [t["code"] for t in client.get("/api/v1/treatments", headers=staff).get_json()]
    assert "hydrafacial" not in codes
    everything = client.get("/api/v1/treatments?include_retired=true", headers=staff).get_json()
    assert "hydrafacial" in [t["code"] for t in everything]
    # A retired treatment cannot go into a new plan.
    refused = client.post(
        "/api/v1/plans",
        json=plan_body(items=[{"treatment": "hydrafacial", "sessions": 1}]),
        headers=admin,
    )
    assert_problem(refused, 422, "items", 0, "treatment")


def test_a_treatment_sold_in_a_plan_cannot_be_retired(client, admin, glow):
    before = snapshot()
    response = client.post("/api/v1/treatments/botox/retire", headers=admin)
    body = assert_problem(response, 409, "code")
    assert "glow" in body["detail"]
    assert snapshot() == before


def test_creating_a_treatment_is_idempotent_with_a_key(client, admin):
    headers = {**admin, "Idempotency-Key": "create-led-1"}
    first = client.post("/api/v1/treatments", json=treatment_body("led"), headers=headers)
    second = client.post("/api/v1/treatments", json=treatment_body("led"), headers=headers)
    assert first.status_code == second.status_code == 201
    assert second.headers.get("Idempotent-Replayed") == "true"
    assert second.get_json() == first.get_json()
    assert db.session.scalar(sa.select(sa.func.count()).select_from(Treatment)) == 1


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"colour": "blue"}, "colour"),
        ({"list_price_minor": -100}, "list_price_minor"),
        ({"list_price_minor": 188.5}, "list_price_minor"),
        ({"list_price_minor": 188.0}, "list_price_minor"),
        ({"list_price_minor": "18800"}, "list_price_minor"),
        ({"currency": "XYZ"}, "currency"),
        ({"currency": "sgd"}, "currency"),
        ({"unit_label": "syringe"}, "unit_label"),  # counted in sessions
        ({"category": "massage"}, "category"),
        ({"code": "Bad Code"}, "code"),
        ({"min_interval_days": -1}, "min_interval_days"),
    ],
)
def test_bad_treatment_is_422_naming_the_field_and_nothing_is_saved(
    client, admin, menu, overrides, field
):
    before = snapshot()
    response = client.post(
        "/api/v1/treatments", json=treatment_body("new-one", **overrides), headers=admin
    )
    assert_problem(response, 422, field)
    assert snapshot() == before


def test_duplicate_treatment_code_is_409(client, admin, menu):
    before = snapshot()
    response = client.post(
        "/api/v1/treatments", json=treatment_body("botox", list_price_minor=1), headers=admin
    )
    body = assert_problem(response, 409, "code")
    assert "botox" in body["detail"]
    assert snapshot() == before


def test_counting_of_a_treatment_in_a_plan_cannot_change(client, admin, glow):
    before = snapshot()
    response = client.patch(
        "/api/v1/treatments/hydrafacial", json={"counted_in": "unit"}, headers=admin
    )
    assert_problem(response, 409, "counted_in")
    assert snapshot() == before


# ---------------------------------------------------------------------------- plans


def test_admin_creates_a_tier_with_its_version_1(glow):
    assert glow["code"] == "glow"
    assert glow["kind"] == "tier"
    assert glow["current_version"] == 1
    [version] = glow["versions"]
    assert version["is_current"] is True
    assert version["grandfathered"] is False
    assert version["member_count"] == 0
    assert version["price_minor"] == 38800
    assert version["price_display"] == "SGD 388.00 per month"
    assert version["member_discount_bp"] == 1000
    single, choice, botox = version["items"]
    assert (single["kind"], single["treatment"], single["quantity"]) == (
        "treatment",
        "hydrafacial",
        1,
    )
    assert single["ssp_per_credit_minor"] == 22800
    assert choice["kind"] == "choice"
    assert [o["code"] for o in choice["options"]] == ["hydrafacial", "clarifying-facial"]
    # The rounded average of 228.00 and 188.01: 208.005 -> 208.01.
    assert choice["ssp_per_credit_minor"] == 20801
    assert (botox["quantity"], botox["counted_in"], botox["unit_label"]) == (20, "unit", "unit")
    assert botox["ssp_per_credit_minor"] == 1800


def test_ssp_override_wins_over_the_list_prices(client, admin, menu):
    body = plan_body(
        items=[
            {
                "choice": ["hydrafacial", "clarifying-facial"],
                "sessions": 2,
                "ssp_override_minor": 15000,
                "beneficiary_limit": 1,
            }
        ]
    )
    response = client.post("/api/v1/plans", json=body, headers=admin)
    assert response.status_code == 201
    item = db.session.scalar(sa.select(PlanItem))
    assert ssp_per_credit(item) == 15000
    assert response.get_json()["versions"][0]["items"][0]["beneficiary_limit"] == 1


def test_a_series_is_sold_once_with_credits_valid_for_days(client, admin, menu):
    body = {
        "code": "facial-series-6",
        "name": "Facial x 6",
        "kind": "series",
        "price_minor": 88800,
        "currency": "SGD",
        "credit_validity_days": 365,
        "instalments": 3,
        "grant_mode": "per_instalment",
        "items": [{"treatment": "clarifying-facial", "sessions": 6}],
    }
    response = client.post("/api/v1/plans", json=body, headers=admin)
    assert response.status_code == 201, response.get_json()
    version = response.get_json()["versions"][0]
    assert (version["credit_validity_days"], version["instalments"]) == (365, 3)
    assert version["price_display"] == "SGD 888.00 in 3 instalments"
    tiers = client.get("/api/v1/plans?kind=tier", headers=admin).get_json()
    series = client.get("/api/v1/plans?kind=series", headers=admin).get_json()
    assert [p["code"] for p in tiers] == []
    assert [p["code"] for p in series] == ["facial-series-6"]


def test_renaming_a_plan_makes_no_new_version(client, admin, glow):
    response = client.patch(
        "/api/v1/plans/glow",
        json={"name": "Glow Club", "description": "Monthly glow."},
        headers=admin,
    )
    assert response.status_code == 200
    body = response.get_json()
    assert body["name"] == "Glow Club"
    assert len(body["versions"]) == 1

    before = snapshot()
    refused = client.patch("/api/v1/plans/glow", json={"price_minor": 1}, headers=admin)
    assert_problem(refused, 422, "price_minor")
    assert snapshot() == before


def test_a_new_price_makes_version_2_and_members_on_version_1_are_grandfathered(
    client, admin, staff, glow
):
    v1_id = glow["versions"][0]["id"]
    add_membership(v1_id, "active", "ada@example.com")
    add_membership(v1_id, "past_due", "bea@example.com")
    add_membership(v1_id, "canceled", "cy@example.com")

    response = client.post(
        "/api/v1/plans/glow/versions", json={"price_minor": 42800}, headers=admin
    )
    assert response.status_code == 201, response.get_json()
    plan = client.get("/api/v1/plans/glow", headers=staff).get_json()
    assert plan["current_version"] == 2
    v1, v2 = plan["versions"]
    assert (v1["version"], v1["is_current"], v1["grandfathered"]) == (1, False, True)
    assert v1["member_count"] == 2  # the canceled membership does not count
    assert v1["price_minor"] == 38800  # version 1 never changes
    assert (v2["version"], v2["is_current"], v2["grandfathered"]) == (2, True, False)
    assert v2["price_minor"] == 42800
    assert v2["member_count"] == 0
    # What was not sent is carried over from version 1.
    assert [i["treatment"] for i in v2["items"]] == [i["treatment"] for i in v1["items"]]
    assert v2["min_commitment_periods"] == 6
    # The members' rows still point at version 1.
    assert {m.plan_version_id for m in db.session.scalars(sa.select(Membership))} == {v1_id}


def test_an_old_version_nobody_is_on_is_not_grandfathered(client, admin, glow):
    client.post(
        "/api/v1/plans/glow/versions",
        json={"items": [{"treatment": "hydrafacial", "sessions": 2}]},
        headers=admin,
    )
    plan = client.get("/api/v1/plans/glow", headers=admin).get_json()
    v1, v2 = plan["versions"]
    assert v1["grandfathered"] is False and v1["is_current"] is False
    assert [(i["treatment"], i["quantity"]) for i in v2["items"]] == [("hydrafacial", 2)]


def test_a_revision_that_changes_nothing_is_refused(client, admin, glow):
    before = snapshot()
    response = client.post(
        "/api/v1/plans/glow/versions", json={"price_minor": 38800}, headers=admin
    )
    assert response.status_code == 409
    assert snapshot() == before


def test_retired_plan_is_hidden_unless_asked_for(client, admin, staff, glow):
    response = client.post("/api/v1/plans/glow/retire", headers=admin)
    assert response.status_code == 200
    assert response.get_json()["retired"] is True
    assert client.get("/api/v1/plans", headers=staff).get_json() == []
    listed = client.get("/api/v1/plans?include_retired=true", headers=staff).get_json()
    assert [p["code"] for p in listed] == ["glow"]
    refused = client.post("/api/v1/plans/glow/versions", json={"price_minor": 1}, headers=admin)
    assert refused.status_code == 409


def _item(**item):
    return {"items": [item]}


@pytest.mark.parametrize(
    ("overrides", "path"),
    [
        ({"colour": "gold"}, ("colour",)),
        ({"price_minor": -1}, ("price_minor",)),
        ({"price_minor": 388.5}, ("price_minor",)),
        ({"signup_fee_minor": -500}, ("signup_fee_minor",)),
        ({"currency": "SGDX"}, ("currency",)),
        ({"currency": "USD"}, ("currency",)),  # its treatments are priced in SGD
        ({"member_discount_bp": 10001}, ("member_discount_bp",)),
        (_item(treatment="no-such-facial", sessions=1), ("items", 0, "treatment")),
        (_item(treatment="hydrafacial", sessions=0), ("items", 0, "sessions")),
        (_item(treatment="hydrafacial", quantity=-2), ("items", 0, "quantity")),
        (_item(treatment="hydrafacial", units=3), ("items", 0, "units")),
        (_item(treatment="botox", sessions=1), ("items", 0, "sessions")),
        (_item(treatment="hydrafacial"), ("items", 0, "quantity")),
        (_item(treatment="hydrafacial", sessions=1, extra=1), ("items", 0, "extra")),
        (_item(choice=["hydrafacial"], sessions=1), ("items", 0, "choice")),
        (_item(choice=["hydrafacial", "botox"], sessions=1), ("items", 0, "choice")),
        (_item(choice=["hydrafacial", "nope"], sessions=1), ("items", 0, "choice", 1)),
        ({"items": [{"treatment": "hydrafacial", "sessions": 1}] * 2}, ("items", 1, "treatment")),
        ({"unused_rule": "rollover"}, ("rollover_max_periods",)),
        ({"rollover_cap": 2}, ("rollover_cap",)),
        ({"credit_validity_days": 30}, ("credit_validity_days",)),  # a tier
        ({"kind": "series", "items": [], "credit_validity_days": 365}, ("items",)),
        ({"kind": "series"}, ("credit_validity_days",)),
        ({"kind": "bundle"}, ("kind",)),
    ],
)
def test_bad_plan_is_422_naming_the_field_and_nothing_is_saved(
    client, admin, menu, overrides, path
):
    before = snapshot()
    response = client.post("/api/v1/plans", json=plan_body("bad", **overrides), headers=admin)
    assert_problem(response, 422, *path)
    assert snapshot() == before


def test_bad_revision_is_422_and_the_plan_keeps_one_version(client, admin, glow):
    before = snapshot()
    response = client.post(
        "/api/v1/plans/glow/versions",
        json={"items": [{"treatment": "hydrafacial", "units": 2}]},
        headers=admin,
    )
    assert_problem(response, 422, "items", 0, "units")
    assert snapshot() == before


def test_duplicate_plan_code_is_409(client, admin, glow):
    before = snapshot()
    response = client.post("/api/v1/plans", json=plan_body("glow", price_minor=1), headers=admin)
    assert_problem(response, 409, "code")
    assert snapshot() == before


def test_unknown_codes_are_404(client, staff):
    assert client.get("/api/v1/treatments/nothing", headers=staff).status_code == 404
    assert client.get("/api/v1/plans/nothing", headers=staff).status_code == 404


# ---------------------------------------------------------------------------- who may


@pytest.fixture
def client_key(keys):
    member = Member(first_name="Cy", last_name="Lim", email="cy@example.com")
    member.refresh_search_columns()
    db.session.add(member)
    db.session.commit()
    return keys.headers("client", member_id=member.id)


READS = ["/api/v1/treatments", "/api/v1/treatments/botox", "/api/v1/plans", "/api/v1/plans/glow"]
WRITES = [
    ("post", "/api/v1/treatments", treatment_body("led")),
    ("patch", "/api/v1/treatments/botox", {"list_price_minor": 1}),
    ("post", "/api/v1/treatments/botox/retire", None),
    ("post", "/api/v1/plans", plan_body("other")),
    ("patch", "/api/v1/plans/glow", {"name": "X"}),
    ("post", "/api/v1/plans/glow/versions", {"price_minor": 1}),
    ("post", "/api/v1/plans/glow/retire", None),
]


def test_every_role_may_read_and_nobody_without_a_key(client, keys, client_key, glow):
    for headers in (keys.headers("staff"), keys.headers("finance"), client_key):
        for url in READS:
            assert client.get(url, headers=headers).status_code == 200, url
    for url in READS:
        response = client.get(url)
        assert response.status_code == 401, url
        assert response.mimetype == "application/problem+json"


@pytest.mark.parametrize(("method", "url", "body"), WRITES)
def test_only_an_admin_may_write(client, keys, client_key, glow, method, url, body):
    before = snapshot()
    assert getattr(client, method)(url, json=body).status_code == 401
    for headers in (keys.headers("staff"), keys.headers("finance"), client_key):
        response = getattr(client, method)(url, json=body, headers=headers)
        assert response.status_code == 403, (url, headers)
    assert snapshot() == before


def test_the_endpoints_are_in_the_openapi_document(client):
    paths = client.get("/api/v1/openapi.json").get_json()["paths"]
    for path in (
        "/api/v1/treatments",
        "/api/v1/treatments/{code}",
        "/api/v1/treatments/{code}/retire",
        "/api/v1/plans",
        "/api/v1/plans/{code}",
        "/api/v1/plans/{code}/versions",
        "/api/v1/plans/{code}/retire",
    ):
        assert path in paths, path
    assert "post" in paths["/api/v1/plans/{code}/versions"]
