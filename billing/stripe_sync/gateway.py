"""THE one module that talks to Stripe.

Everything else asks this module, which hides three things:
- the client: the official SDK's StripeClient, pointed at STRIPE_API_BASE when set (localstripe),
  with the SDK's own retries (backoff, same idempotency key) for timeouts and 5xx;
- idempotency: every write sends a key derived from our ids, so a retried request never makes two
  objects; keys of membership writes include the membership's latest event, so the *next* pause
  (after a resume) is a new request while a retry of this one is not;
- the catalogue's two shapes: behind STRIPE_USE_LEGACY_PLANS (the local Stripe server knows Plans,
  not Prices, and the 2017 API) it creates Plans and subscribes with items=[{"plan": id}], and it
  leaves out the parameters that server rejects. Nothing outside this module knows.

Stripe's answers are returned as plain dicts, in whatever API shape Stripe used; handlers.py reads
both shapes. Errors become domain errors: unreachable or failing Stripe -> ServiceUnavailable (503),
a declined card -> PaymentDeclined (402), a request Stripe refuses -> StripeRejected (409)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
import stripe
from flask import current_app

from billing.errors import Conflict, DomainError, ServiceUnavailable
from billing.extensions import db
from billing.members.models import Member
from billing.memberships.models import Membership, MembershipEvent
from billing.plans.models import Plan, PlanKind, PlanVersion

NOT_CONFIGURED = (
    "Stripe is not configured: set STRIPE_API_KEY (and STRIPE_WEBHOOK_SECRET) to use card "
    "payments and subscriptions. Everything else works without it."
)


class PaymentDeclined(DomainError):
    status, slug, title = 402, "payment-declined", "Payment declined"


class StripeRejected(Conflict):
    slug, title = "stripe-rejected", "Stripe refused the request"


@dataclass
class StartedSubscription:
    subscription: dict
    latest_invoice: dict | None
    client_secret: str | None
    hosted_invoice_url: str | None


@contextmanager
def _stripe_call(action: str) -> Iterator[None]:
    """Translate the SDK's errors (after its own retries) into domain errors."""
    try:
        yield
    except stripe.CardError as exc:
        raise PaymentDeclined(
            f"The card was declined while trying to {action}: {exc.user_message or exc}",
            decline_code=getattr(exc, "code", None),
        ) from None
    except (stripe.APIConnectionError, stripe.RateLimitError, stripe.APIError) as exc:
        raise ServiceUnavailable(
            f"Stripe did not answer while trying to {action}; nothing was changed. Try again in "
            f"a moment. ({type(exc).__name__})",
            slug="stripe-unavailable",
        ) from None
    except (stripe.AuthenticationError, stripe.PermissionError) as exc:
        raise ServiceUnavailable(
            f"Stripe refused our API key while trying to {action}: {exc.user_message or exc}",
            slug="stripe-misconfigured",
        ) from None
    except stripe.IdempotencyError as exc:
        raise Conflict(
            f"Stripe saw this request before with other details ({action}): {exc}",
            slug="stripe-idempotency",
        ) from None
    except stripe.InvalidRequestError as exc:
        raise StripeRejected(
            f"Stripe refused to {action}: {exc.user_message or exc}", stripe_code=exc.code
        ) from None
    except stripe.StripeError as exc:
        raise ServiceUnavailable(
            f"Stripe failed while trying to {action}: {exc.user_message or exc}",
            slug="stripe-unavailable",
        ) from None


def _plain(obj: Any) -> Any:
    if isinstance(obj, stripe.StripeObject):
        return obj.to_dict()
    return obj


def _digest(**params: Any) -> str:
    return hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _ts(moment: datetime | None) -> int | None:
    return int(moment.timestamp()) if moment else None


def _missing(exc: stripe.InvalidRequestError) -> bool:
    return exc.http_status == 404 or exc.code == "resource_missing"


class Gateway:
    def __init__(self, client: stripe.StripeClient, *, legacy_plans: bool = False) -> None:
        self.client = client
        self.v1 = client.v1
        self.legacy = legacy_plans

    # -----------------------------------------------------------------------------------------
    # Keys

    @staticmethod
    def membership_key(membership: Membership, operation: str, **params: Any) -> str:
        """Same request, same key; a new request (after any change of the membership) a new one."""
        last_event = db.session.execute(
            sa.select(sa.func.max(MembershipEvent.id)).where(
                MembershipEvent.membership_id == membership.id
            )
        ).scalar_one()
        return f"membership-{membership.id}-{operation}-{last_event or 0}-{_digest(**params)}"

    # -----------------------------------------------------------------------------------------
    # Customers and cards

    def ensure_customer(self, member: Member) -> str:
        """The member's Stripe customer, created once (recorded on the member; caller commits)."""
        if member.stripe_customer_id:
            return member.stripe_customer_id
        params: dict[str, Any] = {
            "email": member.email,
            "name": member.full_name,
            "metadata": {"member_id": str(member.id)},
        }
        if member.phone:
            params["phone"] = member.phone
        with _stripe_call("create the customer"):
            customer = self.v1.customers.create(
                params=params, options={"idempotency_key": f"member-{member.id}-customer"}
            )
        member.stripe_customer_id = customer.id
        db.session.flush()
        return customer.id

    def set_default_card(self, customer_id: str, payment_method: str) -> str:
        """Attach a card (confirmed by a SetupIntent or entered at the desk) and make it the
        customer's default for invoices and off-session charges."""
        with _stripe_call("save the card"):
            pm = self.v1.payment_methods.retrieve(payment_method)
            if _plain(pm).get("customer") != customer_id:
                pm = self.v1.payment_methods.attach(
                    payment_method,
                    params={"customer": customer_id},
                    options={"idempotency_key": f"attach-{payment_method}-{customer_id}"},
                )
            self.v1.customers.update(
                customer_id,
                params={"invoice_settings": {"default_payment_method": pm.id}},
                options={"idempotency_key": f"default-card-{customer_id}-{pm.id}"},
            )
        return pm.id

    def card_setup_session(self, customer_id: str, *, idempotency_key: str) -> dict:
        """A SetupIntent the member's browser confirms to save a new card for later charges."""
        with _stripe_call("start saving a card"):
            intent = self.v1.setup_intents.create(
                params={"customer": customer_id, "usage": "off_session"},
                options={"idempotency_key": idempotency_key},
            )
        return {"kind": "setup_intent", "id": intent.id, "client_secret": intent.client_secret}

    def billing_portal_session(self, customer_id: str, return_url: str) -> dict:
        """Stripe's hosted page where the member updates their card."""
        with _stripe_call("open the billing portal"):
            session = self.v1.billing_portal.sessions.create(
                params={"customer": customer_id, "return_url": return_url}
            )
        return {"kind": "portal", "id": session.id, "url": session.url}

    # -----------------------------------------------------------------------------------------
    # Catalogue

    def sync_catalog(self) -> list[str]:
        """A Product per tier plan, a recurring Price (or legacy Plan) per version, a one-off
        Price per sign-up fee; ids recorded on Plan/PlanVersion. Safe to re-run: objects have
        deterministic ids or lookup keys and are looked up before they are created, so a run
        that died after Stripe answered and before we committed finds them again. The caller
        commits."""
        done: list[str] = []
        plans = db.session.execute(
            sa.select(Plan).where(Plan.kind == PlanKind.TIER).order_by(Plan.id)
        ).scalars()
        for plan in plans:
            if not plan.stripe_product_id:
                plan.stripe_product_id = self._ensure_product(plan)
                done.append(f"product {plan.stripe_product_id} for plan {plan.code}")
            for version in plan.versions:
                if not version.stripe_price_id:
                    version.stripe_price_id = self._ensure_recurring(plan, version)
                    done.append(
                        f"{'plan' if self.legacy else 'price'} {version.stripe_price_id} "
                        f"for {plan.code} v{version.version}"
                    )
                if version.signup_fee_minor and not version.stripe_signup_price_id:
                    if self.legacy:
                        continue  # billed as an invoice item instead (no Prices there)
                    version.stripe_signup_price_id = self._ensure_signup_price(plan, version)
                    done.append(
                        f"sign-up price {version.stripe_signup_price_id} for {plan.code} "
                        f"v{version.version}"
                    )
        db.session.flush()
        return done

    @staticmethod
    def _lookup_key(plan: Plan, version: PlanVersion, suffix: str = "") -> str:
        return f"medspa-{plan.code}-v{version.version}{suffix}"

    def _ensure_product(self, plan: Plan) -> str:
        product_id = f"medspa-{plan.code}"
        with _stripe_call(f"create the product for {plan.code}"):
            try:
                return self.v1.products.retrieve(product_id).id
            except stripe.InvalidRequestError as exc:
                if not _missing(exc):
                    raise
            params: dict[str, Any] = {
                "id": product_id,
                "name": plan.name,
                "metadata": {"plan_id": str(plan.id), "plan_code": plan.code},
            }
            if plan.description:
                params["description"] = plan.description
            return self.v1.products.create(
                params=params, options={"idempotency_key": f"plan-{plan.id}-product"}
            ).id

    def _ensure_recurring(self, plan: Plan, version: PlanVersion) -> str:
        key = self._lookup_key(plan, version)
        metadata = {"plan_version_id": str(version.id), "plan_code": plan.code}
        with _stripe_call(f"create the price of {plan.code} v{version.version}"):
            if self.legacy:
                try:
                    return self.v1.plans.retrieve(key).id
                except stripe.InvalidRequestError as exc:
                    if not _missing(exc):
                        raise
                return self.v1.plans.create(
                    params={
                        "id": key,
                        "product": plan.stripe_product_id,
                        "amount": version.price_minor,
                        "currency": version.currency.lower(),
                        "interval": version.interval,
                        "interval_count": version.interval_count,
                        "metadata": metadata,
                    },
                    options={"idempotency_key": f"plan-version-{version.id}-plan"},
                ).id
            found = self.v1.prices.list(params={"lookup_keys": [key], "limit": 1})
            if found.data:
                return found.data[0].id
            return self.v1.prices.create(
                params={
                    "product": plan.stripe_product_id,
                    "unit_amount": version.price_minor,
                    "currency": version.currency.lower(),
                    "recurring": {
                        "interval": version.interval,
                        "interval_count": version.interval_count,
                    },
                    "tax_behavior": "inclusive" if version.tax_inclusive else "exclusive",
                    "lookup_key": key,
                    "metadata": metadata,
                },
                options={"idempotency_key": f"plan-version-{version.id}-price"},
            ).id

    def _ensure_signup_price(self, plan: Plan, version: PlanVersion) -> str:
        key = self._lookup_key(plan, version, "-signup")
        with _stripe_call(f"create the sign-up fee of {plan.code} v{version.version}"):
            found = self.v1.prices.list(params={"lookup_keys": [key], "limit": 1})
            if found.data:
                return found.data[0].id
            return self.v1.prices.create(
                params={
                    "product": plan.stripe_product_id,
                    "unit_amount": version.signup_fee_minor,
                    "currency": version.currency.lower(),
                    "tax_behavior": "inclusive" if version.tax_inclusive else "exclusive",
                    "lookup_key": key,
                    "metadata": {"plan_version_id": str(version.id), "kind": "signup_fee"},
                },
                options={"idempotency_key": f"plan-version-{version.id}-signup-price"},
            ).id

    # -----------------------------------------------------------------------------------------
    # Subscriptions

    def start_subscription(
        self, membership: Membership, mode: str = "online", payment_method: str | None = None
    ) -> StartedSubscription:
        """online: the subscription waits for the member to pay its first invoice in the
        browser (client_secret / hosted URL returned). card_on_file: the card (given, or the
        customer's default) is saved as default and the first invoice is charged at once.
        The sign-up fee is on the first invoice."""
        version = membership.plan_version
        if not version.stripe_price_id:
            raise Conflict(
                f"{version.plan.name} v{version.version} is not in Stripe yet: run "
                "`flask billing stripe sync-catalog`.",
                slug="catalog-not-synced",
            )
        customer_id = self.ensure_customer(membership.member)
        if mode == "card_on_file" and payment_method:
            self.set_default_card(customer_id, payment_method)
        key = self.membership_key(membership, "subscribe", mode=mode, pm=payment_method)
        metadata = {
            "membership_id": str(membership.id),
            "member_id": str(membership.member_id),
            "plan_version_id": str(version.id),
        }
        params: dict[str, Any] = {"customer": customer_id, "metadata": metadata}
        with _stripe_call("start the subscription"):
            if self.legacy:
                if version.signup_fee_minor:
                    self.v1.invoice_items.create(
                        params={
                            "customer": customer_id,
                            "amount": version.signup_fee_minor,
                            "currency": version.currency.lower(),
                            "description": f"Sign-up fee: {version.plan.name}",
                        },
                        options={"idempotency_key": f"{key}-signup-fee"},
                    )
                params["items"] = [{"plan": version.stripe_price_id}]
                params["expand"] = ["latest_invoice.payment_intent"]
            else:
                params["items"] = [{"price": version.stripe_price_id}]
                if version.signup_fee_minor and version.stripe_signup_price_id:
                    params["add_invoice_items"] = [{"price": version.stripe_signup_price_id}]
                params["payment_behavior"] = (
                    "default_incomplete" if mode == "online" else "allow_incomplete"
                )
                if mode == "online":
                    params["payment_settings"] = {"save_default_payment_method": "on_subscription"}
                params["expand"] = ["latest_invoice.confirmation_secret"]
            sub = self.v1.subscriptions.create(params=params, options={"idempotency_key": key})
        data = _plain(sub)
        invoice = data.get("latest_invoice")
        if isinstance(invoice, str):
            invoice = None
        data["latest_invoice"] = invoice["id"] if invoice else None
        secret = None
        if invoice:
            secret = (invoice.get("confirmation_secret") or {}).get("client_secret")
            pi = invoice.get("payment_intent")
            if secret is None and isinstance(pi, dict):
                secret = pi.get("client_secret")
                invoice["payment_intent"] = pi.get("id")
        return StartedSubscription(
            subscription=data,
            latest_invoice=invoice,
            client_secret=secret,
            hosted_invoice_url=(invoice or {}).get("hosted_invoice_url"),
        )

    def retrieve_subscription(self, subscription_id: str) -> dict:
        with _stripe_call("read the subscription"):
            return _plain(self.v1.subscriptions.retrieve(subscription_id))

    def retrieve_invoice(self, invoice_id: str) -> dict:
        with _stripe_call("read the invoice"):
            return _plain(self.v1.invoices.retrieve(invoice_id))

    def retrieve_charge(self, charge_id: str) -> dict:
        with _stripe_call("read the charge"):
            return _plain(self.v1.charges.retrieve(charge_id, params={"expand": ["refunds"]}))

    def pay_invoice(self, invoice_id: str, *, idempotency_key: str) -> dict:
        """Try an open invoice again now, with the customer's default card."""
        with _stripe_call("charge the open invoice"):
            return _plain(
                self.v1.invoices.pay(invoice_id, options={"idempotency_key": idempotency_key})
            )

    def pause_collection(self, membership: Membership, resumes_at: datetime | None = None) -> dict:
        pause: dict[str, Any] = {"behavior": "void"}
        if resumes_at:
            pause["resumes_at"] = _ts(resumes_at)
        return self._update_subscription(
            membership, "pause", {"pause_collection": pause}, "pause the subscription"
        )

    def resume(self, membership: Membership) -> dict:
        return self._update_subscription(
            membership, "resume", {"pause_collection": ""}, "resume the subscription"
        )

    def cancel(
        self,
        membership: Membership,
        *,
        at_period_end: bool,
        early_termination_fee_minor: int | None = None,
    ) -> dict:
        """Cancel now, or at the end of the period; an early-termination fee is invoiced at
        once as an invoice item on its own invoice."""
        sub_id = self._subscription_id(membership)
        key = self.membership_key(
            membership, "cancel", at_period_end=at_period_end, fee=early_termination_fee_minor
        )
        with _stripe_call("cancel the subscription"):
            if early_termination_fee_minor:
                self._invoice_fee(membership, early_termination_fee_minor, key)
            if at_period_end:
                sub = self.v1.subscriptions.update(
                    sub_id,
                    params={"cancel_at_period_end": True},
                    options={"idempotency_key": key},
                )
            else:
                sub = self.v1.subscriptions.cancel(sub_id, options={"idempotency_key": key})
        return _plain(sub)

    def undo_cancel(self, membership: Membership) -> dict:
        return self._update_subscription(
            membership, "keep", {"cancel_at_period_end": False}, "keep the subscription"
        )

    def _invoice_fee(self, membership: Membership, amount_minor: int, key: str) -> None:
        customer = self.ensure_customer(membership.member)
        currency = membership.plan_version.currency.lower()
        description = f"Early termination fee: {membership.plan_version.plan.name}"
        item_params: dict[str, Any] = {
            "customer": customer,
            "amount": amount_minor,
            "currency": currency,
            "description": description,
        }
        invoice_params: dict[str, Any] = {
            "customer": customer,
            "metadata": {"membership_id": str(membership.id), "kind": "early_termination_fee"},
        }
        if not self.legacy:
            invoice_params["pending_invoice_items_behavior"] = "include"
        self.v1.invoice_items.create(
            params=item_params, options={"idempotency_key": f"{key}-fee-item"}
        )
        invoice = self.v1.invoices.create(
            params=invoice_params, options={"idempotency_key": f"{key}-fee-invoice"}
        )
        if not self.legacy:
            self.v1.invoices.finalize_invoice(
                invoice.id, options={"idempotency_key": f"{key}-fee-finalize"}
            )
        self.v1.invoices.pay(invoice.id, options={"idempotency_key": f"{key}-fee-pay"})

    def change_price(self, membership: Membership, new_version: PlanVersion, *, upgrade: bool):
        """Move the subscription to another tier's price: an upgrade is prorated and invoiced
        now; a downgrade changes the price without proration (it bills from the next period)."""
        if not new_version.stripe_price_id:
            raise Conflict(
                f"{new_version.plan.name} v{new_version.version} is not in Stripe yet: run "
                "`flask billing stripe sync-catalog`.",
                slug="catalog-not-synced",
            )
        sub_id = self._subscription_id(membership)
        key = self.membership_key(membership, "change-price", to=new_version.id)
        with _stripe_call("change the subscription's tier"):
            current = self.v1.subscriptions.retrieve(sub_id)
            item_id = current["items"]["data"][0]["id"]
            item: dict[str, Any] = {"id": item_id}
            params: dict[str, Any] = {"metadata": {"plan_version_id": str(new_version.id)}}
            if self.legacy:
                item["plan"] = new_version.stripe_price_id
            else:
                item["price"] = new_version.stripe_price_id
                params["proration_behavior"] = "always_invoice" if upgrade else "none"
            params["items"] = [item]
            sub = self.v1.subscriptions.update(
                sub_id, params=params, options={"idempotency_key": key}
            )
        return _plain(sub)

    def _update_subscription(
        self, membership: Membership, operation: str, params: dict, action: str
    ) -> dict:
        sub_id = self._subscription_id(membership)
        key = self.membership_key(membership, operation, **params)
        with _stripe_call(action):
            sub = self.v1.subscriptions.update(
                sub_id, params=params, options={"idempotency_key": key}
            )
        return _plain(sub)

    @staticmethod
    def _subscription_id(membership: Membership) -> str:
        if not membership.stripe_subscription_id:
            raise Conflict(
                f"Membership {membership.id} is not billed through Stripe.", slug="no-subscription"
            )
        return membership.stripe_subscription_id

    # -----------------------------------------------------------------------------------------
    # One-off charges and refunds

    def create_payment_intent(
        self,
        member: Member,
        *,
        amount_minor: int,
        currency: str,
        idempotency_key: str,
        metadata: dict[str, str],
    ) -> tuple[str, str | None]:
        """A one-off payment the client confirms in their browser (a series bought online).
        Returns the PaymentIntent id and its client secret; payment_intent.succeeded completes
        the purchase."""
        customer_id = self.ensure_customer(member)
        with _stripe_call("start the payment"):
            intent = self.v1.payment_intents.create(
                params={
                    "amount": amount_minor,
                    "currency": currency.lower(),
                    "customer": customer_id,
                    "metadata": {"member_id": str(member.id), **metadata},
                },
                options={"idempotency_key": idempotency_key},
            )
        return intent.id, intent.client_secret

    def charge_off_session(
        self,
        member: Member,
        amount_minor: int,
        currency: str,
        description: str,
        idempotency_key: str,
        metadata: dict[str, str] | None = None,
    ) -> str:
        """Charge the member's default card now, without them present (a visit's amount owed).
        Returns the PaymentIntent id; a decline or a card that needs the member to authenticate
        is a PaymentDeclined and nothing is charged."""
        if amount_minor <= 0:
            raise Conflict("There is nothing to charge.", slug="nothing-to-charge")
        if not member.stripe_customer_id:
            raise Conflict(
                f"{member.full_name} has no card on file with Stripe.", slug="no-card-on-file"
            )
        with _stripe_call("read the card on file"):
            customer = self.v1.customers.retrieve(member.stripe_customer_id)
        settings = _plain(customer).get("invoice_settings") or {}
        payment_method = settings.get("default_payment_method")
        if not payment_method:
            raise Conflict(
                f"{member.full_name} has no default card with Stripe.", slug="no-card-on-file"
            )
        meta = {"member_id": str(member.id), "kind": "visit_charge", "description": description}
        meta.update(metadata or {})
        params: dict[str, Any] = {
            "amount": amount_minor,
            "currency": currency.lower(),
            "customer": member.stripe_customer_id,
            "payment_method": (
                payment_method if isinstance(payment_method, str) else payment_method["id"]
            ),
            "confirm": True,
            "off_session": True,
            "metadata": meta,
        }
        if not self.legacy:
            params["description"] = description
        with _stripe_call("charge the card on file"):
            intent = self.v1.payment_intents.create(
                params=params, options={"idempotency_key": idempotency_key}
            )
        if intent.status not in ("succeeded", "processing"):
            raise PaymentDeclined(
                f"The card was not charged (payment {intent.status}); ask the member to pay at "
                "the desk or update their card.",
                payment_intent=intent.id,
            )
        return intent.id

    def refund(self, charge_id: str, amount_minor: int | None, *, idempotency_key: str) -> dict:
        params: dict[str, Any] = {"charge": charge_id}
        if amount_minor is not None:
            params["amount"] = amount_minor
        with _stripe_call("refund the charge"):
            return _plain(
                self.v1.refunds.create(params=params, options={"idempotency_key": idempotency_key})
            )

    # -----------------------------------------------------------------------------------------
    # Reading for reconciliation and finance

    def list_subscriptions(self, since: datetime | None = None) -> Iterator[dict]:
        params: dict[str, Any] = {"status": "all", "limit": 100}
        if since and not self.legacy:
            params["created"] = {"gte": _ts(since)}
        yield from self._list(self.v1.subscriptions, params, "list subscriptions", since)

    def list_invoices(self, since: datetime | None = None) -> Iterator[dict]:
        params: dict[str, Any] = {"limit": 100}
        if since and not self.legacy:
            params["created"] = {"gte": _ts(since)}
        yield from self._list(self.v1.invoices, params, "list invoices", since)

    def list_balance_transactions(self, since: datetime | None = None) -> Iterator[dict]:
        params: dict[str, Any] = {"limit": 100}
        if since and not self.legacy:
            params["created"] = {"gte": _ts(since)}
        yield from self._list(self.v1.balance_transactions, params, "list balance", since)

    def list_payouts(self) -> Iterator[dict]:
        yield from self._list(self.v1.payouts, {"limit": 100}, "list payouts", None)

    def list_payout_transactions(self, payout_id: str) -> Iterator[dict]:
        yield from self._list(
            self.v1.balance_transactions,
            {"payout": payout_id, "limit": 100},
            "list a payout's transactions",
            None,
        )

    @staticmethod
    def _list(service, params: dict, action: str, since: datetime | None) -> Iterator[dict]:
        floor = _ts(since)
        with _stripe_call(action):
            page = service.list(params=params)
            for obj in page.auto_paging_iter():
                data = _plain(obj)
                if floor is None or int(data.get("created") or 0) >= floor:
                    yield data


def current() -> Gateway:
    """The gateway for this app's settings; ServiceUnavailable when Stripe is not configured.

    Tests may put a stand-in under app.config["STRIPE_GATEWAY"]."""
    config = current_app.config
    if config.get("STRIPE_GATEWAY") is not None:
        return config["STRIPE_GATEWAY"]
    key = config.get("STRIPE_API_KEY")
    if not key:
        raise ServiceUnavailable(NOT_CONFIGURED, slug="stripe-not-configured")
    base = config.get("STRIPE_API_BASE")
    cache_key = (key, base, bool(config.get("STRIPE_USE_LEGACY_PLANS")))
    cached = current_app.extensions.get("stripe_gateway")
    if cached is None or cached[0] != cache_key:
        options: dict[str, Any] = {"max_network_retries": 2}
        if base:
            options["base_addresses"] = {"api": base}
        client = stripe.StripeClient(key, **options)
        gateway = Gateway(client, legacy_plans=cache_key[2])
        current_app.extensions["stripe_gateway"] = (cache_key, gateway)
        return gateway
    return cached[1]
