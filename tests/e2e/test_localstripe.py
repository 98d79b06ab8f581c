"""End to end against a local Stripe server (localstripe): real HTTP both ways.

The app runs in a real HTTP server thread on loopback, so localstripe can POST its signed
webhooks to it. We follow a member: joining (customer, card, subscription on a legacy plan),
the first invoice paid and its credits granted once although two events report it, a first
payment that fails and then succeeds with another card, a one-off charge to the card on file,
a refund, an immediate cancellation, Stripe's fees, and a reconciliation that repairs what
lost webhooks left behind. Everything localstripe cannot do is proven by signed events in
tests/integration (see the README (Stripe))."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import requests
import sqlalchemy as sa
from werkzeug.serving import make_server

from billing import create_app
from billing.entitlements import service as ledger
from billing.entitlements.models import CreditGrant
from billing.extensions import db
from billing.memberships import service as memberships
from billing.memberships.models import Membership
from billing.payments.models import Invoice, Payment
from billing.stripe_sync import gateway as gateway_module
from billing.stripe_sync import service
from billing.stripe_sync.models import StripeEvent
from config import TestingConfig
from tests import factories as f

pytestmark = pytest.mark.stripe_server

SECRET = "whsec_e2e_secret"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _binary() -> str | None:
    here = Path(sys.executable).parent / "localstripe"
    return str(here) if here.exists() else shutil.which("localstripe")


@pytest.fixture(scope="session")
def localstripe():
    binary = _binary()
    if binary is None:
        print("SKIPPED: the localstripe binary is not installed (pip install localstripe)")
        pytest.skip("the localstripe binary is not installed")
    port = _free_port()
    workdir = tempfile.mkdtemp(prefix="localstripe-")
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--from-scratch"],
        cwd=workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while True:
        try:
            if requests.get(f"{base}/v1/customers", auth=("sk_test_e2e", ""), timeout=1).ok:
                break
        except requests.ConnectionError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail("localstripe did not start")
        time.sleep(0.1)
    yield base
    proc.terminate()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
    shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def live(localstripe, database_url, tmp_path):
    """The app on a real HTTP server, its database, and localstripe reset and wired to it."""
    postgres = database_url.startswith("postgresql")
    url = database_url if postgres else f"sqlite:///{tmp_path / 'e2e.db'}"
    config = {k: getattr(TestingConfig, k) for k in dir(TestingConfig) if k.isupper()}
    config.update(
        SQLALCHEMY_DATABASE_URI=url,
        SQLALCHEMY_ENGINE_OPTIONS={"pool_pre_ping": True}
        if postgres
        else {"connect_args": {"timeout": 30}},
        STRIPE_API_KEY="sk_test_e2e",
        STRIPE_API_BASE=localstripe,
        STRIPE_USE_LEGACY_PLANS=True,
        STRIPE_WEBHOOK_SECRET=SECRET,
    )
    app = create_app(config)
    requests.delete(f"{localstripe}/_config/data", timeout=5).raise_for_status()
    with app.app_context():
        if not postgres:
            db.create_all()
        server = make_server("127.0.0.1", 0, app, threaded=True)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        hook = f"http://127.0.0.1:{server.server_port}/webhooks/stripe"
        requests.post(
            f"{localstripe}/_config/webhooks/e2e",
            data={"url": hook, "secret": SECRET},
            timeout=5,
        ).raise_for_status()
        try:
            yield app
        finally:
            server.shutdown()
            thread.join(timeout=5)
            db.session.remove()
            if postgres:
                tables = ", ".join(f'"{t.name}"' for t in db.metadata.sorted_tables)
                with db.engine.begin() as conn:
                    conn.execute(sa.text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
            db.engine.dispose()


def wait_for(check: Callable[[], object], what: str, timeout: float = 8.0):
    """Poll the database until a webhook's effect shows (deliveries take 1-2 s)."""
    deadline = time.monotonic() + timeout
    while True:
        db.session.rollback()
        db.session.expire_all()
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def events(type_: str) -> list[StripeEvent]:
    return list(
        db.session.execute(sa.select(StripeEvent).where(StripeEvent.type == type_)).scalars()
    )


def grants(membership_id: int) -> list[CreditGrant]:
    return list(
        db.session.execute(
            sa.select(CreditGrant).where(CreditGrant.membership_id == membership_id)
        ).scalars()
    )


def _tier_member(now):
    facial = f.treatment(price=15000)
    peel = f.treatment(price=10000)
    version = f.plan([(facial, 2), (peel, 1)], price=32700)
    person = f.member()
    membership = memberships.join(person, version, actor="test", now=now)
    return membership, facial


def _now():
    from billing import clock

    return clock.now()


def test_a_member_joins_pays_buys_an_extra_is_refunded_and_cancels(live, localstripe):
    membership, facial = _tier_member(_now())
    synced = service.sync_catalog()
    assert any("plan medspa-" in line for line in synced)
    assert service.sync_catalog() == []  # safe to re-run

    result = service.subscribe(
        membership, mode="card_on_file", payment_method="pm_card_visa", actor="desk", now=_now()
    )

    assert result["invoice_status"] == "paid"
    membership_id = membership.id
    assert db.session.get(Membership, membership_id).state == "active"
    # Both invoice.created and invoice.payment_succeeded arrive; the credits are granted once.
    wait_for(
        lambda: [e for e in events("invoice.payment_succeeded") if e.status == "processed"],
        "invoice.payment_succeeded",
    )
    wait_for(
        lambda: [e for e in events("invoice.created") if e.status != "received"], "invoice.created"
    )
    assert all(e.status != "failed" for e in db.session.execute(sa.select(StripeEvent)).scalars())
    assert len(grants(membership_id)) == 1
    assert db.session.get(Membership, membership_id).paid_periods == 1
    assert ledger.balance([membership_id], facial.id, _now()) == 2
    invoice = db.session.execute(sa.select(Invoice)).scalar_one()
    assert (invoice.status, invoice.total_minor, invoice.tax_minor) == ("paid", 32700, 2700)

    # An extra at the desk, charged to the card on file.
    member = db.session.get(Membership, membership_id).member
    intent = gateway_module.current().charge_off_session(
        member, 8000, "SGD", "LED mask add-on", idempotency_key="visit-1-charge"
    )
    extra = wait_for(
        lambda: db.session.execute(
            sa.select(Payment).where(Payment.stripe_payment_intent_id == intent)
        ).scalar_one_or_none(),
        "the visit charge's payment",
    )
    assert (extra.amount_minor, extra.invoice_id) == (8000, None)

    # The membership fee is refunded in full: its unused credits go.
    refund = service.refund_invoice(invoice.id, actor="finance", now=_now())
    assert refund["refund_id"].startswith("re_")
    assert ledger.live_lots([membership_id], _now()) == []
    refund_row = db.session.execute(sa.select(Payment).where(Payment.kind == "refund")).scalar_one()
    assert refund_row.amount_minor == 32700

    # Canceled now: Stripe's customer.subscription.deleted finds it already done.
    service.cancel(
        db.session.get(Membership, membership_id), at_period_end=False, actor="desk", now=_now()
    )
    deleted = wait_for(
        lambda: [e for e in events("customer.subscription.deleted") if e.status != "received"],
        "customer.subscription.deleted",
    )
    assert deleted[0].status in ("processed", "ignored")  # in step, or older than our read
    assert db.session.get(Membership, membership_id).state == "canceled"

    # Stripe's fee and net on each payment.
    done = service.pull_balance_transactions()
    assert len(done) >= 3
    for row in db.session.execute(sa.select(Payment)).scalars():
        assert row.balance_transaction_id and row.balance_transaction_id.startswith("txn_")


def test_a_first_payment_that_fails_then_succeeds_with_another_card(live, localstripe):
    membership, facial = _tier_member(_now())
    service.sync_catalog()

    first = service.subscribe(
        membership,
        mode="card_on_file",
        payment_method="pm_card_chargeCustomerFail",
        actor="desk",
        now=_now(),
    )

    assert first["invoice_status"] == "open"
    assert first["subscription_status"] == "incomplete"
    membership_id = membership.id
    assert db.session.get(Membership, membership_id).state == "pending"
    assert grants(membership_id) == []

    saved = service.update_card(
        db.session.get(Membership, membership_id),
        payment_method="pm_card_visa",
        actor="desk",
        now=_now(),
    )

    assert saved["invoice_status"] == "paid"
    assert db.session.get(Membership, membership_id).state == "active"
    wait_for(
        lambda: [e for e in events("invoice.payment_succeeded") if e.status == "processed"],
        "invoice.payment_succeeded",
    )
    assert len(grants(membership_id)) == 1
    assert ledger.balance([membership_id], facial.id, _now()) == 2


def test_reconcile_repairs_what_lost_webhooks_left_behind(live, localstripe, runner_for):
    # Webhooks are lost: nothing is delivered for subscriptions and invoices.
    requests.post(
        f"{localstripe}/_config/webhooks/e2e",
        data={"url": "http://127.0.0.1:9/nowhere", "secret": SECRET},
        timeout=5,
    ).raise_for_status()
    membership, facial = _tier_member(_now())
    service.sync_catalog()
    gw = gateway_module.current()
    gw.set_default_card(gw.ensure_customer(membership.member), "pm_card_visa")
    db.session.commit()
    started = gw.start_subscription(membership, "card_on_file")  # our answer "lost"
    db.session.rollback()
    assert db.session.get(Membership, membership.id).stripe_subscription_id is None

    first = runner_for(live).invoke(args=["billing", "stripe", "reconcile"])

    assert first.exit_code == 0, first.output
    assert "credits granted" in first.output
    db.session.expire_all()
    repaired = db.session.get(Membership, membership.id)
    assert repaired.stripe_subscription_id == started.subscription["id"]
    assert repaired.state == "active"
    assert ledger.balance([repaired.id], facial.id, _now()) == 2

    again = runner_for(live).invoke(args=["billing", "stripe", "reconcile"])
    assert "Nothing to fix" in again.output


@pytest.fixture
def runner_for():
    return lambda app: app.test_cli_runner()


if os.environ.get("SKIP_STRIPE_SERVER"):
    pytestmark = [pytest.mark.stripe_server, pytest.mark.skip("SKIP_STRIPE_SERVER is set")]
