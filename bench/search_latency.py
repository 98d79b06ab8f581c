"""Front-desk search over 100,000 members: GET /api/v1/members?q= on gunicorn, against the raw SQL.

    .venv/bin/python bench/search_latency.py                     # full size: 100,000 members
    .venv/bin/python bench/search_latency.py --members 20000 --seconds 8

The queries are what a receptionist types: a first name, a last name, "first last", the start of
an email, the start or the end of a phone number, in a fixed mix. The API is measured from a
separate process (asyncio + httpx, --concurrency desks). The baseline is the very SQL the service
emits for each query (captured from SQLAlchemy), run directly with psycopg in one connection.
Target: API p95 < 20 ms. EXPLAIN of one query of each kind shows which index answers it."""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from pathlib import Path
from urllib.parse import quote

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import sqlalchemy as sa  # noqa: E402

from bench import common  # noqa: E402


def queries(members: int, count: int = 300, seed: int = 11) -> list[tuple[str, str]]:
    """(kind, q) pairs drawn from the seeded members, in a front desk's proportions."""
    rnd = random.Random(seed)
    rows = common.member_rows(members)
    out: list[tuple[str, str]] = []
    kinds = ["first", "last", "full", "email", "phone_start", "phone_end", "first_prefix"]
    weights = [20, 20, 25, 10, 10, 10, 5]
    for _ in range(count):
        kind = rnd.choices(kinds, weights)[0]
        row = rows[rnd.randrange(len(rows))]
        q = {
            "first": row["first_name"],
            "last": row["last_name"],
            "full": f"{row['first_name']} {row['last_name']}",
            "email": row["email"][: max(6, row["email"].index("@"))],
            "phone_start": row["phone_digits"][:6],
            "phone_end": row["phone_digits"][-5:],
            "first_prefix": row["first_name"][:3],
        }[kind]
        out.append((kind, q.lower() if kind != "full" else q))
    return out


# ---------------------------------------------------------------------------------------------
# The load generator (its own process)


async def _drive(plan: dict) -> dict:
    headers = common.bearer(plan["key"])
    pairs = plan["queries"]
    async with common.async_client(plan["base_url"], plan["concurrency"], headers) as client:

        async def desk(i: int, rec: common.Recorder, deadline: float) -> None:
            n = i
            while time.monotonic() < deadline:
                kind, q = pairs[n % len(pairs)]
                n += plan["concurrency"]
                t0 = time.perf_counter()
                try:
                    r = await client.get(f"/api/v1/members?q={quote(q)}&limit=20")
                    status = r.status_code
                    if status == 200 and not r.json()["items"]:
                        status = "200-empty"
                except Exception as exc:  # counted, never fatal
                    status = type(exc).__name__
                dt = time.perf_counter() - t0
                rec.record(kind, dt, status)
                rec.record("all", dt, status)

        rec = await common.drive(plan["concurrency"], desk, seconds=plan["seconds"])
    return rec.as_dict()


def drive_main(plan_path: str, out_path: str) -> None:
    plan = json.loads(Path(plan_path).read_text())
    Path(out_path).write_text(json.dumps(asyncio.run(_drive(plan))))


# ---------------------------------------------------------------------------------------------
# The baseline: the service's own SQL, run raw


def capture_sql(url: str, pairs: list[tuple[str, str]]) -> list[tuple[str, str, dict]]:
    """The statement and parameters search_members sends for each query."""
    from billing.extensions import db
    from billing.members.service import search_members

    app = common.make_app(url)
    captured: list[tuple[str, str, dict]] = []
    with app.app_context():
        seen: list = []

        def grab(conn, cursor, statement, parameters, context, executemany):
            seen.append((statement, parameters))

        sa.event.listen(db.engine, "before_cursor_execute", grab)
        for kind, q in pairs:
            seen.clear()
            search_members(q, limit=20, offset=0)
            statement, params = next(
                (s, p) for s, p in seen if "FROM members" in s and "LIMIT" in s.upper()
            )
            captured.append((kind, statement, params))
        sa.event.remove(db.engine, "before_cursor_execute", grab)
        db.session.remove()
        db.engine.dispose()
    return captured


def raw_timings(url: str, captured, rounds: int = 3) -> tuple[dict, dict]:
    import psycopg

    dsn = sa.engine.make_url(url).set(drivername="postgresql").render_as_string(False)
    per_kind: dict[str, list[float]] = {}
    plans: dict[str, str] = {}
    with psycopg.connect(dsn) as conn:
        for _ in range(rounds):
            for kind, statement, params in captured:
                t0 = time.perf_counter()
                conn.execute(statement, params).fetchall()
                dt = time.perf_counter() - t0
                per_kind.setdefault(kind, []).append(dt)
                per_kind.setdefault("all", []).append(dt)
        for kind, statement, params in captured:
            if kind not in plans:
                rows = conn.execute("EXPLAIN " + statement, params).fetchall()
                plans[kind] = " / ".join(
                    r[0].strip() for r in rows if "Scan" in r[0] or "Sort" in r[0]
                )[:300]
    return {k: common.summarize_ms(v) for k, v in per_kind.items()}, plans


def in_process_timings(url: str, key: str, pairs) -> tuple[dict, float]:
    """The app without HTTP: Flask's test client, one search after another."""
    from billing.extensions import db

    app = common.make_app(url)
    client = app.test_client()
    headers = common.bearer(key)
    times: list[float] = []
    with app.app_context():
        for _kind, q in pairs[:20]:
            client.get("/api/v1/members", query_string={"q": q, "limit": 20}, headers=headers)
        with common.statement_counter(db.engine) as counted:
            for _kind, q in pairs:
                t0 = time.perf_counter()
                client.get("/api/v1/members", query_string={"q": q, "limit": 20}, headers=headers)
                times.append(time.perf_counter() - t0)
        db.session.remove()
        db.engine.dispose()
    return common.summarize_ms(times), round(counted["n"] / len(pairs), 1)


# ---------------------------------------------------------------------------------------------


def run(args) -> dict:
    result: dict = {"benchmark": "search_latency", "members": args.members}
    pairs = queries(args.members)
    with common.fresh_database("bench_search", keep=args.keep_db) as url:
        from billing.extensions import db

        app = common.make_app(url)
        t0 = time.perf_counter()
        with app.app_context():
            for start in range(0, args.members, 50_000):
                common.seed_members(min(50_000, args.members - start), start=start)
            key = common.api_key("staff")
            db.session.remove()
            db.engine.dispose()
        common.analyze(url)
        result["seed_seconds"] = round(time.perf_counter() - t0, 1)
        captured = capture_sql(url, pairs)
        raw, plans = raw_timings(url, captured)
        in_process, statements = in_process_timings(url, key, pairs)
        with common.Server(url, workers=args.workers) as server:
            common.run_driver(  # warm every worker's caches
                __file__,
                {
                    "base_url": server.base_url,
                    "key": key,
                    "queries": pairs,
                    "concurrency": args.concurrency,
                    "seconds": 2,
                },
                timeout_s=30,
            )
            out = common.run_driver(
                __file__,
                {
                    "base_url": server.base_url,
                    "key": key,
                    "queries": pairs,
                    "concurrency": args.concurrency,
                    "seconds": args.seconds,
                },
                timeout_s=args.seconds + 60,
            )
    api = {k: common.summarize_ms(v) for k, v in out["latencies"].items()}
    statuses = out["statuses"]["all"]
    errors = sum(n for s, n in statuses.items() if not s.startswith("200"))
    result.update(
        concurrency=args.concurrency,
        workers=args.workers,
        searches_per_s=round(api["all"]["n"] / out["elapsed"], 1),
        api_ms=api,
        raw_ms=raw,
        in_process_ms=in_process,
        statements_per_search=statements,
        plans=plans,
        statuses=statuses,
        errors=errors,
        ratio_p95_api_vs_raw=common.ratio(api["all"]["p95"], raw["all"]["p95"]),
        meets_p95=api["all"]["p95"] < 20,
    )
    return result


def report(result: dict) -> None:
    api, raw = result["api_ms"], result["raw_ms"]
    rows = [
        ("searches/s (API)", result["searches_per_s"]),
        ("API p50 ms", api["all"]["p50"]),
        ("API p95 ms", api["all"]["p95"]),
        ("API p99 ms", api["all"]["p99"]),
        ("raw SQL p50 ms (baseline)", raw["all"]["p50"]),
        ("raw SQL p95 ms (baseline)", raw["all"]["p95"]),
        ("in-process app p95 ms (test client)", result["in_process_ms"]["p95"]),
        ("SQL statements per search", result["statements_per_search"]),
        ("ratio API p95 : raw p95", result["ratio_p95_api_vs_raw"]),
        ("errors (not 200)", result["errors"]),
        ("target p95 < 20 ms met", result["meets_p95"]),
    ]
    for kind in sorted(k for k in api if k != "all"):
        rows.append((f"  {kind}: API p95 / raw p95 ms", f"{api[kind]['p95']} / {raw[kind]['p95']}"))
    common.print_table(
        f"search_latency: {result['members']:,} members, {result['concurrency']} desks, "
        f"{result['workers']} workers",
        rows,
    )
    print("statuses:", json.dumps(result["statuses"]))
    for kind, plan in sorted(result["plans"].items()):
        print(f"plan {kind}: {plan}")


def main(argv: list[str] | None = None) -> dict | None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--members", type=int, default=100_000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=20)
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
