"""The pages for series and gifts: selling a series from the client's desk card, the balances
shown as "BBL: 2 of 3 left, next possible from 30 Mar", and claiming a gift in the portal."""

from __future__ import annotations

import html
from types import SimpleNamespace

import pytest
import sqlalchemy as sa

from billing.extensions import db
from billing.gifts import service as gifts
from billing.gifts.models import Gift
from billing.memberships.models import Membership
from billing.series.models import SeriesPurchase
from billing.settings import clinic_settings
from billing.staff.models import Staff
from billing.web.auth import create_user
from tests import factories as f
from tests.integration.test_web_pages import PASSWORD, post, sign_in


def text(response) -> str:
    return html.unescape(response.get_data(as_text=True))


@pytest.fixture(autouse=True)
def quick_password_hashes(app):
    app.config["PASSWORD_HASH_METHOD"] = "pbkdf2:sha256:1000"


@pytest.fixture
def spa(app, clock):
    orchard = f.location("orchard")
    bbl = f.treatment("bbl", name="BBL", price=40000, category="laser_light", min_interval_days=28)
    facial = f.treatment("hydrafacial", name="HydraFacial", price=22800, category="spa_facial")
    f.plan([(bbl, 3)], code="bbl-x3", kind="series", price=109000, credit_validity_days=365)
    optimum = f.plan([(facial, 2)], code="optimum", price=32700)
    bea = Staff(name="Bea Lim", role="aesthetician", location_id=orchard.id)
    db.session.add(bea)
    mei, ana = f.member("Mei", "Tan"), f.member("Ana", "Lim")
    db.session.commit()
    return SimpleNamespace(
        bbl=bbl,
        optimum=optimum,
        bea=bea,
        mei=mei,
        ana=ana,
        staff=create_user(email="desk@clinic.test", role="staff", password=PASSWORD),
        mei_user=create_user(
            email="mei.tan@example.com", role="client", member_id=mei.id, password=PASSWORD
        ),
        ana_user=create_user(
            email="ana.lim@example.com", role="client", member_id=ana.id, password=PASSWORD
        ),
    )


def test_the_desk_sells_a_series_and_shows_what_is_left_and_when_next(client, spa):
    sign_in(client, "desk@clinic.test")
    card = f"/desk/members/{spa.mei.id}"
    page = text(client.get(card))
    assert "Sell a treatment series" in page and "Bbl X3" in page
    response = post(
        client,
        f"{card}/series",
        {"plan": "bbl-x3", "instalments": "1", "payment": "desk"},
        page=card,
        follow_redirects=True,
    )
    page = text(response)
    assert "Sold Bbl X3: paid in full (S$1,090.00), valid until 2 March 2027." in page
    assert "BBL: 3 of 3 left" in page
    assert db.session.execute(sa.select(SeriesPurchase)).scalar_one().member_id == spa.mei.id

    # One redeemed from the card: the next is possible only after the 28-day interval.
    post(
        client,
        f"{card}/redeem",
        {"treatment": "bbl", "provider_id": str(spa.bea.id)},
        page=card,
    )
    assert "BBL: 2 of 3 left, next possible from 30 Mar" in text(client.get(card))


def test_the_desk_says_why_a_series_cannot_be_sold_and_sells_nothing(client, spa):
    sign_in(client, "desk@clinic.test")
    card = f"/desk/members/{spa.mei.id}"
    response = post(
        client,
        f"{card}/series",
        {"plan": "bbl-x3", "instalments": "1", "payment": "card_on_file"},
        page=card,
        follow_redirects=True,
    )
    assert "Stripe is not configured" in text(response)
    response = post(
        client,
        f"{card}/series",
        {"plan": "bbl-x3", "instalments": "3", "payment": "desk"},
        page=card,
        follow_redirects=True,
    )
    assert "Bbl X3 is paid in full only, not in 3." in text(response)
    assert db.session.execute(sa.select(sa.func.count(SeriesPurchase.id))).scalar_one() == 0
    assert db.session.execute(sa.select(sa.func.count(Membership.id))).scalar_one() == 0


def test_a_client_cannot_sell_from_the_desk(client, spa):
    sign_in(client, "mei.tan@example.com")
    response = post(
        client,
        f"/desk/members/{spa.mei.id}/series",
        {"plan": "bbl-x3", "payment": "desk"},
        page="/me",
    )
    assert response.status_code == 403
    assert db.session.execute(sa.select(sa.func.count(SeriesPurchase.id))).scalar_one() == 0


def test_a_member_claims_a_gift_code_in_the_portal(client, spa, clock):
    bought = gifts.buy(
        spa.ana.id,
        plan_code="optimum",
        months=3,
        recipient_name="Mei Tan",
        payment="desk",
        actor="desk",
        now=clock(),
        settings=clinic_settings(),
    ).gift
    sign_in(client, "mei.tan@example.com")
    page = text(client.get("/me"))
    assert "Claim a gift" in page
    wrong = post(
        client, "/me/gifts/claim", {"code": "ZZZZ-ZZZZ-ZZZZ"}, page="/me", follow_redirects=True
    )
    assert "There is no gift with this code" in text(wrong)
    typed = bought.code.lower().replace("-", " ")
    page = text(post(client, "/me/gifts/claim", {"code": typed}, page="/me", follow_redirects=True))
    assert "Gift claimed: 3 months of Optimum, from today." in page
    assert "HydraFacial: 2 of 2 left" in page
    again = post(
        client, "/me/gifts/claim", {"code": bought.code}, page="/me", follow_redirects=True
    )
    assert "was already claimed" in text(again)
    assert db.session.get(Gift, bought.id).claimed_by_member_id == spa.mei.id


def test_the_buyer_sees_the_gift_they_gave_not_a_membership_of_their_own(client, spa, clock):
    bought = gifts.buy(
        spa.ana.id,
        plan_code="optimum",
        months=2,
        recipient_name="Mei Tan",
        payment="desk",
        actor="desk",
        now=clock(),
        settings=clinic_settings(),
    ).gift
    sign_in(client, "ana.lim@example.com")
    page = text(client.get("/me"))
    assert f"Code {bought.code}" in page and "not claimed yet" in page
    assert "You have no membership at the moment" in page
