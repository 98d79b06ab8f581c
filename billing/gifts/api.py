"""/api/v1/gifts: buy a gift, look it up by its code, claim it.

Staff buy for any member and claim for any member; a client key buys as itself, claims for
itself, and sees only the gifts it bought. Each view parses, calls one verb, serialises."""

from __future__ import annotations

from flask import current_app
from flask.views import MethodView
from flask_smorest import Blueprint

from billing import clock
from billing.auth.access import current_principal, ensure_member_access, requires
from billing.auth.idempotency import idempotent
from billing.errors import InvalidInput
from billing.gifts import service
from billing.gifts.schemas import ClaimInSchema, GiftInSchema, GiftOutSchema
from billing.settings import clinic_settings

blp = Blueprint(
    "gifts",
    __name__,
    url_prefix="/api/v1/gifts",
    description="Gift memberships: months of a tier (or a series) bought for someone else.",
)


def _member_for(member_id: int | None, field: str) -> int:
    """The member acted for: a client key's own (or 403 for another), staff must name one."""
    principal = current_principal()
    if member_id is None:
        member_id = principal.member_id
    if member_id is None:
        raise InvalidInput(f"Give {field}.", errors={field: ["required"]})
    ensure_member_access(principal, member_id)
    return member_id


def claim_days() -> int:
    return int(current_app.config.get("GIFT_CLAIM_DAYS", service.DEFAULT_CLAIM_DAYS))


@blp.route("")
class Gifts(MethodView):
    @requires("staff", "client")
    @idempotent()
    @blp.arguments(GiftInSchema)
    @blp.response(201, GiftOutSchema)
    def post(self, data):
        """Buy a gift. Paid at the desk or by the card on file it is claimable at once (the
        code is in the answer); online, once the browser confirms the payment."""
        buyer = _member_for(data.pop("buyer_member_id"), "buyer_member_id")
        return service.buy(
            buyer,
            plan_code=data.pop("plan"),
            actor=current_principal().actor,
            now=clock.now(),
            settings=clinic_settings(),
            claim_days=claim_days(),
            **data,
        )


@blp.route("/<code>")
class GiftByCode(MethodView):
    @requires("staff", "client")
    @blp.response(200, GiftOutSchema)
    def get(self, code):
        """A gift by its code (spaces, dashes and case do not matter): staff, or its buyer."""
        gift = service.get_gift(code)
        ensure_member_access(current_principal(), gift.buyer_member_id)
        return service.GiftView(gift)


@blp.route("/<code>/claim")
class Claim(MethodView):
    @requires("staff", "client")
    @idempotent()
    @blp.arguments(ClaimInSchema)
    @blp.response(200, GiftOutSchema)
    def post(self, data, code):
        """Claim a gift: a new membership whose months run from now, or (with membership_id,
        or when the claimant already has the same tier) months added to theirs."""
        return service.claim(
            code,
            member_id=_member_for(data["member_id"], "member_id"),
            membership_id=data["membership_id"],
            actor=current_principal().actor,
            now=clock.now(),
            settings=clinic_settings(),
        )
