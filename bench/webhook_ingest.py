"""Stripe webhook ingestion: signed events posted to /webhooks/stripe on gunicorn by concurrent
senders, against the same server's plain /healthz.

    .venv/bin/python bench/webhook_ingest.py                          # full size: 20,000 events
    .venv/bin/python bench/webhook_ingest.py --events 2000 --members 500

The events are a renewal's worth for --members members billed through Stripe (the subscription
turns active, invoice.paid for two periods, the new period; a quarter cancel at period end),
built from Stripe's fixtures (tests/stripe_fixtures.py); 20 % of the deliveries repeat an event; shuffled, signed
at send time. 16 senders (asyncio + httpx, a separate process). Reported: events/s, latency,
and the share of /healthz's throughput (same server, same senders) it reaches.
Targets: >= 500 events/s and >= 50 % of /healthz."""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import sqlalchemy as sa  # noqa: E402

from bench import common  # noqa: E402


async def _drive(plan: dict) -> dict:
    if plan["mode"] == "healthz":
        rec = await common.hammer_get(
            plan["base_url"], "/healthz", concurrency=plan["concurrency"], seconds=plan["seconds"]
        )
        return rec.as_dict()
    deliveries = json.loads(Path(plan["events_file"]).read_text())
    queue = list(reversed(deliveries))
    async with common.async_client(plan["base_url"], plan["concurrency"]) as client:

        async def sender(i: int, rec: common.Recorder, deadline: float) -> None:
            while queue and time.monotonic() < deadline:
                event = queue.pop()
                body, headers = common.signed_delivery(event)
                t0 = time.perf_counter()
                try:
                    r = await client.post("/webhooks/stripe", content=body, headers=headers)
                    status = r.status_code
                    if status == 200 and r.json().get("duplicate"):
                        status = "200-duplicate"
                except Exception as exc:  # counted, never fatal
                    status = type(exc).__name__
                rec.record("webhook", time.perf_counter() - t0, status)

        rec = await common.drive(plan["concurrency"], sender, seconds=plan["seconds"])
    return rec.as_dict()


def drive_main(plan_path: str, out_path: str) -> None:
    plan = json.loads(Path(plan_path).read_text())
    Path(out_path).write_text(json.dumps(asyncio.run(_drive(plan))))


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
            base = {"base_url": server.base_url, "concurrency": args.concurrency}
            health = common.run_driver(
                __file__, {**base, "mode": "healthz", "seconds": args.healthz_seconds}, 120
            )
            out = common.run_driver(
                __file__,
                {**base, "mode": "events", "events_file": events_file, "seconds": args.seconds},
                args.seconds + 120,
            )
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
    sent = sum(statuses.values())
    ok = statuses.get("200", 0) + statuses.get("200-duplicate", 0)
    health_rps = health["statuses"]["get"].get("200", 0) / health["elapsed"]
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
        workers=args.workers,
        concurrency=args.concurrency,
        meets_rate=rate >= 500,
        meets_share=rate >= 0.5 * health_rps,
        errors=out["errors"][:5],
    )
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
