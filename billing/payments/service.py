"""Money as Stripe reported it, written as Invoice and Payment rows for finance.

These verbs know nothing of Stripe's JSON: stripe_sync reads an event (in any API shape) into the
plain facts below and calls them. Every verb converges: called twice with the same facts it
changes nothing the second time, and an older view of an invoice never overwrites a newer one
(a paid invoice does not go back to open). None of them commits: the caller's transaction does."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa

from billing.extensions import db
from billing.money import div_round_half_up
from billing.payments.models import Invoice, Payment

# How far along an invoice is; a lower rank never overwrites a higher one.
STATUS_RANK = {"draft": 0, "open": 1, "uncollectible": 2, "void": 2, "paid": 3}


@dataclass(frozen=True)
class InvoiceFacts:
    """One invoice as Stripe described it, in our terms (minor units, upper-case currency)."""

    stripe_invoice_id: str
    status: str
    currency: str
    total_minor: int
    tax_minor: int
    amount_paid_minor: int
    kind: str = "subscription"  # subscription, one_off
    billing_reason: str | None = None
    period_start: datetime | None = None
    period_end: datetime | None = None
    attempt_count: int = 0
    next_payment_attempt: datetime | None = None
    issued_at: datetime | None = None
    paid_at: datetime | None = None
    charge_id: str | None = None
    payment_intent_id: str | None = None

    @property
    def net_minor(self) -> int:
        return self.total_minor - self.tax_minor


def find_invoice(stripe_invoice_id: str) -> Invoice | None:
    return db.session.execute(
        sa.select(Invoice).where(Invoice.stripe_invoice_id == stripe_invoice_id)
    ).scalar_one_or_none()


def upsert_invoice(
    facts: InvoiceFacts, *, member_id: int | None, membership_id: int | None, now: datetime
) -> tuple[Invoice, bool]:
    """Create or bring up to date the local copy of a Stripe invoice. Returns (invoice, changed);
    an older status than the one stored changes nothing."""
    invoice = find_invoice(facts.stripe_invoice_id)
    if invoice is None:
        invoice = Invoice(
            stripe_invoice_id=facts.stripe_invoice_id,
            created_at=now,
            issued_at=facts.issued_at or now,
            status=facts.status,
        )
        db.session.add(invoice)
    elif STATUS_RANK.get(facts.status, 1) < STATUS_RANK.get(invoice.status, 1):
        return invoice, False
    before = _snapshot(invoice)
    invoice.member_id = invoice.member_id or member_id
    invoice.membership_id = invoice.membership_id or membership_id
    invoice.kind = facts.kind
    invoice.billing_reason = facts.billing_reason
    invoice.status = facts.status
    invoice.currency = facts.currency
    invoice.total_minor = facts.total_minor
    invoice.tax_minor = facts.tax_minor
    invoice.net_minor = facts.net_minor
    invoice.amount_paid_minor = facts.amount_paid_minor
    invoice.period_start = facts.period_start or invoice.period_start
    invoice.period_end = facts.period_end or invoice.period_end
    invoice.attempt_count = max(invoice.attempt_count or 0, facts.attempt_count)
    invoice.next_payment_attempt = facts.next_payment_attempt
    invoice.paid_at = facts.paid_at or invoice.paid_at
    invoice.stripe_charge_id = facts.charge_id or invoice.stripe_charge_id
    db.session.flush()
    return invoice, _snapshot(invoice) != before


def _snapshot(invoice: Invoice) -> tuple:
    return (
        invoice.id,
        invoice.status,
        invoice.total_minor,
        invoice.tax_minor,
        invoice.amount_paid_minor,
        invoice.attempt_count,
        invoice.next_payment_attempt,
        invoice.paid_at,
        invoice.stripe_charge_id,
        invoice.membership_id,
    )


def record_invoice_payment(
    invoice: Invoice, facts: InvoiceFacts, *, occurred_at: datetime
) -> tuple[Payment | None, bool]:
    """The card payment that settled an invoice: one row per invoice (and per charge).
    Returns (payment, created)."""
    if facts.amount_paid_minor <= 0:
        return None, False
    payment = db.session.execute(
        sa.select(Payment).where(Payment.invoice_id == invoice.id, Payment.kind == "charge")
    ).scalar_one_or_none()
    if payment is None and facts.charge_id:
        payment = _by_stripe_id(facts.charge_id)
    if payment is None and facts.payment_intent_id:
        payment = _by_payment_intent(facts.payment_intent_id)
    created = payment is None
    if payment is None:
        payment = Payment(
            invoice_id=invoice.id,
            member_id=invoice.member_id,
            kind="charge",
            method="card",
            status="succeeded",
            amount_minor=facts.amount_paid_minor,
            net_minor=facts.amount_paid_minor,
            currency=facts.currency,
            occurred_at=occurred_at,
            created_at=occurred_at,
        )
        db.session.add(payment)
    payment.invoice_id = payment.invoice_id or invoice.id
    payment.stripe_id = payment.stripe_id or facts.charge_id
    payment.stripe_charge_id = payment.stripe_charge_id or facts.charge_id
    payment.stripe_payment_intent_id = payment.stripe_payment_intent_id or facts.payment_intent_id
    db.session.flush()
    return payment, created


def record_card_payment(
    *,
    member_id: int | None,
    payment_intent_id: str,
    amount_minor: int,
    currency: str,
    occurred_at: datetime,
    charge_id: str | None = None,
    visit_id: int | None = None,
) -> Payment:
    """A one-off card charge (a visit's amount owed), once per PaymentIntent."""
    payment = _by_payment_intent(payment_intent_id)
    if payment is None and charge_id:
        payment = _by_stripe_id(charge_id)
    if payment is None:
        payment = Payment(
            member_id=member_id,
            visit_id=visit_id,
            kind="charge",
            method="card",
            status="succeeded",
            amount_minor=amount_minor,
            net_minor=amount_minor,
            currency=currency,
            stripe_payment_intent_id=payment_intent_id,
            occurred_at=occurred_at,
            created_at=occurred_at,
        )
        db.session.add(payment)
    payment.stripe_id = payment.stripe_id or charge_id
    payment.stripe_charge_id = payment.stripe_charge_id or charge_id
    payment.visit_id = payment.visit_id or visit_id
    db.session.flush()
    return payment


def find_charge_payment(charge_id: str | None, payment_intent_id: str | None) -> Payment | None:
    """The payment a Stripe charge paid for, by the charge or by its PaymentIntent."""
    if charge_id:
        payment = db.session.execute(
            sa.select(Payment).where(
                Payment.kind == "charge",
                sa.or_(Payment.stripe_id == charge_id, Payment.stripe_charge_id == charge_id),
            )
        ).scalar_one_or_none()
        if payment is not None:
            return payment
    if payment_intent_id:
        return db.session.execute(
            sa.select(Payment).where(
                Payment.kind == "charge", Payment.stripe_payment_intent_id == payment_intent_id
            )
        ).scalar_one_or_none()
    return None


def find_invoice_for_charge(charge_id: str | None, payment_intent_id: str | None) -> Invoice | None:
    payment = find_charge_payment(charge_id, payment_intent_id)
    if payment is not None and payment.invoice_id is not None:
        return db.session.get(Invoice, payment.invoice_id)
    if charge_id:
        return db.session.execute(
            sa.select(Invoice).where(Invoice.stripe_charge_id == charge_id)
        ).scalar_one_or_none()
    return None


def refunded_net(invoice: Invoice, gross_minor: int) -> int:
    """The ex-tax part of an amount given back on an invoice (in the invoice's proportion)."""
    if invoice.total_minor <= 0:
        return 0
    return div_round_half_up(gross_minor * invoice.net_minor, invoice.total_minor)


def record_refund(
    *,
    charge: Payment | None,
    invoice: Invoice | None,
    refund_id: str,
    amount_minor: int,
    currency: str,
    occurred_at: datetime,
) -> Payment | None:
    """Money given back on a charge, once per refund; adds to the invoice's refunded total.
    Returns None when this refund is already recorded."""
    if _by_stripe_id(refund_id) is not None:
        return None
    row = Payment(
        invoice_id=invoice.id if invoice else (charge.invoice_id if charge else None),
        member_id=(invoice.member_id if invoice else None)
        or (charge.member_id if charge else None),
        visit_id=charge.visit_id if charge else None,
        kind="refund",
        method="card",
        status="succeeded",
        amount_minor=amount_minor,
        net_minor=amount_minor,
        currency=currency,
        stripe_id=refund_id,
        stripe_charge_id=charge.stripe_charge_id if charge else None,
        stripe_payment_intent_id=charge.stripe_payment_intent_id if charge else None,
        occurred_at=occurred_at,
        created_at=occurred_at,
    )
    db.session.add(row)
    if invoice is not None:
        invoice.amount_refunded_minor = (invoice.amount_refunded_minor or 0) + amount_minor
    db.session.flush()
    return row


def record_dispute(
    *,
    charge: Payment | None,
    invoice: Invoice | None,
    dispute_id: str,
    amount_minor: int,
    currency: str,
    status: str,
    occurred_at: datetime,
) -> tuple[Payment, bool]:
    """A chargeback opened on a charge: one row per dispute, its status kept current."""
    row = _by_stripe_id(dispute_id)
    if row is not None:
        row.status = status
        return row, False
    row = Payment(
        invoice_id=invoice.id if invoice else (charge.invoice_id if charge else None),
        member_id=(invoice.member_id if invoice else None)
        or (charge.member_id if charge else None),
        kind="dispute",
        method="card",
        status=status,
        amount_minor=amount_minor,
        net_minor=amount_minor,
        currency=currency,
        stripe_id=dispute_id,
        stripe_charge_id=charge.stripe_charge_id if charge else None,
        stripe_payment_intent_id=charge.stripe_payment_intent_id if charge else None,
        occurred_at=occurred_at,
        created_at=occurred_at,
    )
    db.session.add(row)
    db.session.flush()
    return row, True


def apply_balance_transaction(
    *,
    source_id: str,
    balance_transaction_id: str,
    fee_minor: int,
    net_minor: int,
    payout_id: str | None = None,
) -> Payment | None:
    """Stripe's fee and net for a charge or refund (and the payout it went out in)."""
    payment = _by_stripe_id(source_id)
    if payment is None:
        payment = db.session.execute(
            sa.select(Payment).where(
                Payment.kind == "charge", Payment.stripe_charge_id == source_id
            )
        ).scalar_one_or_none()
    if payment is None:
        return None
    changed = (
        payment.balance_transaction_id != balance_transaction_id
        or payment.fee_minor != fee_minor
        or payment.net_minor != abs(net_minor)
        or (payout_id is not None and payment.payout_id != payout_id)
    )
    payment.balance_transaction_id = balance_transaction_id
    payment.fee_minor = fee_minor
    payment.net_minor = abs(net_minor)
    if payout_id is not None:
        payment.payout_id = payout_id
    db.session.flush()
    return payment if changed else None


def set_payout(balance_transaction_id: str, payout_id: str) -> bool:
    payment = db.session.execute(
        sa.select(Payment).where(Payment.balance_transaction_id == balance_transaction_id)
    ).scalar_one_or_none()
    if payment is None or payment.payout_id == payout_id:
        return False
    payment.payout_id = payout_id
    return True


def _by_stripe_id(stripe_id: str) -> Payment | None:
    return db.session.execute(
        sa.select(Payment).where(Payment.stripe_id == stripe_id)
    ).scalar_one_or_none()


def _by_payment_intent(payment_intent_id: str) -> Payment | None:
    return (
        db.session.execute(
            sa.select(Payment)
            .where(Payment.kind == "charge", Payment.stripe_payment_intent_id == payment_intent_id)
            .order_by(Payment.id)
        )
        .scalars()
        .first()
    )
