"""The row exports written by PostgreSQL (COPY) are byte for byte the ones Python writes.

On PostgreSQL, credit-ledger, ledger-entries and redemptions are computed and written as CSV by
the database (exports.export_csv); everywhere else, and for every other export, Python writes
the rows (exports.csv_chunks). These tests build a deliberately awkward ledger (grants,
redemptions with and without visits, reversals of all sorts, late expiries, rollovers, gift
conversions, clawbacks, adjustments; three currencies with 0, 2 and 3 decimals; names with
commas, quotes, line breaks and odd whitespace; moments on the range's edges) and compare the
bytes of both paths for many ranges, filters and clinic timezones."""

from __future__ import annotations

import csv
import io
import random
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from billing.checkout.models import Visit, VisitLine
from billing.entitlements.models import Credit, CreditGrant, LedgerEntry
from billing.extensions import db
from billing.finance import exports
from billing.finance.recognition import FinanceSettings, resolve_scope
from billing.memberships.models import Membership
from billing.money import _THREE_DECIMAL, _ZERO_DECIMAL, to_major_str
from billing.payments.models import Invoice
from billing.plans.models import PlanItem
from billing.staff.models import Staff
from tests import factories as f
from tests.conftest import IS_POSTGRES

FAST = ("credit-ledger", "ledger-entries", "redemptions")
SGT = ZoneInfo("Asia/Singapore")
MARCH_START = datetime(2026, 3, 1, tzinfo=SGT).astimezone(UTC)
MARCH_END = datetime(2026, 4, 1, tzinfo=SGT).astimezone(UTC)

postgres_only = pytest.mark.postgres_only


# ---------------------------------------------------------------------------------------------
# Pieces that need no database


def test_the_whitespace_stripped_in_sql_is_what_str_strip_strips():
    python = "".join(c for c in map(chr, range(0x110000)) if c.isspace())
    assert sorted(exports.PY_WHITESPACE) == sorted(python)


@pytest.mark.parametrize(
    "chunks",
    [
        [b"1,a,b\n2,c,d\n"],
        [b'1,"x\ny",z\n', b'2,"""",w\n'],
        [b'1,"a\n', b'b",c\n3,d\n'],  # a quoted line break cut between two chunks
        [b'1,"He said ""hi""\nthen left",z\n2,,\n'],
        [b'1,"\r\n",2\n'],
    ],
)
def test_copy_line_ends_become_crlf_outside_quoted_fields(chunks):
    rows = list(csv.reader(io.StringIO(b"".join(chunks).decode(), newline="")))
    expected = io.StringIO()
    csv.writer(expected, lineterminator="\r\n").writerows(rows)
    out, quoted = [], False
    for chunk in chunks:
        piece, quoted = exports._crlf(chunk, quoted)
        out.append(piece)
    assert not quoted
    assert b"".join(out) == expected.getvalue().encode()


# ---------------------------------------------------------------------------------------------
# An awkward ledger

NAMES = [
    ("Mei", "Tan"),
    ("  Leading", "Trailing  "),
    ("", ""),
    ("Ann", ""),
    ("", "Solo"),
    ("\u3000Wide", "Space\u2003"),
    ('Quote"d', "Comma, Jr"),
    ("Multi\nLine", "Name\r"),
    ("\x1cSep", "Next\x85"),
    ("Émile", "Zoë 李"),
]
STAFF = ["Dr Lim", "Tan, Mei", 'Dr "Joe"', "Nurse\nNewline", "  Spacey  ", "", "Émile"]


def _at(rng: random.Random) -> datetime:
    """A moment between January and May 2026, often on or next to the March range's edges."""
    edges = [MARCH_START, MARCH_END, datetime(2026, 3, 8, 7, tzinfo=UTC)]  # + US DST change
    if rng.random() < 0.25:
        edge = rng.choice(edges)
        return edge + timedelta(microseconds=rng.choice([-1, 0, 1, 999_999, -999_999]))
    start = datetime(2026, 1, 1, tzinfo=UTC)
    return start + timedelta(seconds=rng.randrange(150 * 86400), microseconds=rng.randrange(10**6))


def build_ledger(seed: int = 9) -> dict:
    rng = random.Random(seed)
    locations = [f.location(code) for code in ("orchard", "tampines", "bugis,east", 'q"t')]
    staff = []
    for name in STAFF:
        row = Staff(name=name, role="doctor", location_id=rng.choice(locations).id)
        db.session.add(row)
        staff.append(row)
    treatments = [
        f.treatment("facial-a", name="Facial A"),
        f.treatment("peel-b", name="Peel, B"),
        f.treatment("nameless", name=""),
        f.treatment("toxin", name='Toxin "units"'),
    ]
    versions = [
        f.plan([(treatments[0], 2), (treatments[1], 1)], code="glow", price=32700),
        f.plan([(treatments[3], 20)], code="yen,tier", price=30000, currency="JPY"),
        f.plan(
            [("choice", treatments[:2], 3, "Any one of")], code="kwd", kind="series", currency="KWD"
        ),
        f.plan([("choice", treatments[1:3], 1, "")], code="gift"),
    ]
    items = {v.id: list(db.session.query(PlanItem).filter_by(version_id=v.id)) for v in versions}
    members = []
    for n, (first, last) in enumerate(NAMES):
        home = rng.choice([None, *locations])
        member = f.member(
            "x", "y", email=f"member{n}@example.com", home_location_id=home.id if home else None
        )
        member.first_name, member.last_name = first, last  # as stored, even empty
        members.append(member)
    memberships = []
    for n, member in enumerate(members * 2):
        version = versions[n % len(versions)]
        ms = Membership(member_id=member.id, plan_version_id=version.id, state="active")
        db.session.add(ms)
        memberships.append(ms)
    db.session.flush()
    visits = []
    for _ in range(12):
        visit = Visit(
            member_id=rng.choice(members).id,
            location_id=rng.choice(locations).id,
            opened_by="desk",
            currency="SGD",
        )
        db.session.add(visit)
        visits.append(visit)
    db.session.flush()
    lines = []
    for _ in range(30):
        line = VisitLine(
            visit_id=rng.choice(visits).id,
            treatment_id=rng.choice(treatments).id,
            provider_id=rng.choice(staff).id,
            created_by="desk",
            currency="SGD",
        )
        db.session.add(line)
        lines.append(line)
    db.session.flush()

    entry_ids = iter(rng.sample(range(1, 100_000), 5_000))  # ids not in the order written
    entries: list[LedgerEntry] = []

    def entry(credit: Credit, kind: str, quantity: int, value: int, at: datetime, **extra):
        row = LedgerEntry(
            id=next(entry_ids),
            credit_id=credit.id,
            membership_id=credit.membership_id,
            kind=kind,
            quantity=quantity,
            value_minor=value,
            currency=extra.pop("currency", credit.currency),
            expires_at=extra.pop("expires_at", credit.expires_at),
            period_start=credit.period_start,
            period_end=credit.period_end,
            actor=extra.pop("actor", rng.choice(["desk", "stripe", "", "system:expire_credits"])),
            created_at=at,
            **extra,
        )
        db.session.add(row)
        entries.append(row)
        return row

    for n in range(90):
        ms = rng.choice(memberships)
        version = next(v for v in versions if v.id == ms.plan_version_id)
        granted = _at(rng)
        invoice = None
        if rng.random() < 0.6:
            invoice = Invoice(
                stripe_invoice_id=rng.choice([f"in_{n}", None]),
                member_id=ms.member_id,
                membership_id=ms.id,
                currency=version.currency,
                total_minor=32700,
                tax_minor=2700,
                net_minor=30000,
                status="paid",
                issued_at=granted,
            )
            db.session.add(invoice)
            db.session.flush()
        gift_month = version.plan.code == "gift" and rng.random() < 0.5
        grant = CreditGrant(
            membership_id=ms.id,
            period_start=granted,
            period_end=granted + timedelta(days=30),
            source_ref=f"gift:{n}:month:2" if gift_month else f"invoice:{n}",
            invoice_id=invoice.id if invoice else None,
            plan_version_id=version.id,
            net_amount_minor=30000,
            currency=version.currency,
            actor="stripe",
            created_at=granted,
        )
        db.session.add(grant)
        db.session.flush()
        item = rng.choice([*items[version.id], None])
        quantity = rng.choice([1, 1, 2, 3, 20])
        value = rng.choice([0, 1, 5, 99, 6000, 15000, 123_456_789])
        credit = Credit(
            grant_id=grant.id,
            membership_id=ms.id,
            plan_item_id=item.id if item else None,
            treatment_id=item.treatment_id if item else rng.choice([None, treatments[2].id]),
            product_type=rng.choice(["tier", "series", "gift", "adjustment"]),
            unit_label=rng.choice(["session", "unit", ""]),
            quantity=quantity,
            ssp_unit_minor=rng.choice([0, 20000, 1, 12345]),
            allocated_minor=value,
            currency=version.currency,
            period_start=granted,
            period_end=granted + timedelta(days=30),
            expires_at=granted + timedelta(days=rng.choice([1, 30, 60])),
            created_at=granted,
        )
        db.session.add(credit)
        db.session.flush()
        entry(credit, "grant", quantity, value, granted, invoice_id=grant.invoice_id)
        redemptions: list[LedgerEntry] = []
        at = granted
        for _ in range(rng.choice([0, 1, 1, 2, 4, 7])):
            at = at + timedelta(hours=rng.randrange(1, 24 * 20))
            if rng.random() < 0.1:
                at = _at(rng)  # out of order in time
            kind = rng.choice(
                ["redeem"] * 5 + ["reverse"] * 2 + ["expire", "rollover", "adjust", "clawback"]
            )
            if kind == "redeem":
                redemptions.append(
                    entry(
                        credit,
                        "redeem",
                        -1,
                        -rng.randrange(0, 7000),
                        at,
                        visit_line_id=rng.choice([None, *[line.id for line in lines]]),
                        member_id=rng.choice([None, *[m.id for m in members]]),
                    )
                )
            elif kind == "reverse":
                target = rng.choice([*redemptions, *entries[-5:]]) if entries else None
                if target is None:
                    continue
                entry(
                    credit,
                    "reverse",
                    1,
                    rng.randrange(0, 7000),
                    at,
                    reverses_entry_id=target.id,
                    visit_line_id=target.visit_line_id,
                    member_id=target.member_id,
                )
            elif kind == "expire":
                late = rng.random() < 0.7
                entry(
                    credit,
                    "expire",
                    -rng.randrange(0, 3),
                    -rng.randrange(0, 9000),
                    at,
                    expires_at=at - timedelta(days=rng.choice([1, 3, 40])) if late else at,
                )
            elif kind == "rollover":
                entry(credit, "rollover", 0, 0, at, expires_at=at + timedelta(days=30))
            elif kind == "adjust":
                entry(
                    credit,
                    "adjust",
                    rng.choice([-1, 0, 1]),
                    -rng.randrange(0, 5000),
                    at,
                    dedupe_key=f"convert:{n}:{at.timestamp()}" if rng.random() < 0.5 else None,
                )
            else:
                entry(
                    credit, "clawback", -1, -rng.randrange(0, 9000), at, invoice_id=grant.invoice_id
                )
        if rng.random() < 0.15:  # a currency the entry says, not the credit's
            entries[-1].currency = rng.choice(["JPY", "KWD", "SGD"])
    db.session.commit()
    return {"entries": entries, "locations": locations}


# ---------------------------------------------------------------------------------------------
# Both paths, compared


def python_bytes(name: str, scope) -> bytes:
    export = exports.EXPORTS[name]
    return b"".join(chunk.encode() for chunk in exports.csv_chunks(export.rows(scope)))


def database_bytes(name: str, scope) -> bytes:
    export = exports.EXPORTS[name]
    assert exports.fast_path(export)
    return b"".join(exports.export_csv(export, scope))


SCOPES = [
    ("2026-03-01", "2026-03-31", {}, "Asia/Singapore"),
    ("2026-02-01", "2026-04-30", {}, "Asia/Singapore"),
    ("2026-03-08", "2026-03-08", {}, "Asia/Singapore"),
    ("2026-01-01", "2026-05-31", {}, "America/St_Johns"),  # -03:30, then -02:30 (DST)
    ("2026-03-01", "2026-03-31", {}, "Asia/Kolkata"),
    ("2026-03-01", "2026-03-31", {}, "UTC"),
    ("2026-03-01", "2026-03-31", {"location": "tampines"}, "Asia/Singapore"),
    ("2026-03-01", "2026-03-31", {"location": "bugis,east"}, "Asia/Singapore"),
    ("2026-01-01", "2026-05-31", {"tier": "yen,tier"}, "Asia/Singapore"),
    ("2026-01-01", "2026-05-31", {"tier": "kwd"}, "Asia/Singapore"),
    ("2026-01-01", "2026-05-31", {"tier": "gift"}, "Asia/Singapore"),
]


@postgres_only
@pytest.mark.parametrize("seed", [9, 2026])
def test_database_and_python_write_the_same_bytes(app, seed):
    build_ledger(seed)
    seen = b""
    for date_from, date_to, filters, tz in SCOPES:
        scope = resolve_scope(
            date.fromisoformat(date_from),
            date.fromisoformat(date_to),
            settings=FinanceSettings(timezone=tz),
            **filters,
        )
        for name in FAST:
            expected = python_bytes(name, scope)
            assert database_bytes(name, scope) == expected, (name, date_from, date_to, filters, tz)
            seen += expected
    # The ledger is as awkward as it means to be: every kind of field the writers may disagree on.
    for needle in (
        b"clawed back",
        b"rolled",
        b";",  # several visits, locations or providers
        b'"Quote""d Comma, Jr"',
        b",Ann,",  # "Ann " stripped
        b'"Multi\nLine Name"',  # "\r" stripped, the line break kept (and quoted)
        b'"Dr ""Joe"""',
        b'"Nurse\nNewline"',  # a quoted line break stays a bare \n
        b"-03:30",
        b"+05:30",
        b",choice,",
        b",,",  # empty fields
        b".000,",  # KWD, three decimals
    ):
        assert needle in seen, needle


@postgres_only
def test_the_endpoint_streams_the_database_path(app, client, finance, monkeypatch):
    build_ledger()
    copies = []
    copy_csv = exports._copy_csv
    monkeypatch.setattr(exports, "_copy_csv", lambda *a: copies.append(a) or copy_csv(*a))
    scope = resolve_scope(date(2026, 3, 1), date(2026, 3, 31), settings=FinanceSettings())
    for name in FAST:
        response = client.get(
            f"/api/v1/finance/exports/{name}.csv",
            query_string={"from": "2026-03-01", "to": "2026-03-31"},
            headers=finance,
        )
        assert response.status_code == 200
        assert response.mimetype == "text/csv"
        assert response.get_data() == python_bytes(name, scope)
    assert len(copies) == len(FAST)


@postgres_only
def test_a_download_abandoned_half_way_leaves_the_session_usable(app):
    build_ledger()
    scope = resolve_scope(date(2026, 1, 1), date(2026, 5, 31), settings=FinanceSettings())
    stream = exports.export_csv(exports.EXPORTS["ledger-entries"], scope)
    assert next(stream).startswith(b"entry_id,")
    stream.close()
    db.session.rollback()
    assert db.session.query(LedgerEntry).count() > 0


def test_the_endpoint_gives_what_python_writes_on_any_database(app, client, finance):
    """On SQLite this is the Python path itself; on PostgreSQL the database's."""
    build_ledger()
    scope = resolve_scope(date(2026, 2, 1), date(2026, 4, 30), settings=FinanceSettings())
    for name in FAST:
        response = client.get(
            f"/api/v1/finance/exports/{name}.csv",
            query_string={"from": "2026-02-01", "to": "2026-04-30"},
            headers=finance,
        )
        body = response.get_data()
        assert body == python_bytes(name, scope)
        assert body.count(b"\r\n") > 10


def test_the_cli_writes_what_python_writes(app, runner, tmp_path):
    build_ledger()
    scope = resolve_scope(date(2026, 3, 1), date(2026, 3, 31), settings=FinanceSettings())
    for name in FAST:
        target = tmp_path / f"{name}.csv"
        args = ["billing", "export", name, "--from", "2026-03-01", "--to", "2026-03-31"]
        written = runner.invoke(args=[*args, "--output", str(target)])
        assert written.exit_code == 0, written.output
        assert target.read_bytes() == python_bytes(name, scope)
        printed = runner.invoke(args=args)
        assert printed.exit_code == 0 and printed.stdout_bytes == python_bytes(name, scope)


@postgres_only
def test_money_in_sql_is_to_major_str(app):
    import sqlalchemy as sa

    currencies = sorted(_ZERO_DECIMAL | _THREE_DECIMAL | {"SGD", "USD", "EUR", "XXX"})
    amounts = [0, 1, -1, 5, -5, 99, 100, -100, 1234, 100_000, -123_456_789, 10**15 + 7]
    cases = [(a, c) for a in amounts for c in currencies]
    values = sa.values(
        sa.column("amount", sa.BigInteger), sa.column("currency", sa.String), name="v"
    ).data(cases)
    got = db.session.execute(
        sa.select(exports._pg_money(values.c.amount, values.c.currency))
    ).scalars()
    assert list(got) == [to_major_str(a, c) for a, c in cases]


@pytest.mark.skipif(IS_POSTGRES, reason="the other half of test_database_and_python_...")
def test_sqlite_has_no_database_path(app):
    assert not any(exports.fast_path(e) for e in exports.EXPORTS.values())
