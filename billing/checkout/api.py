"""/api/v1/visits (front-desk checkout), /api/v1/desk/lookup and member consultations."""

from __future__ import annotations

from flask.views import MethodView
from flask_smorest import Blueprint

from billing import clock
from billing.auth.access import current_principal, ensure_member_access, requires
from billing.auth.idempotency import idempotent
from billing.checkout import service
from billing.checkout.schemas import (
    CloseInSchema,
    ConsultationInSchema,
    ConsultationOutSchema,
    DeskRedeemInSchema,
    LineInSchema,
    LineOutSchema,
    LookupQuerySchema,
    LookupSchema,
    ReceiptSchema,
    VisitInSchema,
    VisitOutSchema,
    VisitPatchSchema,
    VoidInSchema,
)
from billing.settings import clinic_settings

visits_blp = Blueprint(
    "visits",
    __name__,
    url_prefix="/api/v1/visits",
    description="Front-desk checkout: open a visit, add what was done, void, close, receipt.",
)
desk_blp = Blueprint(
    "desk_lookup",
    __name__,
    url_prefix="/api/v1/desk",
    description="The front desk's one-call lookup.",
)
consultations_blp = Blueprint(
    "consultations",
    __name__,
    url_prefix="/api/v1/members",
    description="Consultations on file (some treatments need one first).",
)


def _who() -> dict:
    return {"actor": current_principal().actor, "now": clock.now()}


def _is_admin() -> bool:
    return current_principal().is_admin


@visits_blp.route("")
class Visits(MethodView):
    @requires("staff")
    @idempotent()
    @visits_blp.arguments(VisitInSchema)
    @visits_blp.response(201, VisitOutSchema)
    def post(self, data):
        """Open a visit for a client at a location (optionally with the supervising physician)."""
        return service.open_visit(**data, **_who(), settings=clinic_settings())


@visits_blp.route("/<int:visit_id>")
class VisitOne(MethodView):
    @requires("staff")
    @visits_blp.response(200, VisitOutSchema)
    def get(self, visit_id):
        return service.get_visit(visit_id)

    @requires("staff")
    @visits_blp.arguments(VisitPatchSchema)
    @visits_blp.response(200, VisitOutSchema)
    def patch(self, data, visit_id):
        """Record or change the supervising physician of an open visit."""
        return service.set_supervisor(visit_id, **data, **_who())


@visits_blp.route("/<int:visit_id>/lines")
class Lines(MethodView):
    @requires("staff")
    @idempotent(required=True)
    @visits_blp.arguments(LineInSchema)
    @visits_blp.response(201, LineOutSchema)
    def post(self, data, visit_id):
        """Add a treatment: redeemed from credits when covered, else charged. Needs an
        Idempotency-Key: a retry returns the first result and redeems nothing more."""
        return service.add_line(
            visit_id, **data, is_admin=_is_admin(), **_who(), settings=clinic_settings()
        )


@visits_blp.route("/<int:visit_id>/lines/<int:line_id>/void")
class VoidLine(MethodView):
    @requires("staff")
    @idempotent()
    @visits_blp.arguments(VoidInSchema)
    @visits_blp.response(200, LineOutSchema)
    def post(self, data, visit_id, line_id):
        """Void a line: its credits come back by reversing entries. On a closed visit: admin."""
        return service.void_line(visit_id, line_id, **data, is_admin=_is_admin(), **_who())


@visits_blp.route("/<int:visit_id>/close")
class CloseVisit(MethodView):
    @requires("staff")
    @idempotent()
    @visits_blp.arguments(CloseInSchema)
    @visits_blp.response(200, ReceiptSchema)
    def post(self, data, visit_id):
        """Close: paid at the desk, or charged to the card on file (503 if Stripe is not set up)."""
        settings = clinic_settings()
        visit = service.close_visit(visit_id, **data, **_who(), settings=settings)
        return service.receipt(visit.id, now=clock.now(), settings=settings)


@visits_blp.route("/<int:visit_id>/receipt")
class Receipt(MethodView):
    @requires("staff", "client")
    @visits_blp.response(200, ReceiptSchema)
    def get(self, visit_id):
        """What was redeemed and from which credit, what remains, what is owed."""
        ensure_member_access(current_principal(), service.get_visit(visit_id).member_id)
        return service.receipt(visit_id, now=clock.now(), settings=clinic_settings())


@desk_blp.route("/redemptions")
class DeskRedemptions(MethodView):
    @requires("staff")
    @idempotent(required=True)
    @desk_blp.arguments(DeskRedeemInSchema)
    @desk_blp.response(201, LineOutSchema)
    def post(self, data):
        """The desk's one click: add a treatment to the client's open visit of today at this
        location (opened when there is none), redeemed from credits when covered, else charged.
        Needs an Idempotency-Key. The line names its visit: void and close it there."""
        return service.redeem_at_desk(
            **data, is_admin=_is_admin(), **_who(), settings=clinic_settings()
        )


@desk_blp.route("/lookup")
class Lookup(MethodView):
    @requires("staff")
    @desk_blp.arguments(LookupQuerySchema, location="query")
    @desk_blp.response(200, LookupSchema)
    def get(self, query):
        """A client, their membership state in words, balances with expiry, and what would
        block each included treatment today."""
        return service.desk_lookup(**query, now=clock.now(), settings=clinic_settings())


@consultations_blp.route("/<int:member_id>/consultations")
class Consultations(MethodView):
    @requires("staff")
    @consultations_blp.response(200, ConsultationOutSchema(many=True))
    def get(self, member_id):
        return service.list_consultations(member_id)

    @requires("staff")
    @idempotent()
    @consultations_blp.arguments(ConsultationInSchema)
    @consultations_blp.response(201, ConsultationOutSchema)
    def post(self, data, member_id):
        """Put a consultation on file for this client."""
        return service.record_consultation(member_id, **data, **_who())
