"""The finance exports over HTTP and the CLI, as the accountant downloads them."""

import csv
import io
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from billing.checkout.models import Visit, VisitLine
from billing.entitlements import service as ledger
from billing.extensions import db
from billing.memberships import service as memberships
from billing.payments.models import Invoice, Payment
from billing.staff.models import Staff
from tests import factories as f

SGT = ZoneInfo("Asia/Singapore")
MARCH = {"from": "2026-03-01", "to": "2026-03-31"}


def local(year, month, day, hour=0):
    return datetime(year, month, day, hour, tzinfo=SGT).astimezone(UTC)


@pytest.fixture
def march(app, clock):
    """The worked example: a member of Orchard pays S$327 for March; the facial is done at
    Tampines by Dr Lim, the peel without a visit line; the mask expires at the month end."""
    orchard, tampines = f.location("orchard"), f.location("tampines")
    clock.set(local(2026, 3, 1, 10))
    a = f.treatment("facial-a", price=20000, name="Facial A")
    b = f.treatment("peel-b", price=8000, name="Peel B")
    c = f.treatment("mask-c", price=12000, name="Mask C")
    version = f.plan([(a, 1), (b, 1), (c, 1)], code="glow", price=32700)
    owner = f.member("Mei", "Tan", home_location_id=orchard.id)
    m = memberships.join(owner, version, actor="test", now=clock())
    invoice = Invoice(
        stripe_invoice_id="in_glow_march",
        member_id=owner.id,
        membership_id=m.id,
        currency="SGD",
        total_minor=32700,
        tax_minor=2700,
        net_minor=30000,
        status="paid",
        issued_at=clock(),
        paid_at=clock(),
    )
    db.session.add(invoice)
    db.session.flush()
    memberships.record_paid_period(
        m,
        period_start=local(2026, 3, 1),
        period_end=local(2026, 4, 1),
        source=ledger.GrantSource(
            ref="invoice:in_glow_march", actor="stripe", invoice_id=invoice.id
        ),
        now=clock(),
    )
    doctor = Staff(name="Dr Lim", role="doctor", location_id=tampines.id)
    db.session.add(doctor)
    db.session.flush()
    clock.set(local(2026, 3, 5, 11))
    visit = Visit(member_id=owner.id, location_id=tampines.id, opened_by="desk", currency="SGD")
    db.session.add(visit)
    db.session.flush()
    line = VisitLine(
        visit_id=visit.id,
        treatment_id=a.id,
        provider_id=doctor.id,
        created_by="desk",
        currency="SGD",
        membership_id=m.id,
    )
    db.session.add(line)
    db.session.flush()
    for treatment, line_id in ((a, line.id), (b, None)):
        ledger.redeem(
            membership_ids=[m.id],
            treatment=treatment,
            quantity=1,
            member_id=owner.id,
            now=clock(),
            actor="desk",
            visit_line_id=line_id,
        )
        clock.advance(days=10)
    clock.set(local(2026, 4, 1, 2))
    ledger.expire_unused(m, now=clock())
    return {"membership": m, "invoice": invoice, "visit": visit, "owner": owner}


def rows_of(response):
    assert response.status_code == 200, response.get_data(as_text=True)
    return list(csv.DictReader(io.StringIO(response.get_data(as_text=True))))


@pytest.mark.parametrize(
    "url",
    [
        "/api/v1/finance/exports/credit-ledger.csv?from=2026-03-01&to=2026-03-31",
        "/api/v1/finance/exports/revenue-journal.csv?from=2026-03-01&to=2026-03-31&format=xero",
        "/api/v1/finance/summary?on=2026-03-31",
    ],
)
def test_finance_data_is_for_the_finance_role_only(client, keys, finance, admin, url):
    someone = f.member()
    db.session.commit()
    assert client.get(url).status_code == 401
    assert client.get(url, headers=keys.headers("staff")).status_code == 403
    client_key = keys.headers("client", member_id=someone.id)
    assert client.get(url, headers=client_key).status_code == 403
    assert client.get(url, headers=finance).status_code == 200
    assert client.get(url, headers=admin).status_code == 200


def test_credit_ledger_shows_each_credit_its_value_and_where_it_was_used(client, finance, march):
    response = client.get(
        "/api/v1/finance/exports/credit-ledger.csv", query_string=MARCH, headers=finance
    )
    assert response.mimetype == "text/csv"
    assert (
        'filename="credit-ledger_2026-03-01_2026-03-31.csv"'
        in (response.headers["Content-Disposition"])
    )
    rows = rows_of(response)
    assert [(r["treatment"], r["status"], r["allocated_ex_gst"]) for r in rows] == [
        ("Facial A", "redeemed", "150.00"),
        ("Peel B", "redeemed", "60.00"),
        ("Mask C", "expired", "90.00"),
    ]
    facial, peel, mask = rows
    assert facial["ssp_unit"] == "200.00" and facial["currency"] == "SGD"
    assert facial["granted_at"] == "2026-03-01T10:00:00+08:00"
    assert facial["redeemed_at"] == "2026-03-05T11:00:00+08:00"
    assert (facial["visits"], facial["locations"], facial["providers"]) == (
        str(march["visit"].id),
        "tampines",
        "Dr Lim",
    )
    assert facial["stripe_invoice_id"] == "in_glow_march"
    assert facial["home_location"] == "orchard" and facial["product_type"] == "tier"
    assert peel["visits"] == "" and peel["recognised"] == "60.00"
    assert (mask["breakage"], mask["deferred"], mask["remaining_qty"]) == ("90.00", "0.00", "0")


def test_roll_forward_export_reproduces_the_worked_example(client, finance, march):
    rows = rows_of(
        client.get(
            "/api/v1/finance/exports/deferred-roll-forward.csv",
            query_string={"from": "2026-03-01", "to": "2026-04-30"},
            headers=finance,
        )
    )
    assert len(rows) == 1  # April: nothing deferred, nothing moved
    row = rows[0]
    assert (row["period"], row["tier"], row["location"]) == ("2026-03", "glow", "orchard")
    assert (row["opening"], row["billed_ex_gst"], row["recognised"], row["breakage"]) == (
        "0.00",
        "300.00",
        "210.00",
        "90.00",
    )
    assert row["closing"] == "0.00"


def test_filters_by_location_and_tier(client, finance, march):
    url = "/api/v1/finance/exports/credit-ledger.csv"
    f.location("bugis")
    assert (
        rows_of(client.get(url, query_string={**MARCH, "location": "bugis"}, headers=finance)) == []
    )
    assert (
        len(rows_of(client.get(url, query_string={**MARCH, "tier": "glow"}, headers=finance))) == 3
    )
    redemptions = rows_of(
        client.get(
            "/api/v1/finance/exports/redemptions.csv",
            query_string={**MARCH, "location": "tampines"},
            headers=finance,
        )
    )
    assert [(r["treatment"], r["provider"], r["value_recognised"]) for r in redemptions] == [
        ("Facial A", "Dr Lim", "150.00")
    ]


@pytest.mark.parametrize(
    "query, field",
    [
        ({"from": "2026-03-31", "to": "2026-03-01"}, "to"),
        ({**MARCH, "tier": "no-such-tier"}, "tier"),
        ({**MARCH, "location": "atlantis"}, "location"),
        ({**MARCH, "format": "xero"}, "format"),
        ({**MARCH, "colour": "blue"}, "colour"),
        ({"from": "2026-03-01"}, "to"),
    ],
)
def test_a_bad_request_is_refused_before_anything_is_streamed(client, finance, query, field):
    response = client.get(
        "/api/v1/finance/exports/credit-ledger.csv", query_string=query, headers=finance
    )
    assert response.status_code == 422
    assert response.mimetype == "application/problem+json"
    assert field in response.get_json()["errors"]


def test_unknown_export_is_not_found(client, finance):
    response = client.get(
        "/api/v1/finance/exports/everything.csv", query_string=MARCH, headers=finance
    )
    assert response.status_code == 404


def test_redemptions_and_ledger_entries_show_the_value_recognised(client, finance, march):
    rows = rows_of(
        client.get("/api/v1/finance/exports/redemptions.csv", query_string=MARCH, headers=finance)
    )
    assert [
        (r["treatment"], r["location"], r["quantity"], r["value_recognised"]) for r in rows
    ] == [
        ("Facial A", "tampines", "1", "150.00"),
        ("Peel B", "orchard", "1", "60.00"),
    ]
    entries = rows_of(
        client.get(
            "/api/v1/finance/exports/ledger-entries.csv", query_string=MARCH, headers=finance
        )
    )
    assert [e["movement"] for e in entries] == [
        "billed",
        "billed",
        "billed",
        "recognised",
        "recognised",
        "breakage",
    ]
    assert entries[-1]["effective_at"] == "2026-04-01T00:00:00+08:00"  # at the expiry


def _payment(**fields):
    row = Payment(currency="SGD", **fields)
    db.session.add(row)
    return row


def test_payments_by_payout_sum_to_the_deposit(client, finance, march, clock):
    invoice = march["invoice"]
    _payment(
        kind="charge",
        invoice_id=invoice.id,
        amount_minor=32700,
        fee_minor=1011,
        net_minor=31689,
        stripe_id="ch_1",
        balance_transaction_id="txn_1",
        payout_id="po_1",
        occurred_at=local(2026, 3, 1, 10),
    )
    _payment(
        kind="refund",  # stored as the Stripe handlers store it: a magnitude, kind = direction
        invoice_id=invoice.id,
        amount_minor=5450,
        net_minor=5450,
        stripe_id="re_1",
        balance_transaction_id="txn_2",
        payout_id="po_1",
        occurred_at=local(2026, 2, 28, 9),  # before the range, same payout
    )
    _payment(
        kind="charge",
        amount_minor=10900,
        fee_minor=346,
        net_minor=10554,
        stripe_id="ch_2",
        payout_id="po_2",
        occurred_at=local(2026, 3, 20, 10),
    )
    db.session.commit()
    rows = rows_of(
        client.get(
            "/api/v1/finance/exports/payments-payouts.csv", query_string=MARCH, headers=finance
        )
    )
    assert [(r["row"], r["payout_id"], r["net"]) for r in rows] == [
        ("payment", "po_1", "-54.50"),
        ("payment", "po_1", "316.89"),
        ("payout_total", "po_1", "262.39"),
        ("payment", "po_2", "105.54"),
        ("payout_total", "po_2", "105.54"),
    ]
    assert rows[1]["balance_transaction"] == "txn_1" and rows[2]["fee"] == "10.11"


def test_gst_sales_lists_invoices_and_credit_notes(client, finance, march):
    _payment(
        kind="refund",
        invoice_id=march["invoice"].id,
        amount_minor=-10900,
        stripe_id="re_9",
        occurred_at=local(2026, 3, 25, 10),
    )
    db.session.commit()
    rows = rows_of(
        client.get("/api/v1/finance/exports/gst-sales.csv", query_string=MARCH, headers=finance)
    )
    assert [(r["type"], r["gross_incl_gst"], r["net"], r["gst"], r["date"]) for r in rows] == [
        ("invoice", "327.00", "300.00", "27.00", "2026-03-01"),
        ("credit_note", "-109.00", "-100.00", "-9.00", "2026-03-25"),
    ]


def test_roster_waterfall_and_metrics_exports(client, finance, march):
    roster = rows_of(
        client.get("/api/v1/finance/exports/roster.csv", query_string=MARCH, headers=finance)
    )
    assert [(r["member"], r["tier"], r["state"], r["mrr_ex_gst"]) for r in roster] == [
        ("Mei Tan", "glow", "active", "300.00")
    ]
    waterfall = rows_of(
        client.get(
            "/api/v1/finance/exports/deferred-waterfall.csv", query_string=MARCH, headers=finance
        )
    )
    assert [(w["billing_month"], w["recognised"], w["remaining_deferred"]) for w in waterfall] == [
        ("2026-03", "210.00", "0.00")
    ]
    metrics = rows_of(
        client.get(
            "/api/v1/finance/exports/subscription-metrics.csv",
            query_string=MARCH,
            headers=finance,
        )
    )
    total, glow = metrics
    assert (total["tier"], total["new"], total["mrr_end"], total["arpa"]) == (
        "",
        "300.00",
        "300.00",
        "300.00",
    )
    assert (glow["tier"], glow["active_members"], glow["mrr_end"]) == ("glow", "1", "300.00")


def test_summary_for_the_finance_dashboard(client, finance, march):
    body = client.get("/api/v1/finance/summary?on=2026-03-31", headers=finance).get_json()
    assert body["deferred_revenue"]["amount_minor"] == 0
    assert body["recognised_this_month"]["treatments"]["display"] == "SGD 210.00"
    assert body["recognised_this_month"]["breakage"]["amount_minor"] == 9000
    assert body["mrr"]["amount_minor"] == 30000
    assert body["active_members_by_tier"] == [
        {
            "tier": "glow",
            "name": "Glow",
            "members": 1,
            "mrr": {"amount_minor": 30000, "currency": "SGD", "display": "SGD 300.00"},
        }
    ]
    mid = client.get("/api/v1/finance/summary?on=2026-03-10", headers=finance).get_json()
    assert mid["deferred_revenue"]["display"] == "SGD 150.00"


def test_cli_writes_an_export_to_a_file(runner, march, tmp_path):
    target = tmp_path / "ledger.csv"
    result = runner.invoke(
        args=[
            "billing",
            "export",
            "credit-ledger",
            "--from",
            "2026-03-01",
            "--to",
            "2026-03-31",
            "--output",
            str(target),
        ]
    )
    assert result.exit_code == 0, result.output
    with target.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["status"] for r in rows] == ["redeemed", "redeemed", "expired"]
    to_stdout = runner.invoke(
        args=["billing", "export", "roster", "--from", "2026-03-01", "--to", "2026-03-31"]
    )
    assert to_stdout.exit_code == 0 and "Mei Tan" in to_stdout.output
    bad = runner.invoke(
        args=[
            "billing",
            "export",
            "roster",
            "--from",
            "2026-03-01",
            "--to",
            "2026-03-31",
            "--tier",
            "nope",
        ]
    )
    assert bad.exit_code != 0 and "No plan 'nope'" in bad.output


def test_credit_ledger_of_a_later_month_keeps_older_credits_that_moved_in_it(
    client, finance, march
):
    rows = rows_of(
        client.get(
            "/api/v1/finance/exports/credit-ledger.csv",
            query_string={"from": "2026-04-01", "to": "2026-04-30"},
            headers=finance,
        )
    )
    # The mask's expiry was recorded on 1 April: the credit shows, with its whole history.
    assert [(r["treatment"], r["status"], r["breakage"], r["granted_at"][:10]) for r in rows] == [
        ("Mask C", "expired", "90.00", "2026-03-01")
    ]
