"""The catalogue's JSON in and out.

Money goes in and out as integer `*_minor` amounts plus an ISO 4217 `currency`; every amount that
goes out also has a `*_display` string for people. Unknown fields are refused (marshmallow's
default), so a typo is a 422 rather than a silently ignored setting."""

from __future__ import annotations

import marshmallow as ma
from marshmallow import fields, validate, validates_schema

from billing.money import format_money, is_currency
from billing.plans.models import (
    Category,
    CountedIn,
    GrantMode,
    Interval,
    ItemKind,
    PlanKind,
    UnusedRule,
)

CODE_PATTERN = r"^[a-z0-9]+(?:-[a-z0-9]+)*$"
_CODE_MESSAGE = (
    "Use lower-case kebab-case: letters, digits and single hyphens (e.g. 'bbl-series-3')."
)
_MINOR_MESSAGE = (
    "Give money as a whole number of minor units (cents): 38800 for SGD 388.00, never a fraction."
)


def _values(enum) -> list[str]:
    return [member.value for member in enum]


def _check_currency(value: str) -> None:
    if not is_currency(value):
        raise ma.ValidationError(f"{value!r} is not an ISO 4217 currency code (e.g. 'SGD').")


def Code(**kwargs) -> fields.String:  # noqa: N802 (a field factory reads like a field)
    return fields.String(
        validate=[
            validate.Length(min=1, max=64),
            validate.Regexp(CODE_PATTERN, error=_CODE_MESSAGE),
        ],
        **kwargs,
    )


def Minor(**kwargs) -> fields.Integer:  # noqa: N802
    """An amount of money in minor units: a non-negative integer, never a float."""
    return fields.Integer(
        strict=True,
        validate=validate.Range(min=0, error="Must not be negative."),
        error_messages={"invalid": _MINOR_MESSAGE},
        **kwargs,
    )


def Count(minimum: int, maximum: int | None = None, **kwargs) -> fields.Integer:  # noqa: N802
    return fields.Integer(strict=True, validate=validate.Range(min=minimum, max=maximum), **kwargs)


def Currency(**kwargs) -> fields.String:  # noqa: N802
    return fields.String(validate=_check_currency, **kwargs)


# ---------------------------------------------------------------------------------------- in


def _treatment_fields(create: bool) -> dict[str, fields.Field]:
    """One definition for create (defaults filled) and patch (only what was sent)."""

    def opt(default):
        return {"load_default": default} if create else {}

    return {
        "name": fields.String(required=create, validate=validate.Length(min=1, max=200)),
        "category": fields.String(required=create, validate=validate.OneOf(_values(Category))),
        "description": fields.String(**opt("")),
        "list_price_minor": Minor(
            required=create,
            metadata={"description": "Price per session, or per unit for unit treatments."},
        ),
        "currency": Currency(required=create),
        "tax_inclusive": fields.Boolean(**opt(True)),
        "duration_minutes": Count(1, 24 * 60, **opt(60)),
        "is_medical": fields.Boolean(
            metadata={"description": "Only a licensed provider may perform it."}, **opt(False)
        ),
        "requires_consultation": fields.Boolean(**opt(False)),
        "min_interval_days": Count(0, 3650, **opt(0)),
        "counted_in": fields.String(
            validate=validate.OneOf(_values(CountedIn)), **opt(CountedIn.SESSION.value)
        ),
        "unit_label": fields.String(
            validate=validate.Length(min=1, max=32),
            metadata={
                "description": "What one unit is called: unit, syringe, ml. Unit treatments."
            },
            **opt(None),
        ),
    }


class TreatmentInSchema(ma.Schema.from_dict(_treatment_fields(create=True))):
    code = Code(required=True)

    @validates_schema
    def _unit_label_fits(self, data: dict, **kwargs) -> None:
        label = data.get("unit_label")
        if data.get("counted_in") == CountedIn.SESSION and label not in (None, "session"):
            raise ma.ValidationError(
                "A treatment counted in sessions has no unit label; set counted_in: unit to "
                "count it in units.",
                "unit_label",
            )


class TreatmentPatchSchema(ma.Schema.from_dict(_treatment_fields(create=False))):
    """Every field optional; the code never changes."""


class ItemInSchema(ma.Schema):
    """A treatment x quantity, or a choice group: 'any 1 of these facials'.

    Give the quantity as `sessions` (treatments counted in sessions), `units` (treatments counted
    in units: toxin units, syringes) or plain `quantity`."""

    treatment = Code(metadata={"description": "The treatment's code (not with `choice`)."})
    choice = fields.List(
        Code(), metadata={"description": "Codes of the treatments to choose from (at least 2)."}
    )
    quantity = Count(1, 10_000)
    sessions = Count(1, 10_000)
    units = Count(1, 10_000)
    label = fields.String(load_default="", validate=validate.Length(max=200))
    ssp_override_minor = Minor(
        allow_none=True,
        load_default=None,
        metadata={"description": "Standalone selling price of one credit, if not the list price."},
    )
    beneficiary_limit = Count(1, 10_000, allow_none=True, load_default=None)

    @validates_schema
    def _one_of_each(self, data: dict, **kwargs) -> None:
        errors: dict[str, list[str]] = {}
        if ("treatment" in data) == ("choice" in data):
            errors["treatment"] = ["Give either `treatment` (one code) or `choice` (codes)."]
        options = data.get("choice")
        if options is not None:
            if len(options) < 2:
                errors["choice"] = ["A choice group needs at least 2 options."]
            elif len(set(options)) != len(options):
                errors["choice"] = ["A choice group lists each treatment once."]
        given = [key for key in ("quantity", "sessions", "units") if key in data]
        if len(given) != 1:
            errors["quantity"] = ["Give exactly one of `sessions`, `units` or `quantity`."]
        if errors:
            raise ma.ValidationError(errors)


def _terms_fields(create: bool) -> dict[str, fields.Field]:
    """A version's price and contents; on a revision, what is not sent is kept."""

    def opt(default):
        return {"load_default": default} if create else {}

    return {
        "price_minor": Minor(
            required=create,
            metadata={"description": "Per interval for a tier; the whole price for a series."},
        ),
        "currency": Currency(required=create),
        "tax_inclusive": fields.Boolean(**opt(True)),
        "interval": fields.String(
            validate=validate.OneOf(_values(Interval)), **opt(Interval.MONTH.value)
        ),
        "interval_count": Count(1, 36, **opt(1)),
        "signup_fee_minor": Minor(**opt(0)),
        "min_commitment_periods": Count(0, 120, **opt(0)),
        "early_termination_fee_minor": Minor(allow_none=True, **opt(None)),
        "member_discount_bp": Count(
            0,
            10_000,
            metadata={"description": "Discount on treatments not included: 1000 = 10 %."},
            **opt(0),
        ),
        "unused_rule": fields.String(
            validate=validate.OneOf(_values(UnusedRule)), **opt(UnusedRule.EXPIRE.value)
        ),
        "rollover_max_periods": Count(0, 120, **opt(0)),
        "rollover_cap": Count(1, 10_000, allow_none=True, **opt(None)),
        "grant_every_periods": Count(1, 120, **opt(1)),
        "credit_validity_days": Count(1, 3660, allow_none=True, **opt(None)),
        "instalments": Count(1, 60, **opt(1)),
        "grant_mode": fields.String(
            validate=validate.OneOf(_values(GrantMode)), **opt(GrantMode.UPFRONT.value)
        ),
        "items": fields.List(fields.Nested(ItemInSchema), **opt(list)),
    }


TERM_FIELDS = tuple(_terms_fields(create=True))


class VersionRevisionSchema(ma.Schema.from_dict(_terms_fields(create=False))):
    """A new version: the fields sent replace the current version's; `items` replaces all items."""


class PlanInSchema(ma.Schema.from_dict(_terms_fields(create=True))):
    code = Code(required=True)
    name = fields.String(required=True, validate=validate.Length(min=1, max=200))
    description = fields.String(load_default="")
    kind = fields.String(required=True, validate=validate.OneOf(_values(PlanKind)))


class PlanPatchSchema(ma.Schema):
    """Details that do not change what a member bought: no new version."""

    name = fields.String(validate=validate.Length(min=1, max=200))
    description = fields.String()


class CatalogTreatmentSchema(TreatmentInSchema):
    retired = fields.Boolean(load_default=False)


class CatalogPlanSchema(PlanInSchema):
    retired = fields.Boolean(load_default=False)


class CatalogSchema(ma.Schema):
    """A whole catalogue (the YAML file, once its money is in minor units)."""

    treatments = fields.List(fields.Nested(CatalogTreatmentSchema), load_default=list)
    plans = fields.List(fields.Nested(CatalogPlanSchema), load_default=list)


class TreatmentQuerySchema(ma.Schema):
    category = fields.String(validate=validate.OneOf(_values(Category)))
    include_retired = fields.Boolean(load_default=False)


class PlanQuerySchema(ma.Schema):
    kind = fields.String(validate=validate.OneOf(_values(PlanKind)))
    include_retired = fields.Boolean(load_default=False)


# --------------------------------------------------------------------------------------- out


def _display(amount_attr: str, suffix=None) -> fields.Function:
    def render(obj) -> str | None:
        amount = getattr(obj, amount_attr)
        if amount is None:
            return None
        text = format_money(amount, obj.currency)
        return f"{text}{suffix(obj)}" if suffix else text

    return fields.Function(render, metadata={"description": "For people, e.g. 'SGD 388.00'."})


def _per_unit(treatment) -> str:
    return f" per {treatment.unit_label}" if treatment.counted_in == CountedIn.UNIT else ""


def _per_interval(version) -> str:
    if version.plan.kind == PlanKind.SERIES:
        return f" in {version.instalments} instalments" if version.instalments > 1 else ""
    if version.interval_count == 1:
        return f" per {version.interval}"
    return f" every {version.interval_count} {version.interval}s"


class TreatmentOutSchema(ma.Schema):
    id = fields.Integer()
    code = fields.String()
    name = fields.String()
    category = fields.String()
    description = fields.String()
    list_price_minor = fields.Integer()
    currency = fields.String()
    list_price_display = _display("list_price_minor", _per_unit)
    tax_inclusive = fields.Boolean()
    duration_minutes = fields.Integer()
    is_medical = fields.Boolean()
    requires_consultation = fields.Boolean()
    min_interval_days = fields.Integer()
    counted_in = fields.String()
    unit_label = fields.String()
    retired = fields.Boolean(attribute="is_retired")
    retired_at = fields.DateTime(allow_none=True)
    created_at = fields.DateTime()
    updated_at = fields.DateTime()


class OptionOutSchema(ma.Schema):
    code = fields.String(attribute="treatment.code")
    name = fields.String(attribute="treatment.name")
    list_price_minor = fields.Integer(attribute="treatment.list_price_minor")


class ItemOutSchema(ma.Schema):
    id = fields.Integer()
    position = fields.Integer()
    kind = fields.String(metadata={"description": ", ".join(_values(ItemKind))})
    treatment = fields.Function(lambda item: item.treatment.code if item.treatment else None)
    treatment_name = fields.Function(lambda item: item.treatment.name if item.treatment else None)
    options = fields.List(fields.Nested(OptionOutSchema))
    label = fields.String()
    quantity = fields.Integer()
    counted_in = fields.Function(lambda item: item.treatments[0].counted_in)
    unit_label = fields.Function(lambda item: item.treatments[0].unit_label)
    ssp_override_minor = fields.Integer(allow_none=True)
    ssp_per_credit_minor = fields.Function(lambda item: _ssp(item))
    ssp_per_credit_display = fields.Function(
        lambda item: format_money(_ssp(item), item.version.currency)
    )
    beneficiary_limit = fields.Integer(allow_none=True)


def _ssp(item) -> int:
    from billing.plans.service import ssp_per_credit

    return ssp_per_credit(item)


class VersionOutSchema(ma.Schema):
    id = fields.Integer()
    version = fields.Integer()
    is_current = fields.Boolean()
    grandfathered = fields.Boolean(
        metadata={"description": "An older version that members are still on."}
    )
    member_count = fields.Integer(
        metadata={"description": "Memberships on this version that are not canceled."}
    )
    price_minor = fields.Integer()
    currency = fields.String()
    price_display = _display("price_minor", _per_interval)
    tax_inclusive = fields.Boolean()
    interval = fields.String()
    interval_count = fields.Integer()
    signup_fee_minor = fields.Integer()
    signup_fee_display = _display("signup_fee_minor")
    min_commitment_periods = fields.Integer()
    early_termination_fee_minor = fields.Integer(allow_none=True)
    early_termination_fee_display = _display("early_termination_fee_minor")
    member_discount_bp = fields.Integer()
    unused_rule = fields.String()
    rollover_max_periods = fields.Integer()
    rollover_cap = fields.Integer(allow_none=True)
    grant_every_periods = fields.Integer()
    credit_validity_days = fields.Integer(allow_none=True)
    instalments = fields.Integer()
    grant_mode = fields.String()
    items = fields.List(fields.Nested(ItemOutSchema))
    created_at = fields.DateTime()
    created_by = fields.String()


class PlanOutSchema(ma.Schema):
    id = fields.Integer()
    code = fields.String()
    name = fields.String()
    description = fields.String()
    kind = fields.String()
    retired = fields.Boolean(attribute="is_retired")
    retired_at = fields.DateTime(allow_none=True)
    created_at = fields.DateTime()
    current_version = fields.Integer(
        attribute="current_version_number", metadata={"description": "The version sold today."}
    )
    versions = fields.List(fields.Nested(VersionOutSchema))
