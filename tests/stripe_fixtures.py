"""Signed Stripe events for tests, built from Stripe's own example objects (fixtures3.json).

Each builder copies Stripe's published example of a resource (so the test sees every field real
Stripe sends today, in today's shape), sets the ids, amounts and periods a test cares about, and
`event()` wraps it the way Stripe does. `post()` signs the body with Stripe's scheme,
t=<unix>,v1=HMAC-SHA256(secret, "<t>.<body>"), computed here by hand rather than with the SDK
the service itself uses to verify."""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
import os
import time
from datetime import datetime
from functools import cache
from itertools import count
from pathlib import Path

SECRET = "whsec_test_secret"  # TestingConfig.STRIPE_WEBHOOK_SECRET
# Stripe's published example objects live in the shared folder beside the repository (CI clones
# the repository with shared/ next to it); STRIPE_FIXTURES names another copy.
_CANDIDATES = [
    Path(p)
    for p in (
        os.environ.get("STRIPE_FIXTURES", ""),
        Path(__file__).resolve().parents[2] / "shared" / "stripe" / "fixtures3.json",
        "/work/shared/stripe/fixtures3.json",
    )
    if p
]
_seq = count(1)


@cache
def _resources() -> dict:
    for path in _CANDIDATES:
        if path.exists():
            return json.loads(path.read_text())["resources"]
    raise FileNotFoundError(f"Stripe's fixtures3.json not found in {_CANDIDATES}")


def resource(name: str) -> dict:
    return copy.deepcopy(_resources()[name])


def ts(moment: datetime | None) -> int | None:
    return int(moment.timestamp()) if moment else None


def new_id(prefix: str) -> str:
    return f"{prefix}_test{next(_seq):06d}"


# ---------------------------------------------------------------------------------------------
# Resources


def subscription_line(
    *,
    invoice_id: str,
    subscription: str,
    price: str,
    amount: int,
    period_start: datetime,
    period_end: datetime,
    currency: str = "sgd",
    proration: bool = False,
    taxes: list[dict] | None = None,
) -> dict:
    line = resource("line_item")
    line.update(
        id=new_id("il"),
        invoice=invoice_id,
        amount=amount,
        subtotal=amount,
        currency=currency,
        description="1 x membership",
        period={"start": ts(period_start), "end": ts(period_end)},
        taxes=taxes or [],
        parent={
            "type": "subscription_item_details",
            "invoice_item_details": None,
            "subscription_item_details": {
                "invoice_item": None,
                "proration": proration,
                "proration_details": {"credited_items": None},
                "subscription": subscription,
                "subscription_item": new_id("si"),
            },
        },
        pricing={
            "type": "price_details",
            "price_details": {"price": price, "product": "prod_test"},
            "unit_amount_decimal": str(amount),
        },
    )
    return line


def fee_line(*, invoice_id: str, amount: int, description: str, currency: str = "sgd") -> dict:
    line = resource("line_item")
    line.update(
        id=new_id("il"),
        invoice=invoice_id,
        amount=amount,
        subtotal=amount,
        currency=currency,
        description=description,
        taxes=[],
        parent={
            "type": "invoice_item_details",
            "invoice_item_details": {
                "invoice_item": new_id("ii"),
                "proration": False,
                "proration_details": {"credited_items": None},
                "subscription": None,
            },
            "subscription_item_details": None,
        },
    )
    return line


def inclusive_tax(amount: int, taxable: int) -> dict:
    return {
        "amount": amount,
        "tax_behavior": "inclusive",
        "taxability_reason": "standard_rated",
        "taxable_amount": taxable,
        "type": "tax_rate_details",
        "tax_rate_details": {"tax_rate": "txr_gst"},
    }


def invoice(
    *,
    customer: str,
    subscription: str | None,
    price: str | None = None,
    amount: int,
    period_start: datetime | None = None,
    period_end: datetime | None = None,
    status: str = "paid",
    billing_reason: str = "subscription_cycle",
    attempt_count: int = 1,
    next_payment_attempt: datetime | None = None,
    payment_intent: str | None = None,
    taxes: list[dict] | None = None,
    extra_lines: list[dict] | None = None,
    id: str | None = None,
    currency: str = "sgd",
    created: datetime | None = None,
) -> dict:
    """An invoice in today's shape: subscription under parent.subscription_details, the
    period on the subscription line, tax in `taxes` / `total_taxes`, the payment in `payments`."""
    obj = resource("invoice")
    invoice_id = id or new_id("in")
    lines = []
    if subscription:
        lines.append(
            subscription_line(
                invoice_id=invoice_id,
                subscription=subscription,
                price=price or "price_test",
                amount=amount,
                period_start=period_start,
                period_end=period_end,
                currency=currency,
                taxes=taxes,
            )
        )
    lines += extra_lines or []
    total = sum(line["amount"] for line in lines)
    paid = status == "paid"
    obj.update(
        id=invoice_id,
        customer=customer,
        currency=currency,
        status=status,
        billing_reason=billing_reason,
        attempt_count=attempt_count,
        attempted=attempt_count > 0,
        amount_due=total,
        amount_paid=total if paid else 0,
        amount_remaining=0 if paid else total,
        subtotal=total,
        total=total,
        total_excluding_tax=total - sum(t["amount"] for t in taxes or []),
        total_taxes=taxes or [],
        next_payment_attempt=ts(next_payment_attempt),
        created=ts(created or period_start) or int(time.time()),
        period_start=ts(period_start),
        period_end=ts(period_start),
        lines={"object": "list", "data": lines, "has_more": False, "url": "/v1/invoices/x/lines"},
        status_transitions={
            "finalized_at": ts(period_start),
            "marked_uncollectible_at": None,
            "paid_at": ts(period_start) if paid else None,
            "voided_at": None,
        },
        parent=(
            {
                "type": "subscription_details",
                "quote_details": None,
                "subscription_details": {"metadata": {}, "subscription": subscription},
            }
            if subscription
            else None
        ),
        subscription=None,
    )
    if payment_intent:
        obj["payments"] = {
            "object": "list",
            "data": [
                {
                    "object": "invoice_payment",
                    "id": new_id("inpay"),
                    "amount_paid": total if paid else None,
                    "status": "paid" if paid else "open",
                    "payment": {"type": "payment_intent", "payment_intent": payment_intent},
                }
            ],
            "has_more": False,
        }
    return obj


def subscription(
    *,
    id: str,
    customer: str,
    price: str,
    status: str = "active",
    period_start: datetime,
    period_end: datetime,
    cancel_at_period_end: bool = False,
    pause_collection: dict | None = None,
    metadata: dict | None = None,
    canceled_at: datetime | None = None,
) -> dict:
    """A subscription in today's shape: the period on its item, not on the subscription."""
    obj = resource("subscription")
    item = obj["items"]["data"][0]
    item["subscription"] = id
    item["price"]["id"] = price
    item["plan"]["id"] = price
    item["current_period_start"] = ts(period_start)
    item["current_period_end"] = ts(period_end)
    obj.update(
        id=id,
        customer=customer,
        status=status,
        cancel_at_period_end=cancel_at_period_end,
        cancel_at=ts(period_end) if cancel_at_period_end else None,
        canceled_at=ts(canceled_at),
        ended_at=ts(canceled_at) if status == "canceled" else None,
        pause_collection=pause_collection,
        metadata=metadata or {},
        start_date=ts(period_start),
        created=ts(period_start),
        trial_start=None,
        trial_end=None,
        pending_update=None,
    )
    return obj


def charge(
    *,
    id: str,
    amount: int,
    payment_intent: str | None,
    customer: str,
    amount_refunded: int = 0,
    refunds: list[dict] | None = None,
) -> dict:
    obj = resource("charge")
    obj.update(
        id=id,
        amount=amount,
        amount_captured=amount,
        amount_refunded=amount_refunded,
        refunded=amount_refunded >= amount,
        captured=True,
        currency="sgd",
        customer=customer,
        payment_intent=payment_intent,
        refunds={"object": "list", "data": refunds or [], "has_more": False, "url": "/"},
    )
    return obj


def refund(*, id: str, charge_id: str, amount: int, payment_intent: str | None = None) -> dict:
    obj = resource("refund")
    obj.update(
        id=id, charge=charge_id, amount=amount, currency="sgd", payment_intent=payment_intent
    )
    return obj


def dispute(*, id: str, charge_id: str, amount: int, payment_intent: str | None = None) -> dict:
    obj = resource("dispute")
    obj.update(
        id=id, charge=charge_id, amount=amount, currency="sgd", payment_intent=payment_intent
    )
    return obj


def customer(*, id: str, email: str, name: str, metadata: dict | None = None) -> dict:
    obj = resource("customer")
    obj.update(id=id, email=email, name=name, metadata=metadata or {}, discount=None)
    obj["invoice_settings"]["default_payment_method"] = "pm_card_visa_saved"
    return obj


# ---------------------------------------------------------------------------------------------
# Events, signed and posted


def event(type_: str, obj: dict, *, created: datetime | int | None = None, id: str | None = None):
    """Wrap an object the way Stripe does (resources.event, current API version)."""
    wrapper = resource("event")
    if isinstance(created, datetime):
        created = ts(created)
    wrapper.update(
        id=id or new_id("evt"),
        type=type_,
        created=created or int(time.time()),
        api_version="2026-10-28.endive",
        livemode=False,
        data={"object": obj},
        request={"id": None, "idempotency_key": None},
    )
    return wrapper


def signature(body: str, *, secret: str = SECRET, timestamp: int | None = None) -> str:
    t = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{t}.{body}".encode(), hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def post(client, evt: dict | None = None, *, body: str | None = None, **sign):
    """POST an event to /webhooks/stripe, signed unless a header is given."""
    body = body if body is not None else json.dumps(evt)
    header = sign.pop("header", None) or signature(body, **sign)
    return client.post(
        "/webhooks/stripe",
        data=body,
        headers={"Stripe-Signature": header, "Content-Type": "application/json"},
    )


# ---------------------------------------------------------------------------------------------
# A member billed through Stripe, as the tests find them


class Billed:
    """A member with a Stripe customer, on a tier whose version has a Stripe price, with a
    membership (pending until its first paid invoice) linked to a Stripe subscription."""

    def __init__(self, now: datetime, *, price: int = 32700, fee: int | None = None) -> None:
        from billing.extensions import db
        from tests import factories as f

        self.facial = f.treatment(price=15000)
        self.peel = f.treatment(price=10000)
        self.version = f.plan(
            [(self.facial, 2), (self.peel, 1)],
            price=price,
            early_termination_fee_minor=fee,
        )
        self.version.stripe_price_id = new_id("price")
        self.member = f.member(stripe_customer_id=new_id("cus"))
        from billing.memberships import service as memberships

        self.membership = memberships.join(
            self.member, self.version, actor="test", now=now, commit=False
        )
        self.membership.stripe_subscription_id = new_id("sub")
        db.session.commit()
        self.customer = self.member.stripe_customer_id
        self.sub = self.membership.stripe_subscription_id

    def invoice(self, start: datetime, end: datetime, **kw) -> dict:
        kw.setdefault("amount", self.version.price_minor)
        return invoice(
            customer=self.customer,
            subscription=self.sub,
            price=self.version.stripe_price_id,
            period_start=start,
            period_end=end,
            **kw,
        )

    def subscription(self, start: datetime, end: datetime, **kw) -> dict:
        kw.setdefault("price", self.version.stripe_price_id)
        return subscription(
            id=self.sub, customer=self.customer, period_start=start, period_end=end, **kw
        )
