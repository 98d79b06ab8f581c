"""Run every benchmark and print one markdown table to paste into the README.

    .venv/bin/python bench/run_all.py            # full size (`make bench`): tens of minutes
    .venv/bin/python bench/run_all.py --quick    # reduced sizes: a few minutes

Each benchmark runs in its own process on its own fresh PostgreSQL database, one after another,
and reports a ratio against a baseline measured in the same run on the same machine."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common  # noqa: E402

HERE = Path(__file__).resolve().parent

FULL = {
    "redeem_load": [
        *("--members", "5000", "--seconds", "30", "--saturation-seconds", "20"),
        *("--pgbench-seconds", "15"),
    ],
    "webhook_ingest": ["--events", "20000", "--members", "5000"],
    "grant_scale": ["--memberships", "100000", "--each-sample", "5000", "--quiet"],
    "search_latency": ["--members", "100000", "--seconds", "20"],
    "desk_instructions": ["--calls", "20"],
}
QUICK = {
    "redeem_load": [
        *("--members", "500", "--seconds", "10", "--saturation-seconds", "10"),
        *("--pgbench-seconds", "5"),
    ],
    "webhook_ingest": ["--events", "2000", "--members", "500"],
    "grant_scale": ["--memberships", "3000", "--profile-sample", "300", "--quiet"],
    "search_latency": ["--members", "20000", "--seconds", "8"],
    "desk_instructions": ["--calls", "5"],
}


def run_one(name: str, args: list[str], timeout_s: float) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp, "result.json")
        started = time.monotonic()
        done = subprocess.run(
            [sys.executable, str(HERE / f"{name}.py"), *args, "--json-out", str(out)],
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
        print(done.stdout)
        if done.returncode != 0 or not out.exists():
            print(done.stderr[-3000:], file=sys.stderr)
            return {"benchmark": name, "error": f"exit {done.returncode}"}
        result = json.loads(out.read_text())
        result["wall_seconds"] = round(time.monotonic() - started, 1)
        return result


def run_export(quick: bool, timeout_s: float) -> dict | None:
    """bench/export_memory.py belongs to finance; run it (on PostgreSQL) when it is there."""
    import os

    script = HERE / "export_memory.py"
    if not script.exists():
        return None
    args = [sys.executable, str(script)] + (["--sizes", "100000"] if quick else [])
    env = {**os.environ, "DATABASE_URL": common.admin_url()}
    done = subprocess.run(args, capture_output=True, text=True, timeout=timeout_s, env=env)
    print(done.stdout)
    result = {"benchmark": "export_memory", "tail": done.stdout.strip().splitlines()[-6:]}
    if done.returncode != 0:
        result["error"] = f"exit {done.returncode}: {done.stderr[-300:]}"
    return result


def _yes(flag: bool | None) -> str:
    return "yes" if flag else "**no**"


def markdown(results: dict, meta: dict, quick: bool) -> str:
    lines = [
        f"Benchmarks ({'reduced sizes (--quick)' if quick else 'full size'}), {meta['date']}: "
        f"{meta['nproc']} cores (nproc), {meta['ram_gib']} GiB RAM, PostgreSQL "
        f"{meta['postgres']}, Python {meta['python']}, load average before the run "
        f"{meta['load_avg_1m']}.",
        "",
        "| benchmark | size | result | baseline (same run) | ratio | target | met |",
        "|---|---|---|---|---|---|---|",
    ]
    r = results.get("redeem_load")
    if r and "error" not in r:
        paced, sat = r["paced"], r["saturation"]
        lat = paced["redeem_latency_ms"]
        lines.append(
            f"| redeem_load | {r['members']:,} members, {r['concurrency']} desks, paced "
            f"{r['rate']:g}/s for {paced['seconds']} s, saturation {sat['seconds']} s "
            f"| paced: {paced['redemptions_per_s']} redemptions/s, p50 {lat['p50']} / p95 "
            f"{lat['p95']} / p99 {lat['p99']} ms; "
            + "".join(
                f"at {m['rate']:g}/s: p50 {m['redeem_latency_ms']['p50']} / p95 "
                f"{m['redeem_latency_ms']['p95']} ms; "
                for m in r.get("paced_lower_rates", [])
            )
            + f"saturation: {sat['redemptions_per_s']}/s; "
            f"{r['errors']} errors, {r['audit']['double_redemptions']} double redemptions "
            f"| pgbench {r['pgbench']['tps']} tps, p95 {r['pgbench']['latency_ms']['p95']} ms "
            f"| saturation {r['ratio_saturation_vs_pgbench']} of tps; p95 "
            f"x{r['ratio_p95_vs_pgbench']} "
            f"| p95 < 50 ms, >= 300/s | {_yes(r['meets_p95'])} / {_yes(r['meets_throughput'])} |"
        )
    w = results.get("webhook_ingest")
    if w and "error" not in w:
        lines.append(
            f"| webhook_ingest | {w['deliveries']:,} deliveries ({w['members']:,} members, 20 % "
            f"duplicates), {w['concurrency']} senders | {w['events_per_s']} events/s, p95 "
            f"{w['latency_ms']['p95']} ms, {w['sent'] - w['accepted']} not accepted "
            f"| /healthz {w['healthz_per_s']} req/s"
            + (
                f"; the floor {w['floor_per_s']} req/s ({w['floor_share_of_healthz']} of "
                f"/healthz; deliveries {w['share_of_floor']} of it)"
                if "floor_per_s" in w
                else ""
            )
            + f" | {w['share_of_healthz']} of /healthz "
            f"| >= 500/s, >= 50 % | {_yes(w['meets_rate'])} / {_yes(w['meets_share'])} |"
        )
    g = results.get("grant_scale")
    if g and "error" not in g:
        lines.append(
            f"| grant_scale | {g['memberships']:,} memberships, {g['processes']} process "
            f"| {g.get('batch_per_s')}/s through grant_periods ({g.get('batch')} a call, "
            f"{g.get('batch_statements_per_membership')} SQL statements a membership, rows equal "
            f"to grant_period's); {g['service_per_s']} grant_period/s "
            f"(one by one, {g.get('service_memberships', g['memberships']):,} memberships, "
            f"{g['statements_per_membership']} SQL statements each) "
            f"| bulk insert {g['bulk_per_s']}/s "
            f"| {g.get('ratio_batch_to_bulk')} of bulk | >= 2,000/s | {_yes(g['meets_target'])} |"
        )
    s = results.get("search_latency")
    if s and "error" not in s:
        lines.append(
            f"| search_latency | {s['members']:,} members, {s['concurrency']} desks "
            f"| p50 {s['api_ms']['all']['p50']} / p95 {s['api_ms']['all']['p95']} ms, "
            f"{s['searches_per_s']} searches/s (in process p95 {s['in_process_ms']['p95']} ms) "
            f"| raw SQL p95 {s['raw_ms']['all']['p95']} ms | API p95 x{s['ratio_p95_api_vs_raw']} "
            f"| p95 < 20 ms | {_yes(s['meets_p95'])} |"
        )
    d = results.get("desk_instructions")
    if d and "error" not in d:
        counts, times = d["instructions_per_call"], d["times_plain"]
        lines.append(
            f"| desk_instructions | {d['calls']} calls of each kind, callgrind, in process "
            f"| instructions a call: into today's visit {counts['redeem_in_todays_visit']:,}, "
            f"opening it {counts['redeem']:,}, a void {counts['void']:,} "
            f"| GET /healthz {counts['plain']:,} "
            f"| x{times['redeem_in_todays_visit']} / x{times['redeem']} / x{times['void']} "
            "| (none: the CPU figure that does not drift with the host) | |"
        )
    e = results.get("export_memory")
    if e and "error" not in e:
        lines.append("| export_memory | see its own table below (finance) | | | | | |")
    for name, res in results.items():
        if res and "error" in res:
            lines.append(f"| {name} | | failed: {res['error']} | | | | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="reduced sizes")
    parser.add_argument("--only", nargs="*", help="run only these benchmarks")
    parser.add_argument("--json-out")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    meta = common.machine()
    meta["postgres"] = common.postgres_version()
    results: dict = {}
    timeout_s = 1800 if args.quick else 7200
    for name, bench_args in sizes.items():
        if args.only and name not in args.only:
            continue
        print(f"=== {name} {' '.join(bench_args)}", flush=True)
        results[name] = run_one(name, bench_args, timeout_s)
    if not args.only or "export_memory" in args.only:
        results["export_memory"] = run_export(args.quick, timeout_s)
    results = {k: v for k, v in results.items() if v is not None}
    print("\n" + markdown(results, meta, args.quick))
    if results.get("export_memory", {}).get("tail"):
        print(
            "\nexport_memory (bench/export_memory.py):\n"
            + "\n".join(results["export_memory"]["tail"])
        )
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"machine": meta, "results": results}, indent=2))


if __name__ == "__main__":
    main()
