"""Selling a treatment series over HTTP: at the desk, by instalments, online through Stripe's
webhook, and the refusals (nothing written)."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, timedelta
from types import SimpleNamespace

import pytest
import sqlalchemy as sa

from billing.entitlements import service as ledger
from billing.entitlements.models import Credit, EntryKind, LedgerEntry
from billing.extensions import db
from billing.finance import recognition
from billing.jobs.jobs import expire_credits
from billing.memberships.models import Membership
from billing.payments.models import Invoice, Payment
from billing.series import service as series
from billing.series.models import SeriesInstalment, SeriesPurchase
from billing.staff.models import Staff
from billing.stripe_sync import handlers
from tests import factories as f


class FakeStripe:
    """Stands in for the Stripe gateway (app.config["STRIPE_GATEWAY"])."""

    def __init__(self):
        self.charges: list[dict] = []
        self.intents: list[dict] = []

    def charge_off_session(
        self, member, amount_minor, currency, description, idempotency_key, **kw
    ):
        self.charges.append({"amount": amount_minor, "key": idempotency_key, **kw})
        return f"pi_card_{len(self.charges)}"

    def create_payment_intent(self, member, **params):
        self.intents.append(params)
        return f"pi_web_{len(self.intents)}", f"pi_web_{len(self.intents)}_secret"


@pytest.fixture
def shop(app, clock):
    bbl = f.treatment("bbl", name="BBL", price=40000, category="laser_light", min_interval_days=28)
    peel = f.treatment("peel", name="Peel", price=10000)
    ns = SimpleNamespace(
        bbl=bbl,
        peel=peel,
        full=f.plan(
            [(bbl, 3)], code="bbl-x3", kind="series", price=109000, credit_validity_days=365
        ),
        split=f.plan(
            [(bbl, 3), (peel, 3)],
            code="bbl-peel-x3",
            kind="series",
            price=109000,
            credit_validity_days=365,
            instalments=3,
            grant_mode="per_instalment",
        ),
        upfront=f.plan(
            [(bbl, 3)],
            code="bbl-x3-upfront",
            kind="series",
            price=109000,
            credit_validity_days=365,
            instalments=3,
            grant_mode="upfront",
        ),
        tier=f.plan([(peel, 1)], code="glow", price=10900),
        location=f.location("orchard"),
        member=f.member("Mei", "Tan"),
    )
    ns.provider = Staff(name="Bea", role="aesthetician", location_id=ns.location.id)
    db.session.add(ns.provider)
    db.session.commit()
    return ns


def buy(client, headers, member_id, plan, payment="desk", **extra):
    return client.post(
        "/api/v1/series-purchases",
        json={"member_id": member_id, "plan": plan, "payment": payment, **extra},
        headers={**headers, "Idempotency-Key": uuid.uuid4().hex},
    )


def counts() -> tuple[int, ...]:
    return tuple(
        db.session.execute(sa.select(sa.func.count()).select_from(model)).scalar_one()
        for model in (Membership, SeriesPurchase, SeriesInstalment, Invoice, Payment, LedgerEntry)
    )


def test_a_series_sold_at_the_desk_lasts_365_days_is_redeemed_and_expires_as_breakage(
    client, staff, shop, clock
):
    r = buy(client, staff, shop.member.id, "bbl-x3")
    assert r.status_code == 201, r.get_json()
    body = r.get_json()
    assert (body["state"], body["instalments"], body["payment"]["status"]) == (
        "active",
        1,
        "paid",
    )
    assert (body["total_minor"], body["tax_minor"], body["net_minor"]) == (109000, 9000, 100000)
    assert body["balances"][0]["summary"] == "BBL: 3 of 3 left"
    invoice = db.session.execute(sa.select(Invoice)).scalar_one()
    assert (invoice.kind, invoice.status, invoice.total_minor, invoice.net_minor) == (
        "series",
        "paid",
        109000,
        100000,
    )
    payment = db.session.execute(sa.select(Payment)).scalar_one()
    assert (payment.method, payment.amount_minor, payment.invoice_id) == (
        "desk",
        109000,
        invoice.id,
    )
    (credit,) = db.session.execute(sa.select(Credit)).scalars()
    assert credit.product_type == "series"
    assert credit.expires_at == clock() + timedelta(days=365)
    membership_id = body["membership_id"]

    # Redeemed at the desk, and the next one is possible only after the interval.
    visit = client.post(
        "/api/v1/visits",
        json={"member_id": shop.member.id, "location": "orchard"},
        headers=staff,
    ).get_json()["id"]
    line = client.post(
        f"/api/v1/visits/{visit}/lines",
        json={"treatment": "bbl", "provider_id": shop.provider.id},
        headers={**staff, "Idempotency-Key": uuid.uuid4().hex},
    ).get_json()
    assert line["status"] == "redeemed"
    shown = client.get(f"/api/v1/series-purchases/{membership_id}", headers=staff).get_json()
    assert shown["balances"][0]["summary"] == "BBL: 2 of 3 left, next possible from 30 Mar"
    assert shown["balances"][0]["next_possible_on"] == "2026-03-30"

    # A year later the two unused sessions expire: breakage of 2/3 of the net price.
    clock.advance(days=366)
    expire_credits(now=clock())
    assert ledger.balance([membership_id], shop.bbl.id, clock()) == 0
    scope = recognition.Scope(date(2026, 3, 1), date(2027, 3, 31))
    moved = recognition.recognised_between(datetime(2026, 3, 1, tzinfo=UTC), clock(), scope)
    assert (moved["recognised"], moved["breakage"]) == (33333, 66667)


def test_a_series_in_instalments_grants_a_third_per_instalment_and_pays_each_once(
    client, staff, shop, clock
):
    r = buy(client, staff, shop.member.id, "bbl-peel-x3", instalments=3)
    assert r.status_code == 201, r.get_json()
    body = r.get_json()
    membership_id = body["membership_id"]
    schedule = body["instalment_schedule"]
    assert [i["total_minor"] for i in schedule] == [36334, 36333, 36333]
    assert sum(i["net_minor"] for i in schedule) == 100000
    assert [i["paid_at"] is not None for i in schedule] == [True, False, False]
    assert ledger.balance([membership_id], shop.bbl.id, clock()) == 1
    assert ledger.balance([membership_id], shop.peel.id, clock()) == 1

    # Not due yet; a month on, instalment 2 is due (a job would charge or remind).
    assert series.instalments_due(clock()) == []
    clock.advance(days=31)
    assert [i.number for i in series.instalments_due(clock())] == [2]
    # Instalments are paid in order.
    r = client.post(
        f"/api/v1/series-purchases/{membership_id}/instalments/3/pay", json={}, headers=staff
    )
    assert r.status_code == 409
    before = counts()
    for _ in range(2):  # the second is a repeat: nothing more is granted or charged
        r = client.post(
            f"/api/v1/series-purchases/{membership_id}/instalments/2/pay",
            json={"payment": "desk"},
            headers=staff,
        )
        assert r.status_code == 200, r.get_json()
    assert counts()[3:5] == (before[3] + 1, before[4] + 1)  # one invoice, one payment
    assert ledger.balance([membership_id], shop.bbl.id, clock()) == 2
    grants = (
        db.session.execute(sa.select(LedgerEntry).where(LedgerEntry.kind == EntryKind.GRANT))
        .scalars()
        .all()
    )
    assert sum(e.value_minor for e in grants) == 33334 + 33333
    # Every credit of the series expires a year after the first payment.
    assert {e.expires_at for e in grants} == {clock() - timedelta(days=31) + timedelta(days=365)}
    r = client.post(
        f"/api/v1/series-purchases/{membership_id}/instalments/4/pay", json={}, headers=staff
    )
    assert r.status_code == 404


def test_upfront_instalments_grant_everything_at_the_first_payment(client, staff, shop, clock):
    body = buy(client, staff, shop.member.id, "bbl-x3-upfront", instalments=3).get_json()
    assert ledger.balance([body["membership_id"]], shop.bbl.id, clock()) == 3
    clock.advance(days=31)
    client.post(
        f"/api/v1/series-purchases/{body['membership_id']}/instalments/2/pay",
        json={},
        headers=staff,
    )
    assert ledger.balance([body["membership_id"]], shop.bbl.id, clock()) == 3  # nothing more
    (grant,) = db.session.execute(
        sa.select(LedgerEntry).where(LedgerEntry.kind == EntryKind.GRANT)
    ).scalars()
    assert grant.value_minor == 100000


def test_card_on_file_without_stripe_is_503_and_keeps_nothing(client, staff, shop):
    before = counts()
    r = buy(client, staff, shop.member.id, "bbl-x3", payment="card_on_file")
    assert r.status_code == 503
    assert r.get_json()["type"].endswith("stripe-not-configured")
    assert counts() == before


def test_card_on_file_charges_once_with_a_key_from_our_ids(app, client, staff, shop, clock):
    fake = FakeStripe()
    app.config["STRIPE_GATEWAY"] = fake
    body = buy(client, staff, shop.member.id, "bbl-x3", payment="card_on_file").get_json()
    assert body["payment"] == {
        "status": "paid",
        "payment_intent_id": "pi_card_1",
        "client_secret": None,
    }
    (charge,) = fake.charges
    assert charge["amount"] == 109000
    assert charge["key"].startswith(f"series-{body['id']}-instalment-1-")
    assert charge["metadata"]["kind"] == "series_payment"
    payment = db.session.execute(sa.select(Payment)).scalar_one()
    assert (payment.method, payment.stripe_payment_intent_id) == ("card", "pi_card_1")
    # The webhook that follows finds the payment already recorded: nothing more happens.
    intent = {
        "id": "pi_card_1",
        "amount_received": 109000,
        "currency": "sgd",
        "metadata": {"kind": "series_payment", "invoice_id": str(payment.invoice_id)},
    }
    handlers.apply("payment_intent.succeeded", intent, handlers.Context("stripe:evt", clock()))
    db.session.commit()
    assert db.session.execute(sa.select(sa.func.count(Payment.id))).scalar_one() == 1
    assert ledger.balance([body["membership_id"]], shop.bbl.id, clock()) == 3


def test_bought_online_the_webhook_grants_the_credits_once(app, client, keys, shop, clock):
    app.config["STRIPE_GATEWAY"] = FakeStripe()
    me = keys.headers("client", shop.member.id)
    r = buy(client, me, shop.member.id, "bbl-x3", payment="online")
    assert r.status_code == 201, r.get_json()
    body = r.get_json()
    assert (body["state"], body["payment"]["status"]) == ("pending", "awaiting_payment")
    assert body["payment"]["client_secret"] == "pi_web_1_secret"
    assert ledger.balance([body["membership_id"]], shop.bbl.id, clock()) == 0
    invoice = db.session.execute(sa.select(Invoice)).scalar_one()
    assert invoice.status == "open"
    intent = {
        "id": "pi_web_1",
        "amount_received": 109000,
        "currency": "sgd",
        "metadata": {"kind": "series_payment", "invoice_id": str(invoice.id)},
    }
    ctx = handlers.Context("stripe:evt_1", clock())
    assert "credits granted" in handlers.apply("payment_intent.succeeded", intent, ctx)
    db.session.commit()
    assert handlers.apply("payment_intent.succeeded", intent, ctx) is None  # a redelivery
    db.session.commit()
    assert ledger.balance([body["membership_id"]], shop.bbl.id, clock()) == 3
    assert db.session.get(Membership, body["membership_id"]).state == "active"
    assert db.session.execute(sa.select(sa.func.count(Payment.id))).scalar_one() == 1
    # A PaymentIntent whose amount is not the invoice's is for staff to look at.
    with pytest.raises(handlers.NeedsAttention):
        handlers.apply(
            "payment_intent.succeeded", {**intent, "id": "pi_x", "amount_received": 1}, ctx
        )


@pytest.mark.parametrize(
    "body, status, field",
    [
        ({"plan": "glow"}, 422, "plan"),  # a tier is joined, not bought as a series
        ({"plan": "nope"}, 422, "plan"),
        ({"plan": "bbl-x3", "instalments": 2}, 422, "instalments"),
        ({"plan": "bbl-peel-x3", "instalments": 2}, 422, "instalments"),
        ({"plan": "bbl-x3", "payment": "cash"}, 422, "payment"),
        ({"plan": "bbl-x3", "member_id": 9999}, 422, "member_id"),
        ({"plan": "bbl-x3", "extra": 1}, 422, "extra"),
    ],
)
def test_bad_input_is_refused_and_nothing_is_written(client, staff, shop, body, status, field):
    before = counts()
    payload = {"member_id": shop.member.id, "payment": "desk", **body}
    r = client.post("/api/v1/series-purchases", json=payload, headers=staff)
    assert r.status_code == status, r.get_json()
    assert field in r.get_json()["errors"]
    assert counts() == before


def test_who_may_buy_see_and_take_instalments(client, keys, staff, shop):
    other = f.member("Jun", "Lim")
    db.session.commit()
    me = keys.headers("client", shop.member.id)
    assert (
        buy(client, keys.headers("client", other.id), shop.member.id, "bbl-x3").status_code == 403
    )
    assert buy(client, keys.headers("finance"), shop.member.id, "bbl-x3").status_code == 403
    assert buy(client, {}, shop.member.id, "bbl-x3").status_code == 401
    body = buy(client, staff, shop.member.id, "bbl-peel-x3", instalments=3).get_json()
    url = f"/api/v1/series-purchases/{body['membership_id']}"
    assert client.get(url, headers=me).status_code == 200
    assert client.get(url, headers=keys.headers("client", other.id)).status_code == 403
    assert client.post(f"{url}/instalments/2/pay", json={}, headers=me).status_code == 403
    assert client.get("/api/v1/series-purchases/9999", headers=staff).status_code == 404
