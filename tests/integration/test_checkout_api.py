"""Front-desk checkout over HTTP, as a receptionist, a nurse and an admin would meet it."""

from __future__ import annotations

import uuid
from datetime import date, timedelta
from types import SimpleNamespace

import pytest
import sqlalchemy as sa

from billing.checkout.models import Consultation, RuleOverride, VisitLine
from billing.entitlements import service as ledger
from billing.entitlements.models import EntryKind, LedgerEntry
from billing.extensions import db
from billing.memberships import service as memberships
from billing.staff.models import Credential, DutyShift, Staff
from tests import factories as f
from tests.conftest import IS_POSTGRES, sql_sent

TODAY = date(2026, 3, 2)  # the clock fixture: 10:00 on Monday 2 March 2026 in Singapore


def make_staff(name, role, location, *creds, shifts=()):
    person = Staff(name=name, role=role, location_id=location.id)
    person.credentials = [Credential(kind=kind, expires_on=until) for kind, until in creds]
    db.session.add(person)
    db.session.flush()
    for day in shifts:
        db.session.add(DutyShift(staff_id=person.id, location_id=location.id, day=day))
    db.session.commit()
    return person


@pytest.fixture
def clinic(app, clock):
    orchard, tampines = f.location("orchard"), f.location("tampines")
    botox = f.treatment(
        "botox",
        name="Botox",
        price=1500,
        category="injectable",
        is_medical=True,
        counted_in="unit",
        unit_label="unit",
    )
    facial = f.treatment("hydrafacial", name="HydraFacial", price=20000, category="spa_facial")
    laser = f.treatment(
        "laser-toning",
        name="Laser Toning",
        price=30000,
        category="laser_light",
        is_medical=True,
        requires_consultation=True,
        min_interval_days=28,
    )
    massage = f.treatment("lymph-massage", name="Lymph Massage", price=12000, category="other")
    consult = f.treatment(
        "consult", name="Doctor Consultation", price=5000, category="consultation"
    )
    gold = f.plan(
        [(facial, 1), (botox, 20), (laser, 1)], code="gold", price=32700, member_discount_bp=1000
    )
    ns = SimpleNamespace(
        orchard=orchard,
        tampines=tampines,
        botox=botox,
        facial=facial,
        laser=laser,
        massage=massage,
        consult=consult,
        gold=gold,
        nurse=make_staff("Nurse Ann", "nurse", orchard, ("registered_nurse", date(2027, 1, 1))),
        doctor=make_staff("Dr Lee", "physician", orchard, ("physician", None), shifts=[TODAY]),
        aesthetician=make_staff("Bea", "aesthetician", orchard),
        far_doctor=make_staff("Dr Tan", "physician", tampines, ("physician", None)),
    )
    ns.membership = f.active_membership(gold, now=clock(), owner=f.member("Mei", "Tan"))
    ns.member = ns.membership.member
    db.session.commit()
    return ns


def open_visit(client, headers, member_id, location="orchard", **extra):
    r = client.post(
        "/api/v1/visits",
        json={"member_id": member_id, "location": location, **extra},
        headers=headers,
    )
    assert r.status_code == 201, r.get_json()
    return r.get_json()["id"]


def add_line(client, headers, visit_id, treatment, provider_id, key=None, **extra):
    return client.post(
        f"/api/v1/visits/{visit_id}/lines",
        json={"treatment": treatment, "provider_id": provider_id, **extra},
        headers={**headers, "Idempotency-Key": key or uuid.uuid4().hex},
    )


def balance(membership, treatment, clock):
    return ledger.balance([membership.id], treatment.id, clock())


# ---------------------------------------------------------------------------------------------
# Who may use the desk


def test_a_client_key_cannot_open_a_visit_and_no_key_is_401(client, keys, clinic):
    body = {"member_id": clinic.member.id, "location": "orchard"}
    r = client.post("/api/v1/visits", json=body, headers=keys.headers("client", clinic.member.id))
    assert r.status_code == 403
    assert client.post("/api/v1/visits", json=body).status_code == 401


def test_a_visit_for_an_unknown_client_or_location_is_refused(client, staff, clinic):
    r = client.post(
        "/api/v1/visits", json={"member_id": 9999, "location": "orchard"}, headers=staff
    )
    assert r.status_code == 404
    assert "9999" in r.get_json()["detail"]
    r = client.post(
        "/api/v1/visits", json={"member_id": clinic.member.id, "location": "mars"}, headers=staff
    )
    assert r.status_code == 422
    assert r.get_json()["errors"] == {"location": ["unknown location"]}


# ---------------------------------------------------------------------------------------------
# Redeeming and charging


def test_a_covered_treatment_is_redeemed_and_the_receipt_says_from_which_credit(
    client, staff, clinic, clock
):
    visit = open_visit(client, staff, clinic.member.id)
    r = add_line(client, staff, visit, "hydrafacial", clinic.aesthetician.id)
    assert r.status_code == 201, r.get_json()
    line = r.get_json()
    assert line["status"] == "redeemed"
    assert line["amount"]["amount_minor"] == 0
    assert balance(clinic.membership, clinic.facial, clock) == 0

    receipt = client.get(f"/api/v1/visits/{visit}/receipt", headers=staff).get_json()
    (redeemed,) = receipt["lines"][0]["redeemed_from"]
    assert redeemed["kind"] == "tier"
    assert redeemed["plan"] == "Gold"
    assert redeemed["quantity"] == 1
    assert redeemed["expires"]["on"] == "2026-04-01"
    remaining = {e["label"]: e["remaining"] for e in receipt["remaining"]}
    assert remaining == {"Botox": 20, "Laser Toning": 1}
    assert receipt["owed"]["total"] == {"amount_minor": 0, "currency": "SGD", "display": "SGD 0.00"}


def test_a_treatment_not_in_the_tier_is_charged_less_the_member_discount(client, staff, clinic):
    visit = open_visit(client, staff, clinic.member.id)
    line = add_line(client, staff, visit, "lymph-massage", clinic.aesthetician.id).get_json()
    assert line["status"] == "charged"
    assert (line["list_price"]["amount_minor"], line["discount"]["amount_minor"]) == (12000, 1200)
    assert line["amount"]["display"] == "SGD 108.00"
    receipt = client.get(f"/api/v1/visits/{visit}/receipt", headers=staff).get_json()
    assert receipt["owed"]["total"]["amount_minor"] == 10800
    assert receipt["owed"]["member_discount"]["amount_minor"] == 1200
    assert receipt["owed"]["tax_included"]["amount_minor"] == 892  # 108.00 includes 9 % GST


def test_a_non_member_pays_list_price(client, staff, clinic):
    walk_in = f.member("Walk", "In")
    db.session.commit()
    visit = open_visit(client, staff, walk_in.id)
    line = add_line(client, staff, visit, "hydrafacial", clinic.aesthetician.id).get_json()
    assert (line["status"], line["amount"]["amount_minor"]) == ("charged", 20000)


def test_the_desk_can_charge_instead_of_using_credits(client, staff, clinic, clock):
    visit = open_visit(client, staff, clinic.member.id)
    r = add_line(client, staff, visit, "hydrafacial", clinic.aesthetician.id, pay_with="charge")
    assert (r.get_json()["status"], r.get_json()["amount"]["amount_minor"]) == ("charged", 18000)
    assert balance(clinic.membership, clinic.facial, clock) == 1


def test_units_of_a_unit_treatment_are_redeemed_together(client, staff, clinic, clock):
    visit = open_visit(client, staff, clinic.member.id)
    r = add_line(client, staff, visit, "botox", clinic.doctor.id, quantity=12)
    assert r.status_code == 201, r.get_json()
    assert balance(clinic.membership, clinic.botox, clock) == 8


def test_a_beneficiary_redeems_from_the_household_membership(client, staff, clinic, clock):
    partner = f.member("Wei", "Tan")
    memberships.add_beneficiary(clinic.membership, partner, actor="test", now=clock())
    visit = open_visit(client, staff, partner.id)
    line = add_line(client, staff, visit, "hydrafacial", clinic.aesthetician.id).get_json()
    assert line["status"] == "redeemed"
    assert line["membership_id"] == clinic.membership.id
    entry = db.session.execute(
        sa.select(LedgerEntry).where(LedgerEntry.visit_line_id == line["id"])
    ).scalar_one()
    assert (entry.member_id, entry.kind) == (partner.id, EntryKind.REDEEM)
    assert balance(clinic.membership, clinic.facial, clock) == 0


def test_a_choice_credit_covers_whichever_option_is_chosen(client, staff, clinic, clock):
    peel = f.treatment("glow-peel", name="Glow Peel", price=15000, category="peel")
    mask = f.treatment("gold-mask", name="Gold Mask", price=9000, category="mask")
    choice = f.plan([("choice", [peel, mask], 1, "Any 1 of peel or mask")], code="glow")
    m = f.active_membership(choice, now=clock())
    db.session.commit()
    visit = open_visit(client, staff, m.member_id)
    line = add_line(client, staff, visit, "gold-mask", clinic.aesthetician.id).get_json()
    assert line["status"] == "redeemed"
    assert balance(m, peel, clock) == 0  # the one credit is spent
    again = add_line(client, staff, visit, "glow-peel", clinic.aesthetician.id).get_json()
    assert (again["status"], again["amount"]["amount_minor"]) == ("charged", 15000)


def test_of_a_tier_and_a_series_credit_the_one_expiring_first_is_used(client, staff, clinic, clock):
    series = f.plan(
        [(clinic.facial, 3)], code="facial-series", kind="series", credit_validity_days=365
    )
    bought = clock() - timedelta(days=350)  # its credits expire in 15 days, the tier's in 30
    f.active_membership(series, now=bought, owner=clinic.member)
    db.session.commit()
    visit = open_visit(client, staff, clinic.member.id)
    add_line(client, staff, visit, "hydrafacial", clinic.aesthetician.id)
    receipt = client.get(f"/api/v1/visits/{visit}/receipt", headers=staff).get_json()
    (used,) = receipt["lines"][0]["redeemed_from"]
    assert (used["kind"], used["plan"], used["expires"]["on"]) == (
        "series",
        "Facial Series",
        "2026-03-17",
    )
    assert balance(clinic.membership, clinic.facial, clock) == 1  # the tier credit is untouched


# ---------------------------------------------------------------------------------------------
# Bad input


def test_a_quantity_above_the_balance_is_409_and_writes_nothing(client, staff, clinic, clock):
    visit = open_visit(client, staff, clinic.member.id)
    before = db.session.execute(sa.select(sa.func.count(LedgerEntry.id))).scalar_one()
    r = add_line(client, staff, visit, "botox", clinic.doctor.id, quantity=25)
    assert r.status_code == 409
    assert "20 units left, 25 asked" in r.get_json()["detail"]
    assert db.session.execute(sa.select(sa.func.count(LedgerEntry.id))).scalar_one() == before
    assert db.session.execute(sa.select(sa.func.count(VisitLine.id))).scalar_one() == 0


@pytest.mark.parametrize("quantity", [0, -1, 1.5, "2"])
def test_a_quantity_must_be_a_whole_number_above_zero(client, staff, clinic, quantity):
    visit = open_visit(client, staff, clinic.member.id)
    r = add_line(client, staff, visit, "botox", clinic.doctor.id, quantity=quantity)
    assert r.status_code == 422
    assert "quantity" in r.get_json()["errors"]


def test_more_than_one_of_a_session_treatment_is_refused_with_the_reason(client, staff, clinic):
    visit = open_visit(client, staff, clinic.member.id)
    r = add_line(client, staff, visit, "hydrafacial", clinic.aesthetician.id, quantity=2)
    assert r.status_code == 422
    assert "counted in sessions" in r.get_json()["detail"]


def test_an_unknown_treatment_or_a_provider_from_elsewhere_is_bad_input(client, staff, clinic):
    visit = open_visit(client, staff, clinic.member.id)
    r = add_line(client, staff, visit, "no-such-thing", clinic.aesthetician.id)
    assert (r.status_code, r.get_json()["errors"]) == (422, {"treatment": ["unknown treatment"]})
    r = add_line(client, staff, visit, "hydrafacial", clinic.far_doctor.id)
    assert r.status_code == 422
    assert "Dr Tan works at Tampines" in r.get_json()["detail"]
    r = add_line(client, staff, visit, "hydrafacial", clinic.aesthetician.id, colour="red")
    assert r.status_code == 422  # unknown fields are refused


def test_a_redemption_needs_an_idempotency_key(client, staff, clinic):
    visit = open_visit(client, staff, clinic.member.id)
    r = client.post(
        f"/api/v1/visits/{visit}/lines",
        json={"treatment": "hydrafacial", "provider_id": clinic.aesthetician.id},
        headers=staff,
    )
    assert r.status_code == 422
    assert r.get_json()["type"].endswith("idempotency-key-required")


def test_a_retry_with_the_same_key_returns_the_first_result_and_redeems_nothing_more(
    client, staff, clinic, clock
):
    visit = open_visit(client, staff, clinic.member.id)
    first = add_line(client, staff, visit, "botox", clinic.doctor.id, key="desk-1-a", quantity=5)
    again = add_line(client, staff, visit, "botox", clinic.doctor.id, key="desk-1-a", quantity=5)
    assert first.status_code == again.status_code == 201
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert again.get_json()["id"] == first.get_json()["id"]
    assert balance(clinic.membership, clinic.botox, clock) == 15
    assert db.session.execute(sa.select(sa.func.count(VisitLine.id))).scalar_one() == 1


def test_nothing_can_be_added_to_a_closed_visit(client, staff, clinic):
    visit = open_visit(client, staff, clinic.member.id)
    assert client.post(f"/api/v1/visits/{visit}/close", json={}, headers=staff).status_code == 200
    r = add_line(client, staff, visit, "hydrafacial", clinic.aesthetician.id)
    assert r.status_code == 409
    assert r.get_json()["type"].endswith("visit-closed")


# ---------------------------------------------------------------------------------------------
# Voids


def test_a_void_in_an_open_visit_gives_the_credit_back(client, staff, clinic, clock):
    visit = open_visit(client, staff, clinic.member.id)
    line = add_line(client, staff, visit, "hydrafacial", clinic.aesthetician.id).get_json()
    r = client.post(
        f"/api/v1/visits/{visit}/lines/{line['id']}/void",
        json={"reason": "wrong client"},
        headers=staff,
    )
    assert r.status_code == 200
    assert r.get_json()["status"] == "voided"
    assert balance(clinic.membership, clinic.facial, clock) == 1
    kinds = db.session.execute(
        sa.select(LedgerEntry.kind, LedgerEntry.actor, LedgerEntry.reason)
        .where(LedgerEntry.visit_line_id == line["id"])
        .order_by(LedgerEntry.id)
    ).all()
    assert [k for k, _, _ in kinds] == ["redeem", "reverse"]
    assert kinds[1][1].startswith("key:") and "wrong client" in kinds[1][2]
    again = client.post(
        f"/api/v1/visits/{visit}/lines/{line['id']}/void", json={"reason": "x again"}, headers=staff
    )
    assert again.status_code == 409


def test_units_drawn_from_two_memberships_are_one_line_and_one_void(client, staff, clinic, clock):
    """25 units where the client's own membership holds 20 and a household one naming them 10:
    one line, its two redemptions (their own lot emptied, then 5 from the household's), written
    with the line and given back together by one void."""
    silver = f.plan([(clinic.botox, 10)], code="silver", price=15000)
    second = f.active_membership(silver, now=clock(), owner=f.member("Wei", "Tan"))
    memberships.add_beneficiary(second, clinic.member, actor="test", now=clock())
    visit = open_visit(client, staff, clinic.member.id)
    r = add_line(client, staff, visit, "botox", clinic.doctor.id, quantity=25)
    assert r.status_code == 201, r.get_json()
    line = r.get_json()
    entries = db.session.execute(
        sa.select(LedgerEntry.membership_id, LedgerEntry.quantity)
        .where(LedgerEntry.visit_line_id == line["id"])
        .order_by(LedgerEntry.id)
    ).all()
    assert entries == [(clinic.membership.id, -20), (second.id, -5)]
    assert balance(clinic.membership, clinic.botox, clock) == 0
    assert balance(second, clinic.botox, clock) == 5
    r = client.post(
        f"/api/v1/visits/{visit}/lines/{line['id']}/void", json={"reason": "wrong"}, headers=staff
    )
    assert r.status_code == 200
    assert balance(clinic.membership, clinic.botox, clock) == 20
    assert balance(second, clinic.botox, clock) == 10


def test_after_closing_only_an_admin_with_a_reason_may_void(client, staff, admin, clinic, clock):
    visit = open_visit(client, staff, clinic.member.id)
    line = add_line(client, staff, visit, "hydrafacial", clinic.aesthetician.id).get_json()
    client.post(f"/api/v1/visits/{visit}/close", json={"payment": "desk"}, headers=staff)
    url = f"/api/v1/visits/{visit}/lines/{line['id']}/void"
    assert client.post(url, json={"reason": "mistake"}, headers=staff).status_code == 403
    assert client.post(url, json={}, headers=admin).status_code == 422
    assert balance(clinic.membership, clinic.facial, clock) == 0
    r = client.post(url, json={"reason": "client was not treated"}, headers=admin)
    assert r.status_code == 200
    assert r.get_json()["void_reason"] == "client was not treated"
    assert balance(clinic.membership, clinic.facial, clock) == 1


# ---------------------------------------------------------------------------------------------
# Closing


def test_closing_at_the_desk_marks_what_is_owed_paid(client, staff, clinic):
    visit = open_visit(client, staff, clinic.member.id)
    add_line(client, staff, visit, "hydrafacial", clinic.aesthetician.id)
    add_line(client, staff, visit, "lymph-massage", clinic.aesthetician.id)
    r = client.post(f"/api/v1/visits/{visit}/close", json={"payment": "desk"}, headers=staff)
    assert r.status_code == 200
    receipt = r.get_json()
    assert receipt["state"] == "closed"
    assert receipt["payment"] == {"status": "paid", "method": "desk"}
    assert receipt["owed"]["total"]["amount_minor"] == 10800
    assert receipt["owed"]["paid"]["amount_minor"] == 10800
    assert [line["status"] for line in receipt["lines"]] == ["redeemed", "charged"]
    again = client.post(f"/api/v1/visits/{visit}/close", json={"payment": "desk"}, headers=staff)
    assert again.status_code == 409


def test_card_on_file_without_stripe_is_503_and_the_visit_stays_open(client, staff, clinic):
    visit = open_visit(client, staff, clinic.member.id)
    add_line(client, staff, visit, "lymph-massage", clinic.aesthetician.id)
    r = client.post(
        f"/api/v1/visits/{visit}/close", json={"payment": "card_on_file"}, headers=staff
    )
    assert r.status_code == 503
    assert client.get(f"/api/v1/visits/{visit}", headers=staff).get_json()["state"] == "open"


class CardOnFile:
    """Stands in for the Stripe gateway (app.config["STRIPE_GATEWAY"]): records each charge."""

    def __init__(self, decline: bool = False):
        self.charges: list[dict] = []
        self.decline = decline

    def charge_off_session(self, member, amount_minor, currency, description, idempotency_key):
        from billing.stripe_sync.gateway import PaymentDeclined

        if self.decline:
            raise PaymentDeclined("The card on file was declined (insufficient funds).")
        self.charges.append({"member": member.id, "amount": amount_minor, "key": idempotency_key})
        return f"pi_{len(self.charges)}"


def test_closing_charges_what_is_owed_to_the_card_on_file_once(app, client, staff, clinic):
    card = app.config["STRIPE_GATEWAY"] = CardOnFile()
    visit = open_visit(client, staff, clinic.member.id)
    add_line(client, staff, visit, "hydrafacial", clinic.aesthetician.id)
    add_line(client, staff, visit, "lymph-massage", clinic.aesthetician.id)
    r = client.post(
        f"/api/v1/visits/{visit}/close", json={"payment": "card_on_file"}, headers=staff
    )
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["payment"] == {"status": "paid", "method": "card_on_file"}
    assert card.charges == [
        {"member": clinic.member.id, "amount": 10800, "key": f"visit-{visit}-close"}
    ]  # only the charged line, with a key that makes a retried charge the same charge


def test_a_declined_card_leaves_the_visit_open_to_pay_at_the_desk(app, client, staff, clinic):
    app.config["STRIPE_GATEWAY"] = CardOnFile(decline=True)
    visit = open_visit(client, staff, clinic.member.id)
    add_line(client, staff, visit, "lymph-massage", clinic.aesthetician.id)
    r = client.post(
        f"/api/v1/visits/{visit}/close", json={"payment": "card_on_file"}, headers=staff
    )
    assert r.status_code == 402 and "declined" in r.get_json()["detail"]
    assert client.get(f"/api/v1/visits/{visit}", headers=staff).get_json()["state"] == "open"
    r = client.post(f"/api/v1/visits/{visit}/close", json={"payment": "desk"}, headers=staff)
    assert r.get_json()["payment"] == {"status": "paid", "method": "desk"}


# ---------------------------------------------------------------------------------------------
# The clinic's rules


def test_a_medical_procedure_needs_a_provider_with_a_valid_credential(
    client, staff, admin, clinic, clock
):
    visit = open_visit(client, staff, clinic.member.id, supervising_staff_id=clinic.doctor.id)
    r = add_line(client, staff, visit, "botox", clinic.aesthetician.id, quantity=10)
    assert r.status_code == 409
    body = r.get_json()
    assert body["rule"] == "provider_credential"
    assert body["detail"].startswith("Bea may not perform Botox")
    lapsed = make_staff("Nurse Jo", "nurse", clinic.orchard, ("registered_nurse", date(2026, 2, 1)))
    r = add_line(client, staff, visit, "botox", lapsed.id, quantity=10)
    assert "registered nurse credential expired on 1 February 2026" in r.get_json()["detail"]
    assert add_line(client, staff, visit, "botox", clinic.nurse.id, quantity=10).status_code == 201


def test_a_rule_override_needs_an_admin_and_keeps_the_reason(client, staff, admin, clinic, clock):
    visit = open_visit(client, staff, clinic.member.id, supervising_staff_id=clinic.doctor.id)
    override = {"rule": "provider_credential", "reason": "licence renewal in the post"}
    r = add_line(
        client, staff, visit, "botox", clinic.aesthetician.id, quantity=5, override=override
    )
    assert r.status_code == 403
    assert balance(clinic.membership, clinic.botox, clock) == 20
    r = add_line(
        client, admin, visit, "botox", clinic.aesthetician.id, quantity=5, override=override
    )
    assert r.status_code == 201, r.get_json()
    kept = db.session.execute(sa.select(RuleOverride)).scalar_one()
    assert (kept.rule, kept.reason, kept.visit_line_id) == (
        "provider_credential",
        "licence renewal in the post",
        r.get_json()["id"],
    )
    assert kept.actor.startswith("key:") and "Bea may not perform" in kept.detail
    receipt = client.get(f"/api/v1/visits/{visit}/receipt", headers=staff).get_json()
    assert receipt["lines"][0]["overrides"][0]["reason"] == "licence renewal in the post"


def test_supervision_of_a_non_physician(client, staff, admin, clinic):
    # No supervisor on the visit.
    visit = open_visit(client, staff, clinic.member.id)
    r = add_line(client, staff, visit, "botox", clinic.nurse.id, quantity=2)
    assert (r.status_code, r.get_json()["rule"]) == (409, "supervision")
    assert "needs a supervising physician" in r.get_json()["detail"]
    # A physician performing needs nobody.
    assert add_line(client, staff, visit, "botox", clinic.doctor.id, quantity=2).status_code == 201
    # The supervisor is not a physician.
    visit = open_visit(client, staff, clinic.member.id, supervising_staff_id=clinic.nurse.id)
    other_nurse = make_staff("Nurse Kim", "nurse", clinic.orchard, ("registered_nurse", None))
    r = add_line(client, staff, visit, "botox", other_nurse.id, quantity=2)
    assert r.get_json()["detail"] == (
        "Nurse Ann cannot supervise injectable treatments: that needs a valid physician credential."
    )
    # A physician not on duty here today.
    off_duty = make_staff("Dr Ng", "physician", clinic.orchard, ("physician", None))
    visit = open_visit(client, staff, clinic.member.id, supervising_staff_id=off_duty.id)
    r = add_line(client, staff, visit, "botox", clinic.nurse.id, quantity=2)
    assert r.get_json()["detail"] == (
        "Dr Ng is not on duty at Orchard today (2 March 2026): the supervising physician must be."
    )
    # Overridden by an admin.
    override = {"rule": "supervision", "reason": "Dr Ng covering, roster not updated"}
    r = add_line(client, admin, visit, "botox", clinic.nurse.id, quantity=2, override=override)
    assert r.status_code == 201
    # On duty: allowed (the supervisor can also be set after opening).
    r = client.patch(
        f"/api/v1/visits/{visit}", json={"supervising_staff_id": clinic.doctor.id}, headers=staff
    )
    assert r.status_code == 200
    assert add_line(client, staff, visit, "botox", clinic.nurse.id, quantity=2).status_code == 201


def test_a_consultation_must_be_on_file_and_recent(client, staff, admin, clinic, clock):
    visit = open_visit(client, staff, clinic.member.id)
    r = add_line(client, staff, visit, "laser-toning", clinic.doctor.id)
    assert (r.status_code, r.get_json()["rule"]) == (409, "consultation")
    assert r.get_json()["detail"] == (
        "Laser Toning needs a consultation first, and Mei Tan has none on file."
    )
    old = clock() - timedelta(days=400)
    r = client.post(
        f"/api/v1/members/{clinic.member.id}/consultations",
        json={"held_at": old.isoformat(), "notes": "first visit"},
        headers=staff,
    )
    assert r.status_code == 201
    r = add_line(client, staff, visit, "laser-toning", clinic.doctor.id)
    assert "last one was on 26 January 2025" in r.get_json()["detail"]
    client.post(f"/api/v1/members/{clinic.member.id}/consultations", json={}, headers=staff)
    assert add_line(client, staff, visit, "laser-toning", clinic.doctor.id).status_code == 201


def test_closing_a_visit_with_a_consultation_puts_one_on_file(client, staff, clinic):
    visit = open_visit(client, staff, clinic.member.id)
    assert add_line(client, staff, visit, "consult", clinic.doctor.id).status_code == 201
    assert add_line(client, staff, visit, "laser-toning", clinic.doctor.id).status_code == 409
    client.post(f"/api/v1/visits/{visit}/close", json={"payment": "desk"}, headers=staff)
    assert db.session.execute(sa.select(Consultation.member_id)).scalars().all() == [
        clinic.member.id
    ]
    visit = open_visit(client, staff, clinic.member.id)
    assert add_line(client, staff, visit, "laser-toning", clinic.doctor.id).status_code == 201


def test_an_admin_may_waive_the_consultation(client, staff, admin, clinic):
    visit = open_visit(client, staff, clinic.member.id)
    override = {"rule": "consultation", "reason": "consulted at our other clinic last week"}
    r = add_line(client, admin, visit, "laser-toning", clinic.doctor.id, override=override)
    assert r.status_code == 201
    assert db.session.execute(sa.select(RuleOverride.rule)).scalar_one() == "consultation"


def test_the_minimum_interval_says_the_first_possible_date(client, staff, admin, clinic, clock):
    series = f.plan(
        [(clinic.laser, 4)], code="laser-series", kind="series", credit_validity_days=365
    )
    f.active_membership(series, now=clock(), owner=clinic.member)
    db.session.add(Consultation(member_id=clinic.member.id, held_at=clock(), recorded_by="t"))
    db.session.commit()
    visit = open_visit(client, staff, clinic.member.id)
    first = add_line(client, staff, visit, "laser-toning", clinic.doctor.id).get_json()
    clock.advance(days=10)
    r = add_line(
        client, staff, open_visit(client, staff, clinic.member.id), "laser-toning", clinic.doctor.id
    )
    assert (r.status_code, r.get_json()["rule"]) == (409, "min_interval")
    assert r.get_json()["detail"] == (
        "Mei Tan last had Laser Toning on 2 March 2026; it needs 28 days between sessions, so "
        "the first possible date is 30 March 2026."
    )
    # A voided line does not count.
    client.post(
        f"/api/v1/visits/{visit}/lines/{first['id']}/void",
        json={"reason": "not done"},
        headers=staff,
    )
    visit2 = open_visit(client, staff, clinic.member.id)
    second = add_line(client, staff, visit2, "laser-toning", clinic.doctor.id)
    assert second.status_code == 201
    r = add_line(client, staff, visit2, "laser-toning", clinic.doctor.id)
    assert r.get_json()["rule"] == "min_interval"
    override = {"rule": "min_interval", "reason": "touch-up prescribed by Dr Lee"}
    assert (
        add_line(
            client, admin, visit2, "laser-toning", clinic.doctor.id, override=override
        ).status_code
        == 201
    )
    clock.advance(days=28)
    r = add_line(
        client, staff, open_visit(client, staff, clinic.member.id), "laser-toning", clinic.doctor.id
    )
    assert r.status_code == 201


def test_credits_of_a_membership_past_its_grace_cannot_be_used(client, staff, admin, clinic, clock):
    memberships.mark_past_due(clinic.membership, actor="stripe", now=clock())
    visit = open_visit(client, staff, clinic.member.id)
    assert add_line(client, staff, visit, "hydrafacial", clinic.aesthetician.id).status_code == 201
    clock.advance(days=8)  # the 7-day grace period is over
    visit = open_visit(client, staff, clinic.member.id)
    r = add_line(client, staff, visit, "botox", clinic.doctor.id, quantity=4)
    assert (r.status_code, r.get_json()["rule"]) == (409, "membership_state")
    assert (
        "past due since 2 March 2026 (the grace period ended on 9 March 2026)"
        in (r.get_json()["detail"])
    )
    charged = add_line(
        client, staff, visit, "botox", clinic.doctor.id, quantity=4, pay_with="charge"
    )
    assert charged.get_json()["amount"]["amount_minor"] == 6000  # no member discount either
    override = {"rule": "membership_state", "reason": "paid by bank transfer this morning"}
    r = add_line(client, admin, visit, "botox", clinic.doctor.id, quantity=4, override=override)
    assert r.get_json()["status"] == "redeemed"
    assert balance(clinic.membership, clinic.botox, clock) == 16


def test_an_expired_credit_says_when_it_expired_and_an_admin_may_honour_it(
    client, staff, admin, clinic, clock
):
    clock.advance(days=31)  # the period's credits expired on 1 April
    ledger.expire_unused(clinic.membership, now=clock())
    visit = open_visit(client, staff, clinic.member.id)
    r = add_line(client, staff, visit, "hydrafacial", clinic.aesthetician.id)
    assert (r.status_code, r.get_json()["rule"]) == (409, "expired_credit")
    assert "HydraFacial credit expired on 1 April 2026" in r.get_json()["detail"]
    charged = add_line(
        client, staff, visit, "hydrafacial", clinic.aesthetician.id, pay_with="charge"
    )
    assert charged.get_json()["status"] == "charged"
    override = {"rule": "expired_credit", "reason": "client was in hospital"}
    r = add_line(client, admin, visit, "hydrafacial", clinic.aesthetician.id, override=override)
    assert r.status_code == 201, r.get_json()
    assert r.get_json()["status"] == "redeemed"


# ---------------------------------------------------------------------------------------------
# The desk's lookup


def test_the_desk_lookup_shows_state_balances_and_what_blocks_each_treatment(
    client, staff, clinic, clock
):
    r = client.get(f"/api/v1/desk/lookup?member_id={clinic.member.id}", headers=staff)
    assert r.status_code == 200
    body = r.get_json()
    assert body["client"]["name"] == "Mei Tan"
    assert [(m["plan"], m["state_words"]) for m in body["memberships"]] == [("Gold", "active")]
    assert body["member_discount_bp"] == 1000
    botox = next(b for b in body["balances"] if b["label"] == "Botox")
    assert (botox["remaining"], botox["unit_label"], botox["next_expiry"]["on"]) == (
        20,
        "unit",
        "2026-04-01",
    )
    blocked = {t["code"]: [b["rule"] for b in t["blocked_by"]] for t in body["treatments"]}
    assert blocked == {"botox": [], "hydrafacial": [], "laser-toning": ["consultation"]}

    memberships.pause(
        clinic.membership, actor="t", now=clock(), resume_at=clock() + timedelta(days=30)
    )
    body = client.get("/api/v1/desk/lookup?q=mei tan", headers=staff).get_json()
    assert body["memberships"][0]["state_words"] == "paused until 1 April 2026"
    facial = next(t for t in body["treatments"] if t["code"] == "hydrafacial")
    assert facial["blocked_by"][0]["rule"] == "membership_state"
    assert "paused until 1 April 2026" in facial["blocked_by"][0]["detail"]


def test_the_desk_lookup_by_search_lists_candidates_or_404(client, staff, clinic):
    f.member("Mei", "Lim")
    db.session.commit()
    body = client.get("/api/v1/desk/lookup?q=mei", headers=staff).get_json()
    assert body["client"] is None
    assert sorted(c["name"] for c in body["candidates"]) == ["Mei Lim", "Mei Tan"]
    assert client.get("/api/v1/desk/lookup?q=nobody", headers=staff).status_code == 404
    assert client.get("/api/v1/desk/lookup?member_id=999", headers=staff).status_code == 404


# ---------------------------------------------------------------------------------------------
# The desk's one call: redeem into today's visit


def desk_redeem(client, headers, member_id, treatment, provider_id, key=None, **extra):
    body = {"member_id": member_id, "location": "orchard", "treatment": treatment}
    return client.post(
        "/api/v1/desk/redemptions",
        json={**body, "provider_id": provider_id, **extra},
        headers={**headers, "Idempotency-Key": key or uuid.uuid4().hex},
    )


def visits_of(member_id):
    from billing.checkout.models import Visit

    return (
        db.session.execute(sa.select(Visit).where(Visit.member_id == member_id).order_by(Visit.id))
        .scalars()
        .all()
    )


def test_one_desk_call_opens_todays_visit_and_the_next_adds_to_it(client, staff, clinic, clock):
    first = desk_redeem(client, staff, clinic.member.id, "hydrafacial", clinic.aesthetician.id)
    assert first.status_code == 201, first.get_json()
    assert first.get_json()["status"] == "redeemed"
    assert balance(clinic.membership, clinic.facial, clock) == 0
    second = desk_redeem(client, staff, clinic.member.id, "lymph-massage", clinic.aesthetician.id)
    assert second.get_json()["status"] == "charged"
    (visit,) = visits_of(clinic.member.id)
    assert first.get_json()["visit_id"] == second.get_json()["visit_id"] == visit.id
    receipt = client.get(f"/api/v1/visits/{visit.id}/receipt", headers=staff).get_json()
    assert [line["treatment"]["code"] for line in receipt["lines"]] == [
        "hydrafacial",
        "lymph-massage",
    ]


def test_a_refused_call_into_todays_visit_names_what_is_wrong_and_adds_nothing(
    client, staff, clinic, clock
):
    """The visit is open already: its treatment and provider are read with it, and a wrong one
    is still named."""
    first = desk_redeem(client, staff, clinic.member.id, "lymph-massage", clinic.aesthetician.id)
    assert first.status_code == 201
    cases = [
        ("no-such-thing", clinic.aesthetician.id, "no-such-thing"),
        ("hydrafacial", 99999, "99999"),
        ("hydrafacial", clinic.far_doctor.id, "another location"),
    ]
    for treatment, provider, named in cases:
        r = desk_redeem(client, staff, clinic.member.id, treatment, provider)
        assert r.status_code == 422, r.get_json()
        assert named in r.get_json()["detail"] + str(r.get_json().get("errors")), r.get_json()
    (visit,) = visits_of(clinic.member.id)
    receipt = client.get(f"/api/v1/visits/{visit.id}/receipt", headers=staff).get_json()
    assert [line["treatment"]["code"] for line in receipt["lines"]] == ["lymph-massage"]
    assert balance(clinic.membership, clinic.facial, clock) == 1


def test_a_closed_visit_or_yesterdays_is_not_reused(client, staff, clinic, clock):
    first = desk_redeem(client, staff, clinic.member.id, "lymph-massage", clinic.aesthetician.id)
    visit = first.get_json()["visit_id"]
    assert client.post(f"/api/v1/visits/{visit}/close", json={}, headers=staff).status_code == 200
    second = desk_redeem(client, staff, clinic.member.id, "lymph-massage", clinic.aesthetician.id)
    assert second.get_json()["visit_id"] != visit
    clock.advance(days=1)
    third = desk_redeem(client, staff, clinic.member.id, "lymph-massage", clinic.aesthetician.id)
    assert third.get_json()["visit_id"] not in (visit, second.get_json()["visit_id"])
    assert len(visits_of(clinic.member.id)) == 3


def test_a_walk_in_without_a_membership_gets_one_visit_for_the_day(client, staff, clinic):
    """Today's visit is found by the statement that also locks the client's memberships: a
    client with none is still found, so the second line goes on the same visit, charged."""
    walk_in = f.member("Walk", "In")
    db.session.commit()
    lines = [
        desk_redeem(client, staff, walk_in.id, code, clinic.aesthetician.id)
        for code in ("hydrafacial", "lymph-massage")
    ]
    assert [r.status_code for r in lines] == [201, 201], [r.get_json() for r in lines]
    assert [r.get_json()["status"] for r in lines] == ["charged", "charged"]
    (visit,) = visits_of(walk_in.id)
    assert {r.get_json()["visit_id"] for r in lines} == {visit.id}
    receipt = client.get(f"/api/v1/visits/{visit.id}/receipt", headers=staff).get_json()
    assert receipt["owed"]["total"]["amount_minor"] == 20000 + 12000


def test_todays_visit_redeems_from_own_and_household_memberships(client, staff, clinic, clock):
    """The second call of the day goes through today's visit: the memberships read with it are
    the client's own and the household one naming them, so 25 units draw on both (their own
    20 first, then 5 of the household's) and a line on the household's alone is redeemed."""
    silver = f.plan([(clinic.botox, 10)], code="silver", price=15000)
    household = f.active_membership(silver, now=clock(), owner=f.member("Wei", "Tan"))
    memberships.add_beneficiary(household, clinic.member, actor="test", now=clock())
    db.session.commit()
    first = desk_redeem(client, staff, clinic.member.id, "lymph-massage", clinic.aesthetician.id)
    units = desk_redeem(client, staff, clinic.member.id, "botox", clinic.doctor.id, quantity=25)
    assert units.status_code == 201, units.get_json()
    assert units.get_json()["visit_id"] == first.get_json()["visit_id"]
    entries = db.session.execute(
        sa.select(LedgerEntry.membership_id, LedgerEntry.quantity)
        .where(LedgerEntry.visit_line_id == units.get_json()["id"])
        .order_by(LedgerEntry.id)
    ).all()
    assert entries == [(clinic.membership.id, -20), (household.id, -5)]
    more = desk_redeem(client, staff, clinic.member.id, "botox", clinic.doctor.id, quantity=5)
    assert more.get_json()["status"] == "redeemed"
    assert more.get_json()["membership_id"] == household.id
    assert balance(household, clinic.botox, clock) == 0
    assert len(visits_of(clinic.member.id)) == 1


def test_a_redemption_into_todays_visit_is_five_statements_on_postgresql(
    client, staff, clinic, clock
):
    """The desk's common call, met as the server meets it (a session with nothing loaded): the
    key claimed, today's visit locked with the client's memberships, the treatment and the
    provider, the credits read, the line written with its entries, the response kept; one
    commit. A sixth statement would be a round trip more on every click at the desk."""
    spa = f.plan([(clinic.massage, 4)], code="spa", price=9000)
    client_id = f.active_membership(spa, now=clock(), owner=f.member("Ana", "Lim")).member_id
    provider = clinic.aesthetician.id
    db.session.commit()
    first = desk_redeem(client, staff, client_id, "lymph-massage", provider)
    db.session.remove()
    with sql_sent() as seen:
        second = desk_redeem(client, staff, client_id, "lymph-massage", provider)
    assert second.status_code == 201, second.get_json()
    assert second.get_json()["status"] == "redeemed"
    assert second.get_json()["visit_id"] == first.get_json()["visit_id"]
    # SQLite: the line and its entries in two statements (no data-modifying WITH).
    assert len(seen["sql"]) == (5 if IS_POSTGRES else 6), seen["sql"]
    assert len(seen["commits"]) == 1


def test_a_desk_retry_returns_the_first_line_and_spends_nothing_more(client, staff, clinic, clock):
    key = "desk-2-retry"
    first = desk_redeem(client, staff, clinic.member.id, "botox", clinic.doctor.id, key, quantity=4)
    again = desk_redeem(client, staff, clinic.member.id, "botox", clinic.doctor.id, key, quantity=4)
    assert first.status_code == again.status_code == 201
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert again.get_json()["id"] == first.get_json()["id"]
    assert balance(clinic.membership, clinic.botox, clock) == 16
    assert len(visits_of(clinic.member.id)) == 1


def test_a_refused_desk_call_opens_no_visit_and_writes_nothing(client, staff, keys, clinic, clock):
    entries = db.session.execute(sa.select(sa.func.count(LedgerEntry.id))).scalar_one()
    cases = [
        ({"quantity": 25}, "botox", clinic.doctor.id, 409),  # above the balance
        ({}, "no-such-thing", clinic.doctor.id, 422),
        ({}, "hydrafacial", clinic.far_doctor.id, 422),  # works at another location
        ({"location": "mars"}, "hydrafacial", clinic.aesthetician.id, 422),
        ({}, "hydrafacial", 99999, 422),  # no such provider
    ]
    for extra, treatment, provider, status in cases:
        r = desk_redeem(client, staff, clinic.member.id, treatment, provider, **extra)
        assert r.status_code == status, (extra, treatment, r.get_json())
        assert r.mimetype == "application/problem+json"
    r = desk_redeem(client, staff, 9999, "hydrafacial", clinic.aesthetician.id)
    assert r.status_code == 404 and "9999" in r.get_json()["detail"]
    r = client.post(
        "/api/v1/desk/redemptions",
        json={
            "member_id": clinic.member.id,
            "location": "orchard",
            "treatment": "hydrafacial",
            "provider_id": clinic.aesthetician.id,
        },
        headers=staff,
    )
    assert r.get_json()["type"].endswith("idempotency-key-required")
    client_key = keys.headers("client", clinic.member.id)
    r = desk_redeem(client, client_key, clinic.member.id, "hydrafacial", clinic.aesthetician.id)
    assert r.status_code == 403
    assert visits_of(clinic.member.id) == []
    assert db.session.execute(sa.select(sa.func.count(LedgerEntry.id))).scalar_one() == entries
    assert balance(clinic.membership, clinic.botox, clock) == 20
