"""The ledger's JSON: balances a member can read, and the entries an accountant can trace.
Quantities are whole numbers (sessions or units); money is integer minor units."""

from __future__ import annotations

import marshmallow as ma
from marshmallow import fields, validate

from billing.entitlements import service
from billing.memberships import service as memberships
from billing.money import format_money

_MINOR = {"strict": True, "validate": validate.Range(min=0, error="Must not be negative.")}


# ---------------------------------------------------------------------------------------- in


class LedgerQuerySchema(ma.Schema):
    limit = fields.Integer(load_default=50, validate=validate.Range(min=1, max=200))
    offset = fields.Integer(load_default=0, validate=validate.Range(min=0))


class AdjustInSchema(ma.Schema):
    delta = fields.Integer(
        required=True,
        strict=True,
        validate=validate.NoneOf([0], error="An adjustment must change the quantity."),
        metadata={"description": "Credits to add (positive) or remove (negative)."},
    )
    reason = fields.String(required=True, validate=validate.Length(min=1, max=2000))


class GrantItemInSchema(ma.Schema):
    plan_item_id = fields.Integer(required=True, strict=True)
    quantity = fields.Integer(
        required=True,
        strict=True,
        validate=validate.Range(min=1, max=10_000, error="Must be a whole number above zero."),
    )


class ManualGrantInSchema(ma.Schema):
    reason = fields.String(required=True, validate=validate.Length(min=1, max=2000))
    period_start = fields.AwareDateTime(
        load_default=None, metadata={"description": "Default: the current period."}
    )
    period_end = fields.AwareDateTime(load_default=None)
    net_amount_minor = fields.Integer(
        load_default=0,
        metadata={"description": "Money received for it outside Stripe, ex-tax; usually 0."},
        **_MINOR,
    )
    items = fields.List(
        fields.Nested(GrantItemInSchema),
        load_default=None,
        validate=validate.Length(min=1),
        metadata={"description": "Default: everything the tier includes."},
    )


# --------------------------------------------------------------------------------------- out


class CreditLotSchema(ma.Schema):
    credit_id = fields.Integer(attribute="credit.id")
    remaining = fields.Integer()
    expires_at = fields.DateTime()
    period_start = fields.DateTime(attribute="credit.period_start")
    period_end = fields.DateTime(attribute="credit.period_end")
    product_type = fields.String(attribute="credit.product_type")


class EntitlementTreatmentSchema(ma.Schema):
    id = fields.Integer()
    code = fields.String()
    name = fields.String()


class BalanceSchema(ma.Schema):
    label = fields.String()
    treatments = fields.Function(
        lambda e: EntitlementTreatmentSchema(many=True).dump(_treatments(e))
    )
    unit = fields.String(attribute="unit_label")
    remaining = fields.Integer()
    next_expiry = fields.DateTime()
    value_at_list_minor = fields.Integer(
        metadata={"description": "What the remaining credits would cost at list price."}
    )
    currency = fields.String()
    value_at_list_display = fields.Function(
        lambda e: format_money(e.value_at_list_minor, e.currency)
    )
    lots = fields.List(fields.Nested(CreditLotSchema))


def _treatments(entitlement):
    credit = entitlement.lots[0].credit
    if credit.treatment is not None:
        return [credit.treatment]
    return credit.plan_item.treatments if credit.plan_item else []


class MembershipBalancesSchema(ma.Schema):
    membership_id = fields.Integer(attribute="membership.id")
    role = fields.String(metadata={"description": "owner, or beneficiary of someone's"})
    owner_id = fields.Integer(attribute="membership.member_id")
    plan = fields.String(attribute="membership.plan_version.plan.name")
    plan_code = fields.String(attribute="membership.plan_version.plan.code")
    state = fields.String(attribute="membership.state")
    state_text = fields.Function(lambda x: memberships.describe_state(x.membership))
    balances = fields.List(fields.Nested(BalanceSchema))


class LedgerEntrySchema(ma.Schema):
    id = fields.Integer()
    credit_id = fields.Integer()
    item = fields.Function(lambda e: service.credit_label(e.credit))
    kind = fields.String()
    quantity = fields.Integer()
    value_minor = fields.Integer()
    currency = fields.String()
    expires_at = fields.DateTime()
    period_start = fields.DateTime()
    period_end = fields.DateTime()
    actor = fields.String()
    reason = fields.String()
    invoice_id = fields.Integer(allow_none=True)
    visit_line_id = fields.Integer(allow_none=True)
    member_id = fields.Integer(allow_none=True, metadata={"description": "Who was treated."})
    reverses_entry_id = fields.Integer(allow_none=True)
    created_at = fields.DateTime()


class LedgerPageSchema(ma.Schema):
    items = fields.List(fields.Nested(LedgerEntrySchema))
    limit = fields.Integer()
    offset = fields.Integer()
    next_offset = fields.Integer(allow_none=True)


class AdjustmentOutSchema(ma.Schema):
    entry = fields.Nested(LedgerEntrySchema)
    remaining = fields.Integer(metadata={"description": "The credit's balance after it."})


class GrantedCreditSchema(ma.Schema):
    id = fields.Integer()
    item = fields.Function(service.credit_label)
    quantity = fields.Integer()
    unit = fields.String(attribute="unit_label")
    allocated_minor = fields.Integer()
    expires_at = fields.DateTime()


class GrantOutSchema(ma.Schema):
    id = fields.Integer()
    membership_id = fields.Integer()
    period_start = fields.DateTime()
    period_end = fields.DateTime()
    source_ref = fields.String()
    net_amount_minor = fields.Integer()
    currency = fields.String()
    actor = fields.String()
    reason = fields.String()
    credits = fields.List(fields.Nested(GrantedCreditSchema))
