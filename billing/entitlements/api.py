"""What a member has left, a membership's ledger, and an admin's corrections to it.

GET  /api/v1/members/<id>/entitlements       balances per usable membership (own and shared)
GET  /api/v1/memberships/<id>/ledger          every entry, newest first, paged
POST /api/v1/credits/<id>/adjust              admin: add or remove credits, with a reason
POST /api/v1/memberships/<id>/grants          admin: grant a period by hand, with a reason"""

from __future__ import annotations

from flask.views import MethodView
from flask_smorest import Blueprint

from billing import clock
from billing.auth.access import current_principal, ensure_member_access, requires
from billing.auth.idempotency import idempotent
from billing.entitlements import service
from billing.entitlements.schemas import (
    AdjustInSchema,
    AdjustmentOutSchema,
    GrantOutSchema,
    LedgerPageSchema,
    LedgerQuerySchema,
    ManualGrantInSchema,
    MembershipBalancesSchema,
)
from billing.memberships import service as memberships

blp = Blueprint(
    "entitlements",
    __name__,
    url_prefix="/api/v1",
    description="Credits: what is left, the ledger behind it, and admin corrections.",
)

READERS = ("staff", "finance", "client")


def _actor() -> str:
    return current_principal().actor


def _member(member_id: int) -> int:
    ensure_member_access(current_principal(), member_id)
    return member_id


def _membership(membership_id: int):
    membership = memberships.get_membership(membership_id)
    ensure_member_access(current_principal(), membership.member_id)
    return membership


@blp.route("/members/<int:member_id>/entitlements")
class Entitlements(MethodView):
    @requires(*READERS)
    @blp.response(200, MembershipBalancesSchema(many=True))
    def get(self, member_id):
        """For each membership the member may redeem from (their own and any they are a
        beneficiary of): remaining credits per treatment or choice group, the next expiry, each
        credit lot, and what the remaining credits are worth at list price."""
        return service.member_entitlements(_member(member_id), clock.now())


@blp.route("/memberships/<int:membership_id>/ledger")
class Ledger(MethodView):
    @requires(*READERS)
    @blp.arguments(LedgerQuerySchema, location="query")
    @blp.response(200, LedgerPageSchema)
    def get(self, query, membership_id):
        """The membership's ledger, newest first: grants, redemptions, reversals, expiries,
        rollovers, adjustments and clawbacks, with who did each and why."""
        return service.ledger_page(_membership(membership_id).id, **query)


@blp.route("/credits/<int:credit_id>/adjust")
class AdjustCredit(MethodView):
    @requires("admin")
    @idempotent()
    @blp.arguments(AdjustInSchema)
    @blp.response(201, AdjustmentOutSchema)
    def post(self, data, credit_id):
        """Add credits to, or remove credits from, one credit lot, with a reason (admin)."""
        return service.adjust_credit(credit_id, actor=_actor(), now=clock.now(), **data)


@blp.route("/memberships/<int:membership_id>/grants")
class ManualGrant(MethodView):
    @requires("admin")
    @idempotent()
    @blp.arguments(ManualGrantInSchema)
    @blp.response(201, GrantOutSchema)
    def post(self, data, membership_id):
        """Grant a period's credits by hand (admin), with a reason; recorded as "admin:...".
        Worth nothing unless net_amount_minor says money was received for it."""
        return service.manual_grant(
            memberships.get_membership(membership_id), actor=_actor(), now=clock.now(), **data
        )
