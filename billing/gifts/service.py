"""Gift memberships: a buyer pays for N months of a tier (or for a series) for someone else; the
recipient claims it with a code, and the months run from the claim.

The ledger stays append-only and finance uniform:
- purchase: a holding membership (source "gift", the buyer's, pending) and ONE holding credit lot
  (no treatment, no plan item; product type "gift"; N "month" units worth the net price; expiring
  at claim_by). Deferred revenue is on the ledger from the payment, not from the claim.
- claim: the membership passes to the recipient ("gift_claimed" event) and month 1 is converted:
  an `adjust` -1 month / -its value on the holding lot, and a grant of that value for month 1
  (record_paid_period, which activates the membership). Deferred revenue is unchanged.
- each later month is converted when it starts (grant_due_gift_months, from the expiry job).
- a gift not claimed by claim_by: its holding lot expires (breakage at claim_by) and the holding
  membership is closed.
Claimed by someone who already has a membership of the same tier: the months are converted onto
that membership instead, and the holding membership is closed after the last one."""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa

from billing.entitlements import service as ledger
from billing.entitlements.models import Credit, CreditGrant
from billing.errors import Conflict, DomainError, InvalidInput, NotFound
from billing.extensions import db
from billing.gifts.models import Gift, GiftStatus
from billing.members.models import Member
from billing.memberships import service as memberships
from billing.memberships.models import Membership, State
from billing.payments.models import Invoice
from billing.periods import add_interval
from billing.plans.models import Interval, PlanKind, PlanVersion
from billing.series import service as sales
from billing.settings import ClinicSettings

CODE_ALPHABET = "23456789ABCDEFGHJKLMNPQRSTUVWXYZ"  # no 0/O or 1/I to misread
CODE_GROUPS, CODE_GROUP_LEN = 3, 4
GIFT_PAYMENT = "gift_payment"  # PaymentIntent metadata kind: the webhook settles it here
INVOICE_KIND = "gift"
DEFAULT_CLAIM_DAYS = 365


@dataclass
class GiftView:
    gift: Gift
    collected: sales.Collected | None = None


# ---------------------------------------------------------------------------------------------
# Codes


def new_code() -> str:
    """Random, unique and easy to type: three groups of four, e.g. K7QM-2XPA-9D4F."""
    for _ in range(10):
        raw = "".join(secrets.choice(CODE_ALPHABET) for _ in range(CODE_GROUPS * CODE_GROUP_LEN))
        code = "-".join(raw[i : i + CODE_GROUP_LEN] for i in range(0, len(raw), CODE_GROUP_LEN))
        if db.session.execute(sa.select(Gift.id).where(Gift.code == code)).first() is None:
            return code
    raise Conflict("Could not make a new gift code; try again.", slug="gift-code-clash")


def normalise_code(text: str) -> str:
    """What a person typed ("k7qm 2xpa 9d4f") as the stored code ("K7QM-2XPA-9D4F")."""
    raw = re.sub(r"[^0-9A-Za-z]", "", text or "").upper()
    return "-".join(raw[i : i + CODE_GROUP_LEN] for i in range(0, len(raw), CODE_GROUP_LEN))


def get_gift(code: str) -> Gift:
    gift = db.session.execute(
        sa.select(Gift).where(Gift.code == normalise_code(code))
    ).scalar_one_or_none()
    if gift is None:
        raise NotFound("There is no gift with this code: check it and try again.")
    return gift


# ---------------------------------------------------------------------------------------------
# Buying


def _gift_version(plan_code: str, months: int | None) -> tuple[PlanVersion, int]:
    version = memberships.current_version(plan_code=plan_code)
    if version.plan.kind == PlanKind.SERIES:
        if months not in (None, 1):
            raise InvalidInput(
                f"{version.plan.name} is a series: it is given whole, not by the month.",
                errors={"months": ["must be 1 (or left out) for a series"]},
            )
        if not version.credit_validity_days:
            raise InvalidInput(
                f"{version.plan.name} does not say how long its credits last.",
                errors={"plan": ["no credit_validity_days"]},
            )
        return version, 1
    if months is None or isinstance(months, bool) or not isinstance(months, int) or months < 1:
        raise InvalidInput(
            "A gift is of at least 1 month.", errors={"months": ["must be 1 or more"]}
        )
    if version.interval != Interval.MONTH or version.interval_count != 1:
        raise InvalidInput(
            f"{version.plan.name} is not billed monthly: it cannot be given by the month.",
            errors={"plan": ["not a monthly tier"]},
        )
    return version, months


def buy(
    buyer_member_id: int,
    *,
    plan_code: str,
    months: int | None,
    recipient_name: str,
    recipient_email: str | None = None,
    message: str = "",
    payment: str,
    actor: str,
    now: datetime,
    settings: ClinicSettings,
    claim_days: int = DEFAULT_CLAIM_DAYS,
) -> GiftView:
    """A buyer pays for a gift: the gift and its code, the holding membership, the invoice, the
    payment, and (once paid) the holding credit lot. Every check, and Stripe, before anything
    is kept."""
    if payment not in sales.PAYMENT_METHODS:
        raise InvalidInput(
            f"Unknown payment {payment!r}.",
            errors={"payment": [f"one of {', '.join(sales.PAYMENT_METHODS)}"]},
        )
    if not (recipient_name or "").strip():
        raise InvalidInput("Say who the gift is for.", errors={"recipient_name": ["required"]})
    if claim_days < 1:
        raise InvalidInput("GIFT_CLAIM_DAYS must be at least 1.")
    buyer = db.session.get(Member, buyer_member_id)
    if buyer is None:
        raise InvalidInput(
            f"No member {buyer_member_id}.", errors={"buyer_member_id": ["unknown member"]}
        )
    version, months = _gift_version(plan_code, months)
    gateway = sales.stripe_gateway() if payment != "desk" else None
    holding = memberships.join(
        buyer, version, actor=actor, now=now, source=memberships.GIFT_SOURCE, commit=False
    )
    parts = sales.price_parts(version.price_minor * months, version.tax_inclusive, settings)
    gift = Gift(
        code=new_code(),
        plan_version_id=version.id,
        months=months,
        buyer_member_id=buyer.id,
        recipient_name=recipient_name.strip(),
        recipient_email=(recipient_email or "").strip() or None,
        message=message or "",
        amount_minor=parts.total_minor,
        net_minor=parts.net_minor,
        currency=version.currency,
        purchased_at=now,
        claim_by=now + timedelta(days=claim_days),
        membership_id=holding.id,
        status=GiftStatus.AWAITING_PAYMENT,
        created_by=actor,
    )
    db.session.add(gift)
    invoice = sales.open_invoice(
        member_id=buyer.id,
        membership_id=holding.id,
        kind=INVOICE_KIND,
        billing_reason="gift",
        parts=parts,
        currency=version.currency,
        now=now,
    )
    gift.invoice_id = invoice.id
    db.session.flush()
    what = f"{months} month{'' if months == 1 else 's'} of " if months > 1 else ""
    collected = sales.collect(
        invoice,
        buyer,
        method=payment,
        gateway=gateway,
        description=f"Gift: {what}{version.plan.name} for {gift.recipient_name}",
        key=f"gift-{gift.id}-invoice-{invoice.id}",
        metadata_kind=GIFT_PAYMENT,
        now=now,
    )
    if collected.status == "paid":
        _hold(gift, invoice, actor=actor, now=now, claim_days=claim_days)
    db.session.commit()
    return GiftView(gift, collected)


def _hold(gift: Gift, invoice: Invoice, *, actor: str, now: datetime, claim_days: int) -> None:
    """The gift is paid: its whole net value goes on the ledger as one holding lot."""
    gift.claim_by = now + timedelta(days=claim_days)
    gift.status = GiftStatus.UNCLAIMED
    series = gift.plan_version.plan.kind == PlanKind.SERIES
    ledger.hold_prepaid(
        db.session.get(Membership, gift.membership_id),
        quantity=gift.months,
        unit_label="series" if series else "month",
        net_amount_minor=gift.net_minor,
        expires_at=gift.claim_by,
        source=ledger.GrantSource(
            ref=f"gift:{gift.code}",
            actor=actor,
            invoice_id=invoice.id,
            net_amount_minor=gift.net_minor,
            reason=f"gift {gift.code} for {gift.recipient_name}: held until claimed",
        ),
        now=now,
        commit=False,
    )


def settle_online_payment(
    invoice_id: int,
    *,
    payment_intent_id: str,
    charge_id: str | None,
    actor: str,
    now: datetime,
    claim_days: int = DEFAULT_CLAIM_DAYS,
) -> str | None:
    """payment_intent.succeeded for a gift bought online: paid, held, claimable; once.
    Does not commit (the webhook's transaction)."""
    gift = db.session.execute(
        sa.select(Gift).where(Gift.invoice_id == invoice_id)
    ).scalar_one_or_none()
    invoice = db.session.get(Invoice, invoice_id)
    if gift is None or invoice is None:
        return None
    ledger.lock_memberships([gift.membership_id])
    if gift.status != GiftStatus.AWAITING_PAYMENT:
        return None
    sales.mark_paid(
        invoice, method="card", now=now, payment_intent_id=payment_intent_id, charge_id=charge_id
    )
    _hold(gift, invoice, actor=actor, now=now, claim_days=claim_days)
    return f"gift {gift.code} paid: claimable until {gift.claim_by.date().isoformat()}"


# ---------------------------------------------------------------------------------------------
# Claiming


def _tier_membership_of(member_id: int) -> Membership | None:
    """The member's own tier membership (not a gift they are holding for someone)."""
    for membership in memberships.memberships_usable_by(member_id):
        if membership.member_id == member_id and membership.plan_version.plan.kind == "tier":
            return membership
    return None


def _claim_target(gift: Gift, member: Member, membership_id: int | None) -> Membership | None:
    """Where the months go: None (the gift's own membership becomes the recipient's), or the
    recipient's membership of the same tier. Refuses what cannot be."""
    plan = gift.plan_version.plan
    if membership_id is not None:
        target = db.session.get(Membership, membership_id)
        if target is None or target.member_id != member.id:
            raise InvalidInput(
                f"Membership {membership_id} is not {member.full_name}'s.",
                errors={"membership_id": ["not this member's membership"]},
            )
        if plan.kind == PlanKind.SERIES:
            raise InvalidInput(
                f"This gift is a series ({plan.name}): it starts a series of its own and cannot "
                f"be added to the {target.plan_version.plan.name} membership.",
                errors={"membership_id": ["a series gift cannot be added to a membership"]},
            )
        if target.plan_version.plan_id != plan.id:
            raise InvalidInput(
                f"This gift is {gift.months} month(s) of {plan.name}; membership "
                f"{target.id} is {target.plan_version.plan.name}.",
                errors={"membership_id": ["another plan"]},
            )
        if target.state == State.CANCELED:
            raise Conflict("That membership is canceled.", slug="membership-canceled")
        return target
    if plan.kind == PlanKind.SERIES:
        return None
    own = _tier_membership_of(member.id)
    if own is None:
        return None
    if own.plan_version.plan_id == plan.id:
        return own
    raise Conflict(
        f"{member.full_name} already has the {own.plan_version.plan.name} membership; this gift "
        f"is {plan.name}. Change tier first, or claim it for someone else.",
        slug="already-a-member",
        membership_id=own.id,
    )


def claim(
    code: str,
    *,
    member_id: int,
    membership_id: int | None = None,
    actor: str,
    now: datetime,
    settings: ClinicSettings,
) -> GiftView:
    """The recipient claims a gift: it becomes theirs (a new membership, or months added to
    their membership of the same tier), and its first month starts now."""
    gift = get_gift(code)
    ledger.lock_memberships([gift.membership_id])
    db.session.refresh(gift)
    if gift.status == GiftStatus.CLAIMED:
        raise Conflict(
            f"Gift {gift.code} was already claimed on {gift.claimed_at.date().isoformat()}.",
            slug="gift-already-claimed",
        )
    if gift.is_expired(now):
        raise Conflict(
            f"Gift {gift.code} could be claimed until {gift.claim_by.date().isoformat()}: it "
            "has expired.",
            slug="gift-expired",
        )
    if gift.status == GiftStatus.AWAITING_PAYMENT:
        raise Conflict(f"Gift {gift.code} is not paid yet.", slug="gift-not-paid")
    member = db.session.get(Member, member_id)
    if member is None:
        raise InvalidInput(f"No member {member_id}.", errors={"member_id": ["unknown member"]})
    target = _claim_target(gift, member, membership_id)
    holding = db.session.get(Membership, gift.membership_id)
    memberships.transfer_gift(holding, member, actor=actor, now=now, code=gift.code)
    gift.status = GiftStatus.CLAIMED
    gift.claimed_at = now
    gift.claimed_by_member_id = member.id
    gift.applied_membership_id = (target or holding).id
    credit = _holding_credit(gift)
    ledger.extend_expiry(
        credit,
        _month_start(gift, gift.months + 1, settings),
        actor=actor,
        reason=f"gift {gift.code} claimed: its months run from the claim",
        now=now,
    )
    _convert(gift, 1, actor=actor, now=now, settings=settings)
    if target is None and gift.plan_version.plan.kind == PlanKind.TIER:
        # A gift of months ends after them unless the member then pays for more.
        memberships.transition(
            holding,
            State.CANCEL_AT_PERIOD_END,
            actor=actor,
            now=now,
            reason=f"gift of {gift.months} month(s): ends after its last month",
        )
        holding.cancel_at = _month_start(gift, gift.months + 1, settings)
    _convert_due(gift, now=now, actor=actor, settings=settings)
    db.session.commit()
    return GiftView(gift)


def _holding_credit(gift: Gift) -> Credit:
    return db.session.execute(
        sa.select(Credit)
        .join(CreditGrant, Credit.grant_id == CreditGrant.id)
        .where(
            CreditGrant.membership_id == gift.membership_id,
            CreditGrant.source_ref == f"gift:{gift.code}",
        )
    ).scalar_one()


def _month_start(gift: Gift, number: int, settings: ClinicSettings) -> datetime:
    """When month `number` of a claimed gift starts (number months+1: when the last one ends)."""
    if gift.plan_version.plan.kind == PlanKind.SERIES:
        days = gift.plan_version.credit_validity_days
        return gift.claimed_at + timedelta(days=days) * (number - 1)
    return add_interval(gift.claimed_at, Interval.MONTH, number - 1, settings.tz)


def _convert(gift: Gift, number: int, *, actor: str, now: datetime, settings: ClinicSettings):
    """Month `number` begins: its share of the holding lot becomes that month's credits on the
    membership the gift went to. Deferred revenue does not change. Does not commit."""
    ref = f"gift:{gift.code}:month:{number}"
    taken = ledger.take_from_holding(
        _holding_credit(gift),
        ref=ref,
        actor=actor,
        reason=f"gift {gift.code}: month {number} of {gift.months} begins",
        now=now,
    )
    start = _month_start(gift, number, settings)
    end = _month_start(gift, number + 1, settings)
    source = ledger.GrantSource(
        ref=ref,
        actor=actor,
        invoice_id=gift.invoice_id,
        net_amount_minor=-taken.value_minor,
        reason=f"gift {gift.code}: month {number} of {gift.months}",
    )
    target = db.session.get(Membership, gift.applied_membership_id)
    if target.id == gift.membership_id:
        memberships.record_paid_period(
            target, period_start=start, period_end=end, source=source, now=now, commit=False
        )
    else:
        ledger.grant_period(target, start, end, source, now=now, settings=settings, commit=False)
    gift.months_converted = max(gift.months_converted, number)
    if number == gift.months and target.id != gift.membership_id:
        holding = db.session.get(Membership, gift.membership_id)
        if holding.state == State.PENDING:
            memberships.transition(
                holding,
                State.CANCELED,
                actor=actor,
                now=now,
                reason=f"gift {gift.code}: every month added to membership {target.id}",
            )
            holding.canceled_at = now


def _convert_due(gift: Gift, *, now: datetime, actor: str, settings: ClinicSettings) -> int:
    done = 0
    while gift.months_converted < gift.months:
        number = gift.months_converted + 1
        if _month_start(gift, number, settings) > now:
            break
        _convert(gift, number, actor=actor, now=now, settings=settings)
        done += 1
    return done


# ---------------------------------------------------------------------------------------------
# Time passing (the expiry job)


def grant_due_gift_months(
    now: datetime, *, settings: ClinicSettings, actor: str = "system:gift_months"
) -> dict:
    """Convert every claimed gift's months that have started, and close every gift not claimed
    by its claim_by (its holding lot expires: breakage at claim_by). One transaction per gift;
    safe to run late or twice. A gift whose membership cannot take a month (canceled, paused)
    is left for the next run; its holding lot expires after its last month."""
    counts = {"gift_months_converted": 0, "gifts_expired": 0, "gifts_failed": 0}
    claimed = (
        db.session.execute(
            sa.select(Gift.id)
            .where(Gift.status == GiftStatus.CLAIMED, Gift.months_converted < Gift.months)
            .order_by(Gift.id)
        )
        .scalars()
        .all()
    )
    for gift_id in claimed:
        gift = db.session.get(Gift, gift_id)
        ledger.lock_memberships([gift.membership_id, gift.applied_membership_id])
        db.session.refresh(gift)
        try:
            counts["gift_months_converted"] += _convert_due(
                gift, now=now, actor=actor, settings=settings
            )
            db.session.commit()
        except DomainError:
            db.session.rollback()
            counts["gifts_failed"] += 1
    unclaimed = (
        db.session.execute(
            sa.select(Gift.id)
            .where(Gift.status == GiftStatus.UNCLAIMED, Gift.claim_by <= now)
            .order_by(Gift.id)
        )
        .scalars()
        .all()
    )
    for gift_id in unclaimed:
        gift = db.session.get(Gift, gift_id)
        ledger.lock_memberships([gift.membership_id])
        db.session.refresh(gift)
        if gift.status != GiftStatus.UNCLAIMED:
            db.session.rollback()
            continue
        holding = db.session.get(Membership, gift.membership_id)
        ledger.expire_unused(holding, now=now, actor=actor, settings=settings, commit=False)
        if holding.state == State.PENDING:
            memberships.transition(
                holding,
                State.CANCELED,
                actor=actor,
                now=now,
                reason=f"gift {gift.code} not claimed by {gift.claim_by.date().isoformat()}",
            )
            holding.canceled_at = now
        gift.status = GiftStatus.EXPIRED
        db.session.commit()
        counts["gifts_expired"] += 1
    return counts
