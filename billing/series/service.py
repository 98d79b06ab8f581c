"""Selling a treatment series (a plan of kind "series"): once, at the desk or online, paid in full
or in a fixed number of monthly instalments.

A purchase is a membership of the series (memberships.join, pending) with an Invoice per
instalment. When an instalment is paid (at the desk, by the card on file, or online through the
payment_intent.succeeded webhook) its invoice is marked paid and the credits are granted through
memberships.record_paid_period, valid credit_validity_days from the first payment: everything at
the first payment (grant_mode upfront, or paid in full), or each instalment's share of every item
as it is paid (per_instalment). Nothing is granted twice: an instalment is paid once, and the
grant is keyed by its invoice.

The payment helpers here (price_parts, open_invoice, collect, mark_paid) are shared with gifts."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import sqlalchemy as sa

from billing.entitlements import service as ledger
from billing.errors import Conflict, InvalidInput, NotFound
from billing.extensions import db
from billing.members.models import Member
from billing.memberships import service as memberships
from billing.memberships.models import Membership, State
from billing.money import allocate, net_of_tax, tax_on_net
from billing.payments import service as payments
from billing.payments.models import Invoice, Payment
from billing.periods import add_interval
from billing.plans.models import GrantMode, PlanKind, PlanVersion
from billing.series.models import SeriesInstalment, SeriesPurchase
from billing.settings import ClinicSettings

PAYMENT_METHODS = ("desk", "card_on_file", "online")
LATER_PAYMENT_METHODS = ("desk", "card_on_file")  # an instalment after the first
INVOICE_KIND = "series"
SERIES_PAYMENT = "series_payment"  # PaymentIntent metadata kind: the webhook settles it here


# ---------------------------------------------------------------------------------------------
# Money in, shared with gifts


@dataclass(frozen=True)
class PriceParts:
    """A price as invoiced: gross (what the client pays), the tax in it, and the net."""

    total_minor: int
    tax_minor: int
    net_minor: int


def price_parts(amount_minor: int, tax_inclusive: bool, settings: ClinicSettings) -> PriceParts:
    """GST at the clinic's rate: taken out of a tax-inclusive price, added to an exclusive one."""
    if tax_inclusive:
        net = net_of_tax(amount_minor, settings.tax_rate_bp)
        return PriceParts(amount_minor, amount_minor - net, net)
    tax = tax_on_net(amount_minor, settings.tax_rate_bp)
    return PriceParts(amount_minor + tax, tax, amount_minor)


def split_parts(parts: PriceParts, count: int) -> list[PriceParts]:
    """Equal instalments to the cent (the first ones carry the odd cents)."""
    totals = allocate(parts.total_minor, [1] * count)
    nets = allocate(parts.net_minor, [1] * count)
    return [PriceParts(t, t - n, n) for t, n in zip(totals, nets, strict=True)]


def open_invoice(
    *,
    member_id: int,
    membership_id: int,
    kind: str,
    billing_reason: str,
    parts: PriceParts,
    currency: str,
    now: datetime,
) -> Invoice:
    invoice = Invoice(
        member_id=member_id,
        membership_id=membership_id,
        kind=kind,
        billing_reason=billing_reason,
        status="open",
        currency=currency,
        total_minor=parts.total_minor,
        tax_minor=parts.tax_minor,
        net_minor=parts.net_minor,
        issued_at=now,
        created_at=now,
    )
    db.session.add(invoice)
    db.session.flush()
    return invoice


def mark_paid(
    invoice: Invoice,
    *,
    method: str,
    now: datetime,
    payment_intent_id: str | None = None,
    charge_id: str | None = None,
) -> Payment:
    """The invoice is paid in full: a Payment row (once: a card payment is keyed by its
    PaymentIntent, so the webhook that follows a card-on-file charge finds it)."""
    if method == "desk":
        payment = Payment(
            invoice_id=invoice.id,
            member_id=invoice.member_id,
            kind="charge",
            method="desk",
            status="succeeded",
            amount_minor=invoice.total_minor,
            net_minor=invoice.total_minor,
            currency=invoice.currency,
            occurred_at=now,
            created_at=now,
        )
        db.session.add(payment)
    else:
        payment = payments.record_card_payment(
            member_id=invoice.member_id,
            payment_intent_id=payment_intent_id,
            amount_minor=invoice.total_minor,
            currency=invoice.currency,
            occurred_at=now,
            charge_id=charge_id,
        )
        payment.invoice_id = payment.invoice_id or invoice.id
    invoice.status = "paid"
    invoice.amount_paid_minor = invoice.total_minor
    invoice.paid_at = now
    db.session.flush()
    return payment


@dataclass
class Collected:
    """What happened to the money: paid now, or waiting for the client's browser (online)."""

    status: str  # paid | awaiting_payment
    payment_intent_id: str | None = None
    client_secret: str | None = None


def stripe_gateway():
    """The Stripe gateway, or ServiceUnavailable (503) when Stripe is not configured. Called
    before anything is written, so a refusal keeps nothing."""
    from billing.stripe_sync import gateway

    return gateway.current()


def collect(
    invoice: Invoice,
    member: Member,
    *,
    method: str,
    gateway,
    description: str,
    key: str,
    metadata_kind: str,
    now: datetime,
) -> Collected:
    """Take the invoice's amount: marked paid at the desk, charged to the card on file (with an
    idempotency key from our ids), or a PaymentIntent for the client's browser to confirm."""
    metadata = {"kind": metadata_kind, "invoice_id": str(invoice.id)}
    if method == "desk":
        mark_paid(invoice, method="desk", now=now)
        return Collected("paid")
    if method == "card_on_file":
        intent_id = gateway.charge_off_session(
            member,
            amount_minor=invoice.total_minor,
            currency=invoice.currency,
            description=description,
            idempotency_key=key,
            metadata=metadata,
        )
        mark_paid(invoice, method="card", now=now, payment_intent_id=intent_id)
        return Collected("paid", payment_intent_id=intent_id)
    if method == "online":
        intent_id, secret = gateway.create_payment_intent(
            member,
            amount_minor=invoice.total_minor,
            currency=invoice.currency,
            idempotency_key=key,
            metadata={"description": description, **metadata},
        )
        return Collected("awaiting_payment", payment_intent_id=intent_id, client_secret=secret)
    raise InvalidInput(
        f"Unknown payment {method!r}: use {', '.join(PAYMENT_METHODS)}.",
        errors={"payment": [f"one of {', '.join(PAYMENT_METHODS)}"]},
    )


# ---------------------------------------------------------------------------------------------
# Buying a series


@dataclass
class PurchaseView:
    """A purchase as the API shows it; `collected` only right after a payment was asked for."""

    purchase: SeriesPurchase
    membership: Membership
    collected: Collected | None = None
    balances: list = field(default_factory=list)

    @property
    def credits_expire_at(self) -> datetime | None:
        started = self.purchase.started_at
        days = self.membership.plan_version.credit_validity_days
        return started + timedelta(days=days) if started and days else None


def series_version(plan_code: str) -> PlanVersion:
    version = memberships.current_version(plan_code=plan_code)
    if version.plan.kind != PlanKind.SERIES:
        raise InvalidInput(
            f"{version.plan.name} is a monthly tier, not a series: join it as a membership.",
            errors={"plan": ["not a series"]},
        )
    if not version.credit_validity_days:
        raise InvalidInput(
            f"{version.plan.name} does not say how long its credits last.",
            errors={"plan": ["no credit_validity_days"]},
        )
    return version


def _instalment_count(version: PlanVersion, asked: int | None) -> int:
    count = 1 if asked is None else asked
    allowed = sorted({1, version.instalments})
    if count not in allowed:
        words = " or ".join(str(n) for n in allowed)
        how = (
            "in full only"
            if version.instalments == 1
            else f"in full (1) or in {version.instalments} monthly instalments"
        )
        raise InvalidInput(
            f"{version.plan.name} is paid {how}, not in {count}.",
            errors={"instalments": [f"must be {words}"]},
        )
    return count


def purchase(
    member_id: int,
    *,
    plan_code: str,
    payment: str,
    instalments: int | None = None,
    actor: str,
    now: datetime,
    settings: ClinicSettings,
    source: str = "desk",
) -> PurchaseView:
    """Sell a series to a member: the membership (pending), an invoice for the first (or only)
    payment, the payment taken, and on payment the credits granted. Every check is made, and
    Stripe asked for, before the sale is committed; a refusal keeps nothing."""
    if payment not in PAYMENT_METHODS:
        raise InvalidInput(
            f"Unknown payment {payment!r}.",
            errors={"payment": [f"one of {', '.join(PAYMENT_METHODS)}"]},
        )
    member = db.session.get(Member, member_id)
    if member is None:
        raise InvalidInput(f"No member {member_id}.", errors={"member_id": ["unknown member"]})
    version = series_version(plan_code)
    count = _instalment_count(version, instalments)
    gateway = stripe_gateway() if payment != "desk" else None
    membership = memberships.join(
        member, version, actor=actor, now=now, source=source, commit=False
    )
    whole = price_parts(version.price_minor, version.tax_inclusive, settings)
    row = SeriesPurchase(
        membership_id=membership.id,
        member_id=member.id,
        plan_version_id=version.id,
        instalments=count,
        grant_mode=version.grant_mode if count > 1 else GrantMode.UPFRONT,
        total_minor=whole.total_minor,
        tax_minor=whole.tax_minor,
        net_minor=whole.net_minor,
        currency=version.currency,
        payment_method=payment,
        purchased_at=now,
        created_by=actor,
    )
    for number, parts in enumerate(split_parts(whole, count), start=1):
        row.instalment_rows.append(
            SeriesInstalment(
                number=number,
                total_minor=parts.total_minor,
                tax_minor=parts.tax_minor,
                net_minor=parts.net_minor,
                due_at=add_interval(now, "month", number - 1, settings.tz),
            )
        )
    db.session.add(row)
    db.session.flush()
    first = row.instalment_rows[0]
    collected = _pay(row, first, member, method=payment, gateway=gateway, actor=actor, now=now)
    db.session.commit()
    return _view(row, membership, now, settings, collected)


def _view(
    row: SeriesPurchase,
    membership: Membership,
    now: datetime,
    settings: ClinicSettings,
    collected: Collected | None = None,
) -> PurchaseView:
    """The purchase with what is left of it, as the client reads it."""
    from billing.checkout import service as checkout

    member = db.session.get(Member, membership.member_id)
    balances = [
        {
            "label": ent.label,
            "remaining": ent.remaining,
            "granted": ent.granted,
            "unit_label": ent.unit_label,
            **checkout.balance_summary(ent, member, now, settings),
        }
        for ent in ledger.entitlements([membership.id], now)
    ]
    return PurchaseView(row, membership, collected, balances)


def _invoice_for(row: SeriesPurchase, instalment: SeriesInstalment, now: datetime) -> Invoice:
    """The instalment's invoice: the one already open for it (an online payment not yet
    confirmed), or a new one."""
    if instalment.invoice_id is not None:
        invoice = db.session.get(Invoice, instalment.invoice_id)
        if invoice is not None and invoice.status != "paid":
            return invoice
    reason = "series" if row.instalments == 1 else f"series instalment {instalment.number}"
    invoice = open_invoice(
        member_id=row.member_id,
        membership_id=row.membership_id,
        kind=INVOICE_KIND,
        billing_reason=f"{reason}/{row.instalments}" if row.instalments > 1 else reason,
        parts=PriceParts(instalment.total_minor, instalment.tax_minor, instalment.net_minor),
        currency=row.currency,
        now=now,
    )
    instalment.invoice_id = invoice.id
    return invoice


def _pay(
    row: SeriesPurchase,
    instalment: SeriesInstalment,
    member: Member,
    *,
    method: str,
    gateway,
    actor: str,
    now: datetime,
) -> Collected:
    invoice = _invoice_for(row, instalment, now)
    name = db.session.get(PlanVersion, row.plan_version_id).plan.name
    of = f" (instalment {instalment.number} of {row.instalments})" if row.instalments > 1 else ""
    collected = collect(
        invoice,
        member,
        method=method,
        gateway=gateway,
        description=f"{name}{of}",
        key=f"series-{row.id}-instalment-{instalment.number}-invoice-{invoice.id}",
        metadata_kind=SERIES_PAYMENT,
        now=now,
    )
    if collected.status == "paid":
        _settle(row, instalment, invoice, actor=actor, now=now)
    return collected


def _settle(
    row: SeriesPurchase,
    instalment: SeriesInstalment,
    invoice: Invoice,
    *,
    actor: str,
    now: datetime,
    stripe_event_id: str | None = None,
) -> None:
    """An instalment is paid: record it, and grant what the plan's grant mode says."""
    instalment.paid_at = now
    instalment.invoice_id = invoice.id
    row.started_at = row.started_at or now
    membership = db.session.get(Membership, row.membership_id)
    version = db.session.get(PlanVersion, row.plan_version_id)
    per_instalment = row.grant_mode == GrantMode.PER_INSTALMENT and row.instalments > 1
    if per_instalment:
        items = [(item, item.quantity // row.instalments) for item in version.items]
        net = instalment.net_minor
    elif instalment.number == 1:
        items, net = None, row.net_minor  # everything now: the whole price is owed for it
    else:
        return  # upfront: the credits came with the first payment
    start = row.started_at
    memberships.record_paid_period(
        membership,
        period_start=start,
        period_end=start + timedelta(days=version.credit_validity_days),
        source=ledger.GrantSource(
            ref=f"invoice:{invoice.id}",
            actor=actor,
            invoice_id=invoice.id,
            net_amount_minor=net,
            reason=f"{version.plan.name}: instalment {instalment.number} of {row.instalments}"
            if row.instalments > 1
            else f"{version.plan.name} paid",
        ),
        now=now,
        items=items,
        stripe_event_id=stripe_event_id,
        commit=False,
    )


def get_purchase(membership_id: int) -> SeriesPurchase:
    row = db.session.execute(
        sa.select(SeriesPurchase).where(SeriesPurchase.membership_id == membership_id)
    ).scalar_one_or_none()
    if row is None:
        raise NotFound(f"Membership {membership_id} is not a series purchase.")
    return row


def show(membership_id: int, *, now: datetime, settings: ClinicSettings) -> PurchaseView:
    row = get_purchase(membership_id)
    return _view(row, db.session.get(Membership, row.membership_id), now, settings)


def pay_instalment(
    membership_id: int,
    number: int,
    *,
    payment: str,
    actor: str,
    now: datetime,
    settings: ClinicSettings,
) -> PurchaseView:
    """An instalment is paid (at the desk or by the card on file). Paying one that is already
    paid changes nothing and says so by returning the purchase as it is; instalments are paid
    in order."""
    row = get_purchase(membership_id)
    if payment not in LATER_PAYMENT_METHODS:
        raise InvalidInput(
            "An instalment is paid at the desk or by the card on file.",
            errors={"payment": [f"one of {', '.join(LATER_PAYMENT_METHODS)}"]},
        )
    ledger.lock_memberships([membership_id])
    db.session.refresh(row)
    instalment = next((i for i in row.instalment_rows if i.number == number), None)
    if instalment is None:
        raise NotFound(
            f"This series is paid in {row.instalments} instalment"
            f"{'' if row.instalments == 1 else 's'}: there is no instalment {number}."
        )
    membership = db.session.get(Membership, membership_id)
    if instalment.is_paid:
        return _view(row, membership, now, settings)
    earlier = [i.number for i in row.instalment_rows if i.number < number and not i.is_paid]
    if earlier:
        raise Conflict(
            f"Instalment {earlier[0]} is not paid yet: instalments are paid in order.",
            slug="instalment-out-of-order",
        )
    if membership.state == State.CANCELED:
        raise Conflict("This series was canceled.", slug="membership-canceled")
    if membership.state == State.PAUSED:
        raise Conflict(
            "This series is paused: resume it before taking an instalment.",
            slug="membership-paused",
        )
    gateway = stripe_gateway() if payment == "card_on_file" else None
    member = db.session.get(Member, row.member_id)
    collected = _pay(row, instalment, member, method=payment, gateway=gateway, actor=actor, now=now)
    db.session.commit()
    return _view(row, membership, now, settings, collected)


def settle_online_payment(
    invoice_id: int,
    *,
    payment_intent_id: str,
    charge_id: str | None,
    actor: str,
    now: datetime,
    stripe_event_id: str | None = None,
) -> str | None:
    """payment_intent.succeeded for a series invoice paid in the browser: the invoice is paid
    and the instalment's credits granted, once. Does not commit (the webhook's transaction)."""
    instalment = db.session.execute(
        sa.select(SeriesInstalment).where(SeriesInstalment.invoice_id == invoice_id)
    ).scalar_one_or_none()
    invoice = db.session.get(Invoice, invoice_id)
    if instalment is None or invoice is None:
        return None
    row = instalment.purchase
    ledger.lock_memberships([row.membership_id])
    if instalment.is_paid:
        payments.record_card_payment(
            member_id=invoice.member_id,
            payment_intent_id=payment_intent_id,
            amount_minor=invoice.total_minor,
            currency=invoice.currency,
            occurred_at=now,
            charge_id=charge_id,
        ).invoice_id = invoice.id
        return None
    mark_paid(
        invoice, method="card", now=now, payment_intent_id=payment_intent_id, charge_id=charge_id
    )
    _settle(row, instalment, invoice, actor=actor, now=now, stripe_event_id=stripe_event_id)
    return (
        f"series instalment {instalment.number} of {row.instalments} paid (membership "
        f"{row.membership_id}): credits granted"
    )


def instalments_due(now: datetime, *, limit: int = 500) -> Sequence[SeriesInstalment]:
    """Instalments due by `now` and not paid, of series whose first payment was made and which
    are not canceled, oldest first: for a job that charges cards on file or reminds clients."""
    return list(
        db.session.execute(
            sa.select(SeriesInstalment)
            .join(SeriesPurchase, SeriesInstalment.purchase_id == SeriesPurchase.id)
            .join(Membership, SeriesPurchase.membership_id == Membership.id)
            .where(
                SeriesInstalment.paid_at.is_(None),
                SeriesInstalment.due_at <= now,
                SeriesInstalment.number > 1,
                SeriesPurchase.started_at.is_not(None),
                Membership.state != State.CANCELED,
            )
            .order_by(SeriesInstalment.due_at, SeriesInstalment.id)
            .limit(limit)
        ).scalars()
    )
