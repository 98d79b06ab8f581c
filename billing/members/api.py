"""/api/v1/members: the clinic's clients. Staff see and search everyone; a client key sees and
edits only its own record (and never the clinic's notes)."""

from __future__ import annotations

from flask.views import MethodView
from flask_smorest import Blueprint

from billing import clock
from billing.auth.access import current_principal, ensure_member_access, requires
from billing.auth.idempotency import idempotent
from billing.auth.models import Role
from billing.members import service
from billing.members.schemas import (
    MemberInSchema,
    MemberOutSchema,
    MemberPageSchema,
    MemberPatchSchema,
    MemberQuerySchema,
)

blp = Blueprint(
    "members",
    __name__,
    url_prefix="/api/v1/members",
    description="Clients of the clinic: create, find, update.",
)


def _today():
    return clock.local_date(clock.now())


def _shown(member):
    """Staff see the whole record; a client sees theirs without the clinic's notes."""
    return service.client_view(member) if current_principal().role == Role.CLIENT else member


def _own(member_id: int) -> int:
    ensure_member_access(current_principal(), member_id)
    return member_id


@blp.route("")
class Members(MethodView):
    @requires("staff")
    @blp.arguments(MemberQuerySchema, location="query")
    @blp.response(200, MemberPageSchema)
    def get(self, query):
        """Search by name prefix ("mei", "tan", "mei tan"), email prefix or phone digits; at
        most 50 a page (limit/offset), ordered by last name."""
        return service.search_members(query["q"], limit=query["limit"], offset=query["offset"])

    @requires("staff")
    @idempotent()
    @blp.arguments(MemberInSchema)
    @blp.response(201, MemberOutSchema)
    def post(self, data):
        """Add a client. An email already used by another member (in any case) is a 409."""
        return service.create_member(data, today=_today())


@blp.route("/<int:member_id>")
class MemberById(MethodView):
    @requires("staff", "client")
    @blp.response(200, MemberOutSchema)
    def get(self, member_id):
        return _shown(service.get_member(_own(member_id)))

    @requires("staff", "client")
    @idempotent()
    @blp.arguments(MemberPatchSchema)
    @blp.response(200, MemberOutSchema)
    def patch(self, data, member_id):
        """Change the fields sent; stripe_customer_id cannot be set here."""
        by_client = current_principal().role == Role.CLIENT
        member = service.update_member(_own(member_id), data, today=_today(), by_client=by_client)
        return _shown(member)
