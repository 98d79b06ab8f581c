"""/api/v1/memberships: join, pause, resume, cancel, change tier, share with a household.

Each view parses, calls one verb and serialises. The actions a member takes on a Stripe-billed
membership (pause, resume, cancel, change tier) go through billing.stripe_sync.service, which asks
Stripe first and changes local state only when Stripe confirms; without a subscription they are
the plain billing.memberships.service verbs. Staff act on any
membership; a client key only on its own (403 otherwise). Beneficiaries are managed by staff."""

from __future__ import annotations

from flask.views import MethodView
from flask_smorest import Blueprint

from billing import clock
from billing.auth.access import current_principal, ensure_member_access, requires
from billing.auth.idempotency import idempotent
from billing.auth.models import Role
from billing.memberships import service
from billing.memberships.models import Membership
from billing.memberships.schemas import (
    BeneficiaryInSchema,
    CancelInSchema,
    CancellationTermsSchema,
    ChangeTierInSchema,
    JoinInSchema,
    MembershipEventSchema,
    MembershipOutSchema,
    PauseInSchema,
    ResumeInSchema,
)
from billing.stripe_sync import service as billing_actions

blp = Blueprint(
    "memberships",
    __name__,
    url_prefix="/api/v1",
    description="Memberships: their state, period, commitment, household, and history.",
)

READERS = ("staff", "finance", "client")
ACTORS = ("staff", "client")


def _actor() -> str:
    return current_principal().actor


def _membership(membership_id: int) -> Membership:
    """The membership, if the caller may see it (a client key: only their own)."""
    membership = service.get_membership(membership_id)
    ensure_member_access(current_principal(), membership.member_id)
    return membership


def _member(member_id: int) -> int:
    ensure_member_access(current_principal(), member_id)
    return member_id


@blp.route("/memberships")
class Memberships(MethodView):
    @requires(*ACTORS)
    @idempotent()
    @blp.arguments(JoinInSchema)
    @blp.response(201, MembershipOutSchema)
    def post(self, data):
        """Join the current version of a plan; the membership is pending until the first
        payment. A client may join only for themselves."""
        source = "online" if current_principal().role == Role.CLIENT else "desk"
        return service.join_plan(
            _member(data["member_id"]),
            plan_code=data.get("plan"),
            plan_version_id=data.get("plan_version_id"),
            actor=_actor(),
            now=clock.now(),
            source=source,
        )


@blp.route("/memberships/<int:membership_id>")
class MembershipById(MethodView):
    @requires(*READERS)
    @blp.response(200, MembershipOutSchema)
    def get(self, membership_id):
        """State (also in plain words), plan and version, period, next payment, commitment,
        beneficiaries and any downgrade waiting for the next period."""
        return _membership(membership_id)


@blp.route("/members/<int:member_id>/memberships")
class MembershipsOfMember(MethodView):
    @requires(*READERS)
    @blp.response(200, MembershipOutSchema(many=True))
    def get(self, member_id):
        """Every membership the member owns or shares as a beneficiary (its `member` is the
        owner), newest first."""
        return service.memberships_of(_member(member_id))


@blp.route("/memberships/<int:membership_id>/pause")
class Pause(MethodView):
    @requires(*ACTORS)
    @idempotent()
    @blp.arguments(PauseInSchema)
    @blp.response(200, MembershipOutSchema)
    def post(self, data, membership_id):
        """Freeze: no billing, no new credits; live credits wait. Not while past due."""
        return billing_actions.pause(
            _membership(membership_id), actor=_actor(), now=clock.now(), **data
        )


@blp.route("/memberships/<int:membership_id>/resume")
class Resume(MethodView):
    @requires(*ACTORS)
    @idempotent()
    @blp.arguments(ResumeInSchema)
    @blp.response(200, MembershipOutSchema)
    def post(self, data, membership_id):
        """Unfreeze; live credits' expiries move later by the length of the pause."""
        return billing_actions.resume(
            _membership(membership_id), actor=_actor(), now=clock.now(), **data
        )


@blp.route("/memberships/<int:membership_id>/cancel")
class Cancel(MethodView):
    @requires(*ACTORS)
    @idempotent()
    @blp.arguments(CancelInSchema)
    @blp.response(200, MembershipOutSchema)
    def post(self, data, membership_id):
        """Cancel now or at the end of the period. Inside the minimum commitment: refused,
        unless the tier has an early termination fee or an admin gives override_reason."""
        return billing_actions.cancel(
            _membership(membership_id),
            actor=_actor(),
            now=clock.now(),
            is_admin=current_principal().is_admin,
            **data,
        )


@blp.route("/memberships/<int:membership_id>/cancellation-terms")
class CancellationTerms(MethodView):
    @requires(*READERS)
    @blp.response(200, CancellationTermsSchema)
    def get(self, membership_id):
        """What cancelling now would cost: shown before the member confirms."""
        return service.cancellation_terms(_membership(membership_id))


@blp.route("/memberships/<int:membership_id>/change-tier")
class ChangeTier(MethodView):
    @requires(*ACTORS)
    @idempotent()
    @blp.arguments(ChangeTierInSchema)
    @blp.response(200, MembershipOutSchema)
    def post(self, data, membership_id):
        """An upgrade applies now (with this period's extra credits); a downgrade waits for
        the next period (see pending_downgrade)."""
        return billing_actions.change_tier_to(
            _membership(membership_id), data["plan"], actor=_actor(), now=clock.now()
        )


@blp.route("/memberships/<int:membership_id>/beneficiaries")
class Beneficiaries(MethodView):
    @requires("staff")
    @idempotent()
    @blp.arguments(BeneficiaryInSchema)
    @blp.response(201, MembershipOutSchema)
    def post(self, data, membership_id):
        """Let a household member redeem from this membership."""
        return service.add_beneficiary_by_id(
            _membership(membership_id), data["member_id"], actor=_actor(), now=clock.now()
        )


@blp.route("/memberships/<int:membership_id>/beneficiaries/<int:member_id>")
class BeneficiaryById(MethodView):
    @requires("staff")
    @idempotent()
    @blp.response(200, MembershipOutSchema)
    def delete(self, membership_id, member_id):
        """Stop sharing; what they redeemed stays in the ledger."""
        return service.remove_beneficiary_by_id(
            _membership(membership_id), member_id, actor=_actor(), now=clock.now()
        )


@blp.route("/memberships/<int:membership_id>/events")
class Events(MethodView):
    @requires(*READERS)
    @blp.response(200, MembershipEventSchema(many=True))
    def get(self, membership_id):
        """Every recorded change: join, transitions, tier changes, beneficiaries, oldest first."""
        return service.events_of(_membership(membership_id))
