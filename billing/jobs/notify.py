"""Member emails through an outbox: written once per dedupe key, then delivered by SMTP.

Writing and sending are apart on purpose. Writing is idempotent (the dedupe key is UNIQUE), so
the notify job may run late, twice, or on two servers and a member still gets one email per
event. Sending claims one row at a time (pending -> sending) before talking to the SMTP server
and marks it sent afterwards; a server that dies in between leaves the row in `sending`, and
it is retried after SENDING_STALE_AFTER with the same Message-ID, so the receiving server can
drop the duplicate.

Settings (app config; unset MAIL_SERVER or MAIL_FROM means "write, do not send"):
MAIL_SERVER, MAIL_PORT (25), MAIL_FROM, MAIL_USERNAME, MAIL_PASSWORD, MAIL_USE_TLS (STARTTLS),
MAIL_USE_SSL, MAIL_TIMEOUT (seconds, 10); NOTIFY_LOOKBACK_DAYS (3): how old an event may be and
still be announced (so a first deploy does not mail a year of history)."""

from __future__ import annotations

import contextlib
import smtplib
import ssl
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from email.message import EmailMessage
from email.utils import format_datetime

import sqlalchemy as sa
from flask import current_app
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import aliased, selectinload

from billing.clock import local_date, start_of_local_day
from billing.entitlements.models import Credit, CreditGrant, LedgerEntry
from billing.extensions import db
from billing.jobs.models import Notification, NotificationStatus
from billing.memberships.models import Membership, MembershipEvent, State
from billing.plans.models import PlanItem, PlanVersion
from billing.settings import ClinicSettings

EXPIRY_NOTICE_DAYS = 7
MAX_ATTEMPTS = 5
SENDING_STALE_AFTER = timedelta(minutes=15)
DELIVERY_BATCH = 200

KINDS = ("payment_failed", "card_expiring", "credits_expiring", "renewed")


# ---------------------------------------------------------------------------------------------
# Writing


def write_outbox(*, now: datetime, settings: ClinicSettings) -> Counter:
    """Everything members should hear about as of `now`, each written once (by dedupe key)."""
    since = now - timedelta(days=int(current_app.config.get("NOTIFY_LOOKBACK_DAYS", 3)))
    written: Counter = Counter({kind: 0 for kind in KINDS})
    written["payment_failed"] = _payment_failed(now, since, settings)
    # card_expiring: no card expiry is stored (Stripe keeps the card); nothing to write until
    # the payment method's exp_month/exp_year are synced.
    written["credits_expiring"] = _credits_expiring(now, settings)
    written["renewed"] = _renewed(now, since, settings)
    return written


def _add(
    *,
    kind: str,
    key: str,
    membership: Membership,
    subject: str,
    body: str,
    now: datetime,
    data: dict | None = None,
) -> bool:
    """Insert the notification unless its key exists; True if this call wrote it."""
    if db.session.execute(sa.select(Notification.id).where(Notification.dedupe_key == key)).first():
        return False
    member = membership.member
    row = Notification(
        kind=kind,
        dedupe_key=key,
        member_id=member.id,
        membership_id=membership.id,
        to_email=member.email,
        subject=subject,
        body=body,
        data=data,
        status=NotificationStatus.PENDING,
        created_at=now,
    )
    try:
        with db.session.begin_nested():
            db.session.add(row)
            db.session.flush()
    except IntegrityError:  # another server wrote the same key a moment ago
        return False
    db.session.commit()
    return True


def _greeting(membership: Membership) -> str:
    return f"Dear {membership.member.first_name},"


def _sign_off() -> str:
    return f"\n\n{current_app.config.get('CLINIC_NAME', 'The clinic')}\n"


def _day(moment: datetime, settings: ClinicSettings) -> str:
    d = local_date(moment, settings.tz)
    return f"{d.day} {d:%B %Y}"


def _payment_failed(now: datetime, since: datetime, settings: ClinicSettings) -> int:
    """Each move to past due (a failed payment) of a membership that is still past due."""
    rows = db.session.execute(
        sa.select(MembershipEvent, Membership)
        .join(Membership, Membership.id == MembershipEvent.membership_id)
        .where(
            MembershipEvent.kind == "transition",
            MembershipEvent.to_state == State.PAST_DUE,
            MembershipEvent.at > since,
            MembershipEvent.at <= now,
            Membership.state == State.PAST_DUE,
        )
        .order_by(MembershipEvent.id)
    ).all()
    count = 0
    for event, membership in rows:
        plan = membership.plan_version.plan.name
        grace = membership.grace_ends_at
        until = (
            f"You can keep using your treatments until {_day(grace, settings)}; after that they "
            "cannot be redeemed until the payment is settled."
            if grace
            else "Your treatments cannot be redeemed until the payment is settled."
        )
        body = (
            f"{_greeting(membership)}\n\nWe could not take the payment for your {plan} "
            f"membership. Please update your card or contact the front desk.\n\n{until}"
            f"{_sign_off()}"
        )
        count += _add(
            kind="payment_failed",
            key=f"payment_failed:event:{event.id}",
            membership=membership,
            subject=f"Your {plan} payment did not go through",
            body=body,
            now=now,
            data={"event_id": event.id, "grace_ends_at": grace.isoformat() if grace else None},
        )
    return count


def _credits_expiring(now: datetime, settings: ClinicSettings) -> int:
    """Credits with units left that expire within EXPIRY_NOTICE_DAYS clinic days: one email
    per membership and expiry day, listing what would be lost."""
    horizon = start_of_local_day(
        local_date(now, settings.tz) + timedelta(days=EXPIRY_NOTICE_DAYS + 1), settings.tz
    )
    live = (
        sa.select(
            LedgerEntry.credit_id,
            sa.func.sum(LedgerEntry.quantity).label("remaining"),
            sa.func.max(LedgerEntry.expires_at).label("expires_at"),
        )
        .group_by(LedgerEntry.credit_id)
        .having(
            sa.func.sum(LedgerEntry.quantity) > 0,
            sa.func.max(LedgerEntry.expires_at) > now,
            sa.func.max(LedgerEntry.expires_at) <= horizon,
        )
        .subquery()
    )
    rows = db.session.execute(
        sa.select(Credit, live.c.remaining, live.c.expires_at)
        .join(live, live.c.credit_id == Credit.id)
        .join(Membership, Membership.id == Credit.membership_id)
        .where(Membership.state.in_([State.ACTIVE, State.CANCEL_AT_PERIOD_END, State.PAST_DUE]))
        .options(
            selectinload(Credit.treatment),
            selectinload(Credit.plan_item).selectinload(PlanItem.options),
        )
        .order_by(Credit.membership_id, Credit.id)
    ).all()
    groups: dict[tuple[int, date], list[tuple[Credit, int, datetime]]] = defaultdict(list)
    for credit, remaining, expires_at in rows:
        expires_at = _aware(expires_at)
        groups[(credit.membership_id, local_date(expires_at, settings.tz))].append(
            (credit, int(remaining), expires_at)
        )
    count = 0
    for (membership_id, day), lots in groups.items():
        membership = db.session.get(Membership, membership_id)
        first = min(expires_at for _, _, expires_at in lots)
        lines = "\n".join(
            f"  - {_credit_label(credit)}: {n} {_unit(credit.unit_label, n)}"
            for credit, n, _ in lots
        )
        body = (
            f"{_greeting(membership)}\n\nThese treatments from your "
            f"{membership.plan_version.plan.name} membership expire on "
            f"{_day(first, settings)}:\n\n{lines}\n\nBook a visit before then to use them."
            f"{_sign_off()}"
        )
        count += _add(
            kind="credits_expiring",
            key=f"credits_expiring:{membership_id}:{day.isoformat()}",
            membership=membership,
            subject=f"Treatments expiring on {_day(first, settings)}",
            body=body,
            now=now,
            data={
                "expires_on": day.isoformat(),
                "credits": {str(credit.id): n for credit, n, _ in lots},
            },
        )
    return count


def _renewed(now: datetime, since: datetime, settings: ClinicSettings) -> int:
    """A paid period after the first (not an upgrade or an admin's grant): renewed."""
    earlier = aliased(CreditGrant)
    has_earlier = (
        sa.select(earlier.id)
        .where(
            earlier.membership_id == CreditGrant.membership_id,
            earlier.period_start < CreditGrant.period_start,
        )
        .exists()
    )
    grants = (
        db.session.execute(
            sa.select(CreditGrant)
            .where(
                CreditGrant.created_at > since,
                CreditGrant.created_at <= now,
                ~CreditGrant.source_ref.like("upgrade:%"),
                ~CreditGrant.source_ref.like("admin:%"),
                has_earlier,
            )
            .options(selectinload(CreditGrant.credits))
            .order_by(CreditGrant.id)
        )
        .scalars()
        .all()
    )
    count = 0
    for grant in grants:
        membership = db.session.get(Membership, grant.membership_id)
        if membership.state == State.CANCELED:
            continue
        version = db.session.get(PlanVersion, grant.plan_version_id)
        lines = "\n".join(
            f"  - {_credit_label(c)}: {c.quantity} {_unit(c.unit_label, c.quantity)}"
            for c in grant.credits
        )
        included = f"\n\nIncluded this period:\n\n{lines}" if lines else ""
        start, end = _day(grant.period_start, settings), _day(grant.period_end, settings)
        body = (
            f"{_greeting(membership)}\n\nYour {version.plan.name} membership has renewed for "
            f"{start} to {end}. Thank you.{included}{_sign_off()}"
        )
        count += _add(
            kind="renewed",
            key=f"renewed:{membership.id}:{grant.period_start.isoformat()}",
            membership=membership,
            subject=f"Your {version.plan.name} membership has renewed",
            body=body,
            now=now,
            data={"grant_id": grant.id, "period_start": grant.period_start.isoformat()},
        )
    return count


def _credit_label(credit: Credit) -> str:
    if credit.treatment is not None:
        return credit.treatment.name
    item = credit.plan_item
    if item is None:
        return "Treatment credit"
    return item.label or "Any of: " + ", ".join(o.treatment.name for o in item.options)


def _unit(label: str, n: int) -> str:
    return label if n == 1 else f"{label}s"


def _aware(value: datetime) -> datetime:
    """An aggregate read back from SQLite may come as naive UTC."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def pending_count() -> int:
    return db.session.execute(
        sa.select(sa.func.count()).where(
            Notification.status.in_([NotificationStatus.PENDING, NotificationStatus.SENDING])
        )
    ).scalar_one()


# ---------------------------------------------------------------------------------------------
# Sending


@dataclass(frozen=True)
class MailSettings:
    server: str
    port: int
    sender: str
    username: str | None = None
    password: str | None = None
    use_tls: bool = False
    use_ssl: bool = False
    timeout: float = 10.0


def _flag(value) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


def mail_settings() -> MailSettings | None:
    """The SMTP settings from the app config, or None when mail is not configured."""
    c = current_app.config
    server, sender = c.get("MAIL_SERVER"), c.get("MAIL_FROM")
    if not server or not sender:
        return None
    return MailSettings(
        server=server,
        port=int(c.get("MAIL_PORT") or 25),
        sender=sender,
        username=c.get("MAIL_USERNAME") or None,
        password=c.get("MAIL_PASSWORD") or None,
        use_tls=_flag(c.get("MAIL_USE_TLS", False)),
        use_ssl=_flag(c.get("MAIL_USE_SSL", False)),
        timeout=float(c.get("MAIL_TIMEOUT") or 10),
    )


@dataclass
class Delivery:
    counts: Counter = field(default_factory=lambda: Counter(sent=0, failed=0, retry_later=0))
    stopped_by: str | None = None  # the error that stopped delivery (server down, login refused)


def _connect(mail: MailSettings) -> smtplib.SMTP:
    if mail.use_ssl:
        smtp: smtplib.SMTP = smtplib.SMTP_SSL(
            mail.server, mail.port, timeout=mail.timeout, context=ssl.create_default_context()
        )
    else:
        smtp = smtplib.SMTP(mail.server, mail.port, timeout=mail.timeout)
        if mail.use_tls:
            smtp.starttls(context=ssl.create_default_context())
    if mail.username:
        smtp.login(mail.username, mail.password or "")
    return smtp


def _message(row: Notification, mail: MailSettings, now: datetime) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = mail.sender
    msg["To"] = row.to_email
    msg["Subject"] = row.subject
    msg["Date"] = format_datetime(now)
    msg["Message-ID"] = row.message_id
    msg["X-Billing-Notification"] = row.kind
    msg.set_content(row.body)
    return msg


def deliver_pending(*, now: datetime, mail: MailSettings, limit: int = DELIVERY_BATCH) -> Delivery:
    """Send pending notifications, oldest first, each claimed before it is sent so two servers
    never send the same one; a refused recipient is retried up to MAX_ATTEMPTS times."""
    result = Delivery()
    db.session.execute(
        sa.update(Notification)
        .where(
            Notification.status == NotificationStatus.SENDING,
            Notification.claimed_at < now - SENDING_STALE_AFTER,
        )
        .values(status=NotificationStatus.PENDING)
    )
    db.session.commit()
    ids = list(
        db.session.execute(
            sa.select(Notification.id)
            .where(Notification.status == NotificationStatus.PENDING)
            .order_by(Notification.id)
            .limit(limit)
        ).scalars()
    )
    if not ids:
        return result
    try:
        smtp = _connect(mail)
    except (OSError, smtplib.SMTPException) as exc:
        result.stopped_by = f"cannot reach {mail.server}:{mail.port}: {exc}"
        result.counts["retry_later"] = len(ids)
        return result
    try:
        for notification_id in ids:
            claimed = db.session.execute(
                sa.update(Notification)
                .where(
                    Notification.id == notification_id,
                    Notification.status == NotificationStatus.PENDING,
                )
                .values(
                    status=NotificationStatus.SENDING,
                    claimed_at=now,
                    attempts=Notification.attempts + 1,
                )
            ).rowcount
            db.session.commit()
            if claimed != 1:
                continue  # another server took it
            row = db.session.get(Notification, notification_id, populate_existing=True)
            try:
                smtp.send_message(_message(row, mail, now))
            except (smtplib.SMTPRecipientsRefused, smtplib.SMTPDataError) as exc:
                row.last_error = str(exc)
                row.status = (
                    NotificationStatus.FAILED
                    if row.attempts >= MAX_ATTEMPTS
                    else NotificationStatus.PENDING
                )
                result.counts[
                    "failed" if row.status == NotificationStatus.FAILED else "retry_later"
                ] += 1
                db.session.commit()
            except (OSError, smtplib.SMTPException) as exc:
                row.last_error = str(exc)
                row.status = NotificationStatus.PENDING
                db.session.commit()
                result.stopped_by = f"{mail.server}:{mail.port}: {exc}"
                result.counts["retry_later"] += 1
                break
            else:
                row.status = NotificationStatus.SENT
                row.sent_at = now
                row.last_error = None
                db.session.commit()
                result.counts["sent"] += 1
    finally:
        with contextlib.suppress(OSError, smtplib.SMTPException):
            smtp.quit()
    return result
