"""Staff profiles, credentials, shifts and category policies over HTTP, and the CLI."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from billing.extensions import db
from billing.staff.models import CategoryPolicy
from tests import factories as f


@pytest.fixture
def locations(app):
    f.location("orchard"), f.location("tampines")
    db.session.commit()


def _create(client, admin, **fields):
    body = {"name": "Nurse Ann", "role": "nurse", "location": "orchard", **fields}
    r = client.post("/api/v1/staff", json=body, headers=admin)
    assert r.status_code == 201, r.get_json()
    return r.get_json()


def test_admins_write_staff_read_clients_are_refused(client, admin, staff, keys, locations):
    person = _create(client, admin, email="Ann@Clinic.sg")
    assert (person["email"], person["location"], person["active"]) == (
        "ann@clinic.sg",
        "orchard",
        True,
    )
    body = {"name": "X", "role": "nurse", "location": "orchard"}
    assert client.post("/api/v1/staff", json=body, headers=staff).status_code == 403
    assert client.get("/api/v1/staff", headers=staff).get_json()[0]["name"] == "Nurse Ann"
    member = f.member()
    db.session.commit()
    assert client.get("/api/v1/staff", headers=keys.headers("client", member.id)).status_code == 403
    assert client.get("/api/v1/staff").status_code == 401


def test_bad_staff_input_is_refused(client, admin, locations):
    _create(client, admin, email="ann@clinic.sg")
    r = client.post(
        "/api/v1/staff",
        json={"name": "B", "role": "wizard", "location": "mars"},
        headers=admin,
    )
    assert r.status_code == 422 and "role" in r.get_json()["errors"]
    r = client.post(
        "/api/v1/staff", json={"name": "B", "role": "nurse", "location": "mars"}, headers=admin
    )
    assert r.status_code == 422 and r.get_json()["errors"] == {"location": ["unknown location"]}
    r = client.post(
        "/api/v1/staff",
        json={"name": "B", "role": "nurse", "location": "orchard", "email": "ANN@clinic.sg"},
        headers=admin,
    )
    assert r.status_code == 409


def test_edit_move_and_deactivate(client, admin, staff, locations):
    person = _create(client, admin)
    r = client.patch(
        f"/api/v1/staff/{person['id']}",
        json={"location": "tampines", "role": "nurse_practitioner"},
        headers=admin,
    )
    assert (r.get_json()["location"], r.get_json()["role"]) == ("tampines", "nurse_practitioner")
    assert (
        client.delete(f"/api/v1/staff/{person['id']}", headers=admin).get_json()["active"] is False
    )
    assert client.get("/api/v1/staff", headers=staff).get_json() == []
    listed = client.get("/api/v1/staff?include_inactive=true", headers=staff).get_json()
    assert [p["id"] for p in listed] == [person["id"]]
    assert client.get("/api/v1/staff/999", headers=staff).status_code == 404


def test_credentials_with_expiry(client, admin, staff, locations):
    person = _create(client, admin)
    url = f"/api/v1/staff/{person['id']}/credentials"
    r = client.post(
        url,
        json={"kind": "registered_nurse", "number": "RN-1", "expires_on": "2027-01-31"},
        headers=admin,
    )
    assert r.status_code == 201
    cred = r.get_json()
    assert client.post(url, json={"kind": "wizard"}, headers=admin).status_code == 422
    assert client.post(url, json={"kind": "physician"}, headers=staff).status_code == 403
    r = client.patch(f"{url}/{cred['id']}", json={"expires_on": "2028-01-31"}, headers=admin)
    assert r.get_json()["expires_on"] == "2028-01-31"
    shown = client.get(f"/api/v1/staff/{person['id']}", headers=staff).get_json()
    assert [(c["kind"], c["expires_on"]) for c in shown["credentials"]] == [
        ("registered_nurse", "2028-01-31")
    ]
    assert client.delete(f"{url}/{cred['id']}", headers=admin).status_code == 204
    assert client.get(url, headers=staff).get_json() == []


def test_shifts_by_location_and_day(client, admin, staff, locations):
    person = _create(client, admin, name="Dr Lee", role="physician")
    url = f"/api/v1/staff/{person['id']}/shifts"
    for day in ("2026-03-02", "2026-03-03", "2026-03-02"):  # a repeat is harmless
        r = client.post(url, json={"location": "orchard", "day": day}, headers=admin)
        assert r.status_code == 201
    client.post(url, json={"location": "tampines", "day": "2026-03-04"}, headers=admin)
    days = client.get("/api/v1/staff/shifts?location=orchard", headers=staff).get_json()
    assert [(s["staff_name"], s["day"]) for s in days] == [
        ("Dr Lee", "2026-03-02"),
        ("Dr Lee", "2026-03-03"),
    ]
    mine = client.get(f"{url}?from=2026-03-03", headers=staff).get_json()
    assert [(s["location"], s["day"]) for s in mine] == [
        ("orchard", "2026-03-03"),
        ("tampines", "2026-03-04"),
    ]
    assert client.delete(f"{url}/{mine[0]['id']}", headers=admin).status_code == 204
    assert len(client.get(url, headers=staff).get_json()) == 2


def test_policies_default_in_code_and_editable_by_admins(client, admin, staff):
    policies = {
        p["category"]: p for p in client.get("/api/v1/staff/policies", headers=staff).get_json()
    }
    injectable = policies["injectable"]
    assert injectable["source"] == "default"
    assert "medical_aesthetician" not in injectable["may_perform"]
    assert "medical_aesthetician" in policies["device"]["may_perform"]
    assert injectable["may_supervise"] == ["physician"]
    body = {"may_perform": ["physician", "nurse_practitioner"], "needs_supervision": True}
    assert (
        client.put("/api/v1/staff/policies/injectable", json=body, headers=staff).status_code == 403
    )
    r = client.put("/api/v1/staff/policies/injectable", json=body, headers=admin)
    assert r.status_code == 200
    assert (r.get_json()["source"], r.get_json()["may_perform"]) == (
        "clinic",
        ["nurse_practitioner", "physician"],
    )
    assert client.get("/api/v1/staff/policies/tattoo", headers=staff).status_code == 404
    bad = {"may_perform": ["wizard"]}
    assert client.put("/api/v1/staff/policies/peel", json=bad, headers=admin).status_code == 422


def test_load_policies_is_idempotent_and_keeps_the_clinics_edits(runner, client, admin):
    result = runner.invoke(args=["billing", "staff", "load-policies"])
    assert result.exit_code == 0, result.output
    assert "9 category policies written, 0 kept" in result.output
    client.put("/api/v1/staff/policies/peel", json={"may_perform": ["physician"]}, headers=admin)
    result = runner.invoke(args=["billing", "staff", "load-policies"])
    assert "0 category policies written, 9 kept" in result.output
    assert db.session.execute(sa.select(sa.func.count(CategoryPolicy.id))).scalar_one() == 9
    peel = db.session.execute(
        sa.select(CategoryPolicy).where(CategoryPolicy.category == "peel")
    ).scalar_one()
    assert peel.may_perform == ["physician"]
    runner.invoke(args=["billing", "staff", "load-policies", "--overwrite"])
    db.session.expire_all()
    assert "medical_aesthetician" in db.session.get(CategoryPolicy, peel.id).may_perform
