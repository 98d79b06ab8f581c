"""Stripe's door in (POST /webhooks/stripe, public, verified by signature) and the member's
actions through Stripe (/api/v1/billing/...).

Each action view parses, calls one verb of billing.stripe_sync.service, and serialises. A client
key acts only on its own membership (403 otherwise); staff and admin on any."""

from __future__ import annotations

from flask import Blueprint as FlaskBlueprint
from flask import current_app, jsonify, request
from flask.views import MethodView
from flask_smorest import Blueprint

from billing import clock
from billing.auth.access import PUBLIC, current_principal, ensure_member_access, requires
from billing.auth.idempotency import idempotent
from billing.errors import problem
from billing.memberships import service as memberships
from billing.memberships.models import Membership
from billing.stripe_sync import service
from billing.stripe_sync.intake import acknowledgement
from billing.stripe_sync.models import EventStatus
from billing.stripe_sync.schemas import (
    CardSessionInSchema,
    CardSessionOutSchema,
    EventQuerySchema,
    RefundInSchema,
    RefundOutSchema,
    StripeEventOutSchema,
    SubscribeInSchema,
    SubscribeOutSchema,
)

webhooks = FlaskBlueprint("stripe_webhooks", __name__)


@webhooks.post("/webhooks/stripe")
@requires(PUBLIC)
def stripe_webhook():
    """Verified by the Stripe-Signature header; stored, then acted on once: here (inline) or by
    the worker (queued, production's default: Stripe gets its 200 as soon as the event is
    durable)."""
    config = current_app.config
    # The body as JSON, read once: the request guard has parsed it already.
    parsed = request.get_json(silent=True) if request.is_json else None
    queued = config.get("STRIPE_WEBHOOK_PROCESSING") == "queued"
    take = service.queue_webhook if queued else service.receive_webhook
    receipt = take(
        request.get_data(),
        request.headers.get("Stripe-Signature"),
        secret=config.get("STRIPE_WEBHOOK_SECRET"),
        tolerance=int(config.get("STRIPE_WEBHOOK_TOLERANCE", 300)),
        now=clock.now(),
        parsed=parsed,
    )
    if queued:
        return _acknowledged(receipt)
    if receipt.status == EventStatus.FAILED:
        return problem(
            500,
            "Webhook handler failed",
            f"Event {receipt.event_id} was kept and will be retried: {receipt.error}",
            slug="webhook-failed",
            event_id=receipt.event_id,
        )
    return jsonify(
        received=True,
        event_id=receipt.event_id,
        type=receipt.type,
        status=receipt.status,
        duplicate=receipt.duplicate,
        outcome=receipt.outcome,
    )


def _acknowledged(receipt: service.Receipt):
    """The 200 the intake door (intake.py) writes too, byte for byte."""
    return current_app.response_class(acknowledgement(receipt), mimetype="application/json")


blp = Blueprint(
    "stripe_billing",
    __name__,
    url_prefix="/api/v1/billing",
    description="Membership actions through Stripe, refunds, and the webhook inbox.",
)

ACTORS = ("staff", "client")


def _actor() -> str:
    return current_principal().actor


def _membership(membership_id: int) -> Membership:
    membership = memberships.get_membership(membership_id)
    ensure_member_access(current_principal(), membership.member_id)
    return membership


@blp.route("/memberships/<int:membership_id>/subscribe")
class Subscribe(MethodView):
    @requires(*ACTORS)
    @idempotent()
    @blp.arguments(SubscribeInSchema)
    @blp.response(201, SubscribeOutSchema)
    def post(self, data, membership_id):
        """Start the Stripe subscription of a pending membership. online: pay the first invoice
        with client_secret in the browser; card_on_file: the card is charged now."""
        return service.subscribe(
            _membership(membership_id), actor=_actor(), now=clock.now(), **data
        )


@blp.route("/memberships/<int:membership_id>/card-session")
class CardSession(MethodView):
    @requires(*ACTORS)
    @idempotent()
    @blp.arguments(CardSessionInSchema)
    @blp.response(200, CardSessionOutSchema)
    def post(self, data, membership_id):
        """Update the card: a SetupIntent (or billing-portal link) to enter one; with
        payment_method, save it as default and retry an open invoice."""
        return service.update_card(
            _membership(membership_id), actor=_actor(), now=clock.now(), **data
        )


@blp.route("/invoices/<int:invoice_id>/refund")
class Refund(MethodView):
    @requires("finance")
    @idempotent()
    @blp.arguments(RefundInSchema)
    @blp.response(200, RefundOutSchema)
    def post(self, data, invoice_id):
        """Refund a paid invoice through Stripe (finance, admin): unused credits are clawed
        back, what was already used becomes an amount owed."""
        return service.refund_invoice(invoice_id, actor=_actor(), now=clock.now(), **data)


@blp.route("/stripe-events")
class StripeEvents(MethodView):
    @requires("staff", "finance")
    @blp.arguments(EventQuerySchema, location="query")
    @blp.response(200, StripeEventOutSchema(many=True))
    def get(self, query):
        """The webhook inbox, newest first: filter status=flagged for what needs staff."""
        return service.list_events(**query)
