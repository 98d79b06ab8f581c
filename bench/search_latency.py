"""Front-desk search over 100,000 members: GET /api/v1/members?q= on gunicorn, against the raw SQL.

    .venv/bin/python bench/search_latency.py                     # full size: 100,000 members
    .venv/bin/python bench/search_latency.py --members 20000 --seconds 8

The queries are what a receptionist types: a first name, a last name, "first last", the start of
an email, the start or the end of a phone number, in a fixed mix; the desk page searches as they
type, so a few are first keystrokes (one letter; "+65 9", a number's country code and first
digit, which starts every other number). Every member has a home location (the response carries
it). The API is measured from a separate process (bench/loadgen.py)
in two phases:

  desks       --concurrency desks, each searching, then pausing --think-ms (0.5x to 1.5x, at
              random) while the receptionist types on or reads the list: a busy front desk.
              The target, API p95 < 20 ms, is judged here.
  saturation  the same desks with no pause at all (a closed loop): every desk always has a
              search in flight, so the figures are the server's capacity and its queueing on this
              machine, not what a desk waits for. Reported, not judged (--saturation-seconds 0
              skips it).

The baseline is the very SQL the service emits for each query (captured from SQLAlchemy), run
directly with psycopg in one connection. Each query's first page is also checked against a plain
scan of the table (the same matching rules written as one OR, ordered the same way). EXPLAIN of
one query of each kind shows which index answers it. The table is vacuumed after the bulk load,
as autovacuum leaves it in production (index-only scans need the visibility map)."""

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

from bench import common, loadgen  # noqa: E402

PAGE = 20  # what the desk asks for: a typeahead's list
LOCATIONS = ("orchard", "tampines", "jurong", "novena")
SEED_CHUNK = 50_000  # members are seeded (and so drawn) in chunks of this many


def seeded_rows(members: int) -> list[dict]:
    """The rows seed() inserts, in id order (member_rows draws each chunk from its own seed)."""
    rows: list[dict] = []
    for start in range(0, members, SEED_CHUNK):
        rows += common.member_rows(min(SEED_CHUNK, members - start), start=start)
    return rows


def queries(members: int, count: int = 300, seed: int = 11) -> list[tuple[str, str]]:
    """(kind, q) pairs drawn from the seeded members, in a front desk's proportions. The desk
    page searches as the receptionist types (after a 180 ms pause), so a few queries are first
    keystrokes: one letter, or a number's country code and first digit ("+65 9")."""
    rnd = random.Random(seed)
    rows = seeded_rows(members)
    out: list[tuple[str, str]] = []
    kinds = [
        "first",
        "last",
        "full",
        "email",
        "phone_start",
        "phone_end",
        "first_prefix",
        "initial",
        "phone_cc",
    ]
    weights = [20, 20, 25, 10, 10, 10, 5, 5, 2]
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
            "initial": row[rnd.choice(("first_name", "last_name"))][:1],
            "phone_cc": row["phone_digits"][:3],
        }[kind]
        out.append((kind, q.lower() if kind != "full" else q))
    return out


# ---------------------------------------------------------------------------------------------
# The load generator (its own process)


async def _drive(plan: dict) -> dict:
    pairs = plan["queries"]
    think_s = plan.get("think_ms", 0) / 1000
    desks = plan["concurrency"]
    nth = list(range(desks))  # desk i searches pairs i, i + desks, i + 2 * desks, ...
    rhythm = [random.Random(i) for i in range(desks)]  # each desk its own, the same every run
    started = [False] * desks

    async def step(i: int, conn: loadgen.Connection, rec: loadgen.Recorder, _due) -> None:
        if think_s and not started[i]:  # desks do not start in step
            started[i] = True
            await asyncio.sleep(rhythm[i].uniform(0, think_s))
        kind, q = pairs[nth[i] % len(pairs)]
        nth[i] += desks
        t0 = time.perf_counter()
        try:
            r = await conn.request("GET", f"/api/v1/members?q={quote(q)}&limit={PAGE}")
            status = r.status
            if status == 200 and not r.json()["items"]:
                status = "200-empty"
        except Exception as exc:  # counted, never fatal
            status = type(exc).__name__
        dt = time.perf_counter() - t0
        rec.record(kind, dt, status)
        rec.record("all", dt, status)
        if think_s:
            await asyncio.sleep(rhythm[i].uniform(0.5 * think_s, 1.5 * think_s))

    rec = await loadgen.closed_loop(
        desks, plan["base_url"], step, seconds=plan["seconds"], headers=common.bearer(plan["key"])
    )
    return rec.as_dict()


def drive_main(plan_path: str, out_path: str) -> None:
    plan = json.loads(Path(plan_path).read_text())
    Path(out_path).write_text(json.dumps(asyncio.run(_drive(plan))))


# ---------------------------------------------------------------------------------------------
# The data: members with a home location, vacuumed as production's autovacuum would leave them


def seed(url: str, members: int) -> str:
    """Members (bulk), a few clinic locations each member calls home, and a staff key."""
    from billing.clinic.models import Location
    from billing.extensions import db
    from billing.members.models import Member

    app = common.make_app(url)
    with app.app_context():
        for start in range(0, members, SEED_CHUNK):
            common.seed_members(min(SEED_CHUNK, members - start), start=start)
        locations = [Location(code=code, name=code.title()) for code in LOCATIONS]
        db.session.add_all(locations)
        db.session.commit()
        first = min(location.id for location in locations)
        db.session.execute(
            sa.update(Member).values(home_location_id=first + Member.id % len(LOCATIONS))
        )
        db.session.commit()
        key = common.api_key("staff")
        db.session.remove()
        db.engine.dispose()
    engine = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sa.text("VACUUM (ANALYZE)"))
    engine.dispose()
    return key


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
            search_members(q, limit=PAGE, offset=0)
            statement, params = next(
                (s, p) for s, p in seen if "FROM members" in s and "LIMIT" in s.upper()
            )
            captured.append((kind, statement, params))
        sa.event.remove(db.engine, "before_cursor_execute", grab)
        db.session.remove()
        db.engine.dispose()
    return captured


def _plan_summary(lines: list[str]) -> str:
    """What answers the query: each scan node and its index, in plan order."""
    scans = []
    for line in lines:
        text = line.strip().removeprefix("->").strip()
        if "Scan" in text:
            scans.append(text.split("  (")[0])
    return " + ".join(scans)


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
                plans[kind] = _plan_summary([r[0] for r in rows])
    return {k: common.summarize_ms(v) for k, v in per_kind.items()}, plans


def expected_pages(url: str, pairs) -> list[list[int]]:
    """Each query's first page by a plain scan: no index may be used, the matching rules written
    out once more (name, last name or email prefix; email prefix with an @; phone digits at the
    start or the end), ordered as the desk sees them. What the service answers must equal it."""
    import psycopg

    dsn = sa.engine.make_url(url).set(drivername="postgresql").render_as_string(False)
    pages = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SET enable_indexscan = off")
        conn.execute("SET enable_bitmapscan = off")
        conn.execute("SET enable_indexonlyscan = off")
        for _kind, q in pairs:
            text = " ".join(q.lower().split())
            like = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            digits = "".join(ch for ch in text if ch.isdigit())
            if "@" in text:
                where, params = "email_normalized LIKE %(p)s", {"p": like + "%"}
            elif digits and not any(ch.isalpha() for ch in text):
                where = "phone_digits LIKE %(start)s OR phone_digits LIKE %(end)s"
                params = {"start": digits + "%", "end": "%" + digits}
            else:
                where = (
                    "search_name LIKE %(p)s OR last_name_lower LIKE %(p)s "
                    "OR email_normalized LIKE %(p)s"
                )
                params = {"p": like + "%"}
            rows = conn.execute(
                f"SELECT id FROM members WHERE {where} "
                f"ORDER BY last_name_lower, search_name, id LIMIT {PAGE}",
                params,
            ).fetchall()
            pages.append([r[0] for r in rows])
    return pages


def in_process_timings(url: str, key: str, pairs) -> tuple[dict, float, float, list[list[int]]]:
    """The app without HTTP: Flask's test client, one search after another, with the server's
    settings (common.make_app's: not debug, so compact JSON). Returns the latencies, SQL
    statements per search, this process's CPU per search (the app's own cost, PostgreSQL's
    excluded: steadier than a wall clock on a shared machine) and each query's page (member
    ids)."""
    from billing.extensions import db

    app = common.make_app(url)
    client = app.test_client()
    headers = common.bearer(key)
    times: list[float] = []
    pages: list[list[int]] = []
    with app.app_context():
        for _kind, q in pairs[:20]:
            client.get("/api/v1/members", query_string={"q": q, "limit": PAGE}, headers=headers)
        cpu0 = time.process_time()
        with common.statement_counter(db.engine) as counted:
            for _kind, q in pairs:
                t0 = time.perf_counter()
                r = client.get(
                    "/api/v1/members", query_string={"q": q, "limit": PAGE}, headers=headers
                )
                times.append(time.perf_counter() - t0)
                pages.append(
                    [m["id"] for m in r.get_json()["items"]] if r.status_code == 200 else []
                )
        cpu_ms = (time.process_time() - cpu0) * 1000 / len(pairs)
        db.session.remove()
        db.engine.dispose()
    return common.summarize_ms(times), round(counted["n"] / len(pairs), 1), round(cpu_ms, 2), pages


# ---------------------------------------------------------------------------------------------


def _api(server, key: str, pairs, *, concurrency: int, think_ms: float, seconds: float) -> dict:
    plan = {
        "base_url": server.base_url,
        "key": key,
        "queries": pairs,
        "concurrency": concurrency,
        "think_ms": think_ms,
        "seconds": seconds,
    }
    return common.run_driver(__file__, plan, timeout_s=seconds + 60)


def _errors(statuses: dict[str, int]) -> int:
    return sum(n for s, n in statuses.items() if not s.startswith("200"))


def run(args) -> dict:
    result: dict = {"benchmark": "search_latency", "members": args.members}
    pairs = queries(args.members)
    with common.fresh_database("bench_search", keep=args.keep_db) as url:
        t0 = time.perf_counter()
        key = seed(url, args.members)
        result["seed_seconds"] = round(time.perf_counter() - t0, 1)
        captured = capture_sql(url, pairs)
        raw, plans = raw_timings(url, captured)
        in_process, statements, cpu_ms, pages = in_process_timings(url, key, pairs)
        expected = expected_pages(url, pairs)
        wrong = [
            q for (_kind, q), got, want in zip(pairs, pages, expected, strict=True) if got != want
        ]
        with common.Server(url, workers=args.workers) as server:
            # warm every worker's caches
            _api(server, key, pairs, concurrency=args.concurrency, think_ms=0, seconds=2)
            out = _api(
                server,
                key,
                pairs,
                concurrency=args.concurrency,
                think_ms=args.think_ms,
                seconds=args.seconds,
            )
            saturated = None
            if args.saturation_seconds > 0:
                saturated = _api(
                    server,
                    key,
                    pairs,
                    concurrency=args.concurrency,
                    think_ms=0,
                    seconds=args.saturation_seconds,
                )
    api = {k: common.summarize_ms(v) for k, v in out["latencies"].items()}
    statuses = out["statuses"]["all"]
    result.update(
        concurrency=args.concurrency,
        think_ms=args.think_ms,
        workers=args.workers,
        searches_per_s=round(api["all"]["n"] / out["elapsed"], 1),
        api_ms=api,
        raw_ms=raw,
        in_process_ms=in_process,
        in_process_cpu_ms=cpu_ms,
        statements_per_search=statements,
        plans=plans,
        statuses=statuses,
        errors=_errors(statuses),
        pages_checked=len(pairs),
        pages_wrong=len(wrong),
        wrong_examples=wrong[:5],
        ratio_p95_api_vs_raw=common.ratio(api["all"]["p95"], raw["all"]["p95"]),
        meets_p95=api["all"]["p95"] < 20 and not wrong and not _errors(statuses),
        machine=common.machine(),
    )
    if saturated is not None:
        sat = {k: common.summarize_ms(v) for k, v in saturated["latencies"].items()}
        result.update(
            saturation_api_ms=sat,
            saturation_searches_per_s=round(sat["all"]["n"] / saturated["elapsed"], 1),
            saturation_errors=_errors(saturated["statuses"]["all"]),
        )
    return result


def report(result: dict) -> None:
    api, raw = result["api_ms"], result["raw_ms"]
    rows = [
        ("desks searching at once", result["concurrency"]),
        ("pause between a desk's searches ms", f"{result['think_ms']} (0.5x-1.5x)"),
        ("searches/s (API)", result["searches_per_s"]),
        ("API p50 ms", api["all"]["p50"]),
        ("API p95 ms", api["all"]["p95"]),
        ("API p99 ms", api["all"]["p99"]),
        ("raw SQL p50 ms (baseline)", raw["all"]["p50"]),
        ("raw SQL p95 ms (baseline)", raw["all"]["p95"]),
        (
            "in-process app p50 / p95 ms (test client)",
            f"{result['in_process_ms']['p50']} / {result['in_process_ms']['p95']}",
        ),
        ("in-process app CPU ms per search", result["in_process_cpu_ms"]),
        ("SQL statements per search", result["statements_per_search"]),
        ("ratio API p95 : raw p95", result["ratio_p95_api_vs_raw"]),
        ("errors (not 200)", result["errors"]),
        (
            "first pages equal to a plain scan",
            f"{result['pages_checked'] - result['pages_wrong']} of {result['pages_checked']}",
        ),
        ("target p95 < 20 ms met", result["meets_p95"]),
    ]
    for kind in sorted(k for k in api if k != "all"):
        rows.append((f"  {kind}: API p95 / raw p95 ms", f"{api[kind]['p95']} / {raw[kind]['p95']}"))
    if "saturation_api_ms" in result:
        sat = result["saturation_api_ms"]["all"]
        rows += [
            (f"saturation: {result['concurrency']} desks, no pause", ""),
            ("  searches/s (capacity)", result["saturation_searches_per_s"]),
            ("  API p50 / p95 ms (queueing included)", f"{sat['p50']} / {sat['p95']}"),
            ("  errors (not 200)", result["saturation_errors"]),
        ]
    common.print_table(
        f"search_latency: {result['members']:,} members, {result['concurrency']} desks "
        f"pausing ~{result['think_ms']} ms, {result['workers']} workers, "
        f"{result['machine']['nproc']} cores, load {result['machine']['load_avg_1m']}",
        rows,
    )
    print("statuses:", json.dumps(result["statuses"]))
    if result["wrong_examples"]:
        print("pages that differ from the plain scan:", result["wrong_examples"])
    for kind, plan in sorted(result["plans"].items()):
        print(f"plan {kind}: {plan}")


def main(argv: list[str] | None = None) -> dict | None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--members", type=int, default=100_000)
    parser.add_argument(
        "--concurrency", type=int, default=8, help="front desks searching at once (default 8)"
    )
    parser.add_argument(
        "--think-ms",
        type=float,
        default=300,
        help="a desk's pause between searches, typing or reading (0.5x-1.5x at random; "
        "default 300; 0 is a closed loop)",
    )
    parser.add_argument("--seconds", type=float, default=20, help="the desks phase")
    parser.add_argument(
        "--saturation-seconds",
        type=float,
        default=None,
        help="the no-pause phase (default: half of --seconds; 0 skips it)",
    )
    common.base_args(parser)
    args = parser.parse_args(argv)
    if args.drive:
        drive_main(args.drive, args.drive_out)
        return None
    if args.saturation_seconds is None:
        args.saturation_seconds = args.seconds / 2
    result = run(args)
    report(result)
    common.emit(result, args.json_out)
    return result


if __name__ == "__main__":
    main()
