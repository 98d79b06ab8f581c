"""The pages in a real browser (Playwright driving Debian's chromium) against the app served on
127.0.0.1, on the test database: a receptionist redeems a treatment, a member pauses, finance
downloads a CSV. Screenshots of the front desk and the finance dashboard go to docs/."""

from __future__ import annotations

import re
import threading
from datetime import date, timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
from werkzeug.serving import make_server

from billing.entitlements import service as ledger
from billing.entitlements.service import GrantSource
from billing.extensions import db
from billing.memberships import service as memberships
from billing.memberships.models import Membership, State
from billing.payments.models import Payment
from billing.staff.models import Credential, Staff
from billing.web.auth import create_user
from tests import factories as f

CHROMIUM = Path("/usr/bin/chromium")
DOCS = Path(__file__).resolve().parents[2] / "docs"
PASSWORD = "correct horse battery"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="no browser: /usr/bin/chromium is not installed"
)


def _months_before(moment, months: int):
    index = moment.year * 12 + moment.month - 1 - months
    return moment.replace(year=index // 12, month=index % 12 + 1)


def _paid_history(membership: Membership, first, now, provider: Staff, treatments, n: int):
    """Pay every month from `first` to now, and use some credits each month."""
    start = first
    k = 0
    while start <= now:
        end = _months_before(start, -1)
        memberships.record_paid_period(
            membership,
            period_start=start,
            period_end=end,
            source=GrantSource(ref=f"invoice:seed-{membership.id}-{k}", actor="seed"),
            now=start,
            commit=False,
        )
        db.session.add(
            Payment(
                member_id=membership.member_id,
                kind="charge",
                amount_minor=membership.plan_version.price_minor,
                net_minor=membership.plan_version.price_minor * 97 // 100,
                fee_minor=membership.plan_version.price_minor * 3 // 100,
                currency="SGD",
                occurred_at=start,
            )
        )
        if start < _months_before(now, 0).replace(day=1) and (n + k) % 3:
            treatment = treatments[(n + k) % len(treatments)]
            if ledger.balance([membership.id], treatment.id, start + timedelta(days=3)):
                ledger.redeem(
                    membership_ids=[membership.id],
                    treatment=treatment,
                    quantity=1,
                    member_id=membership.member_id,
                    now=start + timedelta(days=3),
                    actor="seed",
                    commit=False,
                )
        start = end
        k += 1
    db.session.commit()


@pytest.fixture
def clinic(app, clock):
    """A small clinic with a year of history, so the dashboard has something to show."""
    app.config["PASSWORD_HASH_METHOD"] = "pbkdf2:sha256:1000"
    now = clock()
    orchard = f.location("orchard")
    facial = f.treatment("hydrafacial", name="HydraFacial", price=22800, category="spa_facial")
    peel = f.treatment("glow-peel", name="Glow Peel", price=18800, category="peel")
    led = f.treatment("led-mask", name="LED Light Therapy", price=8800, category="mask")
    optimum = f.plan(
        [(facial, 2), (led, 2)],
        code="optimum",
        price=32700,
        member_discount_bp=1000,
        min_commitment_periods=6,
    )
    platinum = f.plan([(facial, 3), (peel, 1), (led, 4)], code="platinum", price=54500)
    bea = Staff(name="Bea Lim", role="aesthetician", location_id=orchard.id)
    doctor = Staff(name="Dr Lee", role="physician", location_id=orchard.id)
    doctor.credentials = [Credential(kind="physician")]
    db.session.add_all([bea, doctor])
    db.session.flush()
    names = [
        ("Aisha", "Rahman"),
        ("Chloe", "Ng"),
        ("Daniel", "Koh"),
        ("Farah", "Ismail"),
        ("Grace", "Lim"),
        ("Hana", "Sato"),
        ("Irene", "Goh"),
        ("Jia", "Wei"),
        ("Kavya", "Nair"),
        ("Lydia", "Chua"),
        ("Nadia", "Yusof"),
        ("Olivia", "Teo"),
    ]
    for n, (first, last) in enumerate(names):
        person = f.member(first, last, phone=f"+65 9{n:03d} {1000 + n * 37}")
        version = platinum if n % 3 == 0 else optimum
        membership = memberships.join(
            person, version, actor="seed", now=_months_before(now, 11 - n % 11)
        )
        _paid_history(
            membership, _months_before(now, 11 - n % 11), now, bea, [facial, led, peel], n
        )
    mei = f.member("Mei", "Tan", phone="+65 9123 4567")
    mei_membership = memberships.join(mei, optimum, actor="seed", now=_months_before(now, 3))
    _paid_history(mei_membership, _months_before(now, 3), now, bea, [led], 1)
    late = db.session.get(Membership, 3)
    memberships.mark_past_due(late, actor="seed", now=now - timedelta(days=2))
    create_user(email="desk@clinic.test", role="staff", password=PASSWORD, staff_id=bea.id)
    create_user(email="books@clinic.test", role="finance", password=PASSWORD)
    create_user(email="mei.tan@example.com", role="client", member_id=mei.id, password=PASSWORD)
    db.session.commit()
    return SimpleNamespace(mei=mei, membership=mei_membership, facial=facial)


@pytest.fixture
def server(app, clinic):
    httpd = make_server("127.0.0.1", 0, app, threaded=False)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_port}"
    httpd.shutdown()
    thread.join(timeout=5)
    httpd.server_close()


@pytest.fixture
def browser():
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        chromium = p.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        yield chromium
        chromium.close()


def _sign_in(page, base: str, email: str) -> None:
    page.goto(f"{base}/sign-in")
    page.get_by_label("Email", exact=True).fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in", exact=True).click()


def _remaining(balance) -> int:
    """The big number on a balance ("2 sessions left" -> 2)."""
    return int(re.match(r"\s*(\d+)", balance.get_by_test_id("remaining").inner_text()).group(1))


def test_a_receptionist_finds_a_member_and_redeems(browser, server, clinic):
    context = browser.new_context(viewport={"width": 1280, "height": 900}, locale="en-SG")
    page = context.new_page()
    _sign_in(page, server, "desk@clinic.test")
    page.wait_for_url(f"{server}/desk")
    page.get_by_label("Find a client by name, email or phone").press_sequentially("mei t")
    page.locator("#results").get_by_role("link", name="Mei Tan").click()  # results as you type
    page.wait_for_url(f"{server}/desk/members/{clinic.mei.id}")
    status = page.get_by_test_id("membership-status")
    assert "Active, paid until" in status.inner_text()
    facial = page.get_by_test_id("balance").filter(has_text="HydraFacial")
    before = _remaining(facial)
    page.get_by_label("Performed by").select_option(label="Bea Lim (aesthetician)")
    facial.get_by_role("button", name="Redeem 1 HydraFacial").click()
    page.get_by_text("Redeemed HydraFacial (performed by Bea Lim)").wait_for()
    facial = page.get_by_test_id("balance").filter(has_text="HydraFacial")
    after = _remaining(facial)
    assert after == before - 1
    DOCS.mkdir(exist_ok=True)
    page.screenshot(path=str(DOCS / "frontdesk.png"), full_page=True)
    context.close()


def test_a_member_pauses_their_membership(browser, server, clinic):
    context = browser.new_context(viewport={"width": 820, "height": 1100}, locale="en-SG")
    page = context.new_page()
    _sign_in(page, server, "mei.tan@example.com")
    page.wait_for_url(f"{server}/me")
    page.get_by_role("link", name="Pause").click()
    page.get_by_label("Resume on (optional)").fill(
        (date(2026, 3, 2) + timedelta(days=30)).isoformat()
    )
    page.get_by_role("button", name="Pause my membership").click()
    page.get_by_text("Your membership is paused until 1 April 2026").wait_for()
    assert page.get_by_role("button", name="Resume my membership").is_visible()
    db.session.expire_all()
    assert db.session.get(Membership, clinic.membership.id).state == State.PAUSED
    context.close()


def test_finance_downloads_a_csv(browser, server, clinic):
    context = browser.new_context(
        viewport={"width": 1280, "height": 900}, locale="en-SG", accept_downloads=True
    )
    page = context.new_page()
    _sign_in(page, server, "books@clinic.test")
    page.wait_for_url(f"{server}/finance")
    assert page.get_by_test_id("stat-members").locator(".value").inner_text() == "13"
    DOCS.mkdir(exist_ok=True)
    page.screenshot(path=str(DOCS / "finance.png"), full_page=True)
    page.get_by_label("From").fill("2026-03-01")
    page.get_by_label("To (inclusive)").fill("2026-03-31")
    with page.expect_download() as info:
        page.get_by_test_id("export-roster-csv").click()
    download = info.value
    assert download.suggested_filename == "roster_2026-03-01_2026-03-31.csv"
    body = Path(download.path()).read_text(encoding="utf-8")
    assert "Mei" in body and "Tan" in body
    context.close()
