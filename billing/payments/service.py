"""Money as Stripe reported it, written as Invoice and Payment rows for finance.

These verbs know nothing of Stripe's JSON: stripe_sync reads an event (in any API shape) into the
plain facts below and calls them. Every verb converges: called twice with the same facts it
changes nothing the second time, and an older view of an invoice never overwrites a newer one
(a paid invoice does not go back to open). None of them commits: the caller's transaction does."""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

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


class StoredInvoice(NamedTuple):
    """What a webhook handler reads back of the invoice it stored (not the ORM row: the upsert is
    one Core statement, and nothing on that path needs more)."""

    id: int
    stripe_invoice_id: str
    status: str
    kind: str
    member_id: int | None


_INVOICES = Invoice.__table__
_PAYMENTS = Payment.__table__
# The columns an upsert compares to tell whether the stored invoice changed.
_COMPARED = (
    "id",
    "status",
    "total_minor",
    "tax_minor",
    "amount_paid_minor",
    "attempt_count",
    "next_payment_attempt",
    "paid_at",
    "stripe_charge_id",
    "membership_id",
)
_STORED = ("id", "stripe_invoice_id", "status", "kind", "member_id")
_RETURNED = tuple(dict.fromkeys(_STORED + _COMPARED))
# What an upsert takes from Stripe as given, and what it keeps when Stripe leaves it out.
_REPLACED = (
    "kind",
    "billing_reason",
    "status",
    "currency",
    "total_minor",
    "tax_minor",
    "net_minor",
    "amount_paid_minor",
    "next_payment_attempt",
)
_KEPT_WHEN_MISSING = ("period_start", "period_end", "paid_at", "stripe_charge_id")
_INVOICE_VALUES = (
    "stripe_invoice_id",
    "member_id",
    "membership_id",
    *_REPLACED,
    *_KEPT_WHEN_MISSING,
    "attempt_count",
    "issued_at",
    "created_at",
)


def _bound(table: sa.Table, names: Iterable[str]) -> dict[str, sa.BindParameter]:
    return {name: sa.bindparam(name, type_=table.c[name].type) for name in names}


@functools.cache
def _upsert_invoice_statement(dialect: str) -> sa.Insert:
    """INSERT ... ON CONFLICT (stripe_invoice_id) DO UPDATE, built once: the facts Stripe gave
    replace the stored ones, except that an older status (a lower STATUS_RANK) changes nothing,
    a member or membership once known stays, and a period, payment time or charge Stripe left
    out keeps what was stored. Returns the row as stored, or nothing when the status was older."""
    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    stmt = insert(_INVOICES).values(_bound(_INVOICES, _INVOICE_VALUES))
    new, old = stmt.excluded, _INVOICES.c
    kept = sa.func.coalesce(old.attempt_count, 0)
    return stmt.on_conflict_do_update(
        index_elements=[old.stripe_invoice_id],
        set_={
            "member_id": sa.func.coalesce(old.member_id, new.member_id),
            "membership_id": sa.func.coalesce(old.membership_id, new.membership_id),
            **{name: new[name] for name in _REPLACED},
            **{name: sa.func.coalesce(new[name], old[name]) for name in _KEPT_WHEN_MISSING},
            "attempt_count": sa.case((new.attempt_count > kept, new.attempt_count), else_=kept),
        },
        where=sa.bindparam("rank", type_=sa.Integer)
        >= sa.case(STATUS_RANK, value=old.status, else_=1),
    ).returning(*[old[name] for name in _RETURNED])


@functools.cache
def _stored_invoice_query() -> sa.Select:
    c = _INVOICES.c
    return sa.select(*[c[name] for name in _RETURNED]).where(
        c.stripe_invoice_id == sa.bindparam("stripe_invoice_id")
    )


@functools.cache
def _upsert_invoice_with_old_pg() -> sa.Select:
    """The upsert and, in the same statement, the row as it was before (a CTE reads the
    statement's snapshot, which the upsert's change is not part of): one round trip."""
    before = _stored_invoice_query().cte("before")
    after = _upsert_invoice_statement("postgresql").cte("after")
    one = sa.select(sa.literal(1).label("one")).subquery("one")
    return (
        sa.select(
            *[after.c[name] for name in _RETURNED],
            *[before.c[name].label(f"old_{name}") for name in _COMPARED],
        )
        .select_from(one)
        .outerjoin(after, sa.true())
        .outerjoin(before, sa.true())
    )


def upsert_invoice(
    facts: InvoiceFacts, *, member_id: int | None, membership_id: int | None, now: datetime
) -> tuple[StoredInvoice, bool]:
    """Create or bring up to date the local copy of a Stripe invoice. Returns (invoice, changed);
    an older status than the one stored changes nothing.

    One statement on PostgreSQL (the upsert, and the row as it was to compare with), two
    elsewhere. The invoice's row stays locked until the transaction ends, so two deliveries
    about one invoice are applied one after the other."""
    params = {
        "stripe_invoice_id": facts.stripe_invoice_id,
        "member_id": member_id,
        "membership_id": membership_id,
        "kind": facts.kind,
        "billing_reason": facts.billing_reason,
        "status": facts.status,
        "currency": facts.currency,
        "total_minor": facts.total_minor,
        "tax_minor": facts.tax_minor,
        "net_minor": facts.net_minor,
        "amount_paid_minor": facts.amount_paid_minor,
        "period_start": facts.period_start,
        "period_end": facts.period_end,
        "attempt_count": max(0, facts.attempt_count),
        "next_payment_attempt": facts.next_payment_attempt,
        "issued_at": facts.issued_at or now,
        "paid_at": facts.paid_at,
        "stripe_charge_id": facts.charge_id,
        "created_at": now,
        "rank": STATUS_RANK.get(facts.status, 1),
    }
    dialect = db.session.get_bind().dialect.name
    if dialect == "postgresql":
        row = db.session.execute(_upsert_invoice_with_old_pg(), params).one()
        after = row if row.id is not None else None
        before = (
            tuple(getattr(row, f"old_{name}") for name in _COMPARED)
            if row.old_id is not None
            else None
        )
    else:
        found = db.session.execute(_stored_invoice_query(), params).first()
        before = tuple(getattr(found, name) for name in _COMPARED) if found else None
        after = db.session.execute(_upsert_invoice_statement(dialect), params).first()
    if after is None:  # an older status: the stored row stands
        after = db.session.execute(_stored_invoice_query(), params).one()
        return _stored(after), False
    _expire_cached(Invoice, after.id)
    return _stored(after), tuple(getattr(after, name) for name in _COMPARED) != before


def _stored(row: sa.Row) -> StoredInvoice:
    return StoredInvoice(*(getattr(row, name) for name in _STORED))


def _expire_cached(model: type, row_id: int) -> None:
    """A row changed by a Core statement: a copy the session holds (an earlier verb in the same
    transaction loaded it) is reloaded when next read, not trusted. Every payments verb that
    changes an ORM row flushes it at once, so nothing unsaved is lost."""
    cached = db.session.identity_map.get(db.session.identity_key(model, row_id))
    if cached is not None:
        db.session.expire(cached)


@functools.cache
def _insert_invoice_payment_statement() -> sa.Insert:
    """The card payment of an invoice, inserted unless one is recorded already (for the invoice,
    or by its charge or PaymentIntent): one statement, built once."""
    c = _PAYMENTS.c
    values = {
        **_bound(
            _PAYMENTS,
            (
                "invoice_id",
                "member_id",
                "amount_minor",
                "net_minor",
                "currency",
                "stripe_id",
                "stripe_charge_id",
                "stripe_payment_intent_id",
                "occurred_at",
                "created_at",
            ),
        ),
        "kind": sa.literal("charge", _PAYMENTS.c.kind.type),
        "method": sa.literal("card", _PAYMENTS.c.method.type),
        "status": sa.literal("succeeded", _PAYMENTS.c.status.type),
        "fee_minor": sa.literal(0, _PAYMENTS.c.fee_minor.type),
    }
    recorded = sa.exists().where(_same_payment())
    return (
        _PAYMENTS.insert()
        .from_select(list(values), sa.select(*values.values()).where(~recorded))
        .returning(c.id)
    )


def _same_payment() -> sa.ColumnElement[bool]:
    """A payment already recorded for this invoice: its charge for the invoice, or the payment
    with its charge's id, or a charge by its PaymentIntent."""
    c = _PAYMENTS.c
    return sa.or_(
        sa.and_(c.invoice_id == sa.bindparam("invoice_id"), c.kind == "charge"),
        c.stripe_id == sa.bindparam("stripe_id"),
        sa.and_(
            c.kind == "charge",
            c.stripe_payment_intent_id == sa.bindparam("stripe_payment_intent_id"),
        ),
    )


@functools.cache
def _recorded_payment_query() -> sa.Select:
    """The recorded payment, preferring the invoice's charge, then the charge's id, then the
    first by PaymentIntent."""
    c = _PAYMENTS.c
    preference = sa.case(
        (sa.and_(c.invoice_id == sa.bindparam("invoice_id"), c.kind == "charge"), 0),
        (c.stripe_id == sa.bindparam("stripe_id"), 1),
        else_=2,
    )
    return (
        sa.select(c.id, c.invoice_id, c.stripe_id, c.stripe_charge_id, c.stripe_payment_intent_id)
        .where(_same_payment())
        .order_by(preference, c.id)
        .limit(1)
    )


def record_invoice_payment(
    invoice: StoredInvoice, facts: InvoiceFacts, *, occurred_at: datetime
) -> tuple[int | None, bool]:
    """The card payment that settled an invoice: one row per invoice (and per charge).
    Returns (the payment's id, created).

    One statement when it is new (insert unless recorded); a payment recorded already (by
    another delivery of the invoice, or by its charge) has what it lacked filled in."""
    if facts.amount_paid_minor <= 0:
        return None, False
    params = {
        "invoice_id": invoice.id,
        "member_id": invoice.member_id,
        "amount_minor": facts.amount_paid_minor,
        "net_minor": facts.amount_paid_minor,
        "currency": facts.currency,
        "stripe_id": facts.charge_id,
        "stripe_charge_id": facts.charge_id,
        "stripe_payment_intent_id": facts.payment_intent_id,
        "occurred_at": occurred_at,
        "created_at": occurred_at,
    }
    created = db.session.execute(_insert_invoice_payment_statement(), params).scalar()
    if created is not None:
        return created, True
    found = db.session.execute(_recorded_payment_query(), params).one()
    filled = {
        "invoice_id": found.invoice_id or invoice.id,
        "stripe_id": found.stripe_id or facts.charge_id,
        "stripe_charge_id": found.stripe_charge_id or facts.charge_id,
        "stripe_payment_intent_id": found.stripe_payment_intent_id or facts.payment_intent_id,
    }
    if any(getattr(found, name) != value for name, value in filled.items()):
        db.session.execute(_PAYMENTS.update().where(_PAYMENTS.c.id == found.id).values(**filled))
        _expire_cached(Payment, found.id)
    return found.id, False


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
