"""Stripe webhook ingestion: signed events posted to /webhooks/stripe on gunicorn by concurrent
senders, against the same server's plain /healthz, in production's configuration: queued intake
(the webhook verifies and stores) and one worker process acting on the events (as deployed,
`flask billing stripe work` at nice 10).

    .venv/bin/python bench/webhook_ingest.py                          # full size: 20,000 events
    .venv/bin/python bench/webhook_ingest.py --events 4000 --members 1000
    .venv/bin/python bench/webhook_ingest.py --events 4000 --members 1000 --mode inline

The events are a renewal's worth for --members members billed through Stripe (the subscription
turns active, invoice.paid for two periods, the new period; a quarter cancel at period end),
built from Stripe's fixtures (tests/stripe_fixtures.py); 20 % of the deliveries repeat an event;
shuffled; each serialised once before the clock starts and signed at send time. 16 senders
(bench/loadgen.py: keep-alive connections over asyncio, a separate process), each posting its
next delivery as soon as the previous one is answered.

Reported: intake events/s, latency, and the share of /healthz's throughput (same server, same
senders) it reaches (targets: >= 500 events/s and >= 50 % of /healthz). Between the two, the
floor (bench/floor_app.py, same server, same senders, the same bodies): each body stored as one
row, durably, and nothing else done; what the door reaches of it is what its own work costs,
and what the floor reaches of /healthz bounds any durable intake on this server. End to end,
the time from the first delivery until the worker has acted on every event, and events acted
on per second; the final state (every event processed, ignored or flagged, none failed or
waiting, no period granted twice). `--mode inline` measures the old path, where the request acts.

Also reported, because on a shared 2-core machine throughput moves with whatever else runs: the
CPU time each request cost, split between gunicorn (master and workers), PostgreSQL (the
backends serving the bench database), the load generator, and the worker with its own backend.
2,000 ms of CPU a second divided by the sum is what 2 idle cores could do."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import hmac
import itertools
import json
import random
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import sqlalchemy as sa  # noqa: E402

from bench import common, cpu, loadgen  # noqa: E402

# The floor: bench/floor_app.py answers this path (the body stored, nothing else done).
FLOOR_PATH = "/bench/floor"
FLOOR_TABLE = "bench_floor"
FLOOR_APP = "bench.floor_app:app"

# ---------------------------------------------------------------------------------------------
# The load generator (runs in its own process: `--drive plan.json`)


def _healthz_step():
    async def step(desk: int, conn: loadgen.Connection, rec: loadgen.Recorder, due) -> None:
        await loadgen.timed(rec, conn, "get", "GET", "/healthz")

    return step


def _floor_step(bodies: list[bytes]):
    """The deliveries' bodies in turn, signed as they are (the same work for the senders), to
    the floor, which stores each under an id of its own."""
    turn = itertools.cycle(bodies)

    async def step(desk: int, conn: loadgen.Connection, rec: loadgen.Recorder, due) -> None:
        body = next(turn)
        headers = {"Stripe-Signature": _sign(body, common.WEBHOOK_SECRET)}
        await loadgen.timed(rec, conn, "floor", "POST", FLOOR_PATH, body, headers)

    return step


def _sign(body: bytes, secret: str) -> str:
    """Stripe-Signature for `body`, now (as tests.stripe_fixtures.signature, on bytes)."""
    t = int(time.time())
    mac = hmac.new(secret.encode(), str(t).encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def _bodies(plan: dict) -> list[bytes]:
    """Every delivery's body, serialised once, last first (the senders pop them)."""
    events = json.loads(Path(plan["events_file"]).read_text())
    return [json.dumps(event).encode() for event in reversed(events)]


async def _post_all(plan: dict, queue: list[bytes]) -> loadgen.Recorder:
    """`concurrency` senders, each on its keep-alive connection, take the next delivery and post
    it signed now, until none is left or the time is up."""
    rec = loadgen.Recorder()
    rec.started = time.perf_counter()
    deadline = rec.started + plan["seconds"]

    async def sender(conn: loadgen.Connection) -> None:
        while queue and time.perf_counter() < deadline:
            body = queue.pop()
            headers = {"Stripe-Signature": _sign(body, common.WEBHOOK_SECRET)}
            r = await loadgen.timed(rec, conn, "webhook", "POST", "/webhooks/stripe", body, headers)
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
    bodies = _bodies(plan) if plan["mode"] != "healthz" else []
    cpu0 = time.process_time()  # from here: the sending's CPU, not reading the events file
    started_wall = time.time()
    if plan["mode"] == "healthz":
        rec = await loadgen.closed_loop(
            plan["concurrency"], plan["base_url"], _healthz_step(), seconds=plan["seconds"]
        )
    elif plan["mode"] == "floor":
        rec = await loadgen.closed_loop(
            plan["concurrency"], plan["base_url"], _floor_step(bodies), seconds=plan["seconds"]
        )
    else:
        rec = await _post_all(plan, bodies)
    out = rec.as_dict()
    out["driver_cpu_s"] = time.process_time() - cpu0
    out["started_wall"] = started_wall
    return out


def drive_main(plan_path: str, out_path: str) -> None:
    plan = json.loads(Path(plan_path).read_text())
    Path(out_path).write_text(json.dumps(asyncio.run(_drive(plan))))


# ---------------------------------------------------------------------------------------------
# CPU per request: /proc of the gunicorn process group and of the database's backends


WORKER_APP_NAME = "stripe-worker"  # the worker's PostgreSQL backends, told apart by this
INTAKE = ("server", "postgres")  # whose CPU a request costs (with the load generator's)


class CpuMeter:
    """CPU seconds used by gunicorn's processes, the worker's, and the bench database's
    PostgreSQL backends (the worker's apart, by application_name), read from /proc: only on
    Linux and on this machine's PostgreSQL."""

    def __init__(self, server: common.Server, url: str, workers: list[common.Worker]):
        self.server, self.url, self.workers = server, url, workers

    def sample(self) -> dict[str, float]:
        backends = cpu.backends(self.url)
        pids = [w.process.pid for w in self.workers if w.process is not None]
        return {
            "server": sum(cpu.proc_cpu(p) for p in cpu.group_pids(self.server.process.pid)),
            "postgres": sum(cpu.proc_cpu(p) for p, name in backends if name != WORKER_APP_NAME),
            "worker": sum(cpu.proc_cpu(p) for pid in pids for p in cpu.group_pids(pid)),
            "worker postgres": sum(
                cpu.proc_cpu(p) for p, name in backends if name == WORKER_APP_NAME
            ),
        }

    def close(self) -> None:
        """Nothing held between samples (each reads pg_stat_activity on a connection of its own)."""


def _per_request(
    before: dict, after: dict, driver_s: float, n: int, keys: tuple[str, ...] | None = None
) -> dict[str, float]:
    if not n:
        return {}
    ms = {k: (after[k] - before[k]) * 1000 / n for k in (keys or tuple(before))}
    if driver_s:
        ms["load generator"] = driver_s * 1000 / n
    ms["total"] = sum(ms.values())
    return {k: round(v, 3) for k, v in ms.items()}


def _create_floor_table(url: str) -> None:
    """The floor's table: an id and the body, stored as stripe_events stores its payload."""
    engine = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sa.text(f"CREATE TABLE {FLOOR_TABLE} (id text PRIMARY KEY, payload json)"))
        lz4 = conn.execute(
            sa.text(
                "SELECT 'lz4' = ANY (enumvals) FROM pg_settings "
                "WHERE name = 'default_toast_compression'"
            )
        ).scalar()
        if lz4:  # as stripe_events.payload (billing/stripe_sync/models.py)
            conn.execute(
                sa.text(f"ALTER TABLE {FLOOR_TABLE} ALTER COLUMN payload SET COMPRESSION lz4")
            )
    engine.dispose()


def _final_state(url: str) -> dict:
    """What the events left: stored events by status, and periods granted more than once."""
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        stored = dict(
            conn.execute(
                sa.text("SELECT status, COUNT(*) FROM stripe_events GROUP BY status")
            ).all()
        )
        twice = conn.execute(
            sa.text(
                "SELECT COUNT(*) FROM (SELECT membership_id, period_start FROM credit_grants "
                "GROUP BY membership_id, period_start HAVING COUNT(*) > 1) AS twice"
            )
        ).scalar_one()
        grants = conn.execute(sa.text("SELECT COUNT(*) FROM credit_grants")).scalar_one()
        attempts = dict(
            conn.execute(
                sa.text("SELECT attempts, COUNT(*) FROM stripe_events GROUP BY attempts")
            ).all()
        )
    engine.dispose()
    return {
        "stored_by_status": stored,
        "periods_granted_twice": int(twice),
        "grants": int(grants),
        "attempts": {str(k): v for k, v in attempts.items()},
    }


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
        if args.floor_seconds:
            _create_floor_table(url)
        common.analyze(url)
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
            json.dump(deliveries, f)
            events_file = f.name
        queued = args.mode == "queued"
        server = common.Server(
            url,
            workers=args.workers,
            threads=args.threads,
            env={"STRIPE_WEBHOOK_PROCESSING": args.mode},
            **({"app": FLOOR_APP} if args.floor_seconds else {}),
        )
        workers = [
            common.Worker(
                url,
                env={"PGAPPNAME": WORKER_APP_NAME, "STRIPE_WORKER_BATCH": str(args.batch)},
                nice=args.worker_nice,
            )
            for _ in range(args.event_workers if queued else 0)
        ]
        drained_wall = None
        with server, contextlib.ExitStack() as stack:
            for worker in workers if not args.worker_after_intake else ():
                stack.enter_context(worker)  # as deployed: started before the run
            meter = CpuMeter(server, url, workers)
            base = {"base_url": server.base_url, "concurrency": args.concurrency}
            c0 = meter.sample()
            health = common.run_driver(
                __file__, {**base, "mode": "healthz", "seconds": args.healthz_seconds}, 120
            )
            c1 = healthz_done = meter.sample()
            floor = floor_done = None
            if args.floor_seconds:
                floor = common.run_driver(
                    __file__,
                    {
                        **base,
                        "mode": "floor",
                        "events_file": events_file,
                        "seconds": args.floor_seconds,
                    },
                    args.floor_seconds + 120,
                )
                c1 = floor_done = meter.sample()  # the deliveries' CPU from here
            out = common.run_driver(
                __file__,
                {**base, "mode": "events", "events_file": events_file, "seconds": args.seconds},
                args.seconds + 120,
            )
            c2 = meter.sample()
            for worker in workers if args.worker_after_intake else ():
                stack.enter_context(worker)  # the diagnostic: intake without the worker's share
            if queued:
                workers[0].wait_idle(timeout=args.seconds + 600, poll=0.1)
                drained_wall = time.time()
            c3 = meter.sample()
            again = None
            if args.again:  # every delivery again: all duplicates, acknowledged and nothing more
                again = common.run_driver(
                    __file__,
                    {**base, "mode": "events", "events_file": events_file, "seconds": args.seconds},
                    args.seconds + 120,
                )
                c4 = meter.sample()
            meter.close()
        Path(events_file).unlink()
        final = _final_state(url)
    statuses = Counter(out["statuses"].get("webhook", {}))
    duplicates = out["statuses"].get("duplicate", {}).get("200", 0)
    statuses["200"] -= duplicates  # each counted once, as what it was
    statuses["200-duplicate"] = duplicates
    sent = sum(statuses.values())
    ok = statuses.get("200", 0) + statuses.get("200-duplicate", 0)
    health_n = health["statuses"]["get"].get("200", 0)
    health_rps = health_n / health["elapsed"]
    rate = sent / out["elapsed"]
    end_to_end_s = (drained_wall - out["started_wall"]) if drained_wall else out["elapsed"]
    handled = sum(final["stored_by_status"].get(k, 0) for k in ("processed", "ignored", "flagged"))
    result.update(
        mode=args.mode,
        members=args.members,
        unique_events=len(unique),
        deliveries=len(deliveries),
        sent=sent,
        accepted=ok,
        duplicates_acknowledged=statuses.get("200-duplicate", 0),
        statuses=dict(statuses),
        **final,
        events_per_s=round(rate, 1),
        latency_ms=common.summarize_ms(out["latencies"].get("webhook", [])),
        healthz_per_s=round(health_rps, 1),
        healthz_latency_ms=common.summarize_ms(health["latencies"].get("get", [])),
        share_of_healthz=common.ratio(rate, health_rps),
        **_floor_figures(floor, (healthz_done, floor_done), rate, health_rps),
        cpu_ms_per_event=_per_request(c1, c2, out["driver_cpu_s"], sent, INTAKE),
        cpu_ms_per_healthz=_per_request(c0, healthz_done, health["driver_cpu_s"], health_n, INTAKE),
        # What the worker did while the deliveries came in, per delivery (it competes for the
        # same 2 cores, at nice 10 as deployed).
        worker_cpu_ms_during_intake=_per_request(c1, c2, 0, sent, ("worker", "worker postgres")),
        end_to_end_s=round(end_to_end_s, 2),
        end_to_end_events_per_s=round(handled / end_to_end_s, 1) if end_to_end_s else 0,
        worker_cpu_ms_per_event=_per_request(c1, c3, 0, len(unique), ("worker", "worker postgres")),
        drain_after_intake_s=round(drained_wall - out["started_wall"] - out["elapsed"], 2)
        if drained_wall
        else 0.0,
        final_state_ok=(
            handled == len(unique)
            and not final["stored_by_status"].get("failed")
            and not final["stored_by_status"].get("received")
            and final["periods_granted_twice"] == 0
        ),
        workers=args.workers,
        event_workers=len(workers),
        worker_after_intake=args.worker_after_intake,
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
            "cpu_ms_per_delivery": _per_request(
                c3, c4, again["driver_cpu_s"], n, ("server", "postgres")
            ),
        }
    return result


def _floor_figures(floor: dict | None, cpu_samples: tuple, rate: float, health_rps: float):
    """The floor's rate and CPU a request (between the two samples), and the two shares."""
    if floor is None:
        return {}
    statuses = floor["statuses"].get("floor", {})
    n = statuses.get("200", 0)
    per_s = n / floor["elapsed"]
    return {
        "floor_per_s": round(per_s, 1),
        "floor_latency_ms": common.summarize_ms(floor["latencies"].get("floor", [])),
        "floor_not_stored": sum(statuses.values()) - n,
        "share_of_floor": common.ratio(rate, per_s),
        "floor_share_of_healthz": common.ratio(per_s, health_rps),
        "cpu_ms_per_floor": _per_request(*cpu_samples, floor["driver_cpu_s"], n, INTAKE),
    }


def report(result: dict) -> None:
    lat = result["latency_ms"]
    queued = result["mode"] == "queued"
    common.print_table(
        f"webhook_ingest ({result['mode']}): {result['deliveries']:,} deliveries "
        f"({result['unique_events']:,} events, {result['members']:,} members), "
        f"{result['concurrency']} senders, {result['workers']} gunicorn workers"
        + (f" + {result['event_workers']} event worker(s)" if queued else "")
        + (" started after the intake (diagnostic)" if result["worker_after_intake"] else ""),
        [
            (
                "intake events/s (verified, stored" + ("" if queued else ", handled") + ")",
                result["events_per_s"],
            ),
            ("  p50 ms", lat["p50"]),
            ("  p95 ms", lat["p95"]),
            ("  p99 ms", lat["p99"]),
            ("  accepted (200)", result["accepted"]),
            ("  of which duplicates acknowledged", result["duplicates_acknowledged"]),
            ("  not accepted", result["sent"] - result["accepted"]),
            ("/healthz requests/s (baseline)", result["healthz_per_s"]),
            ("  /healthz p95 ms", result["healthz_latency_ms"]["p95"]),
            ("share of /healthz throughput", result["share_of_healthz"]),
            *(
                [
                    ("the floor req/s (body + one durable insert)", result["floor_per_s"]),
                    ("  share of the floor the deliveries reach", result["share_of_floor"]),
                    ("  the floor's share of /healthz", result["floor_share_of_healthz"]),
                ]
                if "floor_per_s" in result
                else []
            ),
            ("target >= 500 events/s met", result["meets_rate"]),
            ("target >= 50 % of /healthz met", result["meets_share"]),
            ("end to end: first delivery to every event acted on, s", result["end_to_end_s"]),
            ("  events acted on per s", result["end_to_end_events_per_s"]),
            ("  worker still draining after the last delivery, s", result["drain_after_intake_s"]),
            (
                "final state right (none failed or waiting, no period twice)",
                result["final_state_ok"],
            ),
        ],
    )
    event_cpu, health_cpu = result["cpu_ms_per_event"], result["cpu_ms_per_healthz"]
    floor_cpu = result.get("cpu_ms_per_floor") or {}
    common.print_table(
        "CPU ms per request (delivery | floor | /healthz)",
        [
            (
                name,
                f"{event_cpu.get(name, 0):.3f} | {floor_cpu.get(name, 0):.3f} | "
                f"{health_cpu.get(name, 0):.3f}",
            )
            for name in ("server", "postgres", "load generator", "total")
        ]
        + [
            (
                "what 2 idle cores could do (req/s)",
                " | ".join(
                    f"{2000 / c['total']:.0f}" if c.get("total") else "-"
                    for c in (event_cpu, floor_cpu, health_cpu)
                ),
            )
        ],
    )
    if queued:
        during, per_event = result["worker_cpu_ms_during_intake"], result["worker_cpu_ms_per_event"]
        common.print_table(
            "the event worker: CPU ms per event acted on (and per delivery while they came in)",
            [
                (name, f"{per_event.get(name, 0):.3f} ({during.get(name, 0):.3f})")
                for name in ("worker", "worker postgres", "total")
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
        "attempts:",
        json.dumps(result["attempts"]),
        "periods granted twice:",
        result["periods_granted_twice"],
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
    parser.add_argument(
        "--threads",
        type=int,
        default=common.default_threads(),
        help="gthread threads per worker (default: gunicorn.conf.py's)",
    )
    parser.add_argument("--seconds", type=float, default=600, help="stop sending after this long")
    parser.add_argument("--healthz-seconds", type=float, default=5)
    parser.add_argument(
        "--floor-seconds",
        type=float,
        default=5,
        help="the floor (bench/floor_app.py: the body stored, nothing else) for this long; 0: not",
    )
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument(
        "--mode",
        choices=("queued", "inline"),
        default="queued",
        help="queued (production): gunicorn stores, one worker process acts; inline: the old path",
    )
    parser.add_argument(
        "--event-workers",
        type=int,
        default=1,
        help="worker processes (1: one a server, as deployed)",
    )
    parser.add_argument(
        "--worker-after-intake",
        action="store_true",
        help="a diagnostic, not production: start the worker once every delivery is taken, to "
        "see what intake does without the worker's share of the CPU",
    )
    parser.add_argument("--batch", type=int, default=50, help="the worker's events a transaction")
    parser.add_argument(
        "--worker-nice", type=int, default=10, help="the worker's nice value (10 as deployed)"
    )
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
