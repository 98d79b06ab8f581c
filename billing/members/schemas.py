"""Members' JSON in and out. Unknown fields are refused (a typo is a 422, never ignored);
stripe_customer_id is shown but cannot be set through the API."""

from __future__ import annotations

from typing import Any

import marshmallow as ma
from marshmallow import fields, validate

from billing.clinic.models import Location
from billing.extensions import db

PHONE_PATTERN = r"^\+?[0-9 ()./-]{3,32}$"


class LocationRef(fields.Field):
    """A clinic location given by its id (1) or its code ("orchard")."""

    def _deserialize(self, value: Any, attr, data, **kwargs):
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise ma.ValidationError("Give a location code or id.")
        if isinstance(value, str) and not value.strip():
            raise ma.ValidationError("Give a location code or id.")
        return value


def _name(**kwargs) -> fields.String:
    return fields.String(validate=validate.Length(min=1, max=100), **kwargs)


def _member_fields(create: bool) -> dict[str, fields.Field]:
    """One definition for create (required names and email) and PATCH (only what is sent)."""
    return {
        "first_name": _name(required=create),
        "last_name": _name(required=create),
        "email": fields.Email(required=create, validate=validate.Length(max=254)),
        "phone": fields.String(
            allow_none=True,
            validate=validate.Regexp(
                PHONE_PATTERN, error="A phone number: digits, spaces, + ( ) - only."
            ),
        ),
        "date_of_birth": fields.Date(allow_none=True),
        "home_location": LocationRef(
            allow_none=True, metadata={"description": "A location code or id."}
        ),
        "notes": fields.String(validate=validate.Length(max=10_000)),
    }


MemberInSchema = ma.Schema.from_dict(_member_fields(create=True), name="MemberIn")
MemberPatchSchema = ma.Schema.from_dict(_member_fields(create=False), name="MemberPatch")


class MemberQuerySchema(ma.Schema):
    q = fields.String(
        load_default=None,
        validate=validate.Length(max=200),
        metadata={"description": "A name prefix, an email prefix or phone digits."},
    )
    limit = fields.Integer(load_default=20, validate=validate.Range(min=1, max=50))
    offset = fields.Integer(load_default=0, validate=validate.Range(min=0))


def _value(obj: Any, name: str) -> Any:
    return obj.get(name) if isinstance(obj, dict) else getattr(obj, name, None)


class MemberLocationSchema(ma.Schema):
    id = fields.Integer()
    code = fields.String()
    name = fields.String()


# One instance for every member dumped: building a schema copies its fields, which cost more than
# the dump itself (a search page has up to 50 members).
_LOCATION = MemberLocationSchema()


class MemberOutSchema(ma.Schema):
    id = fields.Integer()
    first_name = fields.String()
    last_name = fields.String()
    full_name = fields.String()
    email = fields.String()
    phone = fields.String(allow_none=True)
    date_of_birth = fields.Date(allow_none=True)
    home_location = fields.Method("dump_location")
    notes = fields.String(metadata={"description": "The clinic's notes (not shown to clients)."})
    stripe_customer_id = fields.String(allow_none=True, dump_only=True)
    created_at = fields.DateTime()
    updated_at = fields.DateTime()

    def dump_location(self, obj) -> dict | None:
        location_id = _value(obj, "home_location_id")
        if location_id is None:
            return None
        return _LOCATION.dump(db.session.get(Location, location_id))


class MemberPageSchema(ma.Schema):
    items = fields.List(fields.Nested(MemberOutSchema))
    limit = fields.Integer()
    offset = fields.Integer()
    next_offset = fields.Integer(allow_none=True)
