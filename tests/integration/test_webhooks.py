"""POST /webhooks/stripe: untrusted until verified, stored before it is acted on, acted on once.

Events are Stripe's own example objects (fixtures3.json) with our ids, signed by hand with the
test secret."""

from __future__ import annotations

import json
import time
from datetime import timedelta

import sqlalchemy as sa

from billing.entitlements.models import CreditGrant
from billing.extensions import db
from billing.memberships.models import Membership
from billing.payments.models import Invoice, Payment
from billing.stripe_sync import handlers
from billing.stripe_sync.models import StripeEvent
from tests import stripe_fixtures as sf


def _grants(membership_id: int) -> list[CreditGrant]:
    return list(
        db.session.execute(
            sa.select(CreditGrant).where(CreditGrant.membership_id == membership_id)
        ).scalars()
    )


def _first_invoice(billed, clock):
    start = clock()
    return billed.invoice(start, start + timedelta(days=31), billing_reason="subscription_create")


def test_a_verified_paid_invoice_activates_the_membership_and_grants_its_period(app, client, clock):
    billed = sf.Billed(clock())
    inv = _first_invoice(billed, clock)
    evt = sf.event("invoice.paid", inv, created=clock())

    response = sf.post(client, evt)

    assert response.status_code == 200, response.get_json()
    assert response.get_json()["status"] == "processed"
    membership = db.session.get(Membership, billed.membership.id)
    assert membership.state == "active"
    assert membership.current_period_end == clock() + timedelta(days=31)
    [grant] = _grants(membership.id)
    assert grant.source_ref == f"invoice:{inv['id']}"
    assert grant.net_amount_minor == 30000  # 327.00 incl. 9 % GST
    stored = db.session.get(StripeEvent, evt["id"])
    assert stored.status == "processed" and stored.attempts == 1
    assert stored.payload["data"]["object"]["id"] == inv["id"]


def test_a_bad_signature_is_400_and_nothing_is_recorded(app, client, clock):
    billed = sf.Billed(clock())
    evt = sf.event("invoice.paid", _first_invoice(billed, clock))

    response = sf.post(client, evt, secret="whsec_someone_else")

    assert response.status_code == 400
    assert response.mimetype == "application/problem+json"
    assert response.get_json()["type"].endswith("/bad-signature")
    assert db.session.get(StripeEvent, evt["id"]) is None
    assert db.session.get(Membership, billed.membership.id).state == "pending"


def test_a_missing_signature_header_is_400(app, client, clock):
    evt = sf.event("invoice.paid", sf.resource("invoice"))
    response = client.post("/webhooks/stripe", data=json.dumps(evt))
    assert response.status_code == 400
    assert db.session.get(StripeEvent, evt["id"]) is None


def test_a_signature_older_than_the_tolerance_is_400(app, client, clock):
    evt = sf.event("invoice.paid", sf.resource("invoice"))
    stale = int(time.time()) - app.config["STRIPE_WEBHOOK_TOLERANCE"] - 60

    response = sf.post(client, evt, timestamp=stale)

    assert response.status_code == 400
    assert "tolerance" in response.get_json()["detail"]
    assert db.session.get(StripeEvent, evt["id"]) is None


def test_a_signed_body_that_is_not_json_is_400(app, client):
    response = sf.post(client, body="this is not json {")
    assert response.status_code == 400
    assert response.get_json()["type"].endswith("/not-json")
    assert db.session.scalar(sa.select(sa.func.count()).select_from(StripeEvent)) == 0


def test_a_signed_json_body_that_is_not_an_event_is_400(app, client):
    response = sf.post(client, body=json.dumps({"hello": "world"}))
    assert response.status_code == 400
    assert db.session.scalar(sa.select(sa.func.count()).select_from(StripeEvent)) == 0


def test_a_duplicate_delivery_is_200_and_grants_nothing_more(app, client, clock):
    billed = sf.Billed(clock())
    evt = sf.event("invoice.paid", _first_invoice(billed, clock), created=clock())

    first = sf.post(client, evt)
    second = sf.post(client, evt)

    assert first.status_code == second.status_code == 200
    assert second.get_json()["duplicate"] is True
    assert len(_grants(billed.membership.id)) == 1
    assert db.session.get(Membership, billed.membership.id).paid_periods == 1
    assert db.session.scalar(sa.select(sa.func.count()).select_from(Payment)) == 1
    assert db.session.get(StripeEvent, evt["id"]).attempts == 1


def test_paid_and_payment_succeeded_for_the_same_invoice_grant_once(app, client, clock):
    """localstripe (and older API versions) send invoice.payment_succeeded; newer ones
    invoice.paid; both may arrive for one invoice."""
    billed = sf.Billed(clock())
    inv = _first_invoice(billed, clock)

    sf.post(client, sf.event("invoice.payment_succeeded", inv, created=clock()))
    sf.post(client, sf.event("invoice.paid", inv, created=clock()))

    assert len(_grants(billed.membership.id)) == 1
    assert db.session.get(Membership, billed.membership.id).paid_periods == 1


def test_an_unknown_event_type_is_stored_as_ignored(app, client, clock):
    evt = sf.event("product.created", sf.resource("product"))

    response = sf.post(client, evt)

    assert response.status_code == 200
    assert response.get_json()["status"] == "ignored"
    assert db.session.get(StripeEvent, evt["id"]).status == "ignored"


def test_an_event_for_an_unknown_customer_is_flagged_for_staff(app, client, clock, staff):
    inv = sf.invoice(
        customer="cus_nobody_we_know",
        subscription=None,
        amount=5000,
        extra_lines=[sf.fee_line(invoice_id="in_x", amount=5000, description="Something")],
    )
    evt = sf.event("invoice.paid", inv)

    response = sf.post(client, evt)

    assert response.status_code == 200
    assert response.get_json()["status"] == "flagged"
    assert "cus_nobody_we_know" in db.session.get(StripeEvent, evt["id"]).outcome
    assert db.session.scalar(sa.select(sa.func.count()).select_from(Invoice)) == 0
    inbox = client.get("/api/v1/billing/stripe-events?status=flagged", headers=staff)
    assert [e["id"] for e in inbox.get_json()] == [evt["id"]]


def test_the_inbox_refuses_a_status_that_does_not_exist_and_names_the_ones_that_do(
    app, client, staff
):
    inbox = client.get("/api/v1/billing/stripe-events?status=stuck", headers=staff)

    assert inbox.status_code == 422
    assert inbox.content_type == "application/problem+json"
    detail = str(inbox.get_json())
    for status in ("received", "processed", "ignored", "failed", "flagged"):
        assert status in detail


def test_an_event_for_an_unknown_subscription_is_flagged(app, client, clock):
    billed = sf.Billed(clock())
    sub = sf.subscription(
        id="sub_not_ours",
        customer=billed.customer,
        price="price_x",
        period_start=clock(),
        period_end=clock() + timedelta(days=30),
    )
    response = sf.post(client, sf.event("customer.subscription.updated", sub))
    assert response.status_code == 200
    assert response.get_json()["status"] == "flagged"


def test_a_failing_handler_is_500_kept_with_its_traceback_and_replay_fixes_it(
    app, client, clock, runner, monkeypatch
):
    billed = sf.Billed(clock())
    evt = sf.event("invoice.paid", _first_invoice(billed, clock), created=clock())

    def broken(obj, ctx):
        raise RuntimeError("database hiccup")

    monkeypatch.setitem(handlers.HANDLERS, "invoice.paid", broken)
    response = sf.post(client, evt)

    assert response.status_code == 500
    assert response.mimetype == "application/problem+json"
    stored = db.session.get(StripeEvent, evt["id"])
    assert stored.status == "failed" and stored.attempts == 1
    assert "database hiccup" in stored.error
    assert "Traceback" in stored.traceback and "broken" in stored.traceback
    assert db.session.get(Membership, billed.membership.id).state == "pending"

    # Stripe retries while it still fails: the attempts are counted.
    assert sf.post(client, evt).status_code == 500
    db.session.expire_all()
    assert db.session.get(StripeEvent, evt["id"]).attempts == 2

    monkeypatch.setitem(handlers.HANDLERS, "invoice.paid", handlers.on_invoice_paid)
    result = runner.invoke(args=["billing", "stripe", "replay", "--failed"])

    assert result.exit_code == 0, result.output
    assert f"{evt['id']} invoice.paid: processed" in result.output
    db.session.expire_all()
    stored = db.session.get(StripeEvent, evt["id"])
    assert stored.status == "processed" and stored.attempts == 3 and stored.error is None
    assert db.session.get(Membership, billed.membership.id).state == "active"
    assert len(_grants(billed.membership.id)) == 1


def test_a_webhook_without_a_configured_secret_is_503(app, client, clock):
    app.config["STRIPE_WEBHOOK_SECRET"] = None
    evt = sf.event("invoice.paid", sf.resource("invoice"))
    response = sf.post(client, evt)
    assert response.status_code == 503
    assert db.session.get(StripeEvent, evt["id"]) is None


def test_missing_stripe_settings_are_said_at_start_up_and_the_rest_runs(caplog, database_url):
    import logging

    from billing import create_app
    from tests.conftest import _config

    with caplog.at_level(logging.ERROR, logger="billing.stripe"):
        app = create_app(_config(database_url, STRIPE_API_KEY=None, STRIPE_WEBHOOK_SECRET=None))
    assert "STRIPE_API_KEY, STRIPE_WEBHOOK_SECRET not set" in caplog.text
    assert app.test_client().get("/healthz").status_code == 200
