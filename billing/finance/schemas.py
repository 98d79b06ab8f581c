"""Finance's query parameters and the dashboard summary's JSON.

Unknown query parameters are refused (a misspelt filter must not silently export everything)."""

from __future__ import annotations

import marshmallow as ma
from marshmallow import fields, validate, validates_schema

FORMATS = ("csv", "xero", "qbo")


class ExportQuerySchema(ma.Schema):
    date_from = fields.Date(
        required=True,
        data_key="from",
        metadata={"description": "First day (clinic-local), YYYY-MM-DD"},
    )
    date_to = fields.Date(
        required=True, data_key="to", metadata={"description": "Last day, inclusive"}
    )
    location = fields.String(load_default=None, metadata={"description": "Location code"})
    tier = fields.String(load_default=None, metadata={"description": "Plan code"})
    format = fields.String(
        load_default="csv",
        validate=validate.OneOf(FORMATS),
        metadata={"description": "revenue-journal only: csv (generic), xero or qbo"},
    )
    part = fields.Integer(
        load_default=None,
        validate=validate.Range(min=1),
        metadata={"description": "Xero journals beyond 300 lines: which file (default: a zip)"},
    )

    @validates_schema
    def _range(self, data, **kwargs):
        if data.get("date_from") and data.get("date_to") and data["date_to"] < data["date_from"]:
            raise ma.ValidationError("must be on or after 'from'", field_name="to")


class SummaryQuerySchema(ma.Schema):
    on = fields.Date(
        load_default=None, metadata={"description": "Day (default: today, clinic-local)"}
    )


class MoneySchema(ma.Schema):
    amount_minor = fields.Integer()
    currency = fields.String()
    display = fields.String()


class RecognisedSchema(ma.Schema):
    treatments = fields.Nested(MoneySchema)
    breakage = fields.Nested(MoneySchema)
    total = fields.Nested(MoneySchema)


class PaymentsSchema(ma.Schema):
    charges = fields.Nested(MoneySchema)
    refunds = fields.Nested(MoneySchema)
    disputes = fields.Nested(MoneySchema)
    fees = fields.Nested(MoneySchema)
    net = fields.Nested(MoneySchema)


class TierSchema(ma.Schema):
    tier = fields.String()
    name = fields.String()
    members = fields.Integer()
    mrr = fields.Nested(MoneySchema)


class SummarySchema(ma.Schema):
    on = fields.Date()
    month_start = fields.Date()
    currency = fields.String()
    deferred_revenue = fields.Nested(MoneySchema)
    recognised_this_month = fields.Nested(RecognisedSchema)
    payments_this_month = fields.Nested(PaymentsSchema)
    active_members = fields.Integer()
    active_members_by_tier = fields.List(fields.Nested(TierSchema))
    mrr = fields.Nested(MoneySchema)
