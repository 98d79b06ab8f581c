"""The web pages as the people who use them meet them: sign-in and lock-out, the front desk, the
member portal, finance and the catalogue, and who may open what.

CSRF is on (as in production): every post carries the token the page gave, read from its form."""

from __future__ import annotations

import logging
import re
from datetime import date, timedelta
from types import SimpleNamespace

import pytest
import sqlalchemy as sa

from billing.checkout.models import LineStatus, VisitLine
from billing.entitlements import service as ledger
from billing.extensions import db
from billing.memberships.models import Membership, State
from billing.plans.models import Plan
from billing.staff.models import Credential, Staff
from billing.web.auth import create_user
from billing.web.models import User
from tests import factories as f

PASSWORD = "correct horse battery"


def token(client, url: str = "/sign-in") -> str:
    """The CSRF token a page hands out (every form on it carries the same one)."""
    page = client.get(url)
    match = re.search(r'name="csrf-token" content="([^"]+)"', page.get_data(as_text=True))
    assert match, f"no CSRF token on {url} ({page.status_code})"
    return match.group(1)


def post(client, url: str, data: dict | None = None, *, page: str | None = None, **kwargs):
    return client.post(
        url, data={"csrf_token": token(client, page or url), **(data or {})}, **kwargs
    )


def sign_in(client, email: str, password: str = PASSWORD):
    return post(client, "/sign-in", {"email": email, "password": password})


def text(response) -> str:
    return response.get_data(as_text=True)


@pytest.fixture(autouse=True)
def quick_password_hashes(app):
    """scrypt is deliberately slow; these tests hash dozens of passwords."""
    app.config["PASSWORD_HASH_METHOD"] = "pbkdf2:sha256:1000"


@pytest.fixture
def clinic(app, clock):
    orchard = f.location("orchard")
    facial = f.treatment("hydrafacial", name="HydraFacial", price=22800, category="spa_facial")
    peel = f.treatment("glow-peel", name="Glow Peel", price=18800, category="peel")
    botox = f.treatment(
        "botox",
        name="Botox",
        price=1500,
        category="injectable",
        is_medical=True,
        counted_in="unit",
        unit_label="unit",
    )
    optimum = f.plan(
        [(facial, 2), (botox, 20)],
        code="optimum",
        price=32700,
        member_discount_bp=1000,
        min_commitment_periods=6,
        early_termination_fee_minor=30000,
    )
    platinum = f.plan([(facial, 3), (peel, 1), (botox, 40)], code="platinum", price=54500)
    bea = Staff(name="Bea Lim", role="aesthetician", location_id=orchard.id)
    doctor = Staff(name="Dr Lee", role="physician", location_id=orchard.id)
    doctor.credentials = [Credential(kind="physician")]
    db.session.add_all([bea, doctor])
    mei = f.member("Mei", "Tan", phone="+65 9123 4567")
    membership = f.active_membership(optimum, now=clock(), owner=mei)
    other = f.member("Ong", "Lee")
    other_membership = f.active_membership(platinum, now=clock(), owner=other)
    db.session.commit()
    users = SimpleNamespace(
        admin=create_user(email="admin@clinic.test", role="admin", password=PASSWORD),
        staff=create_user(email="desk@clinic.test", role="staff", password=PASSWORD),
        finance=create_user(email="books@clinic.test", role="finance", password=PASSWORD),
        mei=create_user(
            email="mei.tan@example.com", role="client", member_id=mei.id, password=PASSWORD
        ),
        other=create_user(
            email="ong.lee@example.com", role="client", member_id=other.id, password=PASSWORD
        ),
    )
    return SimpleNamespace(
        orchard=orchard,
        facial=facial,
        peel=peel,
        botox=botox,
        optimum=optimum,
        platinum=platinum,
        bea=bea,
        doctor=doctor,
        mei=mei,
        membership=membership,
        other=other,
        other_membership=other_membership,
        users=users,
    )


# ------------------------------------------------------------------------------ signing in


def test_anonymous_is_sent_to_sign_in_and_back_after(client, clinic):
    for url in ("/desk", "/me", "/finance", "/catalogue", f"/desk/members/{clinic.mei.id}"):
        response = client.get(url)
        assert response.status_code == 302, url
        assert response.headers["Location"].startswith("/sign-in?next=")
    response = post(
        client, "/sign-in?next=/desk/members/1", {"email": "desk@clinic.test", "password": PASSWORD}
    )
    assert response.status_code == 302
    assert response.headers["Location"] == "/desk/members/1"


def test_sign_in_lands_each_role_on_its_page(app, clinic):
    for email, home in [
        ("desk@clinic.test", "/desk"),
        ("books@clinic.test", "/finance"),
        ("mei.tan@example.com", "/me"),
        ("ADMIN@clinic.test ", "/desk"),
    ]:
        client = app.test_client()
        response = sign_in(client, email)
        assert response.status_code == 302, email
        assert response.headers["Location"] == home


def test_a_next_that_leaves_the_site_is_ignored(client, clinic):
    response = post(
        client,
        "/sign-in?next=https://evil.example/steal",
        {"email": "desk@clinic.test", "password": PASSWORD},
    )
    assert response.headers["Location"] == "/desk"


def test_wrong_password_says_so_without_saying_whether_the_account_exists(client, clinic):
    wrong = sign_in(client, "desk@clinic.test", "not the password")
    unknown = sign_in(client, "nobody@clinic.test", "not the password")
    assert wrong.status_code == unknown.status_code == 401
    assert "do not match" in text(wrong) and "do not match" in text(unknown)
    assert client.get("/desk").status_code == 302


def test_five_failures_lock_the_account_for_fifteen_minutes(client, clinic, clock):
    for _ in range(4):
        assert "do not match" in text(sign_in(client, "desk@clinic.test", "wrong password"))
    fifth = sign_in(client, "desk@clinic.test", "wrong password")
    assert "locked for 15 more minutes" in text(fifth)
    # Even the right password is refused while locked.
    locked = sign_in(client, "desk@clinic.test")
    assert locked.status_code == 401
    assert "locked" in text(locked)
    assert client.get("/desk").status_code == 302
    clock.advance(minutes=14)
    assert "locked for 1 more minute" in text(sign_in(client, "desk@clinic.test"))
    clock.advance(minutes=1, seconds=1)
    assert sign_in(client, "desk@clinic.test").status_code == 302
    assert client.get("/desk").status_code == 200


def test_a_success_resets_the_count_of_failures(client, clinic):
    for _ in range(4):
        sign_in(client, "desk@clinic.test", "wrong password")
    assert sign_in(client, "desk@clinic.test").status_code == 302
    post(client, "/sign-out", page="/desk")
    for _ in range(4):
        sign_in(client, "desk@clinic.test", "wrong password")
    assert sign_in(client, "desk@clinic.test").status_code == 302


def test_a_member_signs_in_with_a_code_from_the_log(client, clinic, caplog):
    caplog.set_level(logging.WARNING, logger="billing.web.auth")
    response = post(
        client, "/sign-in/code", page="/sign-in", data={"code-email": "Mei.Tan@example.com"}
    )
    assert response.status_code == 302
    code = re.search(r"sign-in code for mei.tan@example.com is (\d{6})", caplog.text).group(1)
    page = client.get("/sign-in/code/enter")
    assert 'value="mei.tan@example.com"' in text(page)
    wrong = post(
        client,
        "/sign-in/code/enter",
        {"email": "mei.tan@example.com", "code": f"{(int(code) + 1) % 10**6:06d}"},
    )
    assert wrong.status_code == 401
    ok = post(client, "/sign-in/code/enter", {"email": "mei.tan@example.com", "code": code})
    assert ok.headers["Location"] == "/me"
    assert "Hello, Mei" in text(client.get("/me"))
    # A code works once.
    post(client, "/sign-out", page="/me")
    again = post(client, "/sign-in/code/enter", {"email": "mei.tan@example.com", "code": code})
    assert again.status_code == 401


def test_a_member_without_an_account_gets_one_from_their_email_on_file(client, clinic, caplog):
    caplog.set_level(logging.WARNING, logger="billing.web.auth")
    newcomer = f.member("Siti", "Rahman")
    db.session.commit()
    post(client, "/sign-in/code", page="/sign-in", data={"code-email": newcomer.email})
    code = re.search(r"is (\d{6})", caplog.text).group(1)
    post(client, "/sign-in/code/enter", {"email": newcomer.email, "code": code})
    assert "Hello, Siti" in text(client.get("/me"))
    user = db.session.scalar(sa.select(User).where(User.member_id == newcomer.id))
    assert user.role == "client" and user.password_hash is None


def test_asking_a_code_for_an_unknown_email_reveals_nothing(client, clinic, caplog):
    caplog.set_level(logging.WARNING, logger="billing.web.auth")
    response = post(
        client, "/sign-in/code", page="/sign-in", data={"code-email": "stranger@example.com"}
    )
    assert response.status_code == 302
    assert "sign-in code" not in caplog.text
    assert "If stranger@example.com is on file" in text(client.get("/sign-in/code/enter"))
    assert db.session.scalar(sa.select(sa.func.count(User.id))) == 5


def test_an_expired_code_does_not_work(client, clinic, clock, caplog):
    caplog.set_level(logging.WARNING, logger="billing.web.auth")
    post(client, "/sign-in/code", page="/sign-in", data={"code-email": "mei.tan@example.com"})
    code = re.search(r"is (\d{6})", caplog.text).group(1)
    clock.advance(minutes=11)
    response = post(client, "/sign-in/code/enter", {"email": "mei.tan@example.com", "code": code})
    assert response.status_code == 401
    assert "expired" in text(response)


def test_sign_out_ends_the_session(client, clinic):
    sign_in(client, "desk@clinic.test")
    assert client.get("/desk").status_code == 200
    post(client, "/sign-out", page="/desk")
    assert client.get("/desk").status_code == 302


def test_the_session_cookie_is_http_only_and_same_site(client, clinic):
    response = sign_in(client, "desk@clinic.test")
    cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie
    assert "SameSite=Lax" in cookie


def test_a_new_password_signs_other_sessions_out(app, clinic):
    from billing.web.auth import set_password

    client = app.test_client()
    sign_in(client, "desk@clinic.test")
    set_password(clinic.users.staff, "a brand new password")
    assert client.get("/desk").status_code == 302


# ------------------------------------------------------------------------------ CSRF


def test_a_form_without_its_csrf_token_is_refused(client, clinic):
    response = client.post("/sign-in", data={"email": "desk@clinic.test", "password": PASSWORD})
    assert response.status_code == 400
    assert "expired" in text(response)
    sign_in(client, "desk@clinic.test")
    response = client.post(f"/desk/members/{clinic.mei.id}/visits")
    assert response.status_code == 400
    response = client.post(f"/desk/members/{clinic.mei.id}/visits", data={"csrf_token": "forged"})
    assert response.status_code == 400


def test_the_json_api_is_not_subject_to_csrf_and_ignores_the_session(client, clinic, staff):
    sign_in(client, "desk@clinic.test")
    # An API key works without any CSRF token ...
    response = client.post(
        "/api/v1/visits", json={"member_id": clinic.mei.id, "location": "orchard"}, headers=staff
    )
    assert response.status_code == 201
    # ... and the session cookie alone does not authenticate the API.
    response = client.post(
        "/api/v1/visits", json={"member_id": clinic.mei.id, "location": "orchard"}
    )
    assert response.status_code == 401


# ------------------------------------------------------------------------------ who may open what


@pytest.mark.parametrize(
    ("email", "allowed", "refused"),
    [
        ("desk@clinic.test", ["/desk"], ["/finance", "/catalogue", "/me"]),
        ("books@clinic.test", ["/finance"], ["/desk", "/catalogue", "/me"]),
        ("mei.tan@example.com", ["/me"], ["/desk", "/finance", "/catalogue", "/desk/search?q=mei"]),
        ("admin@clinic.test", ["/desk", "/finance", "/catalogue"], []),
    ],
)
def test_each_role_opens_its_pages_only(app, clinic, email, allowed, refused):
    client = app.test_client()
    sign_in(client, email)
    for url in allowed:
        assert client.get(url).status_code == 200, url
    for url in refused:
        response = client.get(url)
        assert response.status_code == 403, url
        assert "not open to your account" in text(response)


def test_a_member_cannot_open_or_change_another_members_membership(client, clinic):
    sign_in(client, "mei.tan@example.com")
    theirs = clinic.other_membership.id
    assert client.get(f"/desk/members/{clinic.other.id}").status_code == 403
    assert client.get(f"/me/memberships/{theirs}/cancel").status_code == 403
    assert client.get(f"/me/memberships/{theirs}/pause").status_code == 403
    response = post(client, f"/me/memberships/{theirs}/pause", page="/me")
    assert response.status_code == 403
    assert db.session.get(Membership, theirs).state == State.ACTIVE
    assert "Ong" not in text(client.get("/me"))


def test_a_member_cannot_read_another_members_receipt(client, clinic, clock):
    from billing.checkout import service as checkout
    from billing.settings import clinic_settings

    visit = checkout.open_visit(
        member_id=clinic.other.id,
        location="orchard",
        supervising_staff_id=None,
        actor="test",
        now=clock(),
        settings=clinic_settings(),
    )
    sign_in(client, "mei.tan@example.com")
    assert client.get(f"/me/visits/{visit.id}/receipt").status_code == 403


# ------------------------------------------------------------------------------ the front desk


def test_search_finds_by_name_email_and_phone_as_you_type(client, clinic):
    sign_in(client, "desk@clinic.test")
    for q in ("mei", "Tan", "mei.tan@", "9123 4567", "4567"):
        fragment = client.get(f"/desk/search?q={q}", headers={"X-Requested-With": "fetch"})
        assert fragment.status_code == 200
        assert "Mei Tan" in text(fragment), q
        assert "<html" not in text(fragment)  # a fragment, not a page
        assert "Ong Lee" not in text(fragment)
    assert "Nobody matches" in text(client.get("/desk/search?q=zzz"))
    # Without JavaScript the search box submits to the page itself.
    assert "Mei Tan" in text(client.get("/desk?q=mei"))


def test_the_card_shows_state_balances_and_expiry_in_plain_words(client, clinic):
    sign_in(client, "desk@clinic.test")
    page = text(client.get(f"/desk/members/{clinic.mei.id}"))
    assert "Active, paid until Wed 1 Apr 2026" in page
    assert "status-ok" in page
    assert "HydraFacial" in page
    assert re.search(r'data-testid="remaining">2<small>sessions left', page)
    assert "Expires Wed 1 Apr 2026" in page


def test_a_past_due_member_is_shown_with_the_date_and_the_grace_period(client, clinic, clock):
    from billing.memberships import service as memberships

    memberships.mark_past_due(clinic.membership, actor="test", now=clock())
    sign_in(client, "desk@clinic.test")
    page = text(client.get(f"/desk/members/{clinic.mei.id}"))
    assert "Past due since Mon 2 Mar 2026" in page
    assert "until Mon 9 Mar 2026" in page
    assert "status-warn" in page


def test_a_paused_membership_says_until_when_and_why_nothing_can_be_redeemed(client, clinic, clock):
    from billing.memberships import service as memberships

    memberships.pause(
        clinic.membership, actor="test", now=clock(), resume_at=clock() + timedelta(days=30)
    )
    sign_in(client, "desk@clinic.test")
    page = text(client.get(f"/desk/members/{clinic.mei.id}"))
    assert "Paused since Mon 2 Mar 2026, until Wed 1 Apr 2026" in page
    assert "Not today:" in page and "paused until 1 April 2026" in page
    assert 'value="hydrafacial"' not in page  # no redeem button


def test_one_click_redeem_drops_the_balance_and_opens_the_visit(client, clinic):
    sign_in(client, "desk@clinic.test")
    card = f"/desk/members/{clinic.mei.id}"
    response = post(
        client,
        f"{card}/redeem",
        {"treatment": "hydrafacial", "provider_id": clinic.bea.id},
        page=card,
        follow_redirects=True,
    )
    page = text(response)
    assert "Redeemed HydraFacial (performed by Bea Lim)" in page
    assert re.search(r'data-testid="remaining">1<small>session left', page)
    assert "Today's visit" in page
    ids = [clinic.membership.id]
    assert ledger.balance(ids, clinic.facial.id, clinic.membership.started_at) == 1


def test_a_refused_redemption_says_why_in_words(client, clinic):
    sign_in(client, "desk@clinic.test")
    card = f"/desk/members/{clinic.mei.id}"
    page = text(
        post(
            client,
            f"{card}/redeem",
            {"treatment": "botox", "provider_id": clinic.bea.id, "qty-botox": "5"},
            page=card,
            follow_redirects=True,
        )
    )
    assert "Bea Lim may not perform Botox" in page
    assert 'class="flash flash-error"' in page
    page = text(
        post(
            client,
            f"{card}/redeem",
            {"treatment": "botox", "provider_id": clinic.doctor.id, "qty-botox": "25"},
            page=card,
            follow_redirects=True,
        )
    )
    assert "Not enough credits for Botox: 20 units left, 25 asked." in page
    assert db.session.scalar(sa.select(sa.func.count(VisitLine.id))) == 0


def test_choosing_no_provider_is_asked_for(client, clinic):
    sign_in(client, "desk@clinic.test")
    card = f"/desk/members/{clinic.mei.id}"
    page = text(
        post(
            client, f"{card}/redeem", {"treatment": "hydrafacial"}, page=card, follow_redirects=True
        )
    )
    assert "Choose who is performing the treatment first." in page


def test_a_visit_from_open_to_void_to_receipt(client, clinic):
    sign_in(client, "desk@clinic.test")
    card = f"/desk/members/{clinic.mei.id}"
    opened = post(client, f"{card}/visits", page=card)
    visit_url = opened.headers["Location"]
    assert re.fullmatch(r"/desk/visits/\d+", visit_url)
    facial = post(
        client,
        f"{visit_url}/lines",
        {"treatment_id": clinic.facial.id, "provider_id": clinic.bea.id, "quantity": 1},
        page=visit_url,
        follow_redirects=True,
    )
    assert "HydraFacial: covered by the membership." in text(facial)
    peel = post(
        client,
        f"{visit_url}/lines",
        {"treatment_id": clinic.peel.id, "provider_id": clinic.bea.id, "quantity": 1},
        page=visit_url,
        follow_redirects=True,
    )
    # Not included: charged at list price less the 10 % member discount.
    assert "Glow Peel: charged, S$169.20." in text(peel)
    line = db.session.scalar(sa.select(VisitLine).where(VisitLine.treatment_id == clinic.facial.id))
    voided = post(
        client,
        f"{visit_url}/lines/{line.id}/void",
        {"reason": "client changed her mind"},
        page=visit_url,
        follow_redirects=True,
    )
    assert "HydraFacial voided" in text(voided)
    db.session.refresh(line)
    assert line.status == LineStatus.VOIDED
    assert ledger.balance([clinic.membership.id], clinic.facial.id, line.performed_at) == 2
    closed = post(client, f"{visit_url}/close", {"payment": "desk"}, page=visit_url)
    assert closed.headers["Location"] == f"{visit_url}/receipt"
    receipt = text(client.get(closed.headers["Location"]))
    assert "Glow Peel" in receipt and "S$169.20" in receipt
    assert "Voided" in receipt
    assert 'media="print"' in receipt and "data-print" in receipt
    # The member can read their own receipt.
    client2 = client.application.test_client()
    sign_in(client2, "mei.tan@example.com")
    assert "S$169.20" in text(client2.get(f"/me/visits/{line.visit_id}/receipt"))


def test_names_with_markup_are_shown_as_text(client, clinic):
    evil = f.member("<script>alert(1)</script>", "O'Hara<b>")
    db.session.commit()
    sign_in(client, "desk@clinic.test")
    for page in (
        text(client.get("/desk/search?q=%3Cscript")),
        text(client.get(f"/desk/members/{evil.id}")),
    ):
        assert "<script>alert(1)</script>" not in page
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
        assert "<b>" not in page


# ------------------------------------------------------------------------------ the member portal


def test_the_portal_shows_tier_price_next_payment_balance_and_history(client, clinic):
    sign_in(client, "mei.tan@example.com")
    page = text(client.get("/me"))
    assert "Optimum" in page and "S$327.00" in page
    assert "Next payment" in page and "Wed 1 Apr 2026" in page
    assert "HydraFacial" in page and "Use by Wed 1 Apr 2026" in page
    assert "No visits or payments yet." in page


def test_a_member_pauses_and_resumes(client, clinic, clock):
    sign_in(client, "mei.tan@example.com")
    url = f"/me/memberships/{clinic.membership.id}/pause"
    form = text(client.get(url))
    assert "nothing is billed" in form
    done = post(client, url, {"resume_on": "2026-04-15"}, follow_redirects=True)
    assert "Your membership is paused until 15 April 2026" in text(done)
    db.session.refresh(clinic.membership)
    assert clinic.membership.state == State.PAUSED
    clock.advance(days=3)
    resumed = post(
        client, f"/me/memberships/{clinic.membership.id}/resume", page="/me", follow_redirects=True
    )
    assert "active again" in text(resumed)
    db.session.refresh(clinic.membership)
    assert clinic.membership.state == State.ACTIVE


def test_cancelling_shows_the_commitment_and_fee_before_confirming(client, clinic):
    sign_in(client, "mei.tan@example.com")
    url = f"/me/memberships/{clinic.membership.id}/cancel"
    page = text(client.get(url))
    assert "minimum commitment of <strong>6 paid months</strong>" in page
    assert "S$300.00" in page
    db.session.refresh(clinic.membership)
    assert clinic.membership.state == State.ACTIVE  # looking changes nothing
    done = post(client, url, {"when": "period_end"}, follow_redirects=True)
    assert "Your membership will end on 1 April 2026" in text(done)
    db.session.refresh(clinic.membership)
    assert clinic.membership.state == State.CANCEL_AT_PERIOD_END
    assert clinic.membership.early_termination_fee_minor == 30000
    kept = post(
        client, f"/me/memberships/{clinic.membership.id}/keep", page="/me", follow_redirects=True
    )
    assert "cancellation is withdrawn" in text(kept)


def test_changing_tier_shows_the_prorated_amount_before_confirming(client, clinic, clock):
    clock.advance(days=15)  # half of the 30-day period is left
    sign_in(client, "mei.tan@example.com")
    base = f"/me/memberships/{clinic.membership.id}/tier"
    assert "Platinum" in text(client.get(base))
    page = text(client.get(f"{base}/platinum"))
    # (545.00 - 327.00) x 15/30 days
    assert "S$109.00" in page
    assert clinic.membership.plan_version_id == clinic.optimum.id
    done = post(client, f"{base}/platinum", follow_redirects=True)
    assert "You are now on Platinum" in text(done)
    db.session.refresh(clinic.membership)
    assert clinic.membership.plan_version.plan.code == "platinum"


def test_updating_the_card_without_stripe_says_so_politely(client, clinic):
    sign_in(client, "mei.tan@example.com")
    page = text(post(client, "/me/card", page="/me", follow_redirects=True))
    assert "please call or visit the clinic" in page


# ------------------------------------------------------------------------------ finance


def test_the_finance_dashboard_shows_members_mrr_and_charts(client, clinic):
    sign_in(client, "books@clinic.test")
    page = text(client.get("/finance"))
    assert 'data-testid="stat-members"' in page
    assert re.search(
        r'stat-members">\s*<div class="label">Active members</div>\s*'
        r'<div class="value">2</div>',
        page,
    )
    # MRR net of 9 % GST: 327.00 -> 300.00, 545.00 -> 500.00
    assert "S$800.00" in page
    assert page.count('<svg class="chart"') == 2
    assert "<script" not in page.split("</head>")[1]  # charts are drawn on the server


def test_finance_downloads_an_export_with_the_session(client, clinic):
    sign_in(client, "books@clinic.test")
    response = client.get("/finance/exports/roster.csv?from=2026-03-01&to=2026-03-31")
    assert response.status_code == 200
    assert response.mimetype == "text/csv"
    assert 'filename="roster_2026-03-01_2026-03-31.csv"' in response.headers["Content-Disposition"]
    body = text(response)
    assert "Mei" in body and "Ong" in body
    journal = client.get(
        "/finance/exports/revenue-journal.csv?from=2026-03-01&to=2026-03-31&format=xero"
    )
    assert journal.status_code == 200 and journal.mimetype in ("text/csv", "application/zip")


def test_every_export_has_a_download_button(client, clinic):
    from billing.finance.exports import EXPORTS

    sign_in(client, "books@clinic.test")
    page = text(client.get("/finance"))
    for name, export in EXPORTS.items():
        for fmt in export.formats:
            assert f'data-testid="export-{name}-{fmt}"' in page


def test_a_bad_export_range_comes_back_with_the_reason(client, clinic):
    sign_in(client, "books@clinic.test")
    response = client.get(
        "/finance/exports/roster.csv?from=2026-03-31&to=2026-03-01", follow_redirects=True
    )
    assert "The range ends before it starts." in text(response)


def test_staff_cannot_download_finance_exports(client, clinic):
    sign_in(client, "desk@clinic.test")
    response = client.get("/finance/exports/roster.csv?from=2026-03-01&to=2026-03-31")
    assert response.status_code == 403


# ------------------------------------------------------------------------------ the catalogue


def test_changing_a_tier_with_members_makes_a_new_version(client, clinic):
    sign_in(client, "admin@clinic.test")
    url = "/catalogue/plans/optimum"
    page = text(client.get(url))
    assert 'value="327.00"' in page
    done = post(
        client,
        url,
        {
            "name": "Optimum",
            "description": "",
            "price": "347.00",
            "min_commitment_periods": "6",
            "member_discount_percent": "10",
            "item-0": "2",
            "item-1": "20",
        },
        follow_redirects=True,
    )
    assert "Saved as version 2" in text(done)
    assert "1 member stays on version 1" in text(done)
    plan = db.session.scalar(sa.select(Plan).where(Plan.code == "optimum"))
    assert [v.price_minor for v in plan.versions] == [32700, 34700]
    db.session.refresh(clinic.membership)
    assert clinic.membership.plan_version.version == 1


def test_a_bad_price_is_shown_next_to_the_field(client, clinic):
    sign_in(client, "admin@clinic.test")
    url = "/catalogue/plans/optimum"
    response = post(
        client,
        url,
        {
            "name": "Optimum",
            "price": "327.005",
            "min_commitment_periods": "6",
            "member_discount_percent": "10",
            "item-0": "2",
            "item-1": "20",
        },
    )
    assert response.status_code == 422
    assert "SGD has 2 decimal places" in text(response)


def test_admin_edits_and_adds_treatments(client, clinic):
    sign_in(client, "admin@clinic.test")
    url = "/catalogue/treatments/glow-peel"
    done = post(
        client,
        url,
        {
            "code": "glow-peel",
            "name": "Glow Peel Deluxe",
            "category": "peel",
            "list_price": "198.00",
            "duration_minutes": "45",
            "min_interval_days": "14",
        },
        follow_redirects=True,
    )
    assert "Glow Peel Deluxe saved" in text(done)
    db.session.refresh(clinic.peel)
    assert clinic.peel.list_price_minor == 19800 and clinic.peel.min_interval_days == 14
    created = post(
        client,
        "/catalogue/treatments/new",
        {
            "code": "lash-lift",
            "name": "Lash Lift",
            "category": "other",
            "list_price": "88",
            "duration_minutes": "30",
            "min_interval_days": "0",
        },
        follow_redirects=True,
    )
    assert "Lash Lift is on the menu." in text(created)
    duplicate = post(
        client,
        "/catalogue/treatments/new",
        {
            "code": "lash-lift",
            "name": "Lash Lift",
            "category": "other",
            "list_price": "88",
            "duration_minutes": "30",
            "min_interval_days": "0",
        },
    )
    assert duplicate.status_code == 422
    assert "This code is taken." in text(duplicate)


# ------------------------------------------------------------------------------ the CLI


def test_the_first_admin_is_made_from_the_command_line(runner, clinic):
    result = runner.invoke(
        args=["billing", "users", "create", "--email", "Boss@Clinic.test", "--role", "admin"]
    )
    assert result.exit_code == 0, result.output
    password = re.search(r"password: (\S+)", result.output).group(1)
    user = db.session.scalar(sa.select(User).where(User.email == "boss@clinic.test"))
    assert user.role == "admin"
    from billing.web.auth import sign_in_with_password

    assert sign_in_with_password("boss@clinic.test", password, now=clinic.membership.started_at).ok
    refused = runner.invoke(
        args=["billing", "users", "create", "--email", "x@clinic.test", "--role", "client"]
    )
    assert refused.exit_code != 0
    assert "give --member" in refused.output


def test_a_client_account_from_the_cli_belongs_to_its_member(runner, clinic):
    newcomer = f.member("Siti", "Rahman")
    db.session.commit()

    def create(member_id):
        return runner.invoke(
            args=[
                "billing",
                "users",
                "create",
                "--email",
                "siti@example.com",
                "--role",
                "client",
                "--member",
                str(member_id),
                "--password",
                "long enough password",
            ]
        )

    result = create(newcomer.id)
    assert result.exit_code == 0, result.output
    assert "password:" not in result.output
    user = db.session.scalar(sa.select(User).where(User.email == "siti@example.com"))
    assert user.member_id == newcomer.id
    again = create(clinic.mei.id)
    assert again.exit_code != 0 and "already" in again.output


def test_unlock_lifts_a_lock_out(runner, client, clinic):
    for _ in range(5):
        sign_in(client, "desk@clinic.test", "wrong password")
    assert sign_in(client, "desk@clinic.test").status_code == 401
    assert (
        runner.invoke(args=["billing", "users", "unlock", "--email", "desk@clinic.test"]).exit_code
        == 0
    )
    assert sign_in(client, "desk@clinic.test").status_code == 302


def test_today_is_the_clinics_today(clinic):
    """The clock fixture is Monday 2 March 2026 in Singapore: the dates above rely on it."""
    assert clinic.membership.started_at.astimezone(
        __import__("zoneinfo").ZoneInfo("Asia/Singapore")
    ).date() == date(2026, 3, 2)
