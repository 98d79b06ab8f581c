"""Renewal day: `grant_period` for every membership, against a bulk insert of the same rows.

    .venv/bin/python bench/grant_scale.py                       # full size: 100,000 memberships
    .venv/bin/python bench/grant_scale.py --memberships 5000    # a quick run

Target: >= 2,000 memberships/s through grant_period. The baseline is a bulk insert (executemany,
5,000 rows a statement) of exactly the rows grant_period writes (grant, credits, ledger entries),
in the same database, in the same run. A cProfile of a sample says where grant_period's time goes,
and an SQL statement counter says how many round trips one membership costs."""

from __future__ import annotations

import argparse
import cProfile
import io
import multiprocessing
import pstats
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import sqlalchemy as sa  # noqa: E402

from bench import common  # noqa: E402

P0 = datetime(2026, 2, 1, 16, 0, tzinfo=UTC)  # 1 March, midnight in Singapore
P1 = datetime(2026, 2, 28, 16, 0, tzinfo=UTC)
P2 = datetime(2026, 3, 31, 16, 0, tzinfo=UTC)
P3 = datetime(2026, 4, 30, 16, 0, tzinfo=UTC)
P4 = datetime(2026, 5, 31, 16, 0, tzinfo=UTC)


def grant_each(url: str, ids: list[int], start: datetime, end: datetime, tag: str) -> int:
    """The renewal job's loop: one grant_period (one transaction) per membership."""
    from billing.entitlements.service import GrantSource, grant_period
    from billing.extensions import db
    from billing.memberships.models import Membership

    app = common.make_app(url)
    with app.app_context():
        now = end if end < datetime.now(UTC) else start
        for n, mid in enumerate(ids, 1):
            membership = db.session.get(Membership, mid)
            grant_period(
                membership,
                start,
                end,
                GrantSource(ref=f"{tag}:{mid}", actor="renewal-bench"),
                now=now,
            )
            if n % 2000 == 0:
                db.session.expunge_all()
        db.session.remove()
        db.engine.dispose()
    return len(ids)


def _child(args) -> int:
    return grant_each(*args)


def run(args) -> dict:
    result: dict = {"benchmark": "grant_scale", "memberships": args.memberships}
    with common.fresh_database("bench_grant", keep=args.keep_db) as url:
        app = common.make_app(url)
        from billing.entitlements.models import CreditGrant, LedgerEntry
        from billing.extensions import db

        with app.app_context():
            t0 = time.perf_counter()
            catalogue = common.seed_catalogue()
            member_ids = common.seed_members(args.memberships)
            ids = common.seed_memberships(
                member_ids, catalogue.version_id, period_start=P0, period_end=P1
            )
            common.analyze(url)
            result["seed_seconds"] = round(time.perf_counter() - t0, 1)
            db.engine.dispose()

        # 1. grant_period for each membership (the renewal day), in `processes` processes.
        chunks = [ids[i :: args.processes] for i in range(args.processes)]
        t0 = time.perf_counter()
        if args.processes == 1:
            grant_each(url, ids, P1, P2, "renewal")
        else:
            ctx = multiprocessing.get_context("spawn")
            with ctx.Pool(args.processes) as pool:
                pool.map(_child, [(url, c, P1, P2, "renewal") for c in chunks])
        service_s = time.perf_counter() - t0

        # 2. The baseline: the same rows for the next period, in bulk.
        with app.app_context():
            t0 = time.perf_counter()
            counts = common.grant_rows_bulk(ids, period_start=P2, period_end=P3)
            bulk_s = time.perf_counter() - t0
            granted = db.session.execute(
                sa.select(sa.func.count())
                .select_from(CreditGrant)
                .where(CreditGrant.period_start == P1)
            ).scalar_one()
            entries_service = db.session.execute(
                sa.select(sa.func.count())
                .select_from(LedgerEntry)
                .where(LedgerEntry.period_start == P1)
            ).scalar_one()
            db.session.remove()
            db.engine.dispose()

        # 3. Where the time goes: a profiled sample, and the statements one grant costs.
        sample = ids[: min(args.profile_sample, len(ids))]
        profile_text, statements = profile_sample(url, sample)

    result.update(
        processes=args.processes,
        service_seconds=round(service_s, 2),
        service_per_s=round(len(ids) / service_s, 1),
        bulk_seconds=round(bulk_s, 2),
        bulk_per_s=round(len(ids) / bulk_s, 1),
        ratio_service_to_bulk=common.ratio(bulk_s, service_s),
        grants_written=granted,
        ledger_entries_written=entries_service,
        bulk_rows=counts,
        statements_per_membership=statements,
        target_per_s=2000,
        meets_target=len(ids) / service_s >= 2000,
        profile_top=profile_text,
    )
    if granted != len(ids):
        result["error"] = f"{granted} grants written for {len(ids)} memberships"
    return result


def profile_sample(url: str, ids: list[int]) -> tuple[str, float]:
    """cProfile grant_period over `ids` (period P3-P4), and count SQL statements per grant."""
    from billing.extensions import db

    app = common.make_app(url)
    with app.app_context():
        counter = {"n": 0}

        def count(*_a, **_k):
            counter["n"] += 1

        sa.event.listen(db.engine, "before_cursor_execute", count)
        profiler = cProfile.Profile()
        profiler.enable()
        grant_each_in_context(ids, P3, P4, "profiled")
        profiler.disable()
        sa.event.remove(db.engine, "before_cursor_execute", count)
        db.session.remove()
        db.engine.dispose()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    total = stats.total_tt  # type: ignore[attr-defined]
    db_time = sum(
        tt
        for (filename, _line, _name), (_cc, _nc, tt, _ct, _callers) in stats.stats.items()  # type: ignore[attr-defined]
        if "psycopg" in filename or "psycopg" in _name
    )
    out.write(
        f"{len(ids)} grants profiled: {total:.2f}s, of which {db_time / total:.0%} inside psycopg "
        f"(waiting for PostgreSQL and encoding), {counter['n'] / max(1, len(ids)):.1f} SQL "
        "statements per membership\n"
    )
    stats.sort_stats("cumulative").print_stats(18)
    stats.sort_stats("tottime").print_stats(12)
    return out.getvalue(), round(counter["n"] / max(1, len(ids)), 1)


def grant_each_in_context(ids: list[int], start: datetime, end: datetime, tag: str) -> None:
    from billing.entitlements.service import GrantSource, grant_period
    from billing.extensions import db
    from billing.memberships.models import Membership

    for mid in ids:
        grant_period(
            db.session.get(Membership, mid),
            start,
            end,
            GrantSource(ref=f"{tag}:{mid}", actor="renewal-bench"),
            now=start,
        )


def report(result: dict, *, verbose: bool = True) -> None:
    common.print_table(
        f"grant_scale: renewal day for {result['memberships']:,} memberships",
        [
            ("grant_period, memberships/s", result["service_per_s"]),
            ("  processes", result["processes"]),
            ("  seconds", result["service_seconds"]),
            ("bulk insert (baseline), memberships/s", result["bulk_per_s"]),
            ("  seconds", result["bulk_seconds"]),
            ("ratio grant_period / bulk", result["ratio_service_to_bulk"]),
            ("SQL statements per grant_period", result["statements_per_membership"]),
            ("grants written", result["grants_written"]),
            ("target >= 2,000/s met", result["meets_target"]),
        ],
    )
    if result.get("error"):
        print("ERROR:", result["error"])
    if verbose:
        print("\nWhere grant_period's time goes (cProfile of a sample):")
        print(result["profile_top"])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--memberships", type=int, default=100_000)
    parser.add_argument("--processes", type=int, default=1, help="renewal processes in parallel")
    parser.add_argument("--profile-sample", type=int, default=500)
    parser.add_argument("--quiet", action="store_true", help="no profile listing")
    parser.add_argument("--json-out")
    parser.add_argument("--keep-db", action="store_true")
    args = parser.parse_args(argv)
    result = run(args)
    report(result, verbose=not args.quiet)
    common.emit(result, args.json_out)
    return result


if __name__ == "__main__":
    main()
