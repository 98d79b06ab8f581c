"""Gifts' JSON in and out. Money in integer minor units with the currency."""

from __future__ import annotations

import marshmallow as ma
from marshmallow import fields, validate

from billing.series.schemas import CollectedSchema
from billing.series.service import PAYMENT_METHODS


class GiftInSchema(ma.Schema):
    buyer_member_id = fields.Integer(
        strict=True,
        load_default=None,
        allow_none=True,
        metadata={"description": "Who pays (a client key: themselves, the default)."},
    )
    plan = fields.String(
        required=True,
        validate=validate.Length(min=1, max=64),
        metadata={"description": "A monthly tier's code (or a series' code)."},
    )
    months = fields.Integer(
        strict=True,
        load_default=None,
        allow_none=True,
        validate=validate.Range(min=1, max=36, error="A gift is of 1 to 36 months."),
        metadata={"description": "Months of the tier (a series: leave out, or 1)."},
    )
    recipient_name = fields.String(required=True, validate=validate.Length(min=1, max=200))
    recipient_email = fields.Email(load_default=None, allow_none=True)
    message = fields.String(load_default="", validate=validate.Length(max=2000))
    payment = fields.String(required=True, validate=validate.OneOf(PAYMENT_METHODS))


class ClaimInSchema(ma.Schema):
    member_id = fields.Integer(
        strict=True,
        load_default=None,
        allow_none=True,
        metadata={"description": "Who claims (a client key: themselves, the default)."},
    )
    membership_id = fields.Integer(
        strict=True,
        load_default=None,
        allow_none=True,
        metadata={"description": "Add the months to this membership of the same tier."},
    )


class GiftOutSchema(ma.Schema):
    code = fields.String(attribute="gift.code")
    status = fields.String(attribute="gift.status")
    plan = fields.Function(
        lambda v: {
            "code": v.gift.plan_version.plan.code,
            "name": v.gift.plan_version.plan.name,
            "kind": v.gift.plan_version.plan.kind,
            "plan_version_id": v.gift.plan_version_id,
        }
    )
    months = fields.Integer(attribute="gift.months")
    months_converted = fields.Integer(attribute="gift.months_converted")
    buyer_member_id = fields.Integer(attribute="gift.buyer_member_id")
    recipient_name = fields.String(attribute="gift.recipient_name")
    recipient_email = fields.String(attribute="gift.recipient_email", allow_none=True)
    message = fields.String(attribute="gift.message")
    amount_minor = fields.Integer(attribute="gift.amount_minor")
    net_minor = fields.Integer(attribute="gift.net_minor")
    currency = fields.String(attribute="gift.currency")
    invoice_id = fields.Integer(attribute="gift.invoice_id", allow_none=True)
    purchased_at = fields.DateTime(attribute="gift.purchased_at")
    claim_by = fields.DateTime(attribute="gift.claim_by")
    claimed_at = fields.DateTime(attribute="gift.claimed_at", allow_none=True)
    claimed_by_member_id = fields.Integer(attribute="gift.claimed_by_member_id", allow_none=True)
    membership_id = fields.Integer(attribute="gift.membership_id")
    applied_membership_id = fields.Integer(attribute="gift.applied_membership_id", allow_none=True)
    payment = fields.Nested(CollectedSchema, attribute="collected", allow_none=True)
