"""JSON in and out of the Stripe-backed membership actions. Unknown fields are refused (422).

The membership goes out, and pause/resume/cancel/change-tier come in, in the same shapes as
/api/v1/memberships (billing.memberships.schemas), so the plain endpoints can route here."""

from __future__ import annotations

import marshmallow as ma
from marshmallow import fields, validate

from billing.memberships.schemas import MembershipOutSchema
from billing.stripe_sync.models import EventStatus

_STRIPE_ID = {"validate": validate.Length(min=3, max=255)}


class SubscribeInSchema(ma.Schema):
    mode = fields.String(
        load_default="online",
        validate=validate.OneOf(["online", "card_on_file"]),
        metadata={
            "description": "online: the member pays the first invoice in the browser "
            "(client_secret); card_on_file: the card is charged now."
        },
    )
    payment_method = fields.String(
        load_default=None,
        metadata={"description": "card_on_file: a PaymentMethod id (pm_...) to save as default."},
        **_STRIPE_ID,
    )


class SubscribeOutSchema(ma.Schema):
    membership = fields.Nested(MembershipOutSchema)
    subscription_id = fields.String()
    subscription_status = fields.String(allow_none=True)
    invoice_status = fields.String(allow_none=True)
    client_secret = fields.String(allow_none=True)
    hosted_invoice_url = fields.String(allow_none=True)


class CardSessionInSchema(ma.Schema):
    flow = fields.String(
        load_default="setup_intent", validate=validate.OneOf(["setup_intent", "portal"])
    )
    return_url = fields.Url(load_default=None, require_tld=False)
    payment_method = fields.String(
        load_default=None,
        metadata={
            "description": "A card confirmed by the SetupIntent: saved as the default, "
            "and an open invoice is tried again."
        },
        **_STRIPE_ID,
    )


class CardSessionOutSchema(ma.Schema):
    kind = fields.String(metadata={"description": "setup_intent, portal or saved"})
    id = fields.String()
    client_secret = fields.String()
    url = fields.String()
    payment_method = fields.String()
    invoice_status = fields.String(allow_none=True)
    detail = fields.String()


class RefundInSchema(ma.Schema):
    amount_minor = fields.Integer(
        load_default=None,
        strict=True,
        validate=validate.Range(min=1),
        metadata={"description": "Leave out to refund what is left of the payment."},
    )


class RefundOutSchema(ma.Schema):
    invoice_id = fields.Integer(attribute="invoice.id")
    refund_id = fields.String()
    amount_minor = fields.Integer()
    currency = fields.String(attribute="invoice.currency")
    amount_refunded_minor = fields.Integer(attribute="invoice.amount_refunded_minor")
    outcome = fields.String(allow_none=True)


class EventQuerySchema(ma.Schema):
    status = fields.String(
        load_default=None,
        validate=validate.OneOf(EventStatus.ALL),
    )
    limit = fields.Integer(load_default=100, validate=validate.Range(min=1, max=500))


class StripeEventOutSchema(ma.Schema):
    id = fields.String()
    type = fields.String()
    status = fields.String()
    stripe_created = fields.DateTime()
    received_at = fields.DateTime()
    processed_at = fields.DateTime(allow_none=True)
    attempts = fields.Integer()
    outcome = fields.String(allow_none=True)
    error = fields.String(allow_none=True)
