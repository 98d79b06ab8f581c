"""How a delivery is taken in: stored and acted on in one transaction, a duplicate in one
statement, two deliveries of one event (or two views of one subscription) one after the other.

The concurrent cases run on PostgreSQL with real connections: each thread is a Stripe delivery
with its own app context (its own session and connection)."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
import sqlalchemy as sa

from billing.entitlements.models import CreditGrant
from billing.extensions import db
from billing.memberships.models import Membership
from billing.payments.models import Invoice
from billing.stripe_sync import handlers
from billing.stripe_sync.models import StripeEvent
from tests import stripe_fixtures as sf
from tests.conftest import IS_POSTGRES, sql_sent

MONTH = timedelta(days=31)


def _first_invoice(billed, clock):
    return billed.invoice(clock(), clock() + MONTH, billing_reason="subscription_create")


def test_a_duplicate_of_a_done_event_is_one_statement_and_writes_nothing(app, client, clock):
    billed = sf.Billed(clock())
    evt = sf.event("invoice.paid", _first_invoice(billed, clock), created=clock())
    assert sf.post(client, evt).status_code == 200
    db.session.expire_all()
    stored = db.session.get(StripeEvent, evt["id"])
    before = (stored.status, stored.attempts, stored.last_attempt_at, stored.outcome)

    clock.advance(minutes=5)
    with sql_sent() as seen:
        response = sf.post(client, evt)

    assert response.status_code == 200
    body = response.get_json()
    assert body["duplicate"] is True and body["status"] == "processed"
    assert body["outcome"] == before[3]
    # PostgreSQL: the insert and the stored row's status in one statement. SQLite: the insert
    # that finds the id taken, then the read.
    assert len(seen["sql"]) == (1 if IS_POSTGRES else 2), seen["sql"]
    assert not seen["commits"]
    db.session.expire_all()
    stored = db.session.get(StripeEvent, evt["id"])
    assert (stored.status, stored.attempts, stored.last_attempt_at, stored.outcome) == before


def test_a_new_event_is_stored_and_acted_on_in_one_commit(app, client, clock):
    billed = sf.Billed(clock())
    evt = sf.event("invoice.paid", _first_invoice(billed, clock), created=clock())

    with sql_sent() as seen:
        response = sf.post(client, evt)

    assert response.status_code == 200 and response.get_json()["status"] == "processed"
    assert len(seen["commits"]) == 1
    db.session.expire_all()
    stored = db.session.get(StripeEvent, evt["id"])
    assert stored.status == "processed" and stored.attempts == 1
    assert stored.received_at == stored.processed_at == stored.last_attempt_at == clock()
    assert stored.payload == evt  # the verified event as Stripe sent it
    assert stored.object_id == evt["data"]["object"]["id"]
    assert db.session.get(Membership, billed.membership.id).state == "active"


def test_what_a_handler_wrote_before_it_skipped_is_undone_and_the_event_kept(
    app, client, clock, monkeypatch
):
    billed = sf.Billed(clock())
    evt = sf.event("invoice.paid", _first_invoice(billed, clock), created=clock())

    def records_then_skips(obj, ctx):
        handlers.on_invoice_paid(obj, ctx)
        raise handlers.Skip("changed its mind")

    monkeypatch.setitem(handlers.HANDLERS, "invoice.paid", records_then_skips)
    response = sf.post(client, evt)

    assert response.status_code == 200 and response.get_json()["status"] == "ignored"
    db.session.expire_all()
    assert db.session.get(StripeEvent, evt["id"]).outcome == "changed its mind"
    assert db.session.scalar(sa.select(sa.func.count()).select_from(Invoice)) == 0
    assert db.session.scalar(sa.select(sa.func.count()).select_from(CreditGrant)) == 0
    assert db.session.get(Membership, billed.membership.id).state == "pending"


def test_an_event_stored_but_never_acted_on_is_acted_on_by_its_next_delivery(app, client, clock):
    """A row left `received` (written by an older version that stored first and crashed before
    acting) is processed by the next delivery, once."""
    billed = sf.Billed(clock())
    evt = sf.event("invoice.paid", _first_invoice(billed, clock), created=clock())
    db.session.add(
        StripeEvent(
            id=evt["id"],
            type=evt["type"],
            object_id=evt["data"]["object"]["id"],
            stripe_created=clock(),
            payload=evt,
            status="received",
            attempts=0,
            received_at=clock(),
        )
    )
    db.session.commit()

    response = sf.post(client, evt)

    assert response.status_code == 200
    assert response.get_json()["status"] == "processed"
    assert response.get_json()["duplicate"] is False
    db.session.expire_all()
    assert db.session.get(StripeEvent, evt["id"]).attempts == 1
    assert db.session.get(Membership, billed.membership.id).state == "active"


# ---------------------------------------------------------------------------------------------
# Concurrent deliveries (PostgreSQL)


def _deliver_in_thread(app, evt: dict, results: dict) -> threading.Thread:
    body, header = _signed(evt)

    def run() -> None:
        with app.app_context():
            response = app.test_client().post(
                "/webhooks/stripe",
                data=body,
                headers={"Stripe-Signature": header, "Content-Type": "application/json"},
            )
            results[evt["id"], threading.get_ident()] = (
                response.status_code,
                response.get_json(),
            )
            db.session.remove()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def _signed(evt: dict) -> tuple[str, str]:
    import json

    body = json.dumps(evt)
    return body, sf.signature(body)


def _hold(monkeypatch, event_type: str, event_id: str):
    """Make the handler of `event_id` stop, once it has done its work (flushed, not committed),
    until released: (entered, release)."""
    entered, release = threading.Event(), threading.Event()
    original = handlers.HANDLERS[event_type]

    def held(obj, ctx):
        outcome = original(obj, ctx)
        db.session.flush()
        if ctx.event_id == event_id:
            entered.set()
            assert release.wait(30), "never released"
        return outcome

    monkeypatch.setitem(handlers.HANDLERS, event_type, held)
    return entered, release


@pytest.mark.postgres_only
def test_two_deliveries_of_one_event_at_once_act_once(app, clock, monkeypatch):
    billed = sf.Billed(clock())
    evt = sf.event("invoice.paid", _first_invoice(billed, clock), created=clock())
    entered, release = _hold(monkeypatch, "invoice.paid", evt["id"])
    results: dict = {}

    first = _deliver_in_thread(app, evt, results)
    assert entered.wait(30)
    second = _deliver_in_thread(app, evt, results)  # waits on the first's new row
    second.join(timeout=1)
    assert second.is_alive(), "the second delivery did not wait for the first"
    release.set()
    first.join(timeout=30)
    second.join(timeout=30)

    answers = sorted((code, body["duplicate"], body["status"]) for code, body in results.values())
    assert answers == [(200, False, "processed"), (200, True, "processed")]
    db.session.expire_all()
    assert db.session.get(StripeEvent, evt["id"]).attempts == 1
    grants = db.session.execute(
        sa.select(CreditGrant).where(CreditGrant.membership_id == billed.membership.id)
    ).all()
    assert len(grants) == 1


@pytest.mark.postgres_only
def test_an_older_subscription_view_waits_for_a_newer_one_being_applied_then_is_ignored(
    app, client, clock, monkeypatch
):
    """The membership is locked as the handler reads it: an older view delivered while a newer
    one is being applied waits, then sees the newer one and changes nothing (without the lock
    it would have read the state before the newer view and written over it)."""
    billed = sf.Billed(clock())
    start = clock()
    assert sf.post(client, sf.event("invoice.paid", _first_invoice(billed, clock))).status_code
    newer = sf.event(
        "customer.subscription.updated",
        billed.subscription(start, start + MONTH, cancel_at_period_end=True),
        created=start + timedelta(hours=2),
    )
    older = sf.event(
        "customer.subscription.updated",
        billed.subscription(start, start + MONTH),
        created=start + timedelta(hours=1),
    )
    entered, release = _hold(monkeypatch, "customer.subscription.updated", newer["id"])
    results: dict = {}

    first = _deliver_in_thread(app, newer, results)
    assert entered.wait(30)
    second = _deliver_in_thread(app, older, results)
    second.join(timeout=1)
    assert second.is_alive(), "the older view did not wait for the membership's lock"
    release.set()
    first.join(timeout=30)
    second.join(timeout=30)

    by_event = {key[0]: answer for key, answer in results.items()}
    assert by_event[newer["id"]][1]["status"] == "processed"
    assert by_event[older["id"]][1]["status"] == "ignored"
    db.session.expire_all()
    membership = db.session.get(Membership, billed.membership.id)
    assert membership.state == "cancel_at_period_end"
    assert membership.stripe_state_at == start + timedelta(hours=2)
