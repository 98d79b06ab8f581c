"""Hostile input: what a careless or malicious caller sends must get a clear 4xx problem, change
nothing, and never come back as markup.

SQL and HTML in the search box and in names, bodies over MAX_CONTENT_LENGTH, JSON that is not
JSON, the wrong content type, and the corners of Unicode (NUL, lone surrogates, right-to-left
marks, emoji, combining accents, a name one character too long). Each test walks a list of cases
in one app, so the suite stays fast on PostgreSQL."""

from __future__ import annotations

import json

import pytest

from billing.extensions import db
from billing.members.models import Member
from tests import factories as f

MEMBERS = "/api/v1/members"


def _count() -> int:
    return db.session.query(Member).count()


def _is_problem(response, status: int | tuple[int, ...], case: object = "") -> dict:
    statuses = status if isinstance(status, tuple) else (status,)
    assert response.status_code in statuses, (
        case,
        response.status_code,
        response.get_data(True)[:300],
    )
    assert response.mimetype == "application/problem+json", (case, response.mimetype)
    body = response.get_json()
    assert body["status"] == response.status_code
    assert body["title"] and body["type"]
    return body


def _post_raw(client, headers, raw: str | bytes, content_type: str = "application/json"):
    return client.post(MEMBERS, data=raw, headers={**headers, "Content-Type": content_type})


def _new(**fields) -> dict:
    body = {"first_name": "Mei", "last_name": "Tan", "email": "mei.new@example.com"}
    body.update(fields)
    return body


@pytest.fixture
def people(app):
    rows = [
        f.member("Mei", "Tan", email="mei.tan@example.com", phone="+65 9123 4567"),
        f.member("Siobhan", "O'Brien", email="siobhan@example.com"),
        f.member("Percy", "Hundred", email="percy@example.com"),
    ]
    db.session.commit()
    return rows


def _search(client, headers, q: str):
    return client.get(MEMBERS, query_string={"q": q}, headers=headers)


# ------------------------------------------------------------------------------------ search

SQL_IN_SEARCH = [
    "' OR '1'='1",
    "tan' OR 1=1 --",
    "'; DROP TABLE members; --",
    "tan%' UNION SELECT * FROM api_keys --",
    '" OR ""="',
    "\\",
    "tan\\",
]


def test_sql_in_the_search_box_finds_nobody_and_breaks_nothing(client, staff, people):
    for q in SQL_IN_SEARCH:
        response = _search(client, staff, q)
        assert response.status_code in (200, 422), (q, response.get_json())
        if response.status_code == 200:
            assert response.get_json()["items"] == [], q
        else:
            _is_problem(response, 422, q)
    assert _count() == 3  # the table is still there, untouched


def test_like_wildcards_are_literal_and_quotes_are_just_characters(client, staff, people):
    """A receptionist typing % must not get the whole client list."""
    for q, expected in [("%", []), ("_", []), ("%tan", []), ("t_n", []), ("o'b", ["O'Brien"])]:
        response = _search(client, staff, q)
        assert response.status_code == 200, q
        assert [m["last_name"] for m in response.get_json()["items"]] == expected, q


def test_html_in_the_search_box_comes_back_as_json_and_an_overlong_one_is_a_422(
    client, staff, people
):
    response = _search(client, staff, "<script>alert(1)</script>")
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    assert response.get_json()["items"] == []
    body = _is_problem(_search(client, staff, "a" * 201), 422)
    assert "q" in body["errors"]


def test_a_nul_in_the_search_box_is_a_4xx_not_a_500(client, staff, people):
    response = _search(client, staff, "tan\x00")
    assert response.status_code < 500, response.get_json()
    if response.status_code >= 400:
        _is_problem(response, response.status_code)


# ------------------------------------------------------------------------------------ names

MARKUP_NAMES = [
    "<script>alert('x')</script>",
    '"><img src=x onerror=alert(1)>',
    "Robert'); DROP TABLE members;--",
    "{{ 7*7 }}",
]


def test_markup_in_a_name_is_stored_as_given_and_returned_as_json(client, staff):
    for n, name in enumerate(MARKUP_NAMES):
        response = client.post(
            MEMBERS, json=_new(first_name=name, email=f"m{n}@example.com"), headers=staff
        )
        assert response.status_code == 201, response.get_json()
        assert response.mimetype == "application/json"
        member_id = response.get_json()["id"]
        shown = client.get(f"{MEMBERS}/{member_id}", headers=staff)
        assert shown.mimetype == "application/json"
        assert shown.get_json()["first_name"] == name  # as given: escaping is the page's job
        assert db.session.get(Member, member_id).first_name == name


def _sign_in(client, role: str = "staff") -> None:
    """A signed-in web user (the pages take a session, not an API key)."""
    from billing.web.auth import _session_version, create_user

    user = create_user(email=f"{role}.web@example.com", role=role, password="a long passphrase 42")
    with client.session_transaction() as session:
        session["uid"] = user.id
        session["ver"] = _session_version(user)


def test_a_name_with_markup_is_escaped_on_every_page_that_shows_it(app, client, staff):
    """The web pages show the name escaped (Jinja autoescape): find every page that shows a
    member by id and look."""
    name = "<b>Bold</b><script>alert(1)</script>"
    f.location("orchard")
    db.session.commit()
    response = client.post(MEMBERS, json=_new(first_name=name), headers=staff)
    member_id = response.get_json()["id"]
    pages = [
        rule.rule.replace("<int:member_id>", str(member_id))
        for rule in app.url_map.iter_rules()
        if "GET" in rule.methods
        and not rule.rule.startswith("/api/")
        and rule.arguments == {"member_id"}
    ]
    if not pages:
        pytest.skip("no web page shows a member by id")
    _sign_in(client)
    shown = []
    for page in pages:
        r = client.get(page)
        if r.status_code != 200 or r.mimetype != "text/html":
            continue
        html = r.get_data(as_text=True)
        assert "<script>alert(1)</script>" not in html, page
        assert "<b>Bold</b>" not in html, page
        if "&lt;b&gt;Bold&lt;/b&gt;" in html:
            shown.append(page)
    assert shown, f"no page of {pages} showed the member's name"


UNICODE_NAMES = [
    "Zoë",  # a precomposed accent
    "Zoe\u0308",  # a combining accent
    "李美玲",
    "محمد",  # right to left
    "\u202eevil\u202c",  # a right-to-left override
    "Mei\u200dLing",  # a zero-width joiner
    "👩‍⚕️ Mei",  # an emoji sequence
    "x" * 100,  # exactly the longest allowed
]


def test_unicode_names_round_trip_exactly(client, staff):
    for n, name in enumerate(UNICODE_NAMES):
        response = client.post(
            MEMBERS, json=_new(last_name=name, email=f"u{n}@example.com"), headers=staff
        )
        assert response.status_code == 201, (name, response.get_json())
        member_id = response.get_json()["id"]
        shown = client.get(f"{MEMBERS}/{member_id}", headers=staff).get_json()
        assert shown["last_name"] == name
        db.session.expire_all()
        assert db.session.get(Member, member_id).last_name == name


BAD_FIELDS = [
    ("first_name", "x" * 101),
    ("last_name", ""),
    ("email", "not-an-email"),
    ("email", "a@b.c<script>"),
    ("phone", "<script>"),
    ("first_name", 12),
    ("first_name", None),
    ("first_name", ["Mei"]),
    ("date_of_birth", "1990-02-30"),
]


def test_bad_fields_are_a_422_naming_the_field_and_store_nothing(client, staff):
    for field, value in BAD_FIELDS:
        response = client.post(MEMBERS, json=_new(**{field: value}), headers=staff)
        body = _is_problem(response, 422, (field, value))
        assert field in body["errors"], (field, value, body)
    body = _is_problem(
        client.post(MEMBERS, json=_new(is_admin=True, stripe_customer_id="cus_x"), headers=staff),
        422,
    )
    assert "is_admin" in body["errors"]
    assert _count() == 0


@pytest.mark.parametrize(
    "value",
    [
        "Mei\x00Ling",
        "Mei\ud800",
    ],
)
def test_nul_and_lone_surrogates_are_refused_not_a_500(client, staff, value):
    """JSON can carry "\\u0000" and an unpaired "\\ud800"; neither is storable text (PostgreSQL
    refuses NUL, UTF-8 cannot encode a lone surrogate)."""
    response = _post_raw(client, staff, json.dumps(_new(first_name=value)))
    assert response.status_code < 500, response.get_data(True)[:300]
    if response.status_code >= 400:
        _is_problem(response, response.status_code)
        assert _count() == 0
    else:
        db.session.expire_all()
        assert db.session.get(Member, response.get_json()["id"]).first_name == value


# ------------------------------------------------------------------------------------ bodies


def test_a_body_over_the_limit_is_a_413_problem(app, client, staff):
    limit = app.config["MAX_CONTENT_LENGTH"]
    response = _post_raw(client, staff, json.dumps(_new(notes="x" * (limit + 10))))
    _is_problem(response, 413)
    assert _count() == 0


MALFORMED = [
    '{"first_name": "Mei", ',
    "{'first_name': 'Mei'}",
    "",
    "null",
    "[]",
    '"Mei Tan"',
    "12",
    '{"first_name": NaN, "last_name": "Tan", "email": "x@example.com"}',
    b"\xff\xfe{}",
]


def test_malformed_json_is_a_4xx_problem(client, staff):
    for raw in MALFORMED:
        _is_problem(_post_raw(client, staff, raw), (400, 415, 422), raw)
    assert _count() == 0


def test_a_json_body_sent_with_another_content_type_is_refused(client, staff):
    for content_type in [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "text/html",
    ]:
        response = _post_raw(client, staff, json.dumps(_new()), content_type)
        _is_problem(response, (400, 415, 422), content_type)
    assert _count() == 0


def test_a_deeply_nested_body_is_a_4xx(client, staff):
    deep = '{"first_name": ' + "[" * 5000 + "]" * 5000 + "}"
    _is_problem(_post_raw(client, staff, deep), (400, 413, 422))


# ------------------------------------------------------------------------------------ headers


def test_an_overlong_idempotency_key_is_a_422(client, staff):
    response = client.post(MEMBERS, json=_new(), headers={**staff, "Idempotency-Key": "k" * 256})
    _is_problem(response, 422)
    assert _count() == 0


def test_forged_keys_are_a_401_problem(client, people):
    for authorization in [
        "Bearer ' OR 1=1 --",
        "Bearer mk_'%_x",
        "Bearer " + "a" * 5000,
        "Bearer mk_\u00e9\u00e9_x",
        "Basic YWRtaW46YWRtaW4=",
    ]:
        response = client.get(MEMBERS, headers={"Authorization": authorization})
        _is_problem(response, 401, authorization)
