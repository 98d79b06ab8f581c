"""/api/v1/staff: profiles, credentials, duty shifts and category policies.

Staff read, admins write."""

from __future__ import annotations

from flask.views import MethodView
from flask_smorest import Blueprint

from billing import clock
from billing.auth.access import current_principal, requires
from billing.auth.idempotency import idempotent
from billing.staff import service
from billing.staff.schemas import (
    CredentialInSchema,
    CredentialOutSchema,
    CredentialPatchSchema,
    PolicyInSchema,
    PolicyOutSchema,
    ShiftInSchema,
    ShiftOutSchema,
    ShiftQuerySchema,
    StaffInSchema,
    StaffOutSchema,
    StaffPatchSchema,
    StaffQuerySchema,
)

blp = Blueprint(
    "staff",
    __name__,
    url_prefix="/api/v1/staff",
    description="Staff, their credentials and shifts, and who may perform or supervise what.",
)


def _who() -> dict:
    return {"actor": current_principal().actor, "now": clock.now()}


@blp.route("")
class StaffList(MethodView):
    @requires("staff")
    @blp.arguments(StaffQuerySchema, location="query")
    @blp.response(200, StaffOutSchema(many=True))
    def get(self, query):
        return service.list_staff(**query)

    @requires("admin")
    @idempotent()
    @blp.arguments(StaffInSchema)
    @blp.response(201, StaffOutSchema)
    def post(self, data):
        """Add a staff member (admin)."""
        return service.create_staff(data, **_who())


@blp.route("/<int:staff_id>")
class StaffOne(MethodView):
    @requires("staff")
    @blp.response(200, StaffOutSchema)
    def get(self, staff_id):
        return service.get_staff(staff_id)

    @requires("admin")
    @blp.arguments(StaffPatchSchema)
    @blp.response(200, StaffOutSchema)
    def patch(self, data, staff_id):
        return service.update_staff(staff_id, data, **_who())

    @requires("admin")
    @blp.response(200, StaffOutSchema)
    def delete(self, staff_id):
        """Deactivate (nothing is deleted: past visits keep naming them)."""
        return service.deactivate_staff(staff_id, **_who())


@blp.route("/<int:staff_id>/credentials")
class Credentials(MethodView):
    @requires("staff")
    @blp.response(200, CredentialOutSchema(many=True))
    def get(self, staff_id):
        return service.get_staff(staff_id).credentials

    @requires("admin")
    @idempotent()
    @blp.arguments(CredentialInSchema)
    @blp.response(201, CredentialOutSchema)
    def post(self, data, staff_id):
        return service.add_credential(staff_id, data, **_who())


@blp.route("/<int:staff_id>/credentials/<int:credential_id>")
class CredentialOne(MethodView):
    @requires("admin")
    @blp.arguments(CredentialPatchSchema)
    @blp.response(200, CredentialOutSchema)
    def patch(self, data, staff_id, credential_id):
        return service.update_credential(staff_id, credential_id, data, **_who())

    @requires("admin")
    @blp.response(204)
    def delete(self, staff_id, credential_id):
        service.remove_credential(staff_id, credential_id, **_who())


@blp.route("/<int:staff_id>/shifts")
class Shifts(MethodView):
    @requires("staff")
    @blp.arguments(ShiftQuerySchema, location="query")
    @blp.response(200, ShiftOutSchema(many=True))
    def get(self, query, staff_id):
        return service.list_shifts(staff_id=staff_id, **query)

    @requires("admin")
    @blp.arguments(ShiftInSchema)
    @blp.response(201, ShiftOutSchema)
    def post(self, data, staff_id):
        """Put someone on duty at a location on a clinic-local day (a repeat is harmless)."""
        return service.add_shift(staff_id, location=data["location"], day=data["day"], **_who())


@blp.route("/<int:staff_id>/shifts/<int:shift_id>")
class ShiftOne(MethodView):
    @requires("admin")
    @blp.response(204)
    def delete(self, staff_id, shift_id):
        service.remove_shift(staff_id, shift_id, **_who())


@blp.route("/shifts")
class AllShifts(MethodView):
    @requires("staff")
    @blp.arguments(ShiftQuerySchema, location="query")
    @blp.response(200, ShiftOutSchema(many=True))
    def get(self, query):
        """Who is on duty where: filter by location and a range of days."""
        return service.list_shifts(**query)


@blp.route("/policies")
class Policies(MethodView):
    @requires("staff")
    @blp.response(200, PolicyOutSchema(many=True))
    def get(self):
        """The policy in force for every category (the clinic's row, or the default)."""
        return service.list_policies()


@blp.route("/policies/<string:category>")
class PolicyOne(MethodView):
    @requires("staff")
    @blp.response(200, PolicyOutSchema)
    def get(self, category):
        return service.get_policy(category)

    @requires("admin")
    @blp.arguments(PolicyInSchema)
    @blp.response(200, PolicyOutSchema)
    def put(self, data, category):
        return service.set_policy(category, data, **_who())
