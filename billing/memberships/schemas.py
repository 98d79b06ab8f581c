"""Memberships' JSON in and out. The state goes out as its code and in plain words; money as
integer minor units with the currency. Unknown fields are refused (422)."""

from __future__ import annotations

import marshmallow as ma
from marshmallow import fields, validate, validates_schema

from billing.memberships import service
from billing.money import format_money

_REASON = {"validate": validate.Length(max=2000)}


def _iso(moment):
    return moment.isoformat() if moment is not None else None


# ---------------------------------------------------------------------------------------- in


class JoinInSchema(ma.Schema):
    member_id = fields.Integer(required=True, strict=True)
    plan = fields.String(
        validate=validate.Length(min=1, max=64),
        metadata={"description": "The plan's code; its current version is joined."},
    )
    plan_version_id = fields.Integer(
        strict=True, metadata={"description": "Must be the plan's current version."}
    )

    @validates_schema
    def _one_plan(self, data, **kwargs):
        if ("plan" in data) == ("plan_version_id" in data):
            raise ma.ValidationError("Give plan (a code) or plan_version_id, not both.", "plan")


class PauseInSchema(ma.Schema):
    resume_at = fields.AwareDateTime(
        load_default=None, allow_none=True, metadata={"description": "When it resumes."}
    )
    reason = fields.String(load_default="", **_REASON)


class ResumeInSchema(ma.Schema):
    reason = fields.String(load_default="", **_REASON)


class CancelInSchema(ma.Schema):
    at_period_end = fields.Boolean(load_default=True)
    reason = fields.String(load_default="", **_REASON)
    override_reason = fields.String(
        load_default=None,
        validate=validate.Length(min=1, max=2000),
        metadata={"description": "Admin only: cancel inside the minimum commitment, and why."},
    )


class ChangeTierInSchema(ma.Schema):
    plan = fields.String(required=True, validate=validate.Length(min=1, max=64))


class BeneficiaryInSchema(ma.Schema):
    member_id = fields.Integer(required=True, strict=True)


# --------------------------------------------------------------------------------------- out


class MembershipPlanSchema(ma.Schema):
    code = fields.String(attribute="plan.code")
    name = fields.String(attribute="plan.name")
    kind = fields.String(attribute="plan.kind")
    plan_version_id = fields.Integer(attribute="id")
    version = fields.Integer()
    price_minor = fields.Integer()
    currency = fields.String()
    price_display = fields.Function(lambda v: format_money(v.price_minor, v.currency))
    interval = fields.String()
    interval_count = fields.Integer()


class MembershipPersonSchema(ma.Schema):
    id = fields.Integer()
    full_name = fields.String()


class MembershipBeneficiarySchema(ma.Schema):
    member_id = fields.Integer()
    full_name = fields.String(attribute="member.full_name")
    added_at = fields.DateTime()
    added_by = fields.String()


class CommitmentSchema(ma.Schema):
    min_commitment_periods = fields.Integer(attribute="plan_version.min_commitment_periods")
    periods_remaining = fields.Function(lambda m: m.commitment_remaining())
    early_termination_fee_minor = fields.Integer(
        attribute="plan_version.early_termination_fee_minor", allow_none=True
    )


class PendingDowngradeSchema(ma.Schema):
    plan = fields.Nested(MembershipPlanSchema, attribute="pending_plan_version")
    effective_at = fields.DateTime(attribute="current_period_end")


class MembershipOutSchema(ma.Schema):
    id = fields.Integer()
    member = fields.Nested(MembershipPersonSchema)
    state = fields.String()
    state_text = fields.Function(service.describe_state)
    source = fields.String()
    plan = fields.Nested(MembershipPlanSchema, attribute="plan_version")
    started_at = fields.DateTime()
    activated_at = fields.DateTime(allow_none=True)
    current_period_start = fields.DateTime(allow_none=True)
    current_period_end = fields.DateTime(allow_none=True)
    next_payment_at = fields.Function(
        lambda m: _iso(service.next_payment_at(m)),
        metadata={"description": "When the card is next charged (none while paused or ending)."},
    )
    paid_periods = fields.Integer()
    commitment = fields.Function(lambda m: CommitmentSchema().dump(m))
    early_termination_fee_minor = fields.Integer(
        allow_none=True, metadata={"description": "A fee recorded when it was cancelled early."}
    )
    cancel_at = fields.DateTime(allow_none=True)
    canceled_at = fields.DateTime(allow_none=True)
    paused_at = fields.DateTime(allow_none=True)
    resume_at = fields.DateTime(allow_none=True)
    past_due_since = fields.DateTime(allow_none=True)
    grace_ends_at = fields.DateTime(allow_none=True)
    beneficiaries = fields.Function(
        lambda m: MembershipBeneficiarySchema(many=True).dump(
            [b for b in m.beneficiaries if b.removed_at is None]
        )
    )
    pending_downgrade = fields.Function(
        lambda m: PendingDowngradeSchema().dump(m) if m.pending_plan_version_id else None
    )


class CancellationTermsSchema(ma.Schema):
    commitment_periods = fields.Integer()
    paid_periods = fields.Integer()
    periods_remaining = fields.Integer()
    early_termination_fee_minor = fields.Integer()
    currency = fields.String()
    early_termination_fee_display = fields.Function(
        lambda t: format_money(t["early_termination_fee_minor"], t["currency"])
    )
    allowed_without_override = fields.Boolean()


class MembershipEventSchema(ma.Schema):
    id = fields.Integer()
    kind = fields.String()
    from_state = fields.String(allow_none=True)
    to_state = fields.String(allow_none=True)
    from_version_id = fields.Integer(allow_none=True)
    to_version_id = fields.Integer(allow_none=True)
    at = fields.DateTime()
    effective_at = fields.DateTime(allow_none=True)
    actor = fields.String()
    reason = fields.String()
    stripe_event_id = fields.String(allow_none=True)
    data = fields.Dict(allow_none=True)
