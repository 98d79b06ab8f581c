"""The revenue journal as Xero and QuickBooks Online import it: parsed back, every journal
balances, and Xero files stop at 300 lines."""

import csv
import io
import zipfile
from collections import defaultdict
from datetime import date
from decimal import Decimal

import pytest

from billing.finance.journals import (
    QBO_HEADER,
    XERO_HEADER,
    JournalEntry,
    JournalLine,
    split_for_xero,
)
from billing.finance.recognition import Account, month_periods
from tests.integration.test_exports_api import MARCH, march  # noqa: F401  (the fixture)

URL = "/api/v1/finance/exports/revenue-journal.csv"


def parse(text):
    reader = csv.reader(io.StringIO(text))
    header = next(reader)
    return header, [dict(zip(header, row, strict=True)) for row in reader]


def test_xero_manual_journal_parses_back_and_each_journal_balances(client, finance, march):  # noqa: F811
    response = client.get(URL, query_string={**MARCH, "format": "xero"}, headers=finance)
    assert response.status_code == 200 and response.mimetype == "text/csv"
    header, rows = parse(response.get_data(as_text=True))
    assert header == XERO_HEADER
    journals = defaultdict(Decimal)
    for row in rows:
        journals[(row["Narration"], row["Date"])] += Decimal(row["Amount"])
        assert row["Date"] == "2026-03-31" and row["TaxRate"] == "No GST"
    assert len(journals) >= 3 and all(total == 0 for total in journals.values())
    by_account = defaultdict(Decimal)
    for row in rows:
        by_account[row["AccountCode"]] += Decimal(row["Amount"])
    assert by_account["4000"] == Decimal("-210.00")  # treatment revenue (a credit)
    assert by_account["4100"] == Decimal("-90.00")  # breakage
    assert by_account["2200"] == Decimal("-27.00")  # GST output
    assert by_account["1150"] == Decimal("327.00")  # Stripe clearing
    assert by_account["2400"] == 0  # nothing left deferred
    treatments = [r for r in rows if r["AccountCode"] == "4000"]
    assert {(r["TrackingName1"], r["TrackingOption1"]) for r in treatments} == {
        ("Location", "tampines"),
        ("Location", "orchard"),
    }


def test_quickbooks_journal_parses_back_with_debits_equal_to_credits(client, finance, march):  # noqa: F811
    response = client.get(URL, query_string={**MARCH, "format": "qbo"}, headers=finance)
    header, rows = parse(response.get_data(as_text=True))
    assert header == QBO_HEADER
    debits, credits = defaultdict(Decimal), defaultdict(Decimal)
    for row in rows:
        assert bool(row["Debits"]) != bool(row["Credits"])  # one side per line
        debits[row["Journal No."]] += Decimal(row["Debits"] or 0)
        credits[row["Journal No."]] += Decimal(row["Credits"] or 0)
        assert row["Journal Date"] == "2026-03-31" and row["Account Name"]
    assert debits == credits and sum(debits.values()) > 0
    revenue = [r for r in rows if r["Account Name"] == "Treatment revenue"]
    assert sum(Decimal(r["Credits"] or 0) for r in revenue) == Decimal("210.00")


def test_generic_journal_balances_and_names_both_code_and_account(client, finance, march):  # noqa: F811
    _, rows = parse(client.get(URL, query_string=MARCH, headers=finance).get_data(as_text=True))
    debit = sum(Decimal(r["debit"] or 0) for r in rows)
    credit = sum(Decimal(r["credit"] or 0) for r in rows)
    assert debit == credit == Decimal("327.00") + Decimal("300.00")  # billed, then released
    assert {r["group"] for r in rows} == {"billing", "treatments", "breakage"}
    assert all(r["currency"] == "SGD" and r["account_code"] for r in rows)


def _entries(n, lines_each):
    period = month_periods(date(2026, 3, 1), date(2026, 3, 31), None)[0]
    account = Account("2400", "Deferred")
    entries = []
    for i in range(n):
        entry = JournalEntry(f"J{i}", period, "treatments", f"loc-{i}", "SGD")
        amounts = [100] * (lines_each - 1) + [-100 * (lines_each - 1)]
        entry.lines = [JournalLine(account, a, "x") for a in amounts]
        entries.append(entry)
    return entries


@pytest.mark.parametrize("n, lines_each, files", [(100, 3, 1), (101, 3, 2), (150, 4, 2)])
def test_xero_files_hold_at_most_300_lines_of_whole_journals(n, lines_each, files):
    parts = split_for_xero(_entries(n, lines_each), 300)
    assert len(parts) == files
    assert all(sum(len(e.lines) for e in part) <= 300 for part in parts)
    assert sum(len(part) for part in parts) == n  # nothing lost, no journal cut in two
    assert all(e.is_balanced for part in parts for e in part)


def test_a_long_xero_journal_comes_as_a_zip_of_files_or_one_part(app, client, finance, march):  # noqa: F811
    app.config["FINANCE_XERO_MAX_LINES"] = 4
    response = client.get(URL, query_string={**MARCH, "format": "xero"}, headers=finance)
    assert response.mimetype == "application/zip"
    parts = int(response.headers["X-Journal-Parts"])
    archive = zipfile.ZipFile(io.BytesIO(response.data))
    assert len(archive.namelist()) == parts > 1
    total = Decimal(0)
    for name in archive.namelist():
        header, rows = parse(archive.read(name).decode("utf-8"))
        assert header == XERO_HEADER and 0 < len(rows) <= 4
        assert sum(Decimal(r["Amount"]) for r in rows) == 0
        total += sum(abs(Decimal(r["Amount"])) for r in rows)
    assert total == 2 * (Decimal("327.00") + Decimal("300.00"))
    second = client.get(URL, query_string={**MARCH, "format": "xero", "part": 2}, headers=finance)
    assert second.mimetype == "text/csv" and second.headers["X-Journal-Parts"] == str(parts)
    assert "_xero_part-2-of-" in second.headers["Content-Disposition"]


def test_cli_writes_xero_parts_to_numbered_files(app, runner, march, tmp_path):  # noqa: F811
    app.config["FINANCE_XERO_MAX_LINES"] = 4
    target = tmp_path / "journal.csv"
    result = runner.invoke(
        args=[
            "billing",
            "export",
            "revenue-journal",
            "--from",
            "2026-03-01",
            "--to",
            "2026-03-31",
            "--format",
            "xero",
            "--output",
            str(target),
        ]
    )
    assert result.exit_code == 0, result.output
    written = sorted(tmp_path.glob("journal-part-*.csv"))
    assert len(written) > 1
    for path in written:
        _, rows = parse(path.read_text(encoding="utf-8"))
        assert len(rows) <= 4 and sum(Decimal(r["Amount"]) for r in rows) == 0
