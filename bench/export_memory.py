"""Finance exports: rows/s and peak RSS at 100k and 1M ledger entries, beside `psql \\copy`.

    .venv/bin/python bench/export_memory.py                      # 100k and 1M, temp SQLite files
    .venv/bin/python bench/export_memory.py --sizes 100000       # a quicker run
    DATABASE_URL=postgresql+psycopg://postgres@127.0.0.1:5432/postgres \\
        .venv/bin/python bench/export_memory.py                  # a throwaway database there

Issue #9's target: 1,000,000 ledger entries to CSV through the export endpoint at >= 100,000
rows/s, peak RSS under 200 MB and the same at 100k and 1M (constant in the number of rows).

For each size it seeds N ledger entries by bulk insert (N/2 credits: a grant each, then a
redemption or, for one in five, a late-recorded expiry), then, each in a fresh process so peak RSS
is that of the export alone:

  * the app: GET /api/v1/finance/exports/<export>.csv through the Flask test client (the whole
    app: authentication, argument parsing, the view, streaming; no HTTP server), the body
    streamed to /dev/null, for the credit-ledger (one row per credit: N/2 rows) and
    ledger-entries (one row per entry: N rows) exports (`--exports` for others, e.g.
    redemptions). On PostgreSQL these are written by the database (COPY, exports.export_csv);
  * a baseline that does no more than move the same joined rows to CSV: on SQLite the sqlite3
    module with csv.writer, on PostgreSQL `psql \\copy (...) TO '/dev/null' CSV` (N rows).

It prints, per export and size side by side: rows, rows/s, that rate as a multiple of the
baseline's rows/s, and the process's peak RSS (VmHWM). Not a test: a measurement; on a busy
machine the rates move with the load (the ratio less)."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import sqlalchemy as sa  # noqa: E402

from bench import common  # noqa: E402

EXPORTS = ("credit-ledger", "ledger-entries")
START = datetime(2026, 2, 28, 16, 0, tzinfo=UTC)  # 1 March 2026, midnight in Singapore
QUERY = {"from": "2026-03-01", "to": "2026-03-31"}
CREDITS_PER_MEMBERSHIP = 5
BATCH = 10_000

BASELINE_SQL = """
SELECT e.id, e.kind, e.quantity, e.value_minor, e.currency, e.created_at, e.expires_at,
       c.id, c.quantity, c.ssp_unit_minor, c.allocated_minor, c.created_at, c.product_type,
       p.code, m.id, mb.first_name, mb.last_name, g.invoice_id
FROM ledger_entries e
JOIN credits c ON e.credit_id = c.id
JOIN credit_grants g ON c.grant_id = g.id
JOIN plan_versions v ON g.plan_version_id = v.id
JOIN plans p ON v.plan_id = p.id
JOIN memberships m ON c.membership_id = m.id
JOIN members mb ON m.member_id = mb.id
ORDER BY c.id, e.id
"""


def peak_rss_mb(pid: int | str = "self") -> float:
    """Peak resident set size (VmHWM) of a process: its own, not inherited across fork and exec
    as getrusage's ru_maxrss is."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


# ---------------------------------------------------------------------------------------------
# Seeding


def seed(url: str, entries: int) -> None:
    """N ledger entries (and what they hang on) by executemany, BATCH rows a statement."""
    from billing.entitlements.models import Credit, CreditGrant, LedgerEntry
    from billing.extensions import db
    from billing.members.models import Member
    from billing.memberships.models import Membership
    from billing.plans.models import Plan, PlanItem, PlanVersion, Treatment

    app = common.make_app(url)
    with app.app_context():
        db.create_all()
        conn = db.session.connection()
        conn.execute(
            sa.insert(Treatment),
            [
                {
                    "id": 1,
                    "code": "hydrafacial",
                    "name": "HydraFacial",
                    "category": "medical_facial",
                    "list_price_minor": 20000,
                    "currency": "SGD",
                    "created_at": START,
                    "updated_at": START,
                }
            ],
        )
        conn.execute(
            sa.insert(Plan),
            [{"id": 1, "code": "glow", "name": "Glow", "kind": "tier", "created_at": START}],
        )
        conn.execute(
            sa.insert(PlanVersion),
            [
                {
                    "id": 1,
                    "plan_id": 1,
                    "version": 1,
                    "price_minor": 32700,
                    "currency": "SGD",
                    "created_at": START,
                }
            ],
        )
        conn.execute(
            sa.insert(PlanItem),
            [
                {
                    "id": 1,
                    "version_id": 1,
                    "position": 0,
                    "kind": "treatment",
                    "treatment_id": 1,
                    "quantity": 5,
                }
            ],
        )
        credits = entries // 2
        memberships = max(1, credits // CREDITS_PER_MEMBERSHIP)
        end = START + timedelta(days=31)
        for lo in range(0, memberships, BATCH):
            ids = range(lo + 1, min(memberships, lo + BATCH) + 1)
            conn.execute(
                sa.insert(Member),
                [
                    {
                        "id": i,
                        "first_name": "Member",
                        "last_name": f"N{i}",
                        "email": f"m{i}@example.com",
                        "email_normalized": f"m{i}@example.com",
                        "search_name": f"member n{i}",
                        "last_name_lower": f"n{i}",
                        "created_at": START,
                        "updated_at": START,
                    }
                    for i in ids
                ],
            )
            conn.execute(
                sa.insert(Membership),
                [
                    {
                        "id": i,
                        "member_id": i,
                        "plan_version_id": 1,
                        "state": "active",
                        "started_at": START,
                        "created_at": START,
                        "updated_at": START,
                    }
                    for i in ids
                ],
            )
            conn.execute(
                sa.insert(CreditGrant),
                [
                    {
                        "id": i,
                        "membership_id": i,
                        "period_start": START,
                        "period_end": end,
                        "source_ref": f"invoice:bench-{i}",
                        "plan_version_id": 1,
                        "net_amount_minor": 30000,
                        "currency": "SGD",
                        "actor": "bench",
                        "reason": "",
                        "created_at": START + timedelta(seconds=i),
                    }
                    for i in ids
                ],
            )
        entry_id = 0
        for lo in range(0, credits, BATCH):
            ids = range(lo + 1, min(credits, lo + BATCH) + 1)
            credit_rows, entry_rows = [], []
            for i in ids:
                membership = (i - 1) // CREDITS_PER_MEMBERSHIP % memberships + 1
                granted = START + timedelta(seconds=membership)
                shared = {
                    "credit_id": i,
                    "membership_id": membership,
                    "currency": "SGD",
                    "period_start": START,
                    "period_end": end,
                    "actor": "bench",
                    "reason": "",
                }
                credit_rows.append(
                    {
                        "id": i,
                        "grant_id": membership,
                        "membership_id": membership,
                        "plan_item_id": 1,
                        "treatment_id": 1,
                        "product_type": "tier",
                        "unit_label": "session",
                        "quantity": 1,
                        "ssp_unit_minor": 20000,
                        "allocated_minor": 6000,
                        "currency": "SGD",
                        "period_start": START,
                        "period_end": end,
                        "expires_at": end,
                        "created_at": granted,
                    }
                )
                entry_id += 1
                entry_rows.append(
                    {
                        **shared,
                        "id": entry_id,
                        "kind": "grant",
                        "quantity": 1,
                        "value_minor": 6000,
                        "expires_at": end,
                        "created_at": granted,
                    }
                )
                entry_id += 1
                if i % 5 == 0:  # recorded by a late expiry job: counts at the expiry
                    entry_rows.append(
                        {
                            **shared,
                            "id": entry_id,
                            "kind": "expire",
                            "quantity": -1,
                            "value_minor": -6000,
                            "expires_at": end - timedelta(days=3),
                            "created_at": end - timedelta(days=1),
                        }
                    )
                else:
                    entry_rows.append(
                        {
                            **shared,
                            "id": entry_id,
                            "kind": "redeem",
                            "quantity": -1,
                            "value_minor": -6000,
                            "expires_at": end,
                            "member_id": membership,
                            "created_at": granted + timedelta(days=1 + i % 20),
                        }
                    )
            conn.execute(sa.insert(Credit), credit_rows)
            conn.execute(sa.insert(LedgerEntry), entry_rows)
        db.session.commit()
        if url.startswith("postgresql"):
            with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
                c.execute(sa.text("ANALYZE"))
        db.engine.dispose()


# ---------------------------------------------------------------------------------------------
# The measured runs (each in its own process)


def run_export(url: str, export: str) -> dict:
    from billing.auth.service import create_api_key
    from billing.extensions import db

    app = common.make_app(url)
    with app.app_context():
        _, key = create_api_key(name="bench", role="finance")
        db.session.commit()
    client = app.test_client()
    began = time.perf_counter()
    response = client.get(
        f"/api/v1/finance/exports/{export}.csv",
        query_string=QUERY,
        headers={"Authorization": f"Bearer {key}"},
        buffered=False,
    )
    assert response.status_code == 200, response.status_code
    lines = 0
    with open(os.devnull, "wb") as sink:
        for chunk in response.response:
            data = chunk if isinstance(chunk, bytes) else chunk.encode()
            lines += data.count(b"\n")
            sink.write(data)
    response.close()
    seconds = time.perf_counter() - began
    return {"rows": lines - 1, "seconds": seconds, "rss_mb": peak_rss_mb()}


def run_baseline(url: str) -> dict:
    began = time.perf_counter()
    if url.startswith("postgresql"):
        psql = shutil.which("psql")
        if psql is None:
            return {"rows": 0, "seconds": 0.0, "rss_mb": 0.0, "note": "no psql"}
        libpq = (
            sa.engine.make_url(url)
            .set(drivername="postgresql")
            .render_as_string(hide_password=False)
        )
        sql = " ".join(BASELINE_SQL.split())
        command = [psql, libpq, "-v", "ON_ERROR_STOP=1", "-c"]
        command.append(f"\\copy ({sql}) TO '/dev/null' CSV HEADER")
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        rss = 0.0
        while proc.poll() is None:  # psql's own peak, read while it runs
            try:
                rss = max(rss, peak_rss_mb(proc.pid))
            except (FileNotFoundError, ProcessLookupError):
                break
            time.sleep(0.02)
        stdout, stderr = proc.communicate()
        if proc.returncode:
            raise SystemExit(f"psql failed: {stderr}")
        rows = int(stdout.split()[-1])  # "COPY 1000000"
    else:
        import csv
        import sqlite3

        path = sa.engine.make_url(url).database
        conn = sqlite3.connect(path)
        rows = 0
        with open(os.devnull, "w", newline="") as sink:
            writer = csv.writer(sink)
            cursor = conn.execute(BASELINE_SQL)
            writer.writerow([d[0] for d in cursor.description])
            while batch := cursor.fetchmany(1000):
                writer.writerows(batch)
                rows += len(batch)
        conn.close()
        rss = peak_rss_mb()
    return {"rows": rows, "seconds": time.perf_counter() - began, "rss_mb": rss}


def child(args: argparse.Namespace) -> None:
    result = (
        run_baseline(args.url) if args.child == "baseline" else run_export(args.url, args.child)
    )
    print(json.dumps(result))


def measure(url: str, what: str) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", what, "--url", url],
        check=True,
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------
# Databases


class Database:
    """A temp SQLite file, or a throwaway database on the PostgreSQL server DATABASE_URL names."""

    def __init__(self, base: str | None):
        self.base = base
        self.tmp = None
        if base and base.startswith("postgresql"):
            self.name = f"bench_export_{os.getpid()}_{uuid.uuid4().hex[:6]}"
            self.admin = sa.create_engine(base, isolation_level="AUTOCOMMIT")
            with self.admin.connect() as conn:
                conn.execute(sa.text(f'CREATE DATABASE "{self.name}"'))
            self.url = (
                sa.engine.make_url(base)
                .set(database=self.name)
                .render_as_string(hide_password=False)
            )
        elif base:
            self.url = base
        else:
            self.tmp = tempfile.mkdtemp(prefix="export-bench-")
            self.url = f"sqlite:///{self.tmp}/bench.db"

    def drop(self) -> None:
        if self.tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)
        elif self.base and self.base.startswith("postgresql"):
            with self.admin.connect() as conn:
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)'))
            self.admin.dispose()


def table(results: dict, sizes: list[int], exports: list[str], kind: str) -> list[str]:
    """One line per export (and the baseline), the sizes side by side."""
    base_label = "baseline (psql)" if kind == "PostgreSQL" else "baseline (sqlite3)"
    head = f"{'':<19}" + "".join(f"| {f'{n:,} entries':<45}" for n in sizes)
    cols = f"{'export':<19}" + (
        f"| {'rows':>9} {'seconds':>7} {'rows/s':>9} {'x base':>7} {'RSS MB':>7} " * len(sizes)
    )
    lines = [head, cols]
    for what in [*exports, "baseline"]:
        line = f"{base_label if what == 'baseline' else what:<19}"
        for size in sizes:
            r = results[size][what]
            rate = r["rows"] / r["seconds"] if r["seconds"] else 0.0
            base = results[size]["baseline"]
            base_rate = base["rows"] / base["seconds"] if base["seconds"] else 0.0
            ratio = f"{rate / base_rate:.2f}" if base_rate else "-"
            line += (
                f"| {r['rows']:>9,} {r['seconds']:>7.2f} {rate:>9,.0f} {ratio:>7} "
                f"{r['rss_mb']:>7.0f} "
            )
        lines.append(line)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100000,1000000", help="ledger entries, comma-separated")
    parser.add_argument("--exports", default=",".join(EXPORTS))
    parser.add_argument("--json-out", help="also write the figures as JSON")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    base = os.environ.get("DATABASE_URL")
    if base and not base.startswith(("sqlite", "postgresql")):
        raise SystemExit("DATABASE_URL must be sqlite:///... or postgresql+psycopg://...")
    kind = "PostgreSQL" if base and base.startswith("postgresql") else "SQLite"
    sizes = [int(s) for s in args.sizes.split(",")]
    exports = args.exports.split(",")
    results: dict[int, dict] = {}
    for size in sizes:
        database = Database(base)
        results[size] = {}
        try:
            began = time.perf_counter()
            seed(database.url, size)
            seeded = time.perf_counter() - began
            print(f"{size:>9,} entries seeded in {seeded:.1f}s ({kind})", file=sys.stderr)
            for what in [*exports, "baseline"]:
                r = measure(database.url, what)
                results[size][what] = r
                print(f"  {what}: {r}", file=sys.stderr)
        finally:
            database.drop()
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"database": kind, "results": results}, indent=2))
    print(
        f"\nFinance exports on {kind} through GET /api/v1/finance/exports/<name>.csv (Flask test "
        "client, body to /dev/null); x base = rows/s over the baseline's; target >= 100,000 "
        "rows/s, peak RSS < 200 MB at every size"
    )
    print("\n".join(table(results, sizes, exports, kind)))


if __name__ == "__main__":
    main()
