"""/api/v1/treatments and /api/v1/plans: read by every role, written by admins."""

from __future__ import annotations

from flask.views import MethodView
from flask_smorest import Blueprint

from billing import clock
from billing.auth.access import current_principal, requires
from billing.auth.idempotency import idempotent
from billing.plans import service
from billing.plans.schemas import (
    PlanInSchema,
    PlanOutSchema,
    PlanPatchSchema,
    PlanQuerySchema,
    TreatmentInSchema,
    TreatmentOutSchema,
    TreatmentPatchSchema,
    TreatmentQuerySchema,
    VersionRevisionSchema,
)

READERS = ("staff", "finance", "client")

treatments_blp = Blueprint(
    "treatments",
    __name__,
    url_prefix="/api/v1/treatments",
    description="Treatments on the menu: price, duration, who may perform them.",
)
plans_blp = Blueprint(
    "plans",
    __name__,
    url_prefix="/api/v1/plans",
    description="Membership tiers and prepaid series, in immutable versions.",
)


def _actor() -> str:
    return current_principal().actor


@treatments_blp.route("")
class Treatments(MethodView):
    @requires(*READERS)
    @treatments_blp.arguments(TreatmentQuerySchema, location="query")
    @treatments_blp.response(200, TreatmentOutSchema(many=True))
    def get(self, query):
        """The treatments on sale (with include_retired, also the retired ones)."""
        return service.list_treatments(**query)

    @requires("admin")
    @idempotent()
    @treatments_blp.arguments(TreatmentInSchema)
    @treatments_blp.response(201, TreatmentOutSchema)
    def post(self, data):
        """Add a treatment (admin). A code that exists already is a 409."""
        return service.create_treatment(data, actor=_actor())


@treatments_blp.route("/<string:code>")
class TreatmentByCode(MethodView):
    @requires(*READERS)
    @treatments_blp.response(200, TreatmentOutSchema)
    def get(self, code):
        """One treatment, retired or not."""
        return service.get_treatment(code)

    @requires("admin")
    @idempotent()
    @treatments_blp.arguments(TreatmentPatchSchema)
    @treatments_blp.response(200, TreatmentOutSchema)
    def patch(self, data, code):
        """Edit a treatment (admin); the code never changes."""
        return service.update_treatment(code, data, actor=_actor())


@treatments_blp.route("/<string:code>/retire")
class RetireTreatment(MethodView):
    @requires("admin")
    @idempotent()
    @treatments_blp.response(200, TreatmentOutSchema)
    def post(self, code):
        """Stop selling a treatment (admin). Nothing is deleted."""
        return service.retire_treatment(code, actor=_actor(), now=clock.now())


@plans_blp.route("")
class Plans(MethodView):
    @requires(*READERS)
    @plans_blp.arguments(PlanQuerySchema, location="query")
    @plans_blp.response(200, PlanOutSchema(many=True))
    def get(self, query):
        """Plans with their versions, which one is current, and which are grandfathered."""
        return service.list_plans(**query)

    @requires("admin")
    @idempotent()
    @plans_blp.arguments(PlanInSchema)
    @plans_blp.response(201, PlanOutSchema)
    def post(self, data):
        """Create a tier or series with its version 1 (admin)."""
        return service.describe_plan(service.create_plan(data, actor=_actor()))


@plans_blp.route("/<string:code>")
class PlanByCode(MethodView):
    @requires(*READERS)
    @plans_blp.response(200, PlanOutSchema)
    def get(self, code):
        """One plan with every version, its items and how many members are on each."""
        return service.show_plan(code)

    @requires("admin")
    @idempotent()
    @plans_blp.arguments(PlanPatchSchema)
    @plans_blp.response(200, PlanOutSchema)
    def patch(self, data, code):
        """Rename or redescribe a plan (admin). Price and contents change by a new version."""
        return service.describe_plan(service.update_plan_details(code, data, actor=_actor()))


@plans_blp.route("/<string:code>/versions")
class PlanVersions(MethodView):
    @requires("admin")
    @idempotent()
    @plans_blp.arguments(VersionRevisionSchema)
    @plans_blp.response(201, PlanOutSchema)
    def post(self, data, code):
        """A new version with a new price or contents (admin).

        The fields sent replace the current version's; `items`, if sent, replaces the whole
        list. Members stay on the version they joined on."""
        return service.describe_plan(service.revise_plan(code, data, actor=_actor()).plan)


@plans_blp.route("/<string:code>/retire")
class RetirePlan(MethodView):
    @requires("admin")
    @idempotent()
    @plans_blp.response(200, PlanOutSchema)
    def post(self, code):
        """Stop selling a plan (admin); its members keep their version."""
        return service.describe_plan(service.retire_plan(code, actor=_actor(), now=clock.now()))
