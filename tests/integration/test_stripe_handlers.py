"""What each Stripe event does to memberships, credits and money, fed signed events built from
Stripe's example objects. The period granted always comes from the invoice line's `period`."""

from __future__ import annotations

from datetime import timedelta

import sqlalchemy as sa

from billing.entitlements import service as ledger
from billing.entitlements.models import CreditGrant
from billing.extensions import db
from billing.memberships.models import Membership, MembershipEvent
from billing.payments.models import Invoice, Payment, Receivable
from billing.stripe_sync.models import BillingProfile, StripeEvent
from tests import factories as f
from tests import stripe_fixtures as sf

MONTH = timedelta(days=31)


def _membership(billed) -> Membership:
    db.session.expire_all()
    return db.session.get(Membership, billed.membership.id)


def _grants(billed) -> list[CreditGrant]:
    return list(
        db.session.execute(
            sa.select(CreditGrant)
            .where(CreditGrant.membership_id == billed.membership.id)
            .order_by(CreditGrant.period_start)
        ).scalars()
    )


def _deliver(client, type_, obj, created):
    response = sf.post(client, sf.event(type_, obj, created=created))
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def _first_period(client, billed, start, **kw):
    inv = billed.invoice(start, start + MONTH, billing_reason="subscription_create", **kw)
    _deliver(client, "invoice.paid", inv, start)
    return inv


# ---------------------------------------------------------------------------------------------
# Paid periods


def test_a_renewal_grants_the_next_period_from_the_invoice_line(app, client, clock):
    billed = sf.Billed(clock())
    start = clock()
    _first_period(client, billed, start)
    clock.advance(days=31)
    renewal = billed.invoice(start + MONTH, start + 2 * MONTH, billing_reason="subscription_cycle")

    body = _deliver(client, "invoice.paid", renewal, clock())

    assert "credits granted" in body["outcome"]
    first, second = _grants(billed)
    assert (second.period_start, second.period_end) == (start + MONTH, start + 2 * MONTH)
    membership = _membership(billed)
    assert membership.paid_periods == 2
    assert membership.current_period_start == start + MONTH
    invoice = db.session.execute(
        sa.select(Invoice).where(Invoice.stripe_invoice_id == renewal["id"])
    ).scalar_one()
    assert invoice.billing_reason == "subscription_cycle"
    assert (invoice.period_start, invoice.period_end) == (start + MONTH, start + 2 * MONTH)
    assert (invoice.total_minor, invoice.tax_minor, invoice.net_minor) == (32700, 2700, 30000)
    assert second.invoice_id == invoice.id


def test_tax_reported_by_stripe_is_used_as_it_is(app, client, clock):
    billed = sf.Billed(clock())
    start = clock()
    inv = _first_period(client, billed, start, taxes=[sf.inclusive_tax(2600, 30100)])

    [grant] = _grants(billed)
    assert grant.net_amount_minor == 32700 - 2600
    invoice = db.session.execute(
        sa.select(Invoice).where(Invoice.stripe_invoice_id == inv["id"])
    ).scalar_one()
    assert (invoice.tax_minor, invoice.net_minor) == (2600, 30100)


def test_the_sign_up_fee_is_money_but_not_part_of_the_credits_value(app, client, clock):
    billed = sf.Billed(clock())
    start = clock()
    fee = sf.fee_line(invoice_id="in_fee", amount=10900, description="Sign-up fee")
    inv = _first_period(client, billed, start, extra_lines=[fee])

    [grant] = _grants(billed)
    assert grant.net_amount_minor == 30000
    invoice = db.session.execute(
        sa.select(Invoice).where(Invoice.stripe_invoice_id == inv["id"])
    ).scalar_one()
    assert invoice.total_minor == 32700 + 10900
    assert invoice.tax_minor == 2700 + 900
    payment = db.session.execute(
        sa.select(Payment).where(Payment.invoice_id == invoice.id)
    ).scalar_one()
    assert payment.amount_minor == 43600


def test_a_proration_invoice_records_money_without_granting_a_period(app, client, clock):
    billed = sf.Billed(clock())
    start = clock()
    _first_period(client, billed, start)
    inv = billed.invoice(start, start + MONTH, billing_reason="subscription_update", amount=5000)
    inv["lines"]["data"][0]["parent"]["subscription_item_details"]["proration"] = True

    _deliver(client, "invoice.paid", inv, clock())

    assert len(_grants(billed)) == 1
    assert _membership(billed).paid_periods == 1
    assert (
        db.session.execute(sa.select(Invoice).where(Invoice.stripe_invoice_id == inv["id"]))
        .scalar_one()
        .amount_paid_minor
        == 5000
    )


def test_the_2017_shape_local_stripe_sends_is_read_too(app, client, clock):
    """invoice.subscription, invoice.charge, `tax`, line `type`/`proration`: localstripe."""
    billed = sf.Billed(clock())
    start = clock()
    inv = {
        "id": "in_legacy1",
        "object": "invoice",
        "customer": billed.customer,
        "subscription": billed.sub,
        "charge": "ch_legacy1",
        "payment_intent": "pi_legacy1",
        "status": "paid",
        "billing_reason": None,
        "currency": "sgd",
        "total": 32700,
        "tax": 0,
        "amount_paid": 32700,
        "attempt_count": 1,
        "created": sf.ts(start),
        "status_transitions": {"paid_at": sf.ts(start)},
        "lines": {
            "data": [
                {
                    "id": "il_legacy1",
                    "type": "subscription",
                    "proration": False,
                    "amount": 32700,
                    "period": {"start": sf.ts(start), "end": sf.ts(start + MONTH)},
                    "plan": {"id": billed.version.stripe_price_id},
                    "subscription": billed.sub,
                    "tax_amounts": [],
                }
            ]
        },
    }

    _deliver(client, "invoice.payment_succeeded", inv, start)

    [grant] = _grants(billed)
    assert (grant.period_start, grant.period_end) == (start, start + MONTH)
    payment = db.session.execute(sa.select(Payment)).scalar_one()
    assert (payment.stripe_id, payment.stripe_payment_intent_id) == ("ch_legacy1", "pi_legacy1")


# ---------------------------------------------------------------------------------------------
# Failed payments


def test_a_failed_renewal_makes_the_membership_past_due_then_payment_recovers_it(
    app, client, clock
):
    billed = sf.Billed(clock())
    start = clock()
    _first_period(client, billed, start)
    clock.advance(days=31)
    retry_at = clock() + timedelta(days=3)
    failed = billed.invoice(
        start + MONTH,
        start + 2 * MONTH,
        status="open",
        attempt_count=1,
        next_payment_attempt=retry_at,
    )

    body = _deliver(client, "invoice.payment_failed", failed, clock())

    assert "past_due" in body["outcome"]
    membership = _membership(billed)
    assert membership.state == "past_due"
    assert (membership.payment_attempts, membership.next_payment_attempt) == (1, retry_at)
    assert membership.grace_ends_at == clock() + timedelta(days=app.config["GRACE_PERIOD_DAYS"])
    assert len(_grants(billed)) == 1  # nothing granted for an unpaid period

    clock.advance(days=3)
    failed["status"], failed["amount_paid"] = "paid", failed["total"]
    failed["status_transitions"]["paid_at"] = sf.ts(clock())
    _deliver(client, "invoice.paid", failed, clock())

    membership = _membership(billed)
    assert membership.state == "active" and membership.past_due_since is None
    assert len(_grants(billed)) == 2


def test_a_failed_payment_reported_after_the_invoice_was_paid_changes_nothing(app, client, clock):
    billed = sf.Billed(clock())
    start = clock()
    paid = _first_period(client, billed, start)
    late = dict(paid, status="open", amount_paid=0)

    body = _deliver(client, "invoice.payment_failed", late, start - timedelta(minutes=5))

    assert body["status"] == "ignored"
    assert _membership(billed).state == "active"


def test_a_failed_first_payment_leaves_the_membership_pending(app, client, clock):
    billed = sf.Billed(clock())
    inv = billed.invoice(
        clock(), clock() + MONTH, status="open", billing_reason="subscription_create"
    )

    _deliver(client, "invoice.payment_failed", inv, clock())

    membership = _membership(billed)
    assert membership.state == "pending" and membership.payment_attempts == 1


# ---------------------------------------------------------------------------------------------
# The subscription drives the state machine


def test_an_older_subscription_update_after_a_newer_one_is_ignored(app, client, clock):
    billed = sf.Billed(clock())
    start = clock()
    _first_period(client, billed, start)
    newer = billed.subscription(start, start + MONTH, cancel_at_period_end=True)
    older = billed.subscription(start, start + MONTH)

    _deliver(client, "customer.subscription.updated", newer, start + timedelta(hours=2))
    body = _deliver(client, "customer.subscription.updated", older, start + timedelta(hours=1))

    assert body["status"] == "ignored"
    membership = _membership(billed)
    assert membership.state == "cancel_at_period_end"
    assert membership.cancel_at == start + MONTH
    assert membership.stripe_state_at == start + timedelta(hours=2)


def test_a_cancel_at_period_end_that_outruns_the_first_payment_is_kept(app, client, clock):
    billed = sf.Billed(clock())
    start = clock()
    ending = billed.subscription(start, start + MONTH, cancel_at_period_end=True)

    _deliver(client, "customer.subscription.updated", ending, start + timedelta(seconds=5))
    assert _membership(billed).state == "pending"
    _first_period(client, billed, start)

    membership = _membership(billed)
    assert membership.state == "cancel_at_period_end"
    assert membership.cancel_at == start + MONTH
    assert len(_grants(billed)) == 1


def test_pause_collection_pauses_and_its_removal_resumes_extending_credits(app, client, clock):
    billed = sf.Billed(clock())
    start = clock()
    _first_period(client, billed, start)
    resumes = start + timedelta(days=40)
    paused = billed.subscription(
        start,
        start + MONTH,
        pause_collection={"behavior": "void", "resumes_at": sf.ts(resumes)},
    )

    _deliver(client, "customer.subscription.updated", paused, clock())

    membership = _membership(billed)
    assert membership.state == "paused" and membership.resume_at == resumes

    clock.advance(days=10)
    _deliver(
        client, "customer.subscription.updated", billed.subscription(start, start + MONTH), clock()
    )

    membership = _membership(billed)
    assert membership.state == "active"
    [lot, *_] = ledger.live_lots([membership.id], clock())
    assert lot.expires_at == start + MONTH + timedelta(days=10)


def test_a_deleted_subscription_cancels_and_forfeits_unused_credits(app, client, clock):
    billed = sf.Billed(clock())
    start = clock()
    _first_period(client, billed, start)
    gone = billed.subscription(start, start + MONTH, status="canceled", canceled_at=clock())

    _deliver(client, "customer.subscription.deleted", gone, clock())

    membership = _membership(billed)
    assert membership.state == "canceled"
    assert ledger.live_lots([membership.id], clock()) == []
    event = db.session.execute(
        sa.select(MembershipEvent).where(MembershipEvent.to_state == "canceled")
    ).scalar_one()
    assert event.actor.startswith("stripe:evt_")


def test_a_new_price_on_the_subscription_upgrades_the_tier_and_grants_the_difference(
    app, client, clock
):
    billed = sf.Billed(clock())
    start = clock()
    _first_period(client, billed, start)
    bigger = f.plan([(billed.facial, 4), (billed.peel, 1)], price=54500)
    bigger.stripe_price_id = "price_bigger"
    db.session.commit()
    clock.advance(days=10)

    body = _deliver(
        client,
        "customer.subscription.updated",
        billed.subscription(start, start + MONTH, price="price_bigger"),
        clock(),
    )

    assert "upgrade" in body["outcome"]
    membership = _membership(billed)
    assert membership.plan_version_id == bigger.id
    assert ledger.balance([membership.id], billed.facial.id, clock()) == 4

    # A second delivery of the same state (or a replay) grants nothing more.
    _deliver(
        client,
        "customer.subscription.updated",
        billed.subscription(start, start + MONTH, price="price_bigger"),
        clock(),
    )
    assert ledger.balance([membership.id], billed.facial.id, clock()) == 4


def test_a_cheaper_price_waits_for_the_next_period(app, client, clock):
    billed = sf.Billed(clock())
    start = clock()
    _first_period(client, billed, start)
    smaller = f.plan([(billed.peel, 1)], price=10900)
    smaller.stripe_price_id = "price_smaller"
    db.session.commit()

    _deliver(
        client,
        "customer.subscription.updated",
        billed.subscription(start, start + MONTH, price="price_smaller"),
        clock(),
    )

    membership = _membership(billed)
    assert membership.plan_version_id == billed.version.id
    assert membership.pending_plan_version_id == smaller.id

    renewal = billed.invoice(start + MONTH, start + 2 * MONTH, amount=10900)
    renewal["lines"]["data"][0]["pricing"]["price_details"]["price"] = "price_smaller"
    _deliver(client, "invoice.paid", renewal, clock() + MONTH)

    membership = _membership(billed)
    assert membership.plan_version_id == smaller.id
    assert ledger.balance([membership.id], billed.facial.id, start + MONTH) == 0


# ---------------------------------------------------------------------------------------------
# Money back


def _paid_with_intent(client, billed, start):
    return _first_period(client, billed, start, payment_intent="pi_first")


def test_a_refund_claws_back_unused_credits_and_what_was_used_is_owed(app, client, clock):
    billed = sf.Billed(clock())
    start = clock()
    inv = _paid_with_intent(client, billed, start)
    membership = _membership(billed)
    ledger.redeem(
        membership_ids=[membership.id],
        treatment=billed.facial,
        quantity=1,
        member_id=billed.member.id,
        now=clock(),
        actor="desk",
    )
    clock.advance(days=2)
    refund = sf.refund(id="re_full", charge_id="ch_first", amount=32700, payment_intent="pi_first")
    charged = sf.charge(
        id="ch_first",
        amount=32700,
        payment_intent="pi_first",
        customer=billed.customer,
        amount_refunded=32700,
        refunds=[refund],
    )

    body = _deliver(client, "charge.refunded", charged, clock())

    assert "clawed back" in body["outcome"]
    assert ledger.live_lots([membership.id], clock()) == []
    receivable = db.session.execute(sa.select(Receivable)).scalar_one()
    # The 30000 net is allocated 22500 to the two facials and 7500 to the peel: the facial
    # used was worth 11250 ex-tax, 12263 with 9 % GST, and that is what the member owes.
    assert receivable.member_id == billed.member.id
    assert receivable.amount_minor == 11250 + 1013
    refund_row = db.session.execute(sa.select(Payment).where(Payment.kind == "refund")).scalar_one()
    assert (refund_row.stripe_id, refund_row.amount_minor) == ("re_full", 32700)
    invoice = db.session.execute(
        sa.select(Invoice).where(Invoice.stripe_invoice_id == inv["id"])
    ).scalar_one()
    assert invoice.amount_refunded_minor == 32700

    # Stripe delivers the same refund again: nothing more.
    _deliver(client, "charge.refunded", charged, clock())
    assert db.session.scalar(sa.select(sa.func.count()).select_from(Receivable)) == 1
    assert (
        db.session.scalar(
            sa.select(sa.func.count()).select_from(Payment).where(Payment.kind == "refund")
        )
        == 1
    )


def test_a_partial_refund_takes_back_only_its_share(app, client, clock):
    billed = sf.Billed(clock())
    start = clock()
    _paid_with_intent(client, billed, start)
    membership = _membership(billed)
    charged = sf.charge(
        id="ch_first",
        amount=32700,
        payment_intent="pi_first",
        customer=billed.customer,
        amount_refunded=3270,
        refunds=[sf.refund(id="re_part", charge_id="ch_first", amount=3270)],
    )

    _deliver(client, "charge.refunded", charged, clock())

    # 3000 net refunded: the credit that would be used last (the peel) goes, the facials stay.
    assert ledger.balance([membership.id], billed.peel.id, clock()) == 0
    assert ledger.balance([membership.id], billed.facial.id, clock()) == 2
    assert db.session.scalar(sa.select(sa.func.count()).select_from(Receivable)) == 0

    # A second partial refund on the same charge is a new refund: it takes the next share.
    charged["amount_refunded"] = 3270 + 16350
    charged["refunds"]["data"].insert(
        0, sf.refund(id="re_part2", charge_id="ch_first", amount=16350)
    )
    _deliver(client, "charge.refunded", charged, clock())
    assert ledger.balance([membership.id], billed.facial.id, clock()) == 0
    refunds = db.session.execute(
        sa.select(Payment.stripe_id, Payment.amount_minor).where(Payment.kind == "refund")
    ).all()
    assert sorted(refunds) == [("re_part", 3270), ("re_part2", 16350)]


def test_a_dispute_claws_back_like_a_refund_and_is_recorded_for_finance(app, client, clock):
    billed = sf.Billed(clock())
    start = clock()
    _paid_with_intent(client, billed, start)
    membership = _membership(billed)
    disputed = sf.dispute(id="dp_1", charge_id="ch_first", amount=32700, payment_intent="pi_first")

    body = _deliver(client, "charge.dispute.created", disputed, clock())

    assert "dispute dp_1" in body["outcome"]
    assert ledger.live_lots([membership.id], clock()) == []
    row = db.session.execute(sa.select(Payment).where(Payment.kind == "dispute")).scalar_one()
    assert (row.stripe_id, row.amount_minor, row.status) == (
        "dp_1",
        32700,
        "warning_needs_response",
    )


def test_a_refund_of_a_charge_we_never_recorded_is_flagged(app, client, clock):
    charged = sf.charge(
        id="ch_unknown",
        amount=100,
        payment_intent="pi_unknown",
        customer="cus_x",
        amount_refunded=100,
    )
    body = _deliver(client, "charge.refunded", charged, clock())
    assert body["status"] == "flagged"


# ---------------------------------------------------------------------------------------------
# Customers and one-off charges


def test_customer_updates_mirror_billing_details_and_deletion_unlinks(app, client, clock):
    billed = sf.Billed(clock())
    cus = sf.customer(id=billed.customer, email="mei.new@example.com", name="Mei Tan")

    _deliver(client, "customer.updated", cus, clock())

    profile = db.session.execute(sa.select(BillingProfile)).scalar_one()
    assert (profile.member_id, profile.email) == (billed.member.id, "mei.new@example.com")
    assert profile.default_payment_method == "pm_card_visa_saved"

    older = sf.customer(id=billed.customer, email="mei.old@example.com", name="Mei Tan")
    assert (
        _deliver(client, "customer.updated", older, clock() - timedelta(hours=1))["status"]
        == "ignored"
    )

    _deliver(client, "customer.deleted", cus, clock() + timedelta(minutes=1))
    db.session.expire_all()
    assert db.session.get(BillingProfile, profile.id).deleted_at is not None
    assert billed.member.stripe_customer_id is None


def test_a_visit_charge_on_the_card_on_file_becomes_a_payment_once(app, client, clock):
    billed = sf.Billed(clock())
    intent = sf.resource("payment_intent")
    intent.update(
        id="pi_visit",
        amount=8000,
        amount_received=8000,
        currency="sgd",
        status="succeeded",
        customer=billed.customer,
        metadata={"kind": "visit_charge", "member_id": str(billed.member.id)},
    )

    _deliver(client, "payment_intent.succeeded", intent, clock())
    _deliver(client, "payment_intent.succeeded", intent, clock())

    row = db.session.execute(sa.select(Payment)).scalar_one()
    assert (row.member_id, row.amount_minor, row.stripe_payment_intent_id) == (
        billed.member.id,
        8000,
        "pi_visit",
    )


def test_every_processed_event_says_what_it_did(app, client, clock):
    billed = sf.Billed(clock())
    evt = sf.event("invoice.paid", billed.invoice(clock(), clock() + MONTH), created=clock())
    sf.post(client, evt)
    stored = db.session.get(StripeEvent, evt["id"])
    assert f"membership {billed.membership.id} paid for" in stored.outcome
