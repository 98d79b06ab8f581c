"""Series purchases' JSON in and out. Money in integer minor units with the currency."""

from __future__ import annotations

import marshmallow as ma
from marshmallow import fields, validate

from billing.series.service import LATER_PAYMENT_METHODS, PAYMENT_METHODS


class PurchaseInSchema(ma.Schema):
    member_id = fields.Integer(required=True, strict=True)
    plan = fields.String(
        required=True,
        validate=validate.Length(min=1, max=64),
        metadata={"description": "The series' plan code; its current version is sold."},
    )
    payment = fields.String(
        required=True,
        validate=validate.OneOf(PAYMENT_METHODS),
        metadata={
            "description": "desk (paid at the desk), card_on_file (charged now through Stripe) "
            "or online (a PaymentIntent the client's browser confirms)."
        },
    )
    instalments = fields.Integer(
        strict=True,
        load_default=None,
        allow_none=True,
        validate=validate.Range(min=1, max=60),
        metadata={"description": "1 (in full, the default) or the plan's number of instalments."},
    )


class InstalmentPayInSchema(ma.Schema):
    payment = fields.String(load_default="desk", validate=validate.OneOf(LATER_PAYMENT_METHODS))


class InstalmentSchema(ma.Schema):
    number = fields.Integer()
    total_minor = fields.Integer()
    tax_minor = fields.Integer()
    net_minor = fields.Integer()
    due_at = fields.DateTime(allow_none=True)
    paid_at = fields.DateTime(allow_none=True)
    invoice_id = fields.Integer(allow_none=True)


class CollectedSchema(ma.Schema):
    status = fields.String()
    payment_intent_id = fields.String(allow_none=True)
    client_secret = fields.String(allow_none=True)


class SeriesBalanceSchema(ma.Schema):
    label = fields.String()
    remaining = fields.Integer()
    granted = fields.Integer()
    unit_label = fields.String()
    next_possible_on = fields.String(allow_none=True)
    summary = fields.String(
        metadata={"description": 'e.g. "BBL: 2 of 3 left, next possible from 14 Jan"'}
    )


class PurchaseOutSchema(ma.Schema):
    id = fields.Integer(attribute="purchase.id")
    membership_id = fields.Integer(attribute="purchase.membership_id")
    member_id = fields.Integer(attribute="purchase.member_id")
    plan = fields.Function(
        lambda v: {
            "code": v.membership.plan_version.plan.code,
            "name": v.membership.plan_version.plan.name,
            "plan_version_id": v.membership.plan_version_id,
        }
    )
    state = fields.String(attribute="membership.state")
    instalments = fields.Integer(attribute="purchase.instalments")
    grant_mode = fields.String(attribute="purchase.grant_mode")
    total_minor = fields.Integer(attribute="purchase.total_minor")
    tax_minor = fields.Integer(attribute="purchase.tax_minor")
    net_minor = fields.Integer(attribute="purchase.net_minor")
    currency = fields.String(attribute="purchase.currency")
    payment_method = fields.String(attribute="purchase.payment_method")
    purchased_at = fields.DateTime(attribute="purchase.purchased_at")
    started_at = fields.DateTime(attribute="purchase.started_at", allow_none=True)
    credits_expire_at = fields.DateTime(allow_none=True)
    instalment_schedule = fields.List(
        fields.Nested(InstalmentSchema), attribute="purchase.instalment_rows"
    )
    payment = fields.Nested(CollectedSchema, attribute="collected", allow_none=True)
    balances = fields.List(fields.Nested(SeriesBalanceSchema))
