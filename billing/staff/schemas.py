"""Staff JSON in and out. Unknown fields are refused (a typo is a 422, never ignored)."""

from __future__ import annotations

import marshmallow as ma
from marshmallow import fields, validate

from billing.staff.models import CredentialKind, StaffRole

ROLES = [r.value for r in StaffRole]
KINDS = [k.value for k in CredentialKind]


class StaffInSchema(ma.Schema):
    name = fields.String(required=True, validate=validate.Length(min=1, max=200))
    email = fields.Email(allow_none=True, load_default=None)
    role = fields.String(required=True, validate=validate.OneOf(ROLES))
    location = fields.String(required=True, metadata={"description": "location code"})
    active = fields.Boolean(load_default=True)


class StaffPatchSchema(ma.Schema):
    name = fields.String(validate=validate.Length(min=1, max=200))
    email = fields.Email(allow_none=True)
    role = fields.String(validate=validate.OneOf(ROLES))
    location = fields.String()
    active = fields.Boolean()


class StaffQuerySchema(ma.Schema):
    location = fields.String()
    role = fields.String(validate=validate.OneOf(ROLES))
    include_inactive = fields.Boolean(load_default=False)


class CredentialInSchema(ma.Schema):
    kind = fields.String(required=True, validate=validate.OneOf(KINDS))
    number = fields.String(load_default="", validate=validate.Length(max=64))
    expires_on = fields.Date(allow_none=True, load_default=None)


class CredentialPatchSchema(ma.Schema):
    number = fields.String(validate=validate.Length(max=64))
    expires_on = fields.Date(allow_none=True)


class CredentialOutSchema(ma.Schema):
    id = fields.Integer()
    kind = fields.String()
    number = fields.String()
    expires_on = fields.Date(allow_none=True)


class StaffOutSchema(ma.Schema):
    id = fields.Integer()
    name = fields.String()
    email = fields.String(allow_none=True)
    role = fields.String()
    location = fields.Function(lambda s: s.location.code if s.location else None)
    active = fields.Boolean()
    credentials = fields.List(fields.Nested(CredentialOutSchema))
    created_at = fields.DateTime()


class ShiftInSchema(ma.Schema):
    location = fields.String(required=True)
    day = fields.Date(required=True, metadata={"description": "clinic-local day"})


class ShiftQuerySchema(ma.Schema):
    location = fields.String()
    day_from = fields.Date(data_key="from")
    day_to = fields.Date(data_key="to")


class ShiftOutSchema(ma.Schema):
    id = fields.Integer()
    staff_id = fields.Integer()
    staff_name = fields.Function(lambda s: s.staff.name)
    location = fields.Function(lambda s: s.location.code)
    day = fields.Date()


class PolicyInSchema(ma.Schema):
    may_perform = fields.List(fields.String(validate=validate.OneOf(KINDS)))
    may_supervise = fields.List(fields.String(validate=validate.OneOf(KINDS)))
    needs_supervision = fields.Boolean()


class PolicyOutSchema(ma.Schema):
    category = fields.String()
    may_perform = fields.List(fields.String())
    may_supervise = fields.List(fields.String())
    needs_supervision = fields.Boolean()
    source = fields.String(metadata={"description": "clinic (a row) or default (in code)"})
