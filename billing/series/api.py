"""/api/v1/series-purchases: sell a treatment series, see it, take a later instalment.

Staff sell to anyone; a client key buys for its own member only (403 otherwise). Later
instalments are taken by staff. Each view parses, calls one verb of billing.series.service and
serialises."""

from __future__ import annotations

from flask.views import MethodView
from flask_smorest import Blueprint

from billing import clock
from billing.auth.access import current_principal, ensure_member_access, requires
from billing.auth.idempotency import idempotent
from billing.auth.models import Role
from billing.series import service
from billing.series.schemas import InstalmentPayInSchema, PurchaseInSchema, PurchaseOutSchema
from billing.settings import clinic_settings

blp = Blueprint(
    "series",
    __name__,
    url_prefix="/api/v1/series-purchases",
    description="Treatment series: sold once, paid in full or in monthly instalments.",
)


@blp.route("")
class Purchases(MethodView):
    @requires("staff", "client")
    @idempotent()
    @blp.arguments(PurchaseInSchema)
    @blp.response(201, PurchaseOutSchema)
    def post(self, data):
        """Sell a series: paid at the desk, by the card on file, or online (the response's
        payment.client_secret confirms it in the browser; the webhook grants the credits)."""
        principal = current_principal()
        ensure_member_access(principal, data["member_id"])
        return service.purchase(
            data["member_id"],
            plan_code=data["plan"],
            payment=data["payment"],
            instalments=data["instalments"],
            actor=principal.actor,
            now=clock.now(),
            settings=clinic_settings(),
            source="online" if principal.role == Role.CLIENT else "desk",
        )


@blp.route("/<int:membership_id>")
class PurchaseById(MethodView):
    @requires("staff", "finance", "client")
    @blp.response(200, PurchaseOutSchema)
    def get(self, membership_id):
        """The purchase, its instalments, and what is left ("BBL: 2 of 3 left, next possible
        from 14 Jan")."""
        ensure_member_access(current_principal(), service.get_purchase(membership_id).member_id)
        return service.show(membership_id, now=clock.now(), settings=clinic_settings())


@blp.route("/<int:membership_id>/instalments/<int:number>/pay")
class PayInstalment(MethodView):
    @requires("staff")
    @idempotent()
    @blp.arguments(InstalmentPayInSchema)
    @blp.response(200, PurchaseOutSchema)
    def post(self, data, membership_id, number):
        """Take instalment `number` (at the desk or by the card on file). Already paid: nothing
        changes."""
        return service.pay_instalment(
            membership_id,
            number,
            payment=data["payment"],
            actor=current_principal().actor,
            now=clock.now(),
            settings=clinic_settings(),
        )
