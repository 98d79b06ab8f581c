"""The front-desk search box (GET /api/v1/members?q=) in detail: what each kind of query finds,
in what order, page by page, with no duplicates; what it costs in statements; and, on
PostgreSQL, that each way of matching can be answered by its index and that a migrated database
has the very indexes the models declare."""

import uuid
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

from billing.extensions import db
from billing.members.service import search_members
from tests import factories as f
from tests.conftest import ADMIN_URL

URL = "/api/v1/members"


@pytest.fixture
def people(app):
    orchard, tampines = f.location("orchard"), f.location("tampines")
    rows = [
        f.member("Mei", "Tan", email="mei.tan@example.com", phone="+65 9123 4567"),
        f.member("Mei Ling", "Tan", email="ml@work.sg", phone="+65 8123 9999"),
        f.member("Wei", "Lim", email="wei@lim.sg", phone="8111 2222"),
        f.member("Aisha", "Rahman", email="aisha.r@example.com", home_location_id=orchard.id),
        f.member("Meiyi", "Ong", email="meiyi.ong@example.com", home_location_id=tampines.id),
        f.member("Tanya", "Goh", email="tanya@example.com", phone="9000 4567"),
        f.member("Priya", "Nair", email="tan.family@example.com"),  # found by email only
        f.member("Ana", "Tanaka", email="ana.tanaka@example.com", home_location_id=tampines.id),
    ]
    db.session.commit()
    return {m.full_name: m for m in rows}


def _names(response) -> list[str]:
    assert response.status_code == 200, response.get_json()
    return [m["full_name"] for m in response.get_json()["items"]]


def _search(client, headers, q, **params):
    return client.get(URL, query_string={"q": q, **params}, headers=headers)


@pytest.mark.parametrize(
    ("q", "expected"),
    [
        # a name: the full name from its start, the last name, or an email from its start;
        # ordered by last name, then full name
        ("tan", ["Tanya Goh", "Priya Nair", "Mei Ling Tan", "Mei Tan", "Ana Tanaka"]),
        ("mei", ["Meiyi Ong", "Mei Ling Tan", "Mei Tan"]),
        ("Mei Ling", ["Mei Ling Tan"]),  # "first last", any case
        ("  mei   ling  t ", ["Mei Ling Tan"]),  # spaces as typed
        ("tanaka", ["Ana Tanaka"]),
        ("tan.f", ["Priya Nair"]),  # an email without the @
        ("ling", []),  # the middle of a name is not its start
        # an email, from its start
        ("ml@", ["Mei Ling Tan"]),
        ("MEI.TAN@EXAMPLE.COM", ["Mei Tan"]),
        ("@example.com", []),
        # phone digits: the start of the whole number or the end of it, as typed
        ("6591", ["Mei Tan"]),
        ("9123 4567", ["Mei Tan"]),
        ("+65 9123-4567", ["Mei Tan"]),
        ("4567", ["Tanya Goh", "Mei Tan"]),  # both end in 4567
        ("9999", ["Mei Ling Tan"]),
        ("811", ["Wei Lim"]),  # the start of a number stored without the country code
        ("1234", []),  # the middle of a number is neither end
    ],
)
def test_what_each_kind_of_query_finds(client, staff, people, q, expected):
    assert _names(_search(client, staff, q)) == expected


@pytest.mark.parametrize("q", ["%", "_", "t%", "t_n", "\\", "m\\%", "%@", "_@example.com"])
def test_wildcards_are_characters_in_every_kind_of_query(client, staff, people, q):
    assert _names(_search(client, staff, q)) == []


def test_a_member_matching_several_ways_is_listed_once(client, staff, people):
    # "mei" is Mei Tan's first name and the start of her email; "tan" is Tanya's first name
    # and Priya's email and three last names.
    for q in ("mei", "tan", "tanya"):
        ids = [m["id"] for m in _search(client, staff, q).get_json()["items"]]
        assert len(ids) == len(set(ids)), q


def test_a_prefix_ends_where_the_next_letter_begins(client, staff, app):
    for first, last in (("Li", "Tan"), ("Li", "Tao"), ("Li", "Tam"), ("Wu", "Tanz")):
        f.member(first, last, email=f"{first}.{last}@example.com".lower())
    db.session.commit()
    assert _names(_search(client, staff, "tan")) == ["Li Tan", "Wu Tanz"]
    assert _names(_search(client, staff, "tao")) == ["Li Tao"]
    assert _names(_search(client, staff, "ta")) == ["Li Tam", "Li Tan", "Wu Tanz", "Li Tao"]


@pytest.mark.parametrize(
    ("q", "expected"),
    [
        ("zoë", ["Zoë Ng"]),
        ("ZOË N", ["Zoë Ng"]),
        ("zo", ["Zoë Ng", "Zoe Ong"]),
        ("ñ", ["Ñora Tan"]),
        ("李", ["李 明"]),
        ("明", ["李 明"]),  # the last name
        ("🌸", ["🌸 Bloom"]),
    ],
)
def test_names_beyond_ascii(client, staff, app, q, expected):
    for first, last in (
        ("Zoë", "Ng"),
        ("Zoe", "Ong"),
        ("Ñora", "Tan"),
        ("李", "明"),
        ("🌸", "Bloom"),
    ):
        f.member(first, last, email=f"m{len(first)}{len(last)}{ord(first[0])}@example.com")
    db.session.commit()
    assert _names(_search(client, staff, q)) == expected


def test_the_end_of_a_prefix_skips_what_cannot_be_stored():
    from billing.members.service import _next_prefix

    assert _next_prefix("tan") == "tao"
    assert _next_prefix("a\ud7ff") == "a\ue000"  # past the surrogates
    assert _next_prefix("ab\U0010ffff") == "ac"  # the last character there is, carried
    assert _next_prefix("\U0010ffff\U0010ffff") is None  # nothing sorts after it


def test_phone_searches_need_three_digits(client, staff, people):
    response = _search(client, staff, "91")
    assert response.status_code == 422
    assert response.get_json()["errors"] == {"q": ["too short"]}


def test_no_query_lists_everyone_by_last_name(client, staff, people):
    for q in (None, "", "   "):
        params = {} if q is None else {"q": q}
        names = _names(client.get(URL, query_string=params, headers=staff))
        assert names == [
            "Tanya Goh",
            "Wei Lim",
            "Priya Nair",
            "Meiyi Ong",
            "Aisha Rahman",
            "Mei Ling Tan",
            "Mei Tan",
            "Ana Tanaka",
        ]


def test_pages_of_a_search_follow_on_without_gaps_or_repeats(client, staff, app):
    # 23 members found three ways (first name, last name, email), in the desk's order.
    for i in range(8):
        f.member("Pat", f"Lee{i:02d}", email=f"p{i}@example.com")
    for i in range(8):
        f.member("Sam", f"Patel{i:02d}", email=f"s{i}@example.com")
    for i in range(7):
        f.member("Kim", f"Ng{i:02d}", email=f"pat.kim{i}@example.com")
    f.member("Bo", "Wong", email="bo@example.com")  # not a match
    db.session.commit()
    everyone = _names(_search(client, staff, "pat", limit=50))
    assert len(everyone) == 23
    pages, offset = [], 0
    while offset is not None:
        body = _search(client, staff, "pat", limit=5, offset=offset).get_json()
        pages.append([m["full_name"] for m in body["items"]])
        offset = body["next_offset"]
    assert [len(p) for p in pages] == [5, 5, 5, 5, 3]
    assert [name for page in pages for name in page] == everyone
    assert everyone[:3] == ["Pat Lee00", "Pat Lee01", "Pat Lee02"]
    assert everyone[8:10] == ["Kim Ng00", "Kim Ng01"]
    assert everyone[-1] == "Sam Patel07"


def test_results_carry_the_home_location_in_two_statements(client, staff, people):
    """One for the key, one for the page with its members' locations: no statement per row."""
    seen = []

    def count(conn, cursor, statement, parameters, context, executemany):
        seen.append(statement)

    sa.event.listen(db.engine, "before_cursor_execute", count)
    try:
        response = _search(client, staff, "a")
    finally:
        sa.event.remove(db.engine, "before_cursor_execute", count)
    items = {m["full_name"]: m for m in response.get_json()["items"]}
    assert items["Aisha Rahman"]["home_location"]["code"] == "orchard"
    assert items["Ana Tanaka"]["home_location"]["code"] == "tampines"
    assert len(seen) == 2, seen


def test_the_service_pages_as_the_api_does(app, people):
    page = search_members("tan", limit=2)
    assert [m.full_name for m in page.items] == ["Tanya Goh", "Priya Nair"]
    assert (page.limit, page.offset, page.next_offset) == (2, 0, 2)
    last = search_members("tan", limit=2, offset=4)
    assert [m.full_name for m in last.items] == ["Ana Tanaka"]
    assert last.next_offset is None


# ---------------------------------------------------------------------- PostgreSQL: the indexes


def _member_scans(plan: dict) -> list[dict]:
    """Every node of a JSON plan that reads the members table or one of its indexes."""
    index = plan.get("Index Name") or ""
    reads = plan.get("Relation Name") == "members" or index.startswith(("ix_members", "pk_members"))
    found = [plan] if reads else []
    for child in plan.get("Plans", []):
        found += _member_scans(child)
    return found


@pytest.fixture
def crowd(app):
    """3,000 members (about as many Tans as a Singapore clinic has), with fresh statistics, so
    the planner chooses as it would on a real table."""
    from billing.members.models import Member

    surnames = ["Tan", "Lim", "Lee", "Ng", "Ong", "Wong", "Goh", "Chua", "Chan", "Koh"]
    firsts = ["Mei", "Wei", "Jia", "Hui", "Xin", "Aisha", "Nur", "Priya", "Grace", "Zoe"]
    rows = []
    for i in range(3000):
        first, last = firsts[i % 10], surnames[i // 10 % 10]
        row = Member(
            first_name=first,
            last_name=last,
            email=f"{first.lower()}.{last.lower()}.{i}@example.com",
            phone=f"+65 {8 + i % 2}{i:03d} {i * 7 % 10000:04d}",
            notes="",
        )
        row.refresh_search_columns()
        rows.append({c.key: getattr(row, c.key) for c in Member.__table__.c if c.key != "id"})
    now = datetime(2026, 3, 1, tzinfo=UTC)
    for row in rows:
        row["created_at"] = row["updated_at"] = now
    with db.engine.begin() as conn:
        conn.execute(Member.__table__.insert(), rows)
    with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("VACUUM ANALYZE members")


@pytest.mark.postgres_only
@pytest.mark.parametrize(
    ("q", "indexes"),
    [
        ("mei tan", {"ix_members_search_name", "ix_members_last_name_prefix"}),
        ("tan", {"ix_members_search_name", "ix_members_last_name_prefix"}),
        ("aisha.ng.2", {"ix_members_email_prefix"}),
        ("nur.koh.196@", {"ix_members_email_prefix"}),
        ("658123", {"ix_members_phone_digits", "ix_members_phone_digits_trgm"}),
        ("1449", {"ix_members_phone_digits", "ix_members_phone_digits_trgm"}),
    ],
)
def test_each_way_of_matching_is_answered_by_its_index(app, crowd, q, indexes):
    """No arm of the search statement reads the whole members table: each kind of query fits
    its index (byte-order ranges on the stored lower-case columns, with pattern operator
    classes, so under any collation; trigrams for a number's end), and the planner takes it."""
    seen = []

    def grab(conn, cursor, statement, parameters, context, executemany):
        if "FROM members" in statement and "LIMIT" in statement:
            seen.append((statement, parameters))

    sa.event.listen(db.engine, "before_cursor_execute", grab)
    try:
        found = search_members(q)
    finally:
        sa.event.remove(db.engine, "before_cursor_execute", grab)
    assert found.items, q
    statement, parameters = seen[0]
    with db.engine.connect() as conn:
        # The page's own rows by primary key, as on a large table (not a hash join over all).
        conn.exec_driver_sql("SET enable_hashjoin = off")
        conn.exec_driver_sql("SET enable_mergejoin = off")
        explained = conn.exec_driver_sql(
            "EXPLAIN (ANALYZE, FORMAT JSON) " + statement, parameters
        ).scalar_one()
        conn.rollback()
    scans = _member_scans(explained[0]["Plan"])
    plan = [
        (s["Node Type"], s.get("Index Name"), s.get("Rows Removed by Filter", 0)) for s in scans
    ]
    assert not [s for s in scans if s["Node Type"] == "Seq Scan"], plan
    # nothing walked row by row and thrown away (an index read in order, filtered)
    assert sum(s.get("Rows Removed by Filter", 0) for s in scans) < 50, plan
    used = {s.get("Index Name") for s in scans}
    assert indexes <= used, plan


@pytest.mark.postgres_only
def test_a_migrated_database_has_the_search_indexes_the_models_declare(app):
    """Alembic's compare sees index names and columns, not operator classes, INCLUDE columns or
    the access method: compare PostgreSQL's own definitions of the members indexes."""
    from flask_migrate import upgrade

    from billing import create_app
    from tests.conftest import _config

    def definitions(engine) -> dict[str, str]:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.text(
                    "SELECT indexname, indexdef FROM pg_indexes "
                    "WHERE schemaname = 'public' AND tablename = 'members'"
                )
            ).all()
        return {name: definition for name, definition in rows}

    from_models = definitions(db.engine)
    name = f"billing_mig_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        url = sa.engine.make_url(ADMIN_URL).set(database=name).render_as_string(False)
        migrated_app = create_app(_config(url, SCHEMA_FROM_MODELS=False))
        with migrated_app.app_context():
            upgrade()
            migrated = definitions(db.engine)
            db.engine.dispose()
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
    assert migrated == from_models
    assert "varchar_pattern_ops" in from_models["ix_members_search_name"]
    assert "INCLUDE (last_name_lower, id)" in from_models["ix_members_search_name"]
    assert "gin_trgm_ops" in from_models["ix_members_phone_digits_trgm"]
