"""Gift memberships over HTTP: bought, claimed (a new member, or months added to an existing
membership), converted month by month as time passes, expiring unclaimed as breakage; and every
refusal, with nothing written."""

from __future__ import annotations

import re
import uuid
from datetime import date, timedelta
from types import SimpleNamespace

import pytest
import sqlalchemy as sa

from billing.entitlements import service as ledger
from billing.entitlements.models import Credit, CreditGrant, EntryKind, LedgerEntry
from billing.extensions import db
from billing.finance import recognition
from billing.gifts.models import Gift
from billing.jobs.jobs import expire_credits
from billing.memberships.models import Membership, MembershipEvent
from billing.payments.models import Invoice, Payment
from tests import factories as f


@pytest.fixture
def shop(app, clock):
    facial = f.treatment("facial", name="Facial", price=20000)
    peel = f.treatment("peel", name="Peel", price=10000)
    bbl = f.treatment("bbl", name="BBL", price=40000)
    ns = SimpleNamespace(
        facial=facial,
        peel=peel,
        bbl=bbl,
        glow=f.plan([(facial, 1)], code="glow", price=32700),
        radiance=f.plan([(peel, 1)], code="radiance", price=21800),
        series=f.plan(
            [(bbl, 3)], code="bbl-x3", kind="series", price=109000, credit_validity_days=180
        ),
        buyer=f.member("Ana", "Buyer"),
        friend=f.member("Mei", "Friend"),
    )
    db.session.commit()
    return ns


def buy(client, headers, shop, **extra):
    body = {
        "buyer_member_id": shop.buyer.id,
        "plan": "glow",
        "months": 3,
        "recipient_name": "Mei Friend",
        "recipient_email": "mei@example.com",
        "payment": "desk",
        **extra,
    }
    return client.post(
        "/api/v1/gifts", json=body, headers={**headers, "Idempotency-Key": uuid.uuid4().hex}
    )


def claim(client, headers, code, **body):
    return client.post(f"/api/v1/gifts/{code}/claim", json=body, headers=headers)


def counts() -> tuple[int, ...]:
    return tuple(
        db.session.execute(sa.select(sa.func.count()).select_from(model)).scalar_one()
        for model in (Gift, Membership, MembershipEvent, Invoice, Payment, CreditGrant, LedgerEntry)
    )


def holding_lot(code):
    credit = db.session.execute(
        sa.select(Credit)
        .join(CreditGrant, Credit.grant_id == CreditGrant.id)
        .where(CreditGrant.source_ref == f"gift:{code}")
    ).scalar_one()
    return ledger.holding_lot(credit)


def deferred(clock) -> int:
    return recognition.deferred_balance(clock())


def test_a_gift_bought_at_the_desk_is_deferred_revenue_held_for_the_recipient(
    client, staff, shop, clock
):
    r = buy(client, staff, shop)
    assert r.status_code == 201, r.get_json()
    gift = r.get_json()
    assert re.fullmatch(r"[2-9A-HJ-NP-Z]{4}-[2-9A-HJ-NP-Z]{4}-[2-9A-HJ-NP-Z]{4}", gift["code"])
    assert (gift["status"], gift["amount_minor"], gift["net_minor"]) == ("unclaimed", 98100, 90000)
    assert gift["claim_by"].startswith((clock() + timedelta(days=365)).date().isoformat())
    lot = holding_lot(gift["code"])
    credit = lot.credit
    assert (credit.treatment_id, credit.plan_item_id, credit.product_type, credit.unit_label) == (
        None,
        None,
        "gift",
        "month",
    )
    assert (lot.remaining, lot.value_minor, lot.expires_at) == (
        3,
        90000,
        clock() + timedelta(days=365),
    )
    assert deferred(clock) == 90000  # from the purchase, not the claim
    invoice = db.session.get(Invoice, gift["invoice_id"])
    assert (invoice.kind, invoice.status, invoice.tax_minor) == ("gift", "paid", 8100)
    # The buyer holds nothing to redeem, and may still join a tier of their own.
    assert ledger.member_entitlements(shop.buyer.id, clock()) == []
    r = client.post(
        "/api/v1/memberships", json={"member_id": shop.buyer.id, "plan": "glow"}, headers=staff
    )
    assert r.status_code == 201, r.get_json()
    # Looked up by its code as a person types it.
    typed = gift["code"].lower().replace("-", " ")
    assert client.get(f"/api/v1/gifts/{typed}", headers=staff).get_json()["code"] == gift["code"]


def test_claimed_by_a_new_member_the_months_run_from_the_claim(client, keys, staff, shop, clock):
    code = buy(client, staff, shop).get_json()["code"]
    clock.advance(days=20)
    me = keys.headers("client", shop.friend.id)
    r = claim(client, me, code)
    assert r.status_code == 200, r.get_json()
    body = r.get_json()
    assert (body["status"], body["claimed_by_member_id"], body["months_converted"]) == (
        "claimed",
        shop.friend.id,
        1,
    )
    membership = db.session.get(Membership, body["membership_id"])
    assert membership.member_id == shop.friend.id
    assert membership.state == "cancel_at_period_end"  # ends after its last month
    event = db.session.execute(
        sa.select(MembershipEvent).where(MembershipEvent.kind == "gift_claimed")
    ).scalar_one()
    assert event.data["from_member_id"] == shop.buyer.id
    assert ledger.balance([membership.id], shop.facial.id, clock()) == 1
    lot = holding_lot(code)
    assert (lot.remaining, lot.value_minor) == (2, 60000)
    assert deferred(clock) == 90000  # converting a month moves no revenue
    (month_one,) = db.session.execute(
        sa.select(CreditGrant).where(CreditGrant.source_ref == f"gift:{code}:month:1")
    ).scalars()
    assert month_one.net_amount_minor == 30000 and month_one.period_start == clock()

    # Month 1's facial ends with the month; month 2 arrives when it starts.
    clock.advance(days=31)
    counts_run = expire_credits(now=clock())
    assert counts_run["gift_months_converted"] == 1
    assert ledger.balance([membership.id], shop.facial.id, clock()) == 1
    assert expire_credits(now=clock())["gift_months_converted"] == 0  # run twice: nothing more
    clock.advance(days=31)
    expire_credits(now=clock())
    assert holding_lot(code).remaining == 0
    assert db.session.get(Gift, 1).months_converted == 3
    # After the third month the gift membership ends.
    clock.advance(days=31)
    expire_credits(now=clock())
    assert db.session.get(Membership, membership.id).state == "canceled"
    assert deferred(clock) == 0


def test_claimed_by_a_member_of_the_same_tier_the_months_are_added_to_theirs(
    client, staff, shop, clock
):
    own = f.active_membership(shop.glow, now=clock(), owner=shop.friend, period_days=30)
    db.session.commit()
    code = buy(client, staff, shop, months=2).get_json()["code"]
    r = claim(client, staff, code, member_id=shop.friend.id)
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["applied_membership_id"] == own.id
    assert ledger.balance([own.id], shop.facial.id, clock()) == 2  # their month and the gift's
    clock.advance(days=31)
    expire_credits(now=clock())
    gift = db.session.execute(sa.select(Gift)).scalar_one()
    assert gift.months_converted == 2
    holding = db.session.get(Membership, gift.membership_id)
    assert holding.state == "canceled" and holding.member_id == shop.friend.id
    assert holding_lot(code).remaining == 0


def test_a_gift_not_claimed_in_time_expires_as_breakage_at_claim_by(
    app, client, staff, shop, clock
):
    app.config["GIFT_CLAIM_DAYS"] = 30
    code = buy(client, staff, shop).get_json()["code"]
    claim_by = clock() + timedelta(days=30)
    clock.advance(days=45)  # the job runs late
    assert expire_credits(now=clock())["gifts_expired"] == 1
    gift = db.session.execute(sa.select(Gift)).scalar_one()
    assert gift.status == "expired"
    assert db.session.get(Membership, gift.membership_id).state == "canceled"
    (expired,) = db.session.execute(
        sa.select(LedgerEntry).where(LedgerEntry.kind == EntryKind.EXPIRE)
    ).scalars()
    assert (expired.quantity, expired.value_minor) == (-3, -90000)
    scope = recognition.Scope(date(2026, 3, 1), date(2026, 4, 30))
    rows = {(row.period.label, row.tier): row for row in recognition.roll_forward(scope)}
    march, april = rows[("2026-03", "glow")], rows[("2026-04", "glow")]
    assert (march.billed, march.breakage, march.closing) == (90000, 0, 90000)
    assert (april.billed, april.breakage, april.closing) == (0, 90000, 0)
    assert claim_by.astimezone(scope.tz).month == 4
    before = counts()
    r = claim(client, staff, code, member_id=shop.friend.id)
    assert r.status_code == 409 and r.get_json()["type"].endswith("gift-expired")
    assert counts() == before


def test_an_unclaimed_gift_past_claim_by_cannot_be_claimed_even_before_the_job(
    app, client, staff, shop, clock
):
    app.config["GIFT_CLAIM_DAYS"] = 10
    code = buy(client, staff, shop).get_json()["code"]
    clock.advance(days=10)
    before = counts()
    r = claim(client, staff, code, member_id=shop.friend.id)
    assert r.status_code == 409 and r.get_json()["type"].endswith("gift-expired")
    assert counts() == before


def test_a_series_gift_starts_a_series_for_the_recipient(client, staff, shop, clock):
    gift = buy(client, staff, shop, plan="bbl-x3", months=None).get_json()
    assert (gift["months"], gift["amount_minor"]) == (1, 109000)
    assert holding_lot(gift["code"]).credit.unit_label == "series"
    clock.advance(days=5)
    body = claim(client, staff, gift["code"], member_id=shop.friend.id).get_json()
    membership = db.session.get(Membership, body["membership_id"])
    assert membership.state == "active"
    (lot,) = ledger.live_lots([membership.id], clock(), shop.bbl.id)
    assert (lot.remaining, lot.value_minor, lot.expires_at) == (
        3,
        100000,
        clock() + timedelta(days=180),
    )
    assert holding_lot(gift["code"]).remaining == 0


# ---------------------------------------------------------------------------------------------
# Refusals: each says what is wrong, and nothing is written


def test_an_unknown_code_is_404(client, staff, shop):
    before = counts()
    assert claim(client, staff, "ZZZZ-ZZZZ-ZZZZ", member_id=shop.friend.id).status_code == 404
    assert client.get("/api/v1/gifts/ZZZZ-ZZZZ-ZZZZ", headers=staff).status_code == 404
    assert counts() == before


def test_a_gift_claimed_twice_is_409(client, staff, shop):
    code = buy(client, staff, shop).get_json()["code"]
    assert claim(client, staff, code, member_id=shop.friend.id).status_code == 200
    other = f.member("Jun", "Other")
    db.session.commit()
    before = counts()
    r = claim(client, staff, code, member_id=other.id)
    assert r.status_code == 409 and r.get_json()["type"].endswith("gift-already-claimed")
    assert counts() == before


@pytest.mark.parametrize(
    "extra, field",
    [
        ({"months": 0}, "months"),
        ({"months": -2}, "months"),
        ({"months": 1.5}, "months"),
        ({"plan": "bbl-x3", "months": 2}, "months"),
        ({"plan": "nope"}, "plan"),
        ({"payment": "cash"}, "payment"),
        ({"recipient_name": ""}, "recipient_name"),
        ({"buyer_member_id": 9999}, "buyer_member_id"),
    ],
)
def test_bad_purchases_are_422_and_write_nothing(client, staff, shop, extra, field):
    before = counts()
    r = buy(client, staff, shop, **extra)
    assert r.status_code == 422, r.get_json()
    assert field in r.get_json()["errors"]
    assert counts() == before


def test_a_series_gift_cannot_be_claimed_onto_a_tier(client, staff, shop, clock):
    tier = f.active_membership(shop.glow, now=clock(), owner=shop.friend)
    db.session.commit()
    code = buy(client, staff, shop, plan="bbl-x3", months=None).get_json()["code"]
    before = counts()
    r = claim(client, staff, code, member_id=shop.friend.id, membership_id=tier.id)
    assert r.status_code == 422
    assert "series" in r.get_json()["detail"]
    assert counts() == before


def test_a_tier_gift_for_a_member_of_another_tier_is_409(client, staff, shop, clock):
    f.active_membership(shop.radiance, now=clock(), owner=shop.friend)
    db.session.commit()
    code = buy(client, staff, shop).get_json()["code"]
    before = counts()
    r = claim(client, staff, code, member_id=shop.friend.id)
    assert r.status_code == 409 and r.get_json()["type"].endswith("already-a-member")
    assert counts() == before


def test_card_on_file_without_stripe_is_503_and_keeps_nothing(client, staff, shop):
    before = counts()
    assert buy(client, staff, shop, payment="card_on_file").status_code == 503
    assert counts() == before


def test_who_may_buy_see_and_claim(client, keys, staff, shop):
    buyer = keys.headers("client", shop.buyer.id)
    friend = keys.headers("client", shop.friend.id)
    assert buy(client, keys.headers("finance"), shop).status_code == 403
    assert buy(client, friend, shop).status_code == 403  # buying as someone else
    assert buy(client, {}, shop).status_code == 401
    r = buy(client, buyer, shop, buyer_member_id=None)  # a client buys as themselves
    assert r.status_code == 201, r.get_json()
    code = r.get_json()["code"]
    assert client.get(f"/api/v1/gifts/{code}", headers=buyer).status_code == 200
    assert client.get(f"/api/v1/gifts/{code}", headers=friend).status_code == 403
    assert claim(client, friend, code, member_id=shop.buyer.id).status_code == 403
    assert claim(client, staff, code).status_code == 422  # staff must say for whom
    assert claim(client, friend, code).status_code == 200


def test_converting_a_claimed_gift_month_by_month_is_neither_billing_nor_breakage(
    client, staff, shop, clock
):
    """The gift was billed when it was bought; its months only move deferred value into each
    month's credits, and what a month's credit does (redeemed, expired) is the only revenue."""
    code = buy(client, staff, shop).get_json()["code"]  # 3 months of S$300.00 net, in March
    claim(client, staff, code, member_id=shop.friend.id)
    clock.advance(days=31)
    expire_credits(now=clock())  # month 1's facial expires unused; month 2 converts
    scope = recognition.Scope(date(2026, 3, 1), date(2026, 4, 30))
    rows = {(row.period.label, row.tier): row for row in recognition.roll_forward(scope)}
    march, april = rows[("2026-03", "glow")], rows[("2026-04", "glow")]
    assert (march.billed, march.breakage, march.closing) == (90000, 0, 90000)
    assert (april.billed, april.breakage, april.closing) == (0, 30000, 60000)
