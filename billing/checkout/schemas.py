"""Checkout JSON in and out. Unknown fields are refused; quantities are whole numbers only."""

from __future__ import annotations

import marshmallow as ma
from marshmallow import fields, validate

from billing.checkout.rules import RULES
from billing.checkout.service import PAY_WITH, PAYMENT_METHODS
from billing.money import Money


class VisitInSchema(ma.Schema):
    member_id = fields.Integer(required=True, strict=True)
    location = fields.String(required=True, metadata={"description": "location code"})
    supervising_staff_id = fields.Integer(strict=True, allow_none=True, load_default=None)


class VisitPatchSchema(ma.Schema):
    supervising_staff_id = fields.Integer(strict=True, allow_none=True, required=True)


class OverrideSchema(ma.Schema):
    rule = fields.String(required=True, validate=validate.OneOf(list(RULES)))
    reason = fields.String(required=True, validate=validate.Length(min=3, max=2000))


class LineInSchema(ma.Schema):
    treatment = fields.String(required=True, metadata={"description": "treatment code"})
    provider_id = fields.Integer(required=True, strict=True)
    quantity = fields.Integer(
        strict=True,
        load_default=1,
        validate=validate.Range(min=1, error="Must be a whole number above zero."),
        metadata={"description": "1 for a session; units for a unit treatment"},
    )
    pay_with = fields.String(load_default="auto", validate=validate.OneOf(PAY_WITH))
    override = fields.Nested(OverrideSchema, load_default=None, allow_none=True)
    overrides = fields.List(fields.Nested(OverrideSchema), load_default=list)


class DeskRedeemInSchema(LineInSchema):
    """One call at the desk: the client and where, then the line as for a visit."""

    member_id = fields.Integer(required=True, strict=True)
    location = fields.String(required=True, metadata={"description": "location code"})
    supervising_staff_id = fields.Integer(
        strict=True,
        allow_none=True,
        load_default=None,
        metadata={"description": "recorded on the visit when this call opens it"},
    )


class VoidInSchema(ma.Schema):
    reason = fields.String(required=True, validate=validate.Length(min=3, max=2000))


class CloseInSchema(ma.Schema):
    payment = fields.String(load_default="desk", validate=validate.OneOf(PAYMENT_METHODS))


class ConsultationInSchema(ma.Schema):
    held_at = fields.AwareDateTime(load_default=None, allow_none=True)
    treatment = fields.String(load_default=None, allow_none=True)
    staff_id = fields.Integer(strict=True, load_default=None, allow_none=True)
    notes = fields.String(load_default="", validate=validate.Length(max=5000))


class LookupQuerySchema(ma.Schema):
    member_id = fields.Integer(load_default=None)
    q = fields.String(load_default=None)


def _money(amount_attr: str):
    def render(obj):
        m = Money(getattr(obj, amount_attr), obj.currency)
        return m.as_dict()

    return fields.Function(render)


class OverrideOutSchema(ma.Schema):
    rule = fields.String()
    reason = fields.String()
    actor = fields.String()
    at = fields.DateTime()


class LineOutSchema(ma.Schema):
    id = fields.Integer()
    visit_id = fields.Integer()
    treatment = fields.Function(lambda x: {"code": x.treatment.code, "name": x.treatment.name})
    provider_id = fields.Integer()
    quantity = fields.Integer()
    status = fields.String()
    membership_id = fields.Integer(allow_none=True)
    list_price = _money("list_price_minor")
    discount = _money("discount_minor")
    amount = _money("amount_minor")
    performed_at = fields.DateTime()
    created_by = fields.String()
    voided_at = fields.DateTime(allow_none=True)
    voided_by = fields.String(allow_none=True)
    void_reason = fields.String(allow_none=True)


class VisitOutSchema(ma.Schema):
    id = fields.Integer()
    member_id = fields.Integer()
    location_id = fields.Integer()
    state = fields.String()
    supervising_staff_id = fields.Integer(allow_none=True)
    opened_at = fields.DateTime()
    opened_by = fields.String()
    closed_at = fields.DateTime(allow_none=True)
    closed_by = fields.String(allow_none=True)
    amount_due = _money("amount_due_minor")
    payment_status = fields.String()
    payment_method = fields.String(allow_none=True)
    lines = fields.List(fields.Nested(LineOutSchema))


class ConsultationOutSchema(ma.Schema):
    id = fields.Integer()
    member_id = fields.Integer()
    treatment_id = fields.Integer(allow_none=True)
    staff_id = fields.Integer(allow_none=True)
    held_at = fields.DateTime()
    notes = fields.String()
    recorded_by = fields.String()


class ReceiptSchema(ma.Schema):
    """The receipt is built by the service as plain data (see the README (Checkout))."""

    class Meta:
        unknown = ma.INCLUDE

    visit_id = fields.Integer()
    state = fields.String()
    client = fields.Dict()
    location = fields.String()
    opened = fields.Dict(allow_none=True)
    closed = fields.Dict(allow_none=True)
    lines = fields.List(fields.Dict())
    remaining = fields.List(fields.Dict())
    owed = fields.Dict()
    payment = fields.Dict()


class LookupSchema(ma.Schema):
    client = fields.Dict(allow_none=True)
    candidates = fields.List(fields.Dict())
    memberships = fields.List(fields.Dict())
    member_discount_bp = fields.Integer()
    balances = fields.List(fields.Dict())
    treatments = fields.List(fields.Dict())
