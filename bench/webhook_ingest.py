"""Stripe webhook ingestion: signed events posted to /webhooks/stripe on gunicorn by concurrent
senders, against the same server's plain /healthz.

    .venv/bin/python bench/webhook_ingest.py                          # full size: 20,000 events
    .venv/bin/python bench/webhook_ingest.py --events 2000 --members 500

The events are a renewal's worth for --members members billed through Stripe (the subscription
turns active, invoice.paid for two periods, the new period; a quarter cancel at period end),
built from Stripe's fixtures (tests/stripe_fixtures.py); 20 % of the deliveries repeat an event; shuffled, signed
at send time. 16 senders (bench/loadgen.py: keep-alive connections over asyncio, a separate
process), each posting its next delivery as soon as the previous one is answered. Reported:
events/s, latency, and the share of /healthz's throughput (same server, same senders) it reaches.
Targets: >= 500 events/s and >= 50 % of /healthz.

Also reported, because on a shared 2-core machine throughput moves with whatever else runs: the
CPU time each request cost, split between gunicorn (master and workers), PostgreSQL (the
backends serving the bench database) and the load generator, for the events and for /healthz.
2,000 ms of CPU a second divided by the sum is what 2 idle cores could do."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import sqlalchemy as sa  # noqa: E402

from bench import common, loadgen  # noqa: E402

# ---------------------------------------------------------------------------------------------
# The load generator (runs in its own process: `--drive plan.json`)


def _healthz_step():
    async def step(desk: int, conn: loadgen.Connection, rec: loadgen.Recorder, due) -> None:
        await loadgen.timed(rec, conn, "get", "GET", "/healthz")

    return step


async def _post_all(plan: dict) -> loadgen.Recorder:
    """`concurrency` senders, each on its keep-alive connection, take the next delivery and post
    it signed now (the body is what loadgen sends for it: json.dumps of the event), until none is
    left or the time is up."""
    from tests import stripe_fixtures as sf

    queue = list(reversed(json.loads(Path(plan["events_file"]).read_text())))
    rec = loadgen.Recorder()
    rec.started = time.perf_counter()
    deadline = rec.started + plan["seconds"]

    async def sender(conn: loadgen.Connection) -> None:
        while queue and time.perf_counter() < deadline:
            event = queue.pop()
            signature = sf.signature(json.dumps(event), secret=common.WEBHOOK_SECRET)
            headers = {"Stripe-Signature": signature}
            r = await loadgen.timed(
                rec, conn, "webhook", "POST", "/webhooks/stripe", event, headers
            )
            if r is not None and r.status == 200 and b'"duplicate":true' in r.body:
                rec.record("duplicate", 0.0, 200)

    conns = [loadgen.Connection(plan["base_url"]) for _ in range(plan["concurrency"])]
    results = await asyncio.gather(*(sender(c) for c in conns), return_exceptions=True)
    rec.finished = time.perf_counter()
    for result in results:
        if isinstance(result, BaseException):
            rec.error(f"sender crashed: {result!r}")
    for conn in conns:
        await conn.close()
    return rec


async def _drive(plan: dict) -> dict:
    cpu0 = time.process_time()
    if plan["mode"] == "healthz":
        rec = await loadgen.closed_loop(
            plan["concurrency"], plan["base_url"], _healthz_step(), seconds=plan["seconds"]
        )
    else:
        rec = await _post_all(plan)
    out = rec.as_dict()
    out["driver_cpu_s"] = time.process_time() - cpu0
    return out


def drive_main(plan_path: str, out_path: str) -> None:
    plan = json.loads(Path(plan_path).read_text())
    Path(out_path).write_text(json.dumps(asyncio.run(_drive(plan))))


# ---------------------------------------------------------------------------------------------
# CPU per request: /proc of the gunicorn process group and of the database's backends


def _proc_cpu(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _group_pids(pgid: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.getpgid(int(entry)) == pgid:
                    pids.append(int(entry))
            except OSError:
                continue
    return pids


class CpuMeter:
    """CPU seconds used by the server's processes and the bench database's PostgreSQL backends
    (read from /proc, so only on Linux and on this machine's PostgreSQL)."""

    def __init__(self, server: common.Server, url: str):
        self.server, self.url = server, url
        self.engine = sa.create_engine(url, poolclass=sa.pool.NullPool)

    def _backends(self) -> list[int]:
        with self.engine.connect() as conn:
            return list(
                conn.execute(
                    sa.text(
                        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                        "AND pid <> pg_backend_pid()"
                    )
                ).scalars()
            )

    def sample(self) -> dict[str, float]:
        return {
            "server": sum(_proc_cpu(p) for p in _group_pids(self.server.process.pid)),
            "postgres": sum(_proc_cpu(p) for p in self._backends()),
        }

    def close(self) -> None:
        self.engine.dispose()


def _per_request(before: dict, after: dict, driver_s: float, n: int) -> dict[str, float]:
    if not n:
        return {}
    ms = {k: (after[k] - before[k]) * 1000 / n for k in before}
    ms["load generator"] = driver_s * 1000 / n
    ms["total"] = sum(ms.values())
    return {k: round(v, 3) for k, v in ms.items()}


def run(args) -> dict:
    import tempfile

    from billing.extensions import db

    result: dict = {"benchmark": "webhook_ingest"}
    with common.fresh_database("bench_webhook", keep=args.keep_db) as url:
        app = common.make_app(url)
        with app.app_context():
            seeded = common.seed_stripe_members(args.members)
            db.session.remove()
            db.engine.dispose()
        events = common.storm_events(seeded["pairs"])
        rnd = random.Random(args.seed)
        unique = events[: int(args.events * (1 - args.duplicates))]
        deliveries = unique + rnd.sample(unique, min(args.events - len(unique), len(unique)))
        rnd.shuffle(deliveries)
        common.analyze(url)
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
            json.dump(deliveries, f)
            events_file = f.name
        with common.Server(url, workers=args.workers) as server:
            meter = CpuMeter(server, url)
            base = {"base_url": server.base_url, "concurrency": args.concurrency}
            c0 = meter.sample()
            health = common.run_driver(
                __file__, {**base, "mode": "healthz", "seconds": args.healthz_seconds}, 120
            )
            c1 = meter.sample()
            out = common.run_driver(
                __file__,
                {**base, "mode": "events", "events_file": events_file, "seconds": args.seconds},
                args.seconds + 120,
            )
            c2 = meter.sample()
            again = None
            if args.again:  # every delivery again: all duplicates, acknowledged and nothing more
                again = common.run_driver(
                    __file__,
                    {**base, "mode": "events", "events_file": events_file, "seconds": args.seconds},
                    args.seconds + 120,
                )
                c3 = meter.sample()
            meter.close()
        Path(events_file).unlink()
        engine = sa.create_engine(url)
        with engine.connect() as conn:
            stored = dict(
                conn.execute(
                    sa.text("SELECT status, COUNT(*) FROM stripe_events GROUP BY status")
                ).all()
            )
        engine.dispose()
    statuses = Counter(out["statuses"].get("webhook", {}))
    duplicates = out["statuses"].get("duplicate", {}).get("200", 0)
    statuses["200"] -= duplicates  # each counted once, as what it was
    statuses["200-duplicate"] = duplicates
    sent = sum(statuses.values())
    ok = statuses.get("200", 0) + statuses.get("200-duplicate", 0)
    health_n = health["statuses"]["get"].get("200", 0)
    health_rps = health_n / health["elapsed"]
    rate = sent / out["elapsed"]
    result.update(
        members=args.members,
        unique_events=len(unique),
        deliveries=len(deliveries),
        sent=sent,
        accepted=ok,
        duplicates_acknowledged=statuses.get("200-duplicate", 0),
        statuses=dict(statuses),
        stored_by_status=stored,
        events_per_s=round(rate, 1),
        latency_ms=common.summarize_ms(out["latencies"].get("webhook", [])),
        healthz_per_s=round(health_rps, 1),
        healthz_latency_ms=common.summarize_ms(health["latencies"].get("get", [])),
        share_of_healthz=common.ratio(rate, health_rps),
        cpu_ms_per_event=_per_request(c1, c2, out["driver_cpu_s"], sent),
        cpu_ms_per_healthz=_per_request(c0, c1, health["driver_cpu_s"], health_n),
        workers=args.workers,
        concurrency=args.concurrency,
        meets_rate=rate >= 500,
        meets_share=rate >= 0.5 * health_rps,
        errors=out["errors"][:5],
    )
    if again is not None:
        n = sum(again["statuses"].get("webhook", {}).values())
        result["again"] = {
            "sent": n,
            "duplicates_acknowledged": again["statuses"].get("duplicate", {}).get("200", 0),
            "per_s": round(n / again["elapsed"], 1),
            "latency_ms": common.summarize_ms(again["latencies"].get("webhook", [])),
            "cpu_ms_per_delivery": _per_request(c2, c3, again["driver_cpu_s"], n),
        }
    return result


def report(result: dict) -> None:
    lat = result["latency_ms"]
    common.print_table(
        f"webhook_ingest: {result['deliveries']:,} deliveries ({result['unique_events']:,} events, "
        f"{result['members']:,} members), {result['concurrency']} senders, "
        f"{result['workers']} workers",
        [
            ("events/s (signed, verified, stored, handled)", result["events_per_s"]),
            ("  p50 ms", lat["p50"]),
            ("  p95 ms", lat["p95"]),
            ("  p99 ms", lat["p99"]),
            ("  accepted (200)", result["accepted"]),
            ("  of which duplicates acknowledged", result["duplicates_acknowledged"]),
            ("  not accepted", result["sent"] - result["accepted"]),
            ("/healthz requests/s (baseline)", result["healthz_per_s"]),
            ("  /healthz p95 ms", result["healthz_latency_ms"]["p95"]),
            ("share of /healthz throughput", result["share_of_healthz"]),
            ("target >= 500 events/s met", result["meets_rate"]),
            ("target >= 50 % of /healthz met", result["meets_share"]),
        ],
    )
    event_cpu, health_cpu = result["cpu_ms_per_event"], result["cpu_ms_per_healthz"]
    common.print_table(
        "CPU ms per request (event | /healthz)",
        [
            (name, f"{event_cpu.get(name, 0):.3f} | {health_cpu.get(name, 0):.3f}")
            for name in ("server", "postgres", "load generator", "total")
        ]
        + [
            (
                "what 2 idle cores could do (req/s)",
                f"{2000 / event_cpu['total']:.0f} | {2000 / health_cpu['total']:.0f}"
                if event_cpu.get("total") and health_cpu.get("total")
                else "-",
            )
        ],
    )
    if "again" in result:
        again = result["again"]
        common.print_table(
            "the same deliveries again (all duplicates)",
            [
                ("deliveries/s", again["per_s"]),
                ("  p95 ms", again["latency_ms"]["p95"]),
                ("  acknowledged as duplicates", again["duplicates_acknowledged"]),
            ]
            + [(f"  CPU ms: {k}", v) for k, v in again["cpu_ms_per_delivery"].items()],
        )
    print(
        "statuses:",
        json.dumps(result["statuses"]),
        "stored:",
        json.dumps(result["stored_by_status"]),
    )
    for sample in result["errors"]:
        print("error sample:", sample)


def main(argv: list[str] | None = None) -> dict | None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--events", type=int, default=20_000, help="deliveries, duplicates included"
    )
    parser.add_argument("--members", type=int, default=5000)
    parser.add_argument(
        "--duplicates", type=float, default=0.2, help="share of deliveries that repeat"
    )
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=600, help="stop sending after this long")
    parser.add_argument("--healthz-seconds", type=float, default=5)
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument(
        "--again",
        action="store_true",
        help="then send every delivery again (all duplicates): what acknowledging one costs",
    )
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
