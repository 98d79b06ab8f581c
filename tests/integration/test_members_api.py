"""/api/v1/members as the front desk and a client use it: add, find, correct; and the refusals."""

from datetime import timedelta

import pytest

from billing.extensions import db
from billing.members.models import Member
from tests import factories as f

URL = "/api/v1/members"


def _count() -> int:
    return db.session.query(Member).count()


def _new(**fields) -> dict:
    body = {"first_name": "Mei Ling", "last_name": "Tan", "email": "meiling.tan@example.com"}
    body.update(fields)
    return body


@pytest.fixture
def people(app):
    rows = [
        f.member("Mei", "Tan", email="mei.tan@example.com", phone="+65 9123 4567"),
        f.member("Wei", "Lim", email="wei@lim.sg", phone="8111 2222"),
        f.member("Aisha", "Rahman", email="aisha.r@example.com"),
        f.member("Meiyi", "Ong", email="meiyi.ong@example.com"),
        f.member("Tanya", "Goh", email="tanya@example.com"),
    ]
    db.session.commit()
    return {m.first_name: m for m in rows}


def _names(response) -> list[str]:
    assert response.status_code == 200, response.get_json()
    return [m["full_name"] for m in response.get_json()["items"]]


# ------------------------------------------------------------------------------------ create


def test_staff_adds_a_member_with_a_home_location(client, staff):
    f.location("orchard")
    db.session.commit()
    body = _new(phone="+65 8765 4321", date_of_birth="1990-04-01", home_location="orchard")
    response = client.post(URL, json=body, headers=staff)
    assert response.status_code == 201, response.get_json()
    data = response.get_json()
    assert data["full_name"] == "Mei Ling Tan"
    assert data["home_location"]["code"] == "orchard"
    assert data["date_of_birth"] == "1990-04-01"
    assert data["stripe_customer_id"] is None
    member = db.session.get(Member, data["id"])
    assert (member.search_name, member.phone_digits) == ("mei ling tan", "6587654321")


def test_home_location_may_be_given_by_id(client, staff):
    location = f.location("tampines")
    db.session.commit()
    response = client.post(URL, json=_new(home_location=location.id), headers=staff)
    assert response.status_code == 201
    assert response.get_json()["home_location"]["code"] == "tampines"


def test_the_same_email_in_another_case_is_a_conflict(client, staff, people):
    before = _count()
    response = client.post(URL, json=_new(email="MEI.Tan@Example.com"), headers=staff)
    assert response.status_code == 409
    body = response.get_json()
    assert response.mimetype == "application/problem+json"
    assert "mei.tan@example.com" in body["detail"]
    assert body["errors"] == {"email": ["already used by another member"]}
    assert _count() == before


@pytest.mark.parametrize(
    ("fields", "field", "words"),
    [
        ({"email": "not-an-email"}, "email", "email"),
        ({"date_of_birth": "2026-03-03"}, "date_of_birth", "future"),
        ({"nickname": "Mei"}, "nickname", "Unknown field"),
        ({"stripe_customer_id": "cus_123"}, "stripe_customer_id", "Unknown field"),
        ({"home_location": "nowhere"}, "home_location", "location"),
        ({"first_name": ""}, "first_name", "Length"),
        ({"phone": "call me"}, "phone", "phone"),
    ],
)
def test_bad_input_says_what_is_wrong_and_writes_nothing(client, staff, fields, field, words):
    before = _count()
    response = client.post(URL, json=_new(**fields), headers=staff)
    assert response.status_code == 422, response.get_json()
    body = response.get_json()
    assert body["type"].endswith("/invalid-input")
    assert field in body["errors"]
    assert words.lower() in (body["detail"] + str(body["errors"])).lower()
    assert _count() == before


def test_a_birthday_today_in_singapore_is_not_the_future(client, staff, clock):
    # 02:00 UTC on 2 March is already 10:00 on 2 March at the clinic.
    response = client.post(URL, json=_new(date_of_birth="2026-03-02"), headers=staff)
    assert response.status_code == 201


def test_creating_needs_a_staff_key(client, keys, people):
    assert client.post(URL, json=_new()).status_code == 401
    own = keys.headers("client", member_id=people["Mei"].id)
    assert client.post(URL, json=_new(), headers=own).status_code == 403
    assert client.post(URL, json=_new(), headers=keys.headers("finance")).status_code == 403
    assert _count() == len(people)


def test_a_retried_create_with_the_same_idempotency_key_creates_one_member(client, staff):
    headers = {**staff, "Idempotency-Key": "create-mei-1"}
    first = client.post(URL, json=_new(), headers=headers)
    again = client.post(URL, json=_new(), headers=headers)
    assert first.status_code == again.status_code == 201
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert again.get_json()["id"] == first.get_json()["id"]
    assert _count() == 1


# ------------------------------------------------------------------------------------ read


def test_staff_read_any_member_and_a_client_only_their_own(client, staff, keys, people):
    mei, wei = people["Mei"], people["Wei"]
    mei.notes = "prefers afternoon slots"
    db.session.commit()
    as_staff = client.get(f"{URL}/{mei.id}", headers=staff).get_json()
    assert as_staff["notes"] == "prefers afternoon slots"

    own = keys.headers("client", member_id=mei.id)
    mine = client.get(f"{URL}/{mei.id}", headers=own)
    assert mine.status_code == 200
    assert mine.get_json()["email"] == "mei.tan@example.com"
    assert "notes" not in mine.get_json()  # the clinic's notes are not shown to clients

    other = client.get(f"{URL}/{wei.id}", headers=own)
    assert other.status_code == 403
    assert client.get(f"{URL}/{mei.id}").status_code == 401
    assert client.get(f"{URL}/999999", headers=staff).status_code == 404


# ------------------------------------------------------------------------------------ update


def test_patch_changes_only_what_was_sent_and_keeps_search_in_step(client, staff, people):
    mei = people["Mei"]
    response = client.patch(
        f"{URL}/{mei.id}", json={"last_name": "Koh", "phone": None}, headers=staff
    )
    assert response.status_code == 200, response.get_json()
    data = response.get_json()
    assert (data["first_name"], data["last_name"], data["phone"]) == ("Mei", "Koh", None)
    assert data["email"] == "mei.tan@example.com"
    assert _names(client.get(URL, query_string={"q": "mei koh"}, headers=staff)) == ["Mei Koh"]
    assert _names(client.get(URL, query_string={"q": "91234567"}, headers=staff)) == []


def test_patch_to_an_email_another_member_has_is_a_conflict(client, staff, people):
    wei = people["Wei"]
    response = client.patch(f"{URL}/{wei.id}", json={"email": "Mei.Tan@example.com"}, headers=staff)
    assert response.status_code == 409
    db.session.expire_all()
    assert db.session.get(Member, wei.id).email == "wei@lim.sg"
    # Changing only the case of one's own email is not a conflict.
    same = client.patch(f"{URL}/{wei.id}", json={"email": "Wei@Lim.sg"}, headers=staff)
    assert same.status_code == 200
    assert db.session.get(Member, wei.id).email_normalized == "wei@lim.sg"


def test_a_client_may_correct_their_own_details_but_not_notes_or_others(client, keys, people):
    mei, wei = people["Mei"], people["Wei"]
    own = keys.headers("client", member_id=mei.id)
    ok = client.patch(f"{URL}/{mei.id}", json={"phone": "+65 9000 0000"}, headers=own)
    assert ok.status_code == 200
    assert db.session.get(Member, mei.id).phone_digits == "6590000000"
    notes = client.patch(f"{URL}/{mei.id}", json={"notes": "VIP"}, headers=own)
    assert notes.status_code == 403
    other = client.patch(f"{URL}/{wei.id}", json={"phone": "1234567"}, headers=own)
    assert other.status_code == 403
    db.session.expire_all()
    assert db.session.get(Member, wei.id).phone == "8111 2222"
    assert db.session.get(Member, mei.id).notes == ""


def test_patch_refuses_read_only_and_bad_fields(client, staff, people, clock):
    mei = people["Mei"]
    tomorrow = (clock() + timedelta(days=1)).date().isoformat()
    for body in (
        {"stripe_customer_id": "cus_x"},
        {"date_of_birth": tomorrow},
        {"email": "nope"},
        {"first_name": None},
    ):
        response = client.patch(f"{URL}/{mei.id}", json=body, headers=staff)
        assert response.status_code == 422, body
    db.session.expire_all()
    row = db.session.get(Member, mei.id)
    assert (row.stripe_customer_id, row.date_of_birth, row.email) == (
        None,
        None,
        "mei.tan@example.com",
    )


# ------------------------------------------------------------------------------------ search


@pytest.mark.parametrize(
    ("q", "expected"),
    [
        ("mei", ["Meiyi Ong", "Mei Tan"]),  # first-name prefix, ordered by last name
        ("TAN", ["Tanya Goh", "Mei Tan"]),  # first or last name, any case; by last name
        ("mei t", ["Mei Tan"]),  # "first last"
        ("tanya@", ["Tanya Goh"]),  # email prefix
        ("aisha.r", ["Aisha Rahman"]),  # email prefix without the @
        ("6591", ["Mei Tan"]),  # phone digits from the start
        ("9123 4567", ["Mei Tan"]),  # the local number, as typed
        ("8111-2222", ["Wei Lim"]),
        ("%", []),  # a wildcard is a character, not "everything"
        ("zzz", []),
    ],
)
def test_search_by_name_email_or_phone(client, staff, people, q, expected):
    assert _names(client.get(URL, query_string={"q": q}, headers=staff)) == expected


def test_search_pages_at_most_fifty(client, staff, app):
    for i in range(55):
        f.member("Pat", f"Lee{i:02d}", email=f"pat{i}@example.com")
    db.session.commit()
    first = client.get(URL, query_string={"q": "pat", "limit": 50}, headers=staff).get_json()
    assert len(first["items"]) == 50
    assert first["items"][0]["last_name"] == "Lee00"
    assert first["next_offset"] == 50
    rest = client.get(
        URL, query_string={"q": "pat", "limit": 50, "offset": 50}, headers=staff
    ).get_json()
    assert [m["last_name"] for m in rest["items"]] == [f"Lee{i}" for i in range(50, 55)]
    assert rest["next_offset"] is None
    too_many = client.get(URL, query_string={"limit": 51}, headers=staff)
    assert too_many.status_code == 422
    assert "limit" in too_many.get_json()["errors"]


def test_a_client_cannot_list_or_search(client, keys, people):
    own = keys.headers("client", member_id=people["Mei"].id)
    assert client.get(URL, query_string={"q": "mei"}, headers=own).status_code == 403
    assert client.get(URL).status_code == 401
