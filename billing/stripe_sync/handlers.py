"""What each Stripe event means for us: one small handler per event type, in the table HANDLERS.

Handlers converge rather than patch. Each brings local state to match the Stripe object it is
given, so a duplicate, a replay or a reconciliation pass is harmless:
- money rows are keyed by Stripe ids (an invoice, a charge, a refund, a dispute: once each);
- credits are granted once per invoice (GrantSource ref "invoice:<id>");
- a subscription or customer view older than the one already applied (Stripe's `created` time
  of the event, kept in Membership.stripe_state_at) is skipped: Stripe does not promise order.

Handlers read both API shapes: the current one (fixtures3.json: invoice.parent, lines' parent and
`taxes`, periods on subscription items, invoice `payments`) and the 2017 one the local Stripe
server speaks (invoice.subscription, invoice.charge, `tax`, line `type`/`proration`).

A handler returns what it did in words (None when nothing needed doing), raises Skip when the
event should change nothing (status "ignored"), NeedsAttention when staff must look (status
"flagged": an unknown customer or subscription), and lets anything else propagate (status
"failed": Stripe retries, `stripe replay` reprocesses). Handlers never commit."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import joinedload

from billing.entitlements import service as ledger
from billing.errors import DomainError
from billing.extensions import db
from billing.members.models import Member
from billing.memberships import service as memberships
from billing.memberships.models import Membership, State
from billing.money import net_of_tax
from billing.payments import service as payments
from billing.payments.service import InvoiceFacts
from billing.plans.models import PlanItem, PlanItemOption, PlanVersion
from billing.settings import ClinicSettings, clinic_settings
from billing.stripe_sync.models import BillingProfile, StripeEvent


class Skip(Exception):
    """Nothing to do: the event is older than what we know, or not ours to act on."""


class NeedsAttention(Exception):
    """Staff must look: Stripe speaks of a customer or subscription we cannot place."""


@dataclass
class Context:
    actor: str  # "stripe:evt_123" for an event; who asked, for an API response we apply
    now: datetime
    event_id: str | None = None
    # When Stripe produced this view of the object (the event's `created`); None: it was read
    # from the API just now, so it is the newest there is.
    state_at: datetime | None = None
    settings: ClinicSettings = field(default_factory=clinic_settings)


# ---------------------------------------------------------------------------------------------
# Reading Stripe objects in either API shape


def _id(value: Any) -> str | None:
    if isinstance(value, dict):
        return value.get("id")
    return value or None


def _dt(timestamp: Any) -> datetime | None:
    return datetime.fromtimestamp(int(timestamp), UTC) if timestamp else None


def _lines(invoice: dict) -> list[dict]:
    return (invoice.get("lines") or {}).get("data") or []


def _line_details(line: dict) -> dict:
    return ((line.get("parent") or {}).get("subscription_item_details")) or {}


def _is_subscription_line(line: dict) -> bool:
    if line.get("type") == "subscription":  # 2017 shape
        return True
    return (line.get("parent") or {}).get("type") == "subscription_item_details"


def _is_proration(line: dict) -> bool:
    return bool(line.get("proration") or _line_details(line).get("proration"))


def subscription_line(invoice: dict) -> dict | None:
    """The line that bills a period of the subscription (not a proration, not a fee)."""
    for line in _lines(invoice):
        if _is_subscription_line(line) and not _is_proration(line):
            return line
    return None


def invoice_subscription_id(invoice: dict) -> str | None:
    if invoice.get("subscription"):
        return _id(invoice["subscription"])
    details = (invoice.get("parent") or {}).get("subscription_details") or {}
    if details.get("subscription"):
        return _id(details["subscription"])
    for line in _lines(invoice):
        sub = line.get("subscription") or _line_details(line).get("subscription")
        if sub:
            return _id(sub)
    return None


def _invoice_subscription_metadata(invoice: dict) -> dict:
    details = (invoice.get("parent") or {}).get("subscription_details") or {}
    return (
        details.get("metadata") or (invoice.get("subscription_details") or {}).get("metadata") or {}
    )


def _reported_line_tax(line: dict) -> tuple[bool, int, int]:
    """(reported, inclusive tax, exclusive tax) as Stripe computed them for a line."""
    if line.get("taxes"):  # current shape
        inc = sum(t["amount"] for t in line["taxes"] if t.get("tax_behavior") == "inclusive")
        exc = sum(t["amount"] for t in line["taxes"] if t.get("tax_behavior") != "inclusive")
        return True, inc, exc
    if line.get("tax_amounts"):  # 2017 shape
        inc = sum(t["amount"] for t in line["tax_amounts"] if t.get("inclusive"))
        exc = sum(t["amount"] for t in line["tax_amounts"] if not t.get("inclusive"))
        return True, inc, exc
    return False, 0, 0


def _line_net_and_tax(line: dict, inclusive: bool, settings: ClinicSettings) -> tuple[int, int]:
    """A line's ex-tax amount and its tax. When Stripe computed no tax (Stripe Tax off, or the
    local server), GST is derived from the clinic's rate for tax-inclusive prices."""
    amount = int(line.get("amount") or 0)
    reported, inc, exc = _reported_line_tax(line)
    if reported:
        return amount - inc, inc + exc
    if inclusive:
        net = net_of_tax(amount, settings.tax_rate_bp)
        return net, amount - net
    return amount, 0


def _invoice_tax(invoice: dict, version: PlanVersion | None, settings: ClinicSettings) -> int:
    if invoice.get("total_taxes"):
        return sum(t["amount"] for t in invoice["total_taxes"])
    if invoice.get("tax"):
        return int(invoice["tax"])
    tax = 0
    for line in _lines(invoice):
        inclusive = (
            version.tax_inclusive
            if version is not None and _is_subscription_line(line)
            else settings.prices_include_tax
        )
        tax += _line_net_and_tax(line, inclusive, settings)[1]
    return tax


def _invoice_payment_ids(invoice: dict) -> tuple[str | None, str | None]:
    charge, intent = _id(invoice.get("charge")), _id(invoice.get("payment_intent"))
    for row in (invoice.get("payments") or {}).get("data") or []:
        payment = row.get("payment") or {}
        charge = charge or _id(payment.get("charge"))
        intent = intent or _id(payment.get("payment_intent"))
    return charge, intent


def invoice_facts(
    invoice: dict, version: PlanVersion | None, settings: ClinicSettings, *, kind: str
) -> InvoiceFacts:
    line = subscription_line(invoice)
    period = (line or {}).get("period") or {}
    charge, intent = _invoice_payment_ids(invoice)
    transitions = invoice.get("status_transitions") or {}
    return InvoiceFacts(
        stripe_invoice_id=invoice["id"],
        status=invoice.get("status") or "open",
        currency=(invoice.get("currency") or settings.currency).upper(),
        total_minor=int(invoice.get("total") or 0),
        tax_minor=_invoice_tax(invoice, version, settings),
        amount_paid_minor=int(invoice.get("amount_paid") or 0),
        kind=kind,
        billing_reason=invoice.get("billing_reason"),
        period_start=_dt(period.get("start")),
        period_end=_dt(period.get("end")),
        attempt_count=int(invoice.get("attempt_count") or 0),
        next_payment_attempt=_dt(invoice.get("next_payment_attempt")),
        issued_at=_dt(invoice.get("created")),
        paid_at=_dt(transitions.get("paid_at")),
        charge_id=charge,
        payment_intent_id=intent,
    )


def subscription_price_id(sub: dict) -> str | None:
    items = (sub.get("items") or {}).get("data") or []
    if not items:
        return None
    item = items[0]
    return _id(item.get("price")) or _id(item.get("plan"))


# ---------------------------------------------------------------------------------------------
# Placing Stripe objects among ours


def member_for_customer(customer_id: str | None, metadata: dict | None = None) -> Member | None:
    if not customer_id:
        return None
    member = db.session.execute(
        sa.select(Member).where(Member.stripe_customer_id == customer_id)
    ).scalar_one_or_none()
    if member is not None:
        return member
    profile = db.session.execute(
        sa.select(BillingProfile).where(BillingProfile.stripe_customer_id == customer_id)
    ).scalar_one_or_none()
    if profile is not None:
        return db.session.get(Member, profile.member_id)
    member_id = str((metadata or {}).get("member_id") or "")
    if member_id.isdigit():
        member = db.session.get(Member, int(member_id))
        if member is not None and member.stripe_customer_id is None:
            member.stripe_customer_id = customer_id  # created by us, answer lost before commit
            return member
    return None


# What a handler reads of a membership, loaded in the statement that locks it (instead of a lazy
# load each): its tier version; for a paid period also what a grant reads (the version's plan,
# items, their treatments and choice options), all joined in that one statement (a tier has a
# handful of items: a few rows, and cheaper than a second, selectin, query).
WITH_VERSION = (joinedload(Membership.plan_version),)
WITH_CATALOGUE = (
    joinedload(Membership.plan_version).options(
        joinedload(PlanVersion.plan),
        joinedload(PlanVersion.items).options(
            joinedload(PlanItem.treatment),
            joinedload(PlanItem.options).joinedload(PlanItemOption.treatment),
        ),
    ),
)


@functools.cache
def _by_subscription_query(load: tuple) -> sa.Select:
    """The membership billed by a subscription, with what a handler reads of it (`load`: one of
    the tuples above), built once per shape: every subscription and invoice event runs it."""
    return (
        sa.select(Membership)
        .where(Membership.stripe_subscription_id == sa.bindparam("subscription_id"))
        .options(*load)
    )


def membership_for_subscription(
    subscription_id: str | None,
    metadata: dict | None = None,
    customer_id: str | None = None,
    *,
    load=WITH_VERSION,
) -> Membership | None:
    """Ours by its recorded id, or (when a webhook outran the API response that would have
    recorded it) by the membership id we put in the subscription's metadata.

    The membership is locked for this transaction as it is read (the ledger's lock, which
    record_paid_period would take anyway): two events for one subscription are applied one
    after the other, each on what the other committed, so an older view cannot overwrite a
    newer one that a concurrent delivery is applying."""
    if not subscription_id:
        return None
    found = ledger.lock_selected(_by_subscription_query(load), {"subscription_id": subscription_id})
    if found:
        return found[0]
    membership_id = str((metadata or {}).get("membership_id") or "")
    if not membership_id.isdigit():
        return None
    ledger.lock_memberships([int(membership_id)])
    membership = db.session.get(Membership, int(membership_id))
    if membership is None or membership.stripe_subscription_id not in (None, subscription_id):
        return None
    owner = membership.member
    if customer_id and owner.stripe_customer_id not in (None, customer_id):
        return None
    membership.stripe_subscription_id = subscription_id
    return membership


def _invoice_owner(invoice: dict, load=WITH_VERSION) -> tuple[Membership | None, int]:
    """The membership an invoice is for (None for a one-off invoice), and its member's id."""
    sub_id = invoice_subscription_id(invoice)
    customer = _id(invoice.get("customer"))
    if sub_id:
        membership = membership_for_subscription(
            sub_id, _invoice_subscription_metadata(invoice), customer, load=load
        )
        if membership is None:
            raise NeedsAttention(
                f"Invoice {invoice['id']} is for subscription {sub_id}, which is not one of "
                "our memberships."
            )
        return membership, membership.member_id
    member = member_for_customer(customer)
    if member is None:
        raise NeedsAttention(
            f"Invoice {invoice['id']} is for Stripe customer {customer}, who is not one of our "
            "members."
        )
    membership = None
    meta_id = str((invoice.get("metadata") or {}).get("membership_id") or "")
    if meta_id.isdigit():
        candidate = db.session.get(Membership, int(meta_id))
        if candidate is not None and candidate.member_id == member.id:
            membership = candidate
    return membership, member.id


def _store_invoice(invoice: dict, ctx: Context, load=WITH_VERSION):
    membership, member_id = _invoice_owner(invoice, load)
    has_sub = invoice_subscription_id(invoice) is not None
    version = membership.plan_version if membership is not None and has_sub else None
    facts = invoice_facts(
        invoice, version, ctx.settings, kind="subscription" if has_sub else "one_off"
    )
    row, changed = payments.upsert_invoice(
        facts,
        member_id=member_id,
        membership_id=membership.id if membership else None,
        now=ctx.now,
    )
    return facts, row, changed, membership


# ---------------------------------------------------------------------------------------------
# Invoices


def on_invoice_paid(invoice: dict, ctx: Context) -> str | None:
    facts, row, changed, membership = _store_invoice(invoice, ctx, WITH_CATALOGUE)
    if row.status != "paid":
        raise Skip(f"invoice {row.stripe_invoice_id} is {row.status}, not paid")
    done = []
    _payment_id, created = payments.record_invoice_payment(
        row, facts, occurred_at=facts.paid_at or ctx.now
    )
    if created:
        done.append(f"payment of {facts.amount_paid_minor} {facts.currency} recorded")
    line = subscription_line(invoice)
    if membership is not None and line is not None:
        was = membership.state
        if facts.period_start is None or facts.period_end is None:
            raise ValueError(f"invoice {row.stripe_invoice_id}: subscription line has no period")
        net, _tax = _line_net_and_tax(line, membership.plan_version.tax_inclusive, ctx.settings)
        grant = memberships.record_paid_period(
            membership,
            period_start=facts.period_start,
            period_end=facts.period_end,
            source=ledger.GrantSource(
                ref=f"invoice:{row.stripe_invoice_id}",
                actor=ctx.actor,
                invoice_id=row.id,
                net_amount_minor=net,
                reason=f"paid invoice {row.stripe_invoice_id}",
            ),
            now=ctx.now,
            stripe_event_id=ctx.event_id,
            commit=False,
        )
        if grant is not None:
            done.append(
                f"membership {membership.id} paid for {facts.period_start.date()}.."
                f"{facts.period_end.date()}: credits granted"
            )
        if membership.state != was:
            caught_up = _catch_up_subscription(membership, ctx)
            if caught_up:
                done.append(caught_up)
    elif changed:
        done.append(f"invoice {row.stripe_invoice_id} recorded")
    return "; ".join(done) or None


def on_invoice_payment_failed(invoice: dict, ctx: Context) -> str | None:
    facts, row, _changed, membership = _store_invoice(invoice, ctx)
    if row.status == "paid":
        raise Skip(f"invoice {row.stripe_invoice_id} was paid since")
    if membership is None or row.kind != "subscription":
        return f"failed payment recorded on invoice {row.stripe_invoice_id}"
    attempts = max(facts.attempt_count, 1)
    before = (membership.state, membership.payment_attempts, membership.next_payment_attempt)
    if membership.state == State.PENDING:
        membership.payment_attempts = max(membership.payment_attempts, attempts)
        membership.next_payment_attempt = facts.next_payment_attempt
        if before == (membership.state, membership.payment_attempts, facts.next_payment_attempt):
            return None
        return f"first payment of membership {membership.id} failed; it stays pending"
    if membership.state in (State.ACTIVE, State.CANCEL_AT_PERIOD_END, State.PAST_DUE):
        if before == (State.PAST_DUE, max(before[1], attempts), facts.next_payment_attempt):
            return None
        was = membership.state
        memberships.mark_past_due(
            membership,
            actor=ctx.actor,
            now=ctx.now,
            attempts=attempts,
            next_attempt=facts.next_payment_attempt,
            settings=ctx.settings,
            stripe_event_id=ctx.event_id,
            commit=False,
        )
        return f"membership {membership.id} {was} -> past_due (attempt {attempts})"
    return f"failed payment recorded; membership {membership.id} is {membership.state}"


def on_invoice_changed(invoice: dict, ctx: Context) -> str | None:
    _facts, row, changed, _membership = _store_invoice(invoice, ctx)
    return f"invoice {row.stripe_invoice_id} is {row.status}" if changed else None


# ---------------------------------------------------------------------------------------------
# Subscriptions


def _read_at(now: datetime) -> datetime:
    """An object read from the API just now is newer than any event created in an earlier
    second (events carry whole seconds); one created in this same second may still apply."""
    return now.replace(microsecond=0)


def _desired_state(sub: dict) -> State | None:
    status = sub.get("status")
    if status in ("canceled", "incomplete_expired"):
        return State.CANCELED
    if status == "paused" or sub.get("pause_collection"):
        return State.PAUSED
    if status in ("past_due", "unpaid"):
        return State.PAST_DUE
    if status in ("active", "trialing"):
        if sub.get("cancel_at_period_end") or sub.get("cancel_at"):
            return State.CANCEL_AT_PERIOD_END
        return State.ACTIVE
    return None  # incomplete: waiting for the first payment


def _period_end(sub: dict) -> datetime | None:
    items = (sub.get("items") or {}).get("data") or []
    end = (items[0].get("current_period_end") if items else None) or sub.get("current_period_end")
    return _dt(end)


def on_subscription_changed(sub: dict, ctx: Context) -> str | None:
    membership = membership_for_subscription(
        sub["id"], sub.get("metadata"), _id(sub.get("customer"))
    )
    if membership is None:
        raise NeedsAttention(f"Subscription {sub['id']} is not one of our memberships.")
    return _apply_subscription(membership, sub, ctx)


def _apply_subscription(membership: Membership, sub: dict, ctx: Context) -> str | None:
    """Bring a (locked) membership to this view of its subscription, unless a newer view was
    applied already."""
    if ctx.state_at and membership.stripe_state_at and ctx.state_at < membership.stripe_state_at:
        raise Skip(
            f"this view of {sub['id']} ({ctx.state_at.isoformat()}) is older than the one "
            f"applied ({membership.stripe_state_at.isoformat()})"
        )
    done = []
    before = membership.state
    target = _desired_state(sub)
    if target is not None and target != State(before):
        _move(membership, target, sub, ctx)
    if membership.state != before:
        done.append(f"membership {membership.id} {before} -> {membership.state}")
    if membership.state != State.CANCELED:
        tier = _follow_price(membership, sub, ctx)
        if tier:
            done.append(tier)
    seen = ctx.state_at or _read_at(ctx.now)
    if membership.stripe_state_at is None or seen > membership.stripe_state_at:
        membership.stripe_state_at = seen
    return "; ".join(done) or None


@functools.cache
def _latest_subscription_view_query() -> sa.Select:
    """The newest subscription event received for a subscription, but this one (built once)."""
    return (
        sa.select(StripeEvent.id, StripeEvent.stripe_created, StripeEvent.payload)
        .where(
            StripeEvent.object_id == sa.bindparam("subscription_id"),
            StripeEvent.type.like("customer.subscription.%"),
            StripeEvent.id != sa.bindparam("event_id"),
        )
        .order_by(StripeEvent.stripe_created.desc(), StripeEvent.received_at.desc())
        .limit(1)
    )


def _catch_up_subscription(membership: Membership, ctx: Context) -> str | None:
    """A subscription change that came while the membership could not take it (set to cancel
    at period end while still pending or past due) is applied once a payment activates it:
    the newest view of the subscription we received is applied again."""
    latest = db.session.execute(
        _latest_subscription_view_query(),
        {"subscription_id": membership.stripe_subscription_id, "event_id": ctx.event_id or ""},
    ).first()
    if latest is None:
        return None
    again = Context(
        actor=f"stripe:{latest.id}",
        now=ctx.now,
        event_id=latest.id,
        state_at=latest.stripe_created,
        settings=ctx.settings,
    )
    try:
        with db.session.begin_nested():
            # The same subscription (the events are found by its id), so the same membership,
            # which this transaction has locked already.
            return _apply_subscription(membership, latest.payload["data"]["object"], again)
    except Skip:
        return None
    except (NeedsAttention, DomainError) as exc:
        return f"subscription state not applied: {getattr(exc, 'detail', exc)}"


def _move(membership: Membership, target: State, sub: dict, ctx: Context) -> None:
    """Bring the membership to the state Stripe's subscription is in, through the verbs."""
    common = {"actor": ctx.actor, "now": ctx.now}
    current = State(membership.state)
    if target == State.CANCELED:
        memberships.finish_cancellation(
            membership, stripe_event_id=ctx.event_id, commit=False, **common
        )
    elif target == State.PAUSED:
        resumes = _dt((sub.get("pause_collection") or {}).get("resumes_at"))
        memberships.pause(
            membership,
            reason="collection paused in Stripe",
            resume_at=resumes if resumes and resumes > ctx.now else None,
            commit=False,
            **common,
        )
    elif target == State.PAST_DUE and current in (State.ACTIVE, State.CANCEL_AT_PERIOD_END):
        memberships.mark_past_due(
            membership,
            attempts=max(membership.payment_attempts, 1),
            next_attempt=membership.next_payment_attempt,
            settings=ctx.settings,
            stripe_event_id=ctx.event_id,
            commit=False,
            **common,
        )
    elif target == State.CANCEL_AT_PERIOD_END and current == State.ACTIVE:
        memberships.transition(
            membership,
            State.CANCEL_AT_PERIOD_END,
            reason="set to cancel at period end in Stripe",
            stripe_event_id=ctx.event_id,
            **common,
        )
        membership.cancel_at = _dt(sub.get("cancel_at")) or _period_end(sub)
    elif target == State.ACTIVE:
        if current == State.PAUSED:
            memberships.resume(
                membership, reason="collection resumed in Stripe", commit=False, **common
            )
        elif current == State.CANCEL_AT_PERIOD_END:
            memberships.undo_cancellation(membership, commit=False, **common)
        elif current == State.PAST_DUE:
            memberships.transition(
                membership,
                State.ACTIVE,
                reason="subscription back in good standing",
                stripe_event_id=ctx.event_id,
                **common,
            )
            membership.past_due_since = membership.grace_ends_at = None
            membership.payment_attempts = 0
            membership.next_payment_attempt = None
        # pending -> active only through its first paid invoice, which grants the period


def _follow_price(membership: Membership, sub: dict, ctx: Context) -> str | None:
    price = subscription_price_id(sub)
    if not price or price == membership.plan_version.stripe_price_id:
        return None  # (a version has a price of its own: the same price, the same version)
    wanted = (
        db.session.execute(sa.select(PlanVersion).where(PlanVersion.stripe_price_id == price))
        .scalars()
        .first()
    )
    if wanted is None:
        raise NeedsAttention(f"Subscription {sub['id']} is on price {price}, not in our catalogue.")
    if wanted.id in (membership.plan_version_id, membership.pending_plan_version_id):
        return None
    event = memberships.change_tier(
        membership,
        wanted,
        actor=ctx.actor,
        now=ctx.now,
        source_ref=f"upgrade:{sub['id']}:{wanted.id}",
        stripe_event_id=ctx.event_id,
        settings=ctx.settings,
        commit=False,
    )
    return f"membership {membership.id} {event.reason} to {wanted.plan.name} v{wanted.version}"


# ---------------------------------------------------------------------------------------------
# Refunds and disputes


def _charge_target(charge_id: str | None, intent_id: str | None, legacy_invoice: Any):
    payment = payments.find_charge_payment(charge_id, intent_id)
    invoice = payments.find_invoice_for_charge(charge_id, intent_id)
    if invoice is None and legacy_invoice:
        invoice = payments.find_invoice(_id(legacy_invoice))
    return payment, invoice


def on_charge_refunded(charge: dict, ctx: Context) -> str | None:
    payment, invoice = _charge_target(
        charge["id"], _id(charge.get("payment_intent")), charge.get("invoice")
    )
    if payment is None and invoice is None:
        raise NeedsAttention(f"Refunded charge {charge['id']} is not a payment we recorded.")
    already = invoice.amount_refunded_minor if invoice is not None else _refunded_on(payment)
    new = int(charge.get("amount_refunded") or 0) - (already or 0)
    if new <= 0:
        return None
    refunds = (charge.get("refunds") or {}).get("data") or []
    known = {r.id: r for r in _recorded_refunds(refunds)}
    fresh = [r for r in refunds if r.get("id") not in known]
    refund_id = fresh[0]["id"] if fresh else f"{charge['id']}:refunded:{charge['amount_refunded']}"
    currency = (charge.get("currency") or ctx.settings.currency).upper()
    payments.record_refund(
        charge=payment,
        invoice=invoice,
        refund_id=refund_id,
        amount_minor=new,
        currency=currency,
        occurred_at=_dt((fresh[0] if fresh else {}).get("created")) or ctx.now,
    )
    done = [f"refund {refund_id} of {new} {currency} recorded"]
    if invoice is not None:
        full = invoice.amount_refunded_minor >= invoice.total_minor
        result = ledger.clawback(
            invoice.id,
            source_ref=refund_id,
            now=ctx.now,
            actor=ctx.actor,
            refunded_net_minor=None if full else payments.refunded_net(invoice, new),
            settings=ctx.settings,
            commit=False,
        )
        done.append(_clawed(result))
    return "; ".join(done)


def on_dispute_created(dispute: dict, ctx: Context) -> str | None:
    payment, invoice = _charge_target(
        _id(dispute.get("charge")), _id(dispute.get("payment_intent")), None
    )
    if payment is None and invoice is None:
        raise NeedsAttention(f"Dispute {dispute['id']} is on a charge we did not record.")
    amount = int(dispute.get("amount") or 0)
    currency = (dispute.get("currency") or ctx.settings.currency).upper()
    _row, created = payments.record_dispute(
        charge=payment,
        invoice=invoice,
        dispute_id=dispute["id"],
        amount_minor=amount,
        currency=currency,
        status=dispute.get("status") or "needs_response",
        occurred_at=_dt(dispute.get("created")) or ctx.now,
    )
    if not created:
        return None
    done = [f"dispute {dispute['id']} of {amount} {currency} recorded"]
    if invoice is not None:
        full = amount >= invoice.total_minor
        result = ledger.clawback(
            invoice.id,
            source_ref=dispute["id"],
            now=ctx.now,
            actor=ctx.actor,
            refunded_net_minor=None if full else payments.refunded_net(invoice, amount),
            settings=ctx.settings,
            commit=False,
        )
        done.append(_clawed(result))
    return "; ".join(done)


def _clawed(result: ledger.ClawbackResult) -> str:
    text = f"{len(result.entries)} unused credit(s) clawed back"
    if result.receivable_id:
        text += f"; {result.shortfall_minor} (ex-tax) already used is owed (receivable {result.receivable_id})"
    return text


def _refunded_on(payment) -> int:
    from billing.payments.models import Payment

    same_charge = [
        column == value
        for column, value in (
            (Payment.stripe_charge_id, payment.stripe_charge_id),
            (Payment.stripe_payment_intent_id, payment.stripe_payment_intent_id),
        )
        if value
    ]
    if not same_charge:
        return 0
    return int(
        db.session.execute(
            sa.select(sa.func.coalesce(sa.func.sum(Payment.amount_minor), 0)).where(
                Payment.kind == "refund", sa.or_(*same_charge)
            )
        ).scalar_one()
    )


def _recorded_refunds(refunds: list[dict]):
    from billing.payments.models import Payment

    ids = [r.get("id") for r in refunds if r.get("id")]
    if not ids:
        return []
    return db.session.execute(
        sa.select(Payment.stripe_id.label("id")).where(Payment.stripe_id.in_(ids))
    ).all()


# ---------------------------------------------------------------------------------------------
# Customers and one-off charges


def _profile_for(customer: dict, ctx: Context) -> tuple[Member, BillingProfile]:
    member = member_for_customer(customer["id"], customer.get("metadata"))
    if member is None:
        raise NeedsAttention(f"Stripe customer {customer['id']} is not one of our members.")
    profile = db.session.execute(
        sa.select(BillingProfile).where(BillingProfile.stripe_customer_id == customer["id"])
    ).scalar_one_or_none()
    if profile is None:
        profile = BillingProfile(member_id=member.id, stripe_customer_id=customer["id"])
        db.session.add(profile)
    elif ctx.state_at and profile.stripe_state_at and ctx.state_at < profile.stripe_state_at:
        raise Skip(f"this view of customer {customer['id']} is older than the one applied")
    seen = ctx.state_at or _read_at(ctx.now)
    profile.stripe_state_at = max(filter(None, [profile.stripe_state_at, seen]))
    return member, profile


def on_customer_updated(customer: dict, ctx: Context) -> str | None:
    member, profile = _profile_for(customer, ctx)
    settings = customer.get("invoice_settings") or {}
    profile.email = customer.get("email")
    profile.name = customer.get("name")
    profile.phone = customer.get("phone")
    profile.address = customer.get("address")
    profile.default_payment_method = _id(settings.get("default_payment_method"))
    profile.delinquent = bool(customer.get("delinquent"))
    return f"billing details of member {member.id} updated"


def on_customer_deleted(customer: dict, ctx: Context) -> str | None:
    member, profile = _profile_for(customer, ctx)
    profile.deleted_at = profile.deleted_at or ctx.now
    profile.default_payment_method = None
    if member.stripe_customer_id == customer["id"]:
        member.stripe_customer_id = None  # a new customer is made if they pay by card again
    return f"Stripe customer of member {member.id} deleted"


def on_payment_intent_succeeded(intent: dict, ctx: Context) -> str | None:
    metadata = intent.get("metadata") or {}
    if metadata.get("kind") in PREPAID_KINDS:
        return _prepaid_paid(intent, metadata, ctx)
    if metadata.get("kind") != "visit_charge":
        raise Skip("an invoice's payment: the invoice events record it")
    member = member_for_customer(_id(intent.get("customer")), metadata)
    visit_id = str(metadata.get("visit_id") or "")
    payment = payments.record_card_payment(
        member_id=member.id if member else None,
        payment_intent_id=intent["id"],
        amount_minor=int(intent.get("amount_received") or intent.get("amount") or 0),
        currency=(intent.get("currency") or ctx.settings.currency).upper(),
        occurred_at=_dt(intent.get("created")) or ctx.now,
        charge_id=_id(intent.get("latest_charge")),
        visit_id=_existing_visit(int(visit_id)) if visit_id.isdigit() else None,
    )
    return f"card payment {payment.id} recorded for PaymentIntent {intent['id']}"


# A series sold online, a gift bought online: the invoice we opened is paid by this intent.
PREPAID_KINDS = ("series_payment", "gift_payment")


def _prepaid_paid(intent: dict, metadata: dict, ctx: Context) -> str | None:
    """The browser confirmed the payment of a series or a gift: its invoice is paid and, once,
    the series' credits granted (series) or the gift held and claimable (gift)."""
    from billing.payments.models import Invoice

    invoice_id = str(metadata.get("invoice_id") or "")
    invoice = db.session.get(Invoice, int(invoice_id)) if invoice_id.isdigit() else None
    if invoice is None:
        raise NeedsAttention(
            f"PaymentIntent {intent['id']} pays invoice {invoice_id or '?'}, which we do not have."
        )
    received = int(intent.get("amount_received") or intent.get("amount") or 0)
    currency = (intent.get("currency") or "").upper()
    if received != invoice.total_minor or (currency and currency != invoice.currency):
        raise NeedsAttention(
            f"PaymentIntent {intent['id']} received {received} {currency}; invoice {invoice.id} "
            f"is for {invoice.total_minor} {invoice.currency}."
        )
    common = {
        "payment_intent_id": intent["id"],
        "charge_id": _id(intent.get("latest_charge")),
        "actor": ctx.actor,
        "now": ctx.now,
    }
    if metadata["kind"] == "gift_payment":
        from flask import current_app

        from billing.gifts import service as gifts

        days = int(current_app.config.get("GIFT_CLAIM_DAYS", gifts.DEFAULT_CLAIM_DAYS))
        return gifts.settle_online_payment(invoice.id, claim_days=days, **common)
    from billing.series import service as series

    return series.settle_online_payment(invoice.id, stripe_event_id=ctx.event_id, **common)


def _existing_visit(visit_id: int) -> int | None:
    from billing.checkout.models import Visit

    return visit_id if db.session.get(Visit, visit_id) is not None else None


# ---------------------------------------------------------------------------------------------
# The table. Grep here to learn what an event does.

Handler = Callable[[dict, Context], str | None]

HANDLERS: dict[str, Handler] = {
    # A paid invoice is the only thing that buys a period: money recorded, membership active,
    # that period's credits granted once (ref "invoice:<id>"), however often it is delivered.
    "invoice.paid": on_invoice_paid,
    # The older name for the same fact (what the local Stripe server sends); same handler, and
    # the grant's ref makes both together count once.
    "invoice.payment_succeeded": on_invoice_paid,
    # A charge for a period failed: past due with a grace period (the first payment: still
    # pending); Stripe's attempt count and next retry are kept for the desk.
    "invoice.payment_failed": on_invoice_payment_failed,
    # Invoices being drafted, finalised, voided: finance sees every invoice, nothing is granted.
    "invoice.created": on_invoice_changed,
    "invoice.finalized": on_invoice_changed,
    "invoice.voided": on_invoice_changed,
    "invoice.marked_uncollectible": on_invoice_changed,
    # The subscription is the truth about the membership's state and tier: past due, paused,
    # ending at period end, canceled, or moved to another price (a tier change).
    "customer.subscription.created": on_subscription_changed,
    "customer.subscription.updated": on_subscription_changed,
    "customer.subscription.deleted": on_subscription_changed,
    "customer.subscription.paused": on_subscription_changed,
    "customer.subscription.resumed": on_subscription_changed,
    # Money given back takes back the credits it paid for; what was already used is owed.
    "charge.refunded": on_charge_refunded,
    # A chargeback: the same as a refund for the credits, and a row finance must follow up.
    "charge.dispute.created": on_dispute_created,
    # Billing details and the default card live in Stripe; we mirror them for the desk.
    "customer.updated": on_customer_updated,
    "customer.deleted": on_customer_deleted,
    # A visit's amount owed charged to the card on file (checkout): a Payment for finance.
    # A series or a gift paid in the browser: its invoice paid, the series' credits granted
    # or the gift made claimable, once.
    "payment_intent.succeeded": on_payment_intent_succeeded,
}


def apply(event_type: str, obj: dict, ctx: Context) -> str | None:
    handler = HANDLERS.get(event_type)
    if handler is None:
        raise Skip(f"{event_type} is not an event this service acts on")
    return handler(obj, ctx)
