"""Member emails through a real SMTP conversation: a local server (aiosmtpd) receives what the
notify job sends, and a second run sends nothing new."""

from __future__ import annotations

import socket
from email import message_from_bytes
from email.policy import default as default_policy

import pytest
import sqlalchemy as sa

from billing.extensions import db
from billing.jobs import notify as outbox
from billing.jobs import service
from billing.jobs.models import Notification, NotificationStatus, Outcome
from tests.integration.test_jobs import notify_scenario


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Inbox:
    """An SMTP handler that keeps what it receives and refuses addresses starting "bounce"."""

    def __init__(self) -> None:
        self.messages = []

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address.startswith("bounce"):
            return "550 5.1.1 No such user here"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        message = message_from_bytes(envelope.content, policy=default_policy)
        self.messages.append((envelope.rcpt_tos, message))
        return "250 Message accepted for delivery"


@pytest.fixture
def smtp(app):
    from aiosmtpd.controller import Controller

    inbox = Inbox()
    port = _free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    app.config.update(
        MAIL_SERVER="127.0.0.1", MAIL_PORT=port, MAIL_FROM="Cutis Billing <billing@cutis.example>"
    )
    yield inbox
    controller.stop()


def _notify():
    return service.run_job("notify", slot=service.manual_slot())


def _rows() -> list[Notification]:
    return db.session.execute(sa.select(Notification).order_by(Notification.id)).scalars().all()


def test_each_notification_arrives_once(app, clock, smtp):
    expected = notify_scenario(clock)
    run = _notify()
    assert run.outcome == Outcome.SUCCEEDED, run.error
    assert run.counts["sent"] == 3

    received = {(m["X-Billing-Notification"], tuple(to)) for to, m in smtp.messages}
    assert received == {(kind, (email,)) for kind, email in expected}
    for _, message in smtp.messages:
        assert message["From"] == "Cutis Billing <billing@cutis.example>"
        assert message["Subject"]
    assert len({m["Message-ID"] for _, m in smtp.messages}) == 3
    renewal = next(m for _, m in smtp.messages if m["X-Billing-Notification"] == "renewed")
    assert "has renewed" in renewal.get_content()
    assert all(n.status == NotificationStatus.SENT and n.sent_at == clock() for n in _rows())

    again = _notify()
    assert again.outcome == Outcome.SUCCEEDED and again.counts["sent"] == 0
    assert len(smtp.messages) == 3


def test_a_refused_address_is_retried_then_given_up_while_others_are_sent(app, clock, smtp):
    notify_scenario(clock)
    _notify()
    smtp.messages.clear()
    # An email to an address the mail server refuses (a member's mistyped address).
    row = _rows()[0]
    db.session.add(
        Notification(
            kind="renewed",
            dedupe_key="renewed:test-bounce",
            member_id=row.member_id,
            membership_id=row.membership_id,
            to_email="bounce@example.com",
            subject="Renewed",
            body="Your membership has renewed.",
            created_at=clock(),
        )
    )
    db.session.commit()

    for attempt in range(1, outbox.MAX_ATTEMPTS + 1):
        run = _notify()
        db.session.expire_all()
        refused = db.session.execute(
            sa.select(Notification).filter_by(dedupe_key="renewed:test-bounce")
        ).scalar_one()
        assert refused.attempts == attempt and "No such user" in refused.last_error
    assert refused.status == NotificationStatus.FAILED
    assert run.counts["failed"] == 1
    assert smtp.messages == []


def test_mail_server_down_fails_the_run_and_keeps_the_emails_for_later(app, clock, smtp):
    expected = notify_scenario(clock)
    working_port = app.config["MAIL_PORT"]
    app.config["MAIL_PORT"] = _free_port()  # nobody listens here
    down = _notify()
    assert down.outcome == Outcome.FAILED and "cannot reach" in down.error
    assert down.counts["written_payment_failed"] == 1  # written, waiting to be sent
    assert all(n.status == NotificationStatus.PENDING for n in _rows())

    app.config["MAIL_PORT"] = working_port
    up = _notify()
    assert up.outcome == Outcome.SUCCEEDED and up.counts["sent"] == len(expected)
    assert len(smtp.messages) == len(expected)
