"""Access control generated from the route map: a new endpoint without a rule fails here.

Every view declares the roles it admits (billing.auth.access.requires). For each endpoint this test
calls it with no key (401 unless public) and with the key of every role it does not admit (403),
before any lookup or validation could answer instead."""

import re

import pytest

from billing.auth.access import PUBLIC
from billing.auth.models import Role

# Endpoints that are not the service's own views.
NOT_OURS = {"static", "api-docs.openapi_json"}


def _endpoints(app):
    for rule in app.url_map.iter_rules():
        if rule.endpoint in NOT_OURS or rule.endpoint.endswith(".static"):
            continue
        view = app.view_functions[rule.endpoint]
        view_class = getattr(view, "view_class", None)
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            fn = getattr(view_class, method.lower(), None) if view_class else view
            yield rule, method, fn


def _url(rule) -> str:
    return re.sub(r"<(?:(\w+):)?(\w+)>", lambda m: "1" if m.group(1) == "int" else "x", rule.rule)


def test_every_endpoint_declares_who_may_call_it(app):
    missing = [f"{m} {r.rule}" for r, m, fn in _endpoints(app) if not hasattr(fn, "_roles")]
    assert missing == [], f"endpoints without an access rule: {missing}"


def _is_api(rule) -> bool:
    return rule.rule.startswith("/api/")


def test_no_key_is_401_on_every_protected_api_endpoint(app, client):
    checked = 0
    for rule, method, fn in _endpoints(app):
        roles = getattr(fn, "_roles", frozenset())
        if PUBLIC in roles or not _is_api(rule):
            continue
        response = client.open(_url(rule), method=method, json={})
        assert response.status_code == 401, f"{method} {rule.rule} -> {response.status_code}"
        assert response.mimetype == "application/problem+json"
        checked += 1
    assert checked > 0


@pytest.mark.parametrize("role", [r.value for r in Role if r != Role.ADMIN])
def test_a_role_not_admitted_is_403(app, client, keys, role):
    from tests import factories as f

    member = f.member()
    headers = keys.headers(role, member_id=member.id if role == "client" else None)
    for rule, method, fn in _endpoints(app):
        roles = getattr(fn, "_roles", frozenset())
        if PUBLIC in roles or role in roles or not _is_api(rule):
            continue
        response = client.open(_url(rule), method=method, json={}, headers=headers)
        assert response.status_code == 403, (
            f"{role}: {method} {rule.rule} -> {response.status_code}"
        )


def test_the_caller_is_worked_out_per_request_not_per_app_context(client, admin):
    """The tests share one app context across requests; a request without a key must not
    inherit the previous request's caller."""
    assert client.get("/api/v1/plans", headers=admin).status_code == 200
    assert client.get("/api/v1/plans").status_code == 401


def test_a_revoked_key_is_refused_at_once_and_stays_in_the_audit_trail(app, client, runner):
    from billing.auth.models import ApiKey
    from billing.auth.service import create_api_key
    from billing.extensions import db

    row, plaintext = create_api_key(name="front desk 2", role="staff")
    headers = {"Authorization": f"Bearer {plaintext}"}
    assert client.get("/api/v1/plans", headers=headers).status_code == 200  # now cached
    result = runner.invoke(args=["billing", "keys", "revoke", str(row.id)])
    assert result.exit_code == 0, result.output
    assert "revoked" in result.output
    response = client.get("/api/v1/plans", headers=headers)
    assert response.status_code == 401
    assert response.get_json()["detail"] == "That API key is not valid."
    db.session.expire_all()
    assert db.session.get(ApiKey, row.id).revoked_at is not None  # kept, not deleted
    assert runner.invoke(args=["billing", "keys", "revoke", "9999"]).exit_code != 0


def test_a_key_revoked_by_another_process_is_refused_once_its_cache_entry_is_old(app, client):
    """Another server process revokes it (here: the row is changed behind this one's back):
    this process trusts what it verified for API_KEY_CACHE_SECONDS, then checks again."""
    import time

    import sqlalchemy as sa

    from billing import clock
    from billing.auth.models import ApiKey
    from billing.auth.service import create_api_key
    from billing.extensions import db

    app.config["API_KEY_CACHE_SECONDS"] = 0.3
    row, plaintext = create_api_key(name="front desk 3", role="staff")
    headers = {"Authorization": f"Bearer {plaintext}"}
    assert client.get("/api/v1/plans", headers=headers).status_code == 200
    db.session.execute(sa.update(ApiKey).where(ApiKey.id == row.id).values(revoked_at=clock.now()))
    db.session.commit()
    assert client.get("/api/v1/plans", headers=headers).status_code == 200  # within the window
    time.sleep(0.35)
    assert client.get("/api/v1/plans", headers=headers).status_code == 401
    app.config["API_KEY_CACHE_SECONDS"] = 0
    other, other_plain = create_api_key(name="no cache", role="staff")
    other_headers = {"Authorization": f"Bearer {other_plain}"}
    assert client.get("/api/v1/plans", headers=other_headers).status_code == 200
    db.session.execute(
        sa.update(ApiKey).where(ApiKey.id == other.id).values(revoked_at=clock.now())
    )
    db.session.commit()
    assert client.get("/api/v1/plans", headers=other_headers).status_code == 401
