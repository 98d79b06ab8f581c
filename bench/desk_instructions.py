"""The front desk's calls counted in CPU instructions, which do not drift with the machine.

    .venv/bin/python bench/desk_instructions.py              # 20 calls of each kind
    .venv/bin/python bench/desk_instructions.py --calls 10   # a quick run

redeem_load's latency and throughput move with the host's speed (on the shared 2-core machine
the same code has measured twice as slow from one hour to the next). An instruction count does
not: valgrind's callgrind counts the instructions the app executes, the same for the same code
and inputs whatever else the machine is doing, to within a few tenths of a per cent. So this is
the figure that tells whether a change made the desk cheaper.

Each kind of call runs in a process of its own under callgrind, on Flask's test client (no
HTTP server: the app's own work), each request in an app context of its own as under gunicorn:
  * `redeem`: a client's first desk call of the day (it opens today's visit);
  * `redeem_in_todays_visit`: the next one, the desk's common call;
  * `void`: voiding that line.
Only the measured calls are counted (callgrind collects inside the one `sys.call_tracing`
that makes them); the setup, the seeding and each kind's warm-up calls are not.

Baseline, in the same run: GET /healthz, the app's plainest request, through the same
middleware, authentication-free; each desk call is reported as a multiple of it."""

from __future__ import annotations

import argparse
import gc
import json
import re
import shutil
import subprocess
import sys
import tempfile
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common, redeem_load  # noqa: E402

KINDS = ("plain", "redeem", "redeem_in_todays_visit", "void")
WARM = 5  # calls of the kind made before the counted ones


# ---------------------------------------------------------------------------------------------
# The child: one kind of call, under callgrind


def child_main(plan_path: str, kind: str) -> None:
    plan = json.loads(Path(plan_path).read_text())
    app = common.make_app(plan["url"])
    client = app.test_client()
    headers = common.bearer(plan["key"])
    members = plan["members"][kind]
    calls = plan["calls"]

    def desk(member: int):
        body = redeem_load.desk_body(member, plan["provider_id"])
        key = {"Idempotency-Key": uuid.uuid4().hex}
        response = client.post("/api/v1/desk/redemptions", json=body, headers={**headers, **key})
        assert response.status_code == 201, response.get_data()
        return response.get_json()

    def void(line: dict):
        key = {"Idempotency-Key": uuid.uuid4().hex}
        response = client.post(
            redeem_load.void_path(line), json={"reason": "counted"}, headers={**headers, **key}
        )
        assert response.status_code == 200, response.get_data()

    def plain(_member: int):
        assert client.get("/healthz").status_code == 200

    # Every kind warms up on WARM members of its own, then is counted on `calls` others.
    warm, counted = members[:WARM], members[WARM : WARM + calls]
    if kind == "plain":
        step = plain
    elif kind == "redeem":
        step = desk
    elif kind == "redeem_in_todays_visit":
        for member in warm + counted:
            desk(member)  # opens their visit of today
        step = desk
    else:
        lines = {member: desk(member) for member in warm + counted}

        def step(member: int):
            void(lines[member])

    def counted_calls() -> int:
        for member in counted:
            step(member)
        return len(counted)

    for member in warm:
        step(member)
    # The app's start-up left ~180,000 objects for a first full collection (~100M instructions)
    # that would land in some run's window and not another's: it is made here, before it.
    gc.collect()
    # callgrind collects only inside sys.call_tracing, which nothing else here calls (with no
    # tracer set it just calls the function).
    done = sys.call_tracing(counted_calls, ())
    print(json.dumps({"kind": kind, "calls": done}))


# ---------------------------------------------------------------------------------------------


def _count(kind: str, plan_path: str, out_dir: str) -> int:
    """Instructions collected inside sys.call_tracing in a child run under callgrind."""
    done = subprocess.run(
        [
            "valgrind",
            "--tool=callgrind",
            "--toggle-collect=sys_call_tracing",
            f"--callgrind-out-file={out_dir}/{kind}.out",
            sys.executable,
            __file__,
            "--child",
            kind,
            "--plan",
            plan_path,
        ],
        capture_output=True,
        text=True,
        timeout=3600,
    )
    match = re.search(r"Collected : (\d+)", done.stderr)
    if done.returncode != 0 or not match:
        raise RuntimeError(f"{kind}: callgrind run failed\n{done.stderr[-3000:]}")
    return int(match.group(1))


def run(calls: int) -> dict:
    with common.fresh_database("bench_instr") as url:
        seeded = redeem_load.seed(url, (calls + WARM) * len(KINDS))
        step = calls + WARM
        members = {
            kind: seeded["members"][i * step : (i + 1) * step] for i, kind in enumerate(KINDS)
        }
        with tempfile.TemporaryDirectory() as tmp:
            plan_path = str(Path(tmp, "plan.json"))
            plan = {
                "url": url,
                "key": seeded["key"],
                "provider_id": seeded["provider_id"],
                "members": members,
                "calls": calls,
            }
            Path(plan_path).write_text(json.dumps(plan))
            # Counts do not depend on what else runs: the kinds run side by side.
            with ThreadPoolExecutor(max_workers=len(KINDS)) as pool:
                totals = dict(
                    zip(KINDS, pool.map(lambda k: _count(k, plan_path, tmp), KINDS), strict=True)
                )
    per_call = {kind: round(total / calls) for kind, total in totals.items()}
    plain = per_call["plain"]
    return {
        "benchmark": "desk_instructions",
        "machine": common.machine(),
        "calls": calls,
        "instructions_per_call": per_call,
        "times_plain": {k: round(v / plain, 1) for k, v in per_call.items() if k != "plain"},
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20, help="counted calls of each kind")
    parser.add_argument("--json-out")
    parser.add_argument("--child", choices=KINDS, help=argparse.SUPPRESS)
    parser.add_argument("--plan", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child_main(args.plan, args.child)
        return
    if not shutil.which("valgrind"):
        sys.exit("valgrind is not installed (Debian: apt-get install valgrind)")
    result = run(args.calls)
    common.print_table(
        f"Desk calls in CPU instructions (callgrind, {args.calls} calls of each kind)",
        [
            *(
                (f"{k}: instructions a call", f"{v:,}")
                for k, v in result["instructions_per_call"].items()
            ),
            *((f"{k}: x GET /healthz", v) for k, v in result["times_plain"].items()),
        ],
    )
    common.emit(result, args.json_out)


if __name__ == "__main__":
    main()
