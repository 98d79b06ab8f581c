"""The gateway on the wire (idempotency keys, retries, the catalogue's shape), the `stripe`
commands, and the member's actions through Stripe: local state changes only when Stripe says yes.

A tiny fake Stripe API on loopback stands in where the wire matters; a fake gateway where only
the answers do."""

from __future__ import annotations

import json
import threading
from datetime import timedelta

import pytest
import sqlalchemy as sa
import stripe
from werkzeug.serving import make_server
from werkzeug.wrappers import Request

from billing.errors import ServiceUnavailable
from billing.extensions import db
from billing.memberships.models import Membership
from billing.payments.models import Payment
from tests import factories as f
from tests import stripe_fixtures as sf

MONTH = timedelta(days=31)


class FakeStripe:
    """Answers Stripe API calls from a list of rules; records every request."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.fail_next = 0
        self.created: dict[str, dict] = {}
        self.server = make_server("127.0.0.1", 0, self.wsgi)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}"

    def posts(self, path: str) -> list[dict]:
        return [r for r in self.requests if r["method"] == "POST" and r["path"] == path]

    def wsgi(self, environ, start_response):
        request = Request(environ)
        form = {k: v for k, v in request.form.items()}
        self.requests.append(
            {
                "method": request.method,
                "path": request.path,
                "form": form,
                "args": dict(request.args),
                "key": request.headers.get("Idempotency-Key"),
            }
        )
        if self.fail_next:
            self.fail_next -= 1
            return self._json(start_response, 500, {"error": {"type": "api_error"}})
        status, body = self.answer(request, form)
        return self._json(start_response, status, body)

    def answer(self, request, form):
        path = request.path
        if request.method == "GET" and path.startswith("/v1/products/"):
            pid = path.rsplit("/", 1)[1]
            if pid in self.created:
                return 200, self.created[pid]
            return 404, {"error": {"type": "invalid_request_error", "code": "resource_missing"}}
        if request.method == "GET" and path == "/v1/prices":
            key = request.args.get("lookup_keys[0]")
            found = [p for p in self.created.values() if p.get("lookup_key") == key]
            return 200, {"object": "list", "data": found, "has_more": False, "url": path}
        if request.method == "POST" and path in ("/v1/products", "/v1/prices", "/v1/customers"):
            kind = path.rsplit("/", 1)[1][:-1]
            oid = form.get("id") or f"{kind}_{len(self.created) + 1}"
            obj = {"id": oid, "object": kind, "lookup_key": form.get("lookup_key")}
            self.created[oid] = obj
            return 200, obj
        return 404, {"error": {"type": "invalid_request_error", "message": f"no {path}"}}

    @staticmethod
    def _json(start_response, status, body):
        data = json.dumps(body).encode()
        headers = [("Content-Type", "application/json"), ("Content-Length", str(len(data)))]
        start_response(f"{status} Fake", headers)
        return [data]


@pytest.fixture
def fake_stripe(app, monkeypatch):
    fake = FakeStripe()
    fake.thread.start()
    monkeypatch.setattr(stripe._http_client.HTTPClient, "INITIAL_DELAY", 0.01)
    monkeypatch.setattr(stripe._http_client.HTTPClient, "MAX_DELAY", 0.02)
    app.config.update(STRIPE_API_KEY="sk_test_fake", STRIPE_API_BASE=fake.base)
    app.extensions.pop("stripe_gateway", None)
    yield fake
    fake.server.shutdown()
    fake.thread.join(timeout=5)


# ---------------------------------------------------------------------------------------------
# Not configured, and Stripe failing


def test_without_an_api_key_stripe_features_are_503_and_the_rest_runs(app, client, clock, runner):
    from billing.memberships import service as memberships

    version = f.plan([(f.treatment(), 1)])
    membership = memberships.join(f.member(), version, actor="test", now=clock())
    staff = _headers(app, "staff")

    response = client.post(
        f"/api/v1/billing/memberships/{membership.id}/subscribe", json={}, headers=staff
    )

    assert response.status_code == 503
    assert "STRIPE_API_KEY" in response.get_json()["detail"]
    result = runner.invoke(args=["billing", "stripe", "sync-catalog"])
    assert result.exit_code != 0 and "not configured" in result.output
    assert client.get("/healthz").status_code == 200


def test_a_write_is_retried_with_the_same_idempotency_key_then_succeeds(app, clock, fake_stripe):
    from billing.stripe_sync import gateway

    member = f.member()
    fake_stripe.fail_next = 2

    customer = gateway.current().ensure_customer(member)

    attempts = fake_stripe.posts("/v1/customers")
    assert len(attempts) == 3
    assert {a["key"] for a in attempts} == {f"member-{member.id}-customer"}
    assert member.stripe_customer_id == customer


def test_when_stripe_keeps_failing_it_is_503_and_nothing_is_kept(app, client, clock, fake_stripe):
    version = f.plan([(f.treatment(), 1)])
    version.stripe_price_id = "price_x"
    owner = f.member()
    from billing.memberships import service as memberships

    membership = memberships.join(owner, version, actor="test", now=clock())
    fake_stripe.fail_next = 100

    response = client.post(
        f"/api/v1/billing/memberships/{membership.id}/subscribe",
        json={"mode": "card_on_file"},
        headers=_headers(app, "staff"),
    )

    assert response.status_code == 503
    assert len(fake_stripe.posts("/v1/customers")) == 3  # the first try and two retries
    db.session.expire_all()
    assert db.session.get(Membership, membership.id).stripe_subscription_id is None
    assert owner.stripe_customer_id is None


def test_sync_catalog_makes_a_product_and_prices_once_and_a_new_version_a_new_price(
    app, runner, fake_stripe
):
    facial = f.treatment()
    inclusive = f.plan([(facial, 1)], code="glow", price=32700, signup_fee_minor=5000)
    exclusive = f.plan([(facial, 1)], code="radiance", price=30000, tax_inclusive=False)
    db.session.commit()

    first = runner.invoke(args=["billing", "stripe", "sync-catalog"])

    assert first.exit_code == 0, first.output
    prices = {p["form"]["lookup_key"]: p for p in fake_stripe.posts("/v1/prices")}
    glow = prices["medspa-glow-v1"]["form"]
    assert glow["tax_behavior"] == "inclusive" and glow["unit_amount"] == "32700"
    assert glow["recurring[interval]"] == "month"
    assert prices["medspa-radiance-v1"]["form"]["tax_behavior"] == "exclusive"
    signup = prices["medspa-glow-v1-signup"]["form"]
    assert signup["unit_amount"] == "5000" and "recurring[interval]" not in signup
    assert prices["medspa-glow-v1"]["key"] == f"plan-version-{inclusive.id}-price"
    db.session.expire_all()
    assert inclusive.stripe_price_id and exclusive.stripe_price_id
    assert inclusive.plan.stripe_product_id == "medspa-glow"

    again = runner.invoke(args=["billing", "stripe", "sync-catalog"])
    assert "already in Stripe" in again.output
    assert len(fake_stripe.posts("/v1/prices")) == 3

    f.revise(inclusive, price=35000, items=[(facial, 1)])
    db.session.commit()
    runner.invoke(args=["billing", "stripe", "sync-catalog"])
    new = [p["form"]["lookup_key"] for p in fake_stripe.posts("/v1/prices")[3:]]
    assert new == ["medspa-glow-v2"]
    assert len(fake_stripe.posts("/v1/products")) == 2


def test_a_price_created_before_a_crash_is_found_again_not_duplicated(app, runner, fake_stripe):
    version = f.plan([(f.treatment(), 1)], code="glow")
    db.session.commit()
    runner.invoke(args=["billing", "stripe", "sync-catalog"])
    version.stripe_price_id = None  # as if our commit had been lost after Stripe answered
    version.plan.stripe_product_id = None
    db.session.commit()

    runner.invoke(args=["billing", "stripe", "sync-catalog"])

    assert len(fake_stripe.posts("/v1/prices")) == 1
    assert len(fake_stripe.posts("/v1/products")) == 1
    db.session.expire_all()
    assert version.stripe_price_id == "price_2"


# ---------------------------------------------------------------------------------------------
# Reconcile, fees, replay (with a fake gateway: only the answers matter)


class FakeGateway:
    def __init__(self) -> None:
        self.subscriptions: list[dict] = []
        self.invoices: list[dict] = []
        self.balance: list[dict] = []
        self.calls: list[tuple] = []
        self.fail: Exception | None = None

    def list_subscriptions(self, since=None):
        return iter(self.subscriptions)

    def list_invoices(self, since=None):
        return iter(self.invoices)

    def list_balance_transactions(self, since=None):
        return iter(self.balance)

    def list_payouts(self):
        return iter([{"id": "po_1"}])

    def list_payout_transactions(self, payout_id):
        return iter([b for b in self.balance if b.get("payout") == payout_id])

    def _answer(self, name, membership, sub):
        self.calls.append((name, membership.id))
        if self.fail:
            raise self.fail
        return sub

    def pause_collection(self, membership, resumes_at=None):
        return self._answer(
            "pause", membership, self.sub_state(pause_collection={"behavior": "void"})
        )

    def resume(self, membership):
        return self._answer("resume", membership, self.sub_state())

    def cancel(self, membership, *, at_period_end, early_termination_fee_minor=None):
        self.calls.append(("fee", early_termination_fee_minor))
        if at_period_end:
            return self._answer("cancel", membership, self.sub_state(cancel_at_period_end=True))
        return self._answer("cancel", membership, self.sub_state(status="canceled"))

    def change_price(self, membership, new_version, *, upgrade):
        self.calls.append(("upgrade", upgrade))
        return self._answer("change", membership, self.sub_state(price=new_version.stripe_price_id))

    def sub_state(self, **kw):
        return self.billed.subscription(self.start, self.start + MONTH, **kw)


@pytest.fixture
def fake_gateway(app):
    gw = FakeGateway()
    app.config["STRIPE_GATEWAY"] = gw
    return gw


def _headers(app, role, member_id=None):
    from billing.auth.service import create_api_key

    _, key = create_api_key(name=f"t-{role}", role=role, member_id=member_id)
    return {"Authorization": f"Bearer {key}"}


def test_reconcile_repairs_a_lost_paid_invoice_and_says_so(app, runner, clock, fake_gateway):
    billed = sf.Billed(clock())
    start = clock()
    fake_gateway.invoices = [
        billed.invoice(start, start + MONTH, billing_reason="subscription_create")
    ]
    fake_gateway.subscriptions = [billed.subscription(start, start + MONTH)]

    first = runner.invoke(args=["billing", "stripe", "reconcile", "--since", "2026-01-01"])

    assert first.exit_code == 0, first.output
    assert f"membership {billed.membership.id} paid for" in first.output
    db.session.expire_all()
    assert db.session.get(Membership, billed.membership.id).state == "active"

    second = runner.invoke(args=["billing", "stripe", "reconcile"])
    assert "Nothing to fix" in second.output


def test_reconcile_reports_what_needs_staff_without_stopping(app, runner, clock, fake_gateway):
    billed = sf.Billed(clock())
    start = clock()
    stranger = sf.invoice(
        customer="cus_stranger",
        subscription="sub_stranger",
        amount=100,
        period_start=start,
        period_end=start + MONTH,
    )
    fake_gateway.invoices = [stranger, billed.invoice(start, start + MONTH)]

    result = runner.invoke(args=["billing", "stripe", "reconcile"])

    assert "NEEDS ATTENTION" in result.output and "sub_stranger" in result.output
    db.session.expire_all()
    assert db.session.get(Membership, billed.membership.id).state == "active"


def test_pull_balance_transactions_fills_fee_net_and_payout(
    app, client, runner, clock, fake_gateway
):
    billed = sf.Billed(clock())
    start = clock()
    inv = billed.invoice(start, start + MONTH, payment_intent="pi_1")
    inv["payments"]["data"][0]["payment"]["charge"] = "ch_1"
    sf.post(client, sf.event("invoice.paid", inv, created=start))
    fake_gateway.balance = [
        {"id": "txn_1", "source": "ch_1", "fee": 1014, "net": 31686, "created": 1, "payout": "po_1"}
    ]

    result = runner.invoke(args=["billing", "stripe", "pull-balance-transactions"])

    assert result.exit_code == 0, result.output
    payment = db.session.execute(sa.select(Payment)).scalar_one()
    db.session.refresh(payment)
    assert (payment.fee_minor, payment.net_minor) == (1014, 31686)
    assert (payment.balance_transaction_id, payment.payout_id) == ("txn_1", "po_1")


def test_replay_of_an_unknown_event_is_an_error(app, runner):
    result = runner.invoke(args=["billing", "stripe", "replay", "evt_nope"])
    assert result.exit_code != 0 and "evt_nope" in result.output


# ---------------------------------------------------------------------------------------------
# The member's actions: Stripe first, local state only when it says yes


def _active(client, clock, fake_gateway, **kw):
    billed = sf.Billed(clock(), **kw)
    start = clock()
    sf.post(client, sf.event("invoice.paid", billed.invoice(start, start + MONTH), created=start))
    fake_gateway.billed, fake_gateway.start = billed, start
    return billed


def test_pause_through_stripe_then_locally(app, client, clock, fake_gateway):
    billed = _active(client, clock, fake_gateway)
    headers = _headers(app, "client", member_id=billed.member.id)

    response = client.post(
        f"/api/v1/memberships/{billed.membership.id}/pause", json={}, headers=headers
    )

    assert response.status_code == 200, response.get_json()
    assert response.get_json()["state"] == "paused"
    assert fake_gateway.calls == [("pause", billed.membership.id)]


def test_when_stripe_refuses_nothing_changes_locally(app, client, clock, fake_gateway):
    billed = _active(client, clock, fake_gateway)
    fake_gateway.fail = ServiceUnavailable("Stripe did not answer", slug="stripe-unavailable")

    response = client.post(
        f"/api/v1/memberships/{billed.membership.id}/pause",
        json={},
        headers=_headers(app, "staff"),
    )

    assert response.status_code == 503
    db.session.expire_all()
    assert db.session.get(Membership, billed.membership.id).state == "active"


def test_a_rule_that_says_no_stops_before_stripe_is_asked(app, client, clock, fake_gateway):
    billed = _active(client, clock, fake_gateway)

    response = client.post(
        f"/api/v1/memberships/{billed.membership.id}/resume",
        json={},
        headers=_headers(app, "staff"),
    )

    assert response.status_code == 409
    assert fake_gateway.calls == []


def test_cancel_inside_the_commitment_invoices_the_fee_through_stripe(
    app, client, clock, fake_gateway
):
    billed = sf.Billed(clock(), fee=20000)
    billed.version.min_commitment_periods = 6
    db.session.commit()
    start = clock()
    sf.post(client, sf.event("invoice.paid", billed.invoice(start, start + MONTH), created=start))
    fake_gateway.billed, fake_gateway.start = billed, start

    response = client.post(
        f"/api/v1/memberships/{billed.membership.id}/cancel",
        json={"at_period_end": True},
        headers=_headers(app, "staff"),
    )

    assert response.status_code == 200, response.get_json()
    assert response.get_json()["state"] == "cancel_at_period_end"
    assert ("fee", 20000) in fake_gateway.calls


def test_an_upgrade_through_stripe_applies_now(app, client, clock, fake_gateway):
    billed = _active(client, clock, fake_gateway)
    bigger = f.plan([(billed.facial, 4)], code="glow-plus", price=54500)
    bigger.stripe_price_id = "price_plus"
    db.session.commit()

    response = client.post(
        f"/api/v1/memberships/{billed.membership.id}/change-tier",
        json={"plan": "glow-plus"},
        headers=_headers(app, "staff"),
    )

    assert response.status_code == 200, response.get_json()
    assert ("upgrade", True) in fake_gateway.calls
    db.session.expire_all()
    assert db.session.get(Membership, billed.membership.id).plan_version_id == bigger.id


def test_a_client_cannot_act_on_someone_elses_membership(app, client, clock, fake_gateway):
    billed = _active(client, clock, fake_gateway)
    other = f.member()
    db.session.commit()

    response = client.post(
        f"/api/v1/memberships/{billed.membership.id}/pause",
        json={},
        headers=_headers(app, "client", member_id=other.id),
    )

    assert response.status_code == 403
    assert fake_gateway.calls == []
