"""Front-desk redemptions under load, through the HTTP API on gunicorn, against pgbench.

    .venv/bin/python bench/redeem_load.py                              # full size
    .venv/bin/python bench/redeem_load.py --members 500 --seconds 10   # a quick run

N members hold live credits. 32 desks (bench/loadgen.py: keep-alive connections over asyncio, in
a separate process) redeem a treatment with the desk's one call (POST /api/v1/desk/redemptions
with an Idempotency-Key, pay_with=credits: the client's visit of today is opened or reused); one
in ten is sent a second time with the same key, as a desk retrying after a timeout would, and
one in ten is voided (POST /api/v1/visits/<visit>/lines/<line>/void).

Two runs against the same server:
  * saturation: the desks send back to back; the most the server can do;
  * paced: the desks together offer --rate redemptions/s (300, the target), each on its own
    schedule; latency counts from when a redemption was due, so queueing is not hidden.
The p95 target is read from the paced run (32 desks firing back to back measure only the queue:
latency = desks / throughput), the throughput target from both.

Afterwards the ledger is compared with the responses: every 201 line has exactly one credit's
worth of `redeem` entries, every void exactly one reversal, no redeem entry exists without a 201,
no credit balance is negative. A redemption still unanswered when the run's time is up is given
up by its desk; if the server wrote it after all, its Idempotency-Key's record must hold the 201
naming its line (what a retry would be told), or it counts as an entry without a 201. A double
redemption is any of those that is not so (must be 0).

Also reported: the CPU a request cost during the saturation run, split between gunicorn's
processes and the database's PostgreSQL backends (bench/cpu.py): on a shared 2-core machine it
moves much less than throughput does with whatever else runs.

Baseline: pgbench at the same concurrency running a comparable transaction on the same server
(lock one balance row, decrement it, append one ledger row). Targets: p95 < 50 ms and >= 300
redemptions/s on a 2-core machine."""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import sqlalchemy as sa  # noqa: E402

from bench import common, cpu, loadgen  # noqa: E402

TREATMENT = "hydrafacial"


def desk_body(member_id: int, provider_id: int) -> dict:
    """The desk's one call for a client: the benchmark's treatment, paid with credits."""
    return {
        "member_id": member_id,
        "location": "orchard",
        "treatment": TREATMENT,
        "provider_id": provider_id,
        "pay_with": "credits",
    }


def void_path(line: dict) -> str:
    """Where a line the desk call answered with is voided."""
    return f"/api/v1/visits/{line['visit_id']}/lines/{line['id']}/void"


# ---------------------------------------------------------------------------------------------
# The load generator (runs in its own process: `--drive plan.json`)


def _desk_step(plan: dict, outcome: dict):
    """One redemption as a desk makes it: the one-call desk endpoint with an Idempotency-Key;
    a share is sent again with the same key (a retry after a timeout), a share voided."""
    rnd = random.Random(plan["seed"])
    members: list[int] = plan["members"]

    async def step(desk: int, conn: loadgen.Connection, rec: loadgen.Recorder, due) -> None:
        body = desk_body(rnd.choice(members), plan["provider_id"])
        key = {"Idempotency-Key": uuid.uuid4().hex}
        try:
            r = await loadgen.timed(
                rec, conn, "redeem", "POST", "/api/v1/desk/redemptions", body, key, due
            )
        except asyncio.CancelledError:
            # The run's time is up with this one still unanswered: the desk gives up on it. The
            # server may still finish it, and then its key's record holds the answer (the audit
            # looks there).
            outcome["abandoned_keys"].append(key["Idempotency-Key"])
            raise
        if r is None:
            return
        if r.status == 409 and b"insufficient" in r.body:
            outcome["insufficient"] += 1
            return
        if r.status != 201:
            return
        first = r.json()
        outcome["redeemed"].append([first["visit_id"], first["id"]])
        if rnd.random() < plan["retry_share"]:
            again = await loadgen.timed(
                rec, conn, "redeem_retry", "POST", "/api/v1/desk/redemptions", body, key
            )
            if again is not None and (again.status != 201 or again.json()["id"] != first["id"]):
                outcome["replay_mismatch"] += 1
        if rnd.random() < plan["void_share"]:
            path = void_path(first)
            r = await loadgen.timed(
                rec,
                conn,
                "void",
                "POST",
                path,
                {"reason": "entered on the wrong client"},
                {"Idempotency-Key": uuid.uuid4().hex},
            )
            if r is not None and r.status == 200:
                outcome["voided"].append(first["id"])

    return step


async def _drive(plan: dict) -> dict:
    outcome = {
        "redeemed": [],
        "voided": [],
        "replay_mismatch": 0,
        "insufficient": 0,
        "abandoned_keys": [],
    }
    step = _desk_step(plan, outcome)
    headers = common.bearer(plan["key"])
    if plan.get("rate"):
        rec = await loadgen.open_loop(
            plan["concurrency"],
            plan["base_url"],
            step,
            rate=plan["rate"],
            seconds=plan["seconds"],
            headers=headers,
        )
    else:
        rec = await loadgen.closed_loop(
            plan["concurrency"], plan["base_url"], step, seconds=plan["seconds"], headers=headers
        )
    out = rec.as_dict()
    out.update(outcome)
    return out


def drive_main(plan_path: str, out_path: str) -> None:
    plan = json.loads(Path(plan_path).read_text())
    out = asyncio.run(_drive(plan))
    Path(out_path).write_text(json.dumps(out))


# ---------------------------------------------------------------------------------------------
# The ledger against the responses


def audit(
    url: str, redeemed: list[list[int]], voided: list[int], abandoned_keys: Sequence[str] = ()
) -> dict:
    """Compare what the desks were told with what the ledger holds.

    A redemption a desk gave up on when the run's time was up (`abandoned_keys`) may have been
    written after all: its line counts as answered when its key's record holds the 201 naming
    it, the answer a retry with that key would have been given."""
    engine = sa.create_engine(url)
    ok_lines = {line for _visit, line in redeemed}
    voided_set = set(voided)
    with engine.connect() as conn:
        stored = conn.execute(
            sa.text(
                "SELECT response_body FROM idempotency_records "
                "WHERE key = ANY(:keys) AND status_code = 201"
            ),
            {"keys": list(abandoned_keys)},
        ).scalars()
        answered_late = {body["id"] for body in stored}
        rows = conn.execute(
            sa.text(
                "SELECT visit_line_id, kind, SUM(quantity) FROM ledger_entries "
                "WHERE visit_line_id IS NOT NULL GROUP BY visit_line_id, kind"
            )
        ).all()
        negative = conn.execute(
            sa.text(
                "SELECT COUNT(*) FROM (SELECT credit_id FROM ledger_entries GROUP BY credit_id "
                "HAVING SUM(quantity) < 0) AS t"
            )
        ).scalar_one()
        redeemed_lines_db = conn.execute(
            sa.text("SELECT COUNT(*) FROM visit_lines WHERE status IN ('redeemed', 'voided')")
        ).scalar_one()
        reverses = conn.execute(
            sa.text(
                "SELECT COUNT(*) FROM (SELECT reverses_entry_id FROM ledger_entries "
                "WHERE kind = 'reverse' GROUP BY reverses_entry_id HAVING COUNT(*) > 1) AS t"
            )
        ).scalar_one()
    engine.dispose()
    redeem_qty: dict[int, int] = {}
    reverse_qty: dict[int, int] = {}
    for line_id, kind, qty in rows:
        if kind == "redeem":
            redeem_qty[line_id] = int(qty)
        elif kind == "reverse":
            reverse_qty[line_id] = int(qty)
    double = sum(1 for line, q in redeem_qty.items() if q < -1)
    missing = sum(1 for line in ok_lines if redeem_qty.get(line, 0) != -1)
    without_response = [line for line in redeem_qty if line not in ok_lines]
    kept_for_a_retry = [line for line in without_response if line in answered_late]
    double_void = sum(1 for line, q in reverse_qty.items() if q > 1) + reverses
    void_missing = sum(1 for line in voided_set if reverse_qty.get(line, 0) != 1)
    return {
        "lines_told_redeemed": len(ok_lines),
        "lines_redeemed_in_db": redeemed_lines_db,
        "double_redemptions": double + double_void,
        "redeemed_without_ledger": missing,
        "ledger_without_response": len(without_response) - len(kept_for_a_retry),
        "abandoned_in_flight": len(abandoned_keys),
        "abandoned_but_written": len(kept_for_a_retry),
        "voids_without_reversal": void_missing,
        "negative_balances": negative,
    }


# ---------------------------------------------------------------------------------------------
# The baseline: pgbench


PGBENCH_SCRIPT = """\\set id random(1, {rows})
BEGIN;
SELECT remaining FROM bench_balances WHERE id = :id FOR UPDATE;
UPDATE bench_balances SET remaining = remaining - 1 WHERE id = :id;
INSERT INTO bench_entries (balance_id, quantity, created_at) VALUES (:id, -1, now());
END;
"""


def pgbench(url: str, *, rows: int, clients: int, seconds: int) -> dict:
    """pgbench -c <clients> running the one-row-update transaction above; tps and latencies."""
    engine = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(
            sa.text(
                "CREATE TABLE bench_balances (id int PRIMARY KEY, remaining int NOT NULL);"
                "CREATE TABLE bench_entries (id bigserial PRIMARY KEY, balance_id int NOT NULL "
                "REFERENCES bench_balances(id), quantity int NOT NULL, created_at timestamptz)"
            )
        )
        conn.execute(
            sa.text(
                "INSERT INTO bench_balances SELECT g, 1000000 FROM generate_series(1, :n) AS g"
            ),
            {"n": rows},
        )
    engine.dispose()
    with tempfile.TemporaryDirectory(prefix="pgbench-") as tmp:
        script = Path(tmp, "redeem.sql")
        script.write_text(PGBENCH_SCRIPT.format(rows=rows))
        args = [
            "pgbench",
            "-n",
            "-M",
            "prepared",
            "-c",
            str(clients),
            "-j",
            str(min(clients, common.nproc())),
            "-T",
            str(seconds),
            "-f",
            str(script),
            "-l",
            "--log-prefix",
            str(Path(tmp, "log")),
            *common.libpq_args(url),
        ]
        done = subprocess.run(
            args,
            capture_output=True,
            text=True,
            timeout=seconds + 60,
            env=common.libpq_env(url),
            cwd=tmp,
        )
        if done.returncode != 0:
            raise RuntimeError(f"pgbench failed: {done.stderr[-2000:]}")
        latencies = []
        for log in Path(tmp).glob("log*"):
            for line in log.read_text().splitlines():
                parts = line.split()
                if len(parts) >= 3:
                    latencies.append(int(parts[2]) / 1e6)  # microseconds
    match = re.search(r"tps = ([\d.]+)", done.stdout)
    tps = float(match.group(1)) if match else len(latencies) / seconds
    return {"tps": round(tps, 1), "latency_ms": common.summarize_ms(latencies)}


# ---------------------------------------------------------------------------------------------


def seed(url: str, members: int) -> dict:
    from billing.extensions import db

    app = common.make_app(url)
    now = datetime.now(UTC)
    start, end = now - timedelta(days=3), now + timedelta(days=27)
    with app.app_context():
        catalogue = common.seed_catalogue(credits_per_period=40)
        member_ids = common.seed_members(members)
        ids = common.seed_memberships(
            member_ids, catalogue.version_id, period_start=start, period_end=end
        )
        common.grant_rows_bulk(ids, period_start=start, period_end=end)
        seed_history(member_ids, catalogue, now=now)
        key = common.api_key("staff")
        db.session.remove()
        db.engine.dispose()
    common.analyze(url)
    return {"members": member_ids, "provider_id": catalogue.provider_id, "key": key}


def seed_history(member_ids: list[int], catalogue: common.Catalogue, *, now: datetime) -> None:
    """The front desk's last month before the run: for each member a closed visit on an earlier
    day with a line paid at the desk (no credits: balances stay as seeded), and the
    Idempotency-Key record its call left. The planner's statistics (ANALYZE after the seed) then
    describe a clinic's database, not empty visit and key tables: planned for empty tables, the
    lookups by key (and the foreign-key checks) read whole tables that fill during the run, a
    scan a redemption growing with the run, which no clinic's database would show."""
    from billing.auth.models import IdempotencyRecord
    from billing.checkout.models import Visit, VisitLine
    from billing.extensions import db

    rnd = random.Random(11)
    conn = db.session.connection()
    days = [now - timedelta(days=rnd.randint(2, 30), hours=rnd.randint(0, 8)) for _ in member_ids]
    visit_ids = common.bulk_insert_returning_ids(
        conn,
        Visit.__table__,
        [
            {
                "member_id": member,
                "location_id": catalogue.location_id,
                "state": "closed",
                "opened_at": day,
                "opened_by": "history",
                "closed_at": day + timedelta(hours=1),
                "closed_by": "history",
                "currency": "SGD",
                "amount_due_minor": 18000,
                "payment_status": "paid",
                "payment_method": "desk",
            }
            for member, day in zip(member_ids, days, strict=True)
        ],
    )
    common.bulk_insert(
        conn,
        VisitLine.__table__,
        [
            {
                "visit_id": visit,
                "treatment_id": catalogue.treatment_ids[0],
                "provider_id": catalogue.provider_id,
                "quantity": 1,
                "status": "charged",
                "list_price_minor": 18000,
                "discount_minor": 0,
                "amount_minor": 18000,
                "currency": "SGD",
                "performed_at": day,
                "created_by": "history",
            }
            for visit, day in zip(visit_ids, days, strict=True)
        ],
    )
    common.bulk_insert(
        conn,
        IdempotencyRecord.__table__,
        [
            {
                "principal": "key:history",
                "key": uuid.UUID(int=rnd.getrandbits(128)).hex,
                "request_hash": "0" * 64,
                "status_code": 201,
                "response_body": {"visit_id": visit},
                "created_at": day,
            }
            for visit, day in zip(visit_ids, days, strict=True)
        ],
    )
    db.session.commit()


def in_process_sample(url: str, seeded: dict, iterations: int = 30) -> tuple[dict, list, list]:
    """One desk, no HTTP (Flask's test client): ms of wall and CPU time and SQL statements per
    request kind, so the HTTP figures can be read against what the app itself costs. Each
    client's first call opens their visit of today (`redeem`), the second goes into it
    (`redeem_in_todays_visit`), and that one is voided."""
    from billing.extensions import db

    app = common.make_app(url)
    client = app.test_client()
    headers = common.bearer(seeded["key"])
    members = seeded["members"][-iterations:]
    kinds = ("redeem", "redeem_in_todays_visit", "void")
    wall: dict[str, list[float]] = {k: [] for k in kinds}
    cpu: dict[str, list[float]] = {k: [] for k in kinds}
    statements: dict[str, int] = dict.fromkeys(kinds, 0)
    lines: list[list[int]] = []  # redeemed here: the audit must know them
    voided: list[int] = []
    with app.app_context():
        engine = db.engine
    # Each request in an app context (and a session) of its own, as under gunicorn: one context
    # around them all would keep one session, and what it loaded, from call to call.

    def timed(name, path, body):
        extra = {"Idempotency-Key": uuid.uuid4().hex}
        with common.statement_counter(engine) as counted:
            t0, c0 = time.perf_counter(), time.process_time()
            response = client.post(path, json=body, headers={**headers, **extra})
            wall[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
        statements[name] += counted["n"]
        return response

    for member in members:
        body = desk_body(member, seeded["provider_id"])
        for name in ("redeem", "redeem_in_todays_visit"):
            line = timed(name, "/api/v1/desk/redemptions", body).get_json()
            lines.append([line["visit_id"], line["id"]])
        timed("void", void_path(line), {"reason": "sample void"})
        voided.append(line["id"])
    engine.dispose()
    figures = {
        name: {
            "p50_ms": common.summarize_ms(wall[name])["p50"],
            "cpu_p50_ms": common.summarize_ms(cpu[name])["p50"],
            "statements": round(statements[name] / len(wall[name]), 1),
        }
        for name in kinds
    }
    return figures, lines, voided


def _summary(out: dict) -> dict:
    elapsed = out["elapsed"]
    statuses = out["statuses"]
    errors = sum(
        n
        for counts in statuses.values()
        for status, n in counts.items()
        if not status.isdigit() or int(status) >= 500
    )
    redemptions = statuses.get("redeem", {}).get("201", 0)
    requests = sum(n for counts in statuses.values() for n in counts.values())
    return {
        "seconds": round(elapsed, 1),
        "redemptions": redemptions,
        "redemptions_per_s": round(redemptions / elapsed, 1),
        "requests_per_s": round(requests / elapsed, 1),
        "redeem_latency_ms": common.summarize_ms(out["latencies"].get("redeem", [])),
        "all_requests_latency_ms": common.summarize_ms(
            [x for v in out["latencies"].values() for x in v]
        ),
        "statuses": statuses,
        "errors": errors,
        "error_samples": out["errors"][:5],
        "late_starts": out.get("late", 0),
        "insufficient_credit_refusals": out["insufficient"],
        "idempotent_replay_mismatches": out["replay_mismatch"],
    }


def run(args) -> dict:
    result: dict = {"benchmark": "redeem_load", "members": args.members}
    with common.fresh_database("bench_redeem", keep=args.keep_db) as url:
        seeded = seed(url, args.members)
        sample, sample_lines, sample_voided = in_process_sample(url, seeded)
        server = common.Server(url, workers=args.workers, threads=args.threads)
        base = {
            "void_share": args.void_share,
            "retry_share": args.retry_share,
            "concurrency": args.concurrency,
            **seeded,
        }
        runs = []
        with server:
            base["base_url"] = server.base_url
            runs.append(  # warm up: every worker connects, psycopg prepares its statements
                common.run_driver(
                    __file__, {**base, "seed": 1, "concurrency": 8, "seconds": 3}, timeout_s=60
                )
            )
            before = cpu.server_and_database(server.process.pid, url)
            saturation = common.run_driver(
                __file__,
                {**base, "seed": args.seed + 1, "seconds": args.saturation_seconds},
                timeout_s=args.saturation_seconds + 120,
            )
            requests = sum(sum(s.values()) for s in saturation["statuses"].values())
            cpu_ms = cpu.per_request_ms(
                before, cpu.server_and_database(server.process.pid, url), requests
            )
            runs.append(saturation)
            paced = common.run_driver(
                __file__,
                {**base, "seed": args.seed, "seconds": args.seconds, "rate": args.rate},
                timeout_s=args.seconds + 120,
            )
            runs.append(paced)
            lighter = []  # the same desks at lower rates: what the latency is below saturation
            for n, rate in enumerate(args.also_rate):
                out = common.run_driver(
                    __file__,
                    {**base, "seed": args.seed + 10 + n, "seconds": args.seconds, "rate": rate},
                    timeout_s=args.seconds + 120,
                )
                runs.append(out)
                lighter.append({"rate": rate, **_summary(out)})
            server_log = server.log_tail(2000)
        redeemed = [line for r in runs for line in r["redeemed"]] + sample_lines
        voided = [line for r in runs for line in r["voided"]] + sample_voided
        abandoned = [key for r in runs for key in r["abandoned_keys"]]
        checks = audit(url, redeemed, voided, abandoned)
        baseline = pgbench(
            url, rows=args.members, clients=args.concurrency, seconds=args.pgbench_seconds
        )
    paced_s, sat_s = _summary(paced), _summary(saturation)
    lat = paced_s["redeem_latency_ms"]
    result.update(
        workers=args.workers,
        threads=args.threads,
        concurrency=args.concurrency,
        rate=args.rate,
        paced=paced_s,
        paced_lower_rates=lighter,
        saturation=sat_s,
        saturation_cpu_ms_per_request=cpu_ms,
        errors=paced_s["errors"] + sat_s["errors"],
        audit=checks,
        in_process=sample,
        pgbench=baseline,
        ratio_saturation_vs_pgbench=common.ratio(sat_s["redemptions_per_s"], baseline["tps"]),
        ratio_p95_vs_pgbench=common.ratio(lat["p95"], baseline["latency_ms"]["p95"]),
        meets_p95=lat["p95"] < 50,
        meets_throughput=paced_s["redemptions_per_s"] >= 300 * 0.98
        and sat_s["redemptions_per_s"] >= 300,
    )
    if result["errors"]:
        result["server_log_tail"] = server_log
    return result


def report(result: dict) -> None:
    paced, sat, pg, a = result["paced"], result["saturation"], result["pgbench"], result["audit"]
    lat = paced["redeem_latency_ms"]
    common.print_table(
        f"redeem_load: {result['concurrency']} desks, {result['members']:,} members, "
        f"{result['workers']} gunicorn workers x {result['threads']} threads",
        [
            (f"paced: {result['rate']}/s offered, redemptions/s", paced["redemptions_per_s"]),
            ("  redeem p50 ms (from when it was due)", lat["p50"]),
            ("  redeem p95 ms", lat["p95"]),
            ("  redeem p99 ms", lat["p99"]),
            ("  every request p95 ms", paced["all_requests_latency_ms"]["p95"]),
            ("  started late (desk still busy)", paced["late_starts"]),
            *[
                row
                for more in result["paced_lower_rates"]
                for row in (
                    (
                        f"paced: {more['rate']:g}/s offered, redemptions/s",
                        more["redemptions_per_s"],
                    ),
                    ("  redeem p50 ms", more["redeem_latency_ms"]["p50"]),
                    ("  redeem p95 ms", more["redeem_latency_ms"]["p95"]),
                    ("  redeem p99 ms", more["redeem_latency_ms"]["p99"]),
                )
            ],
            ("saturation (back to back): redemptions/s", sat["redemptions_per_s"]),
            ("  all requests/s (redeem, retry, void)", sat["requests_per_s"]),
            ("  redeem p95 ms", sat["redeem_latency_ms"]["p95"]),
            *[
                (f"  CPU ms a request: {who}", ms)
                for who, ms in result["saturation_cpu_ms_per_request"].items()
            ],
            ("errors (5xx, transport), both runs", result["errors"]),
            ("refused: no credit left (409)", paced["insufficient_credit_refusals"]),
            (
                "retries answered differently",
                paced["idempotent_replay_mismatches"] + sat["idempotent_replay_mismatches"],
            ),
            ("double redemptions (must be 0)", a["double_redemptions"]),
            ("  201 without ledger entry", a["redeemed_without_ledger"]),
            ("  ledger entry without 201", a["ledger_without_response"]),
            ("  given up by the desk in flight", a["abandoned_in_flight"]),
            ("    of which written, the 201 kept for a retry", a["abandoned_but_written"]),
            ("  voids without reversal", a["voids_without_reversal"]),
            ("  negative balances", a["negative_balances"]),
            ("pgbench baseline tps", pg["tps"]),
            ("  pgbench p95 ms", pg["latency_ms"]["p95"]),
            ("ratio saturation : pgbench tps", result["ratio_saturation_vs_pgbench"]),
            ("ratio paced p95 : pgbench p95", result["ratio_p95_vs_pgbench"]),
            ("target p95 < 50 ms met", result["meets_p95"]),
            ("target >= 300/s met", result["meets_throughput"]),
        ],
    )
    print("statuses (paced):", json.dumps(paced["statuses"]))
    print("one desk, in process (no HTTP):", json.dumps(result["in_process"]))
    for sample in paced["error_samples"] + sat["error_samples"]:
        print("error sample:", sample)


def main(argv: list[str] | None = None) -> dict | None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--members", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=30, help="the paced run")
    parser.add_argument("--rate", type=float, default=300, help="redemptions/s offered (paced)")
    parser.add_argument("--saturation-seconds", type=float, default=15)
    parser.add_argument(
        "--also-rate",
        type=float,
        nargs="*",
        default=[150, 100],
        help="paced runs at these lower rates too (latency below saturation)",
    )
    parser.add_argument("--pgbench-seconds", type=int, default=15)
    parser.add_argument(
        "--threads",
        type=int,
        default=common.default_threads(),
        help="gthread threads per worker (default: gunicorn.conf.py's)",
    )
    parser.add_argument("--void-share", type=float, default=0.1)
    parser.add_argument("--retry-share", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=20260302)
    common.base_args(parser)
    args = parser.parse_args(argv)
    if args.drive:
        drive_main(args.drive, args.drive_out)
        return None
    result = run(args)
    report(result)
    common.emit(result, args.json_out)
    return result


if __name__ == "__main__":
    main()
