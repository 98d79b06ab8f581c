"""Renewal day: `grant_period` for every membership, and the batched `grant_periods`, against a
bulk insert of the same rows.

    .venv/bin/python bench/grant_scale.py                       # full size: 100,000 memberships
    .venv/bin/python bench/grant_scale.py --memberships 5000    # a quick run

Target: >= 2,000 memberships/s on a renewal day (grant_periods, --batch memberships a call and a
transaction; grant_period, one transaction per membership, is reported too, and the rows the two
write are checked to be the same). The baseline is a bulk insert (executemany,
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
P5 = datetime(2026, 6, 30, 16, 0, tzinfo=UTC)


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


def grant_batched(url: str, ids: list[int], start: datetime, end: datetime, tag: str, batch: int):
    """The renewal job with the batched verb: one grant_periods call (one transaction) per
    `batch` memberships. Returns (seconds, SQL statements), timed once the app is built."""
    from billing.entitlements.service import GrantSource, PeriodToGrant, grant_periods
    from billing.extensions import db
    from billing.memberships.models import Membership

    app = common.make_app(url)
    with app.app_context(), common.statement_counter(db.engine) as counted:
        t0 = time.perf_counter()
        for i in range(0, len(ids), batch):
            chunk = ids[i : i + batch]
            memberships = db.session.execute(
                sa.select(Membership).where(Membership.id.in_(chunk)).order_by(Membership.id)
            ).scalars()
            grant_periods(
                [
                    PeriodToGrant(
                        m, start, end, GrantSource(ref=f"{tag}:{m.id}", actor="renewal-bench")
                    )
                    for m in memberships
                ],
                now=start,
            )
            db.session.expunge_all()
        seconds = time.perf_counter() - t0
        db.session.remove()
        db.engine.dispose()
    return seconds, counted["n"]


def same_rows(url: str, first: datetime, second: datetime) -> int:
    """How many memberships got different rows from grant_period (period `first`) and
    grant_periods (period `second`): credits and ledger entries compared by what they are
    worth, not by id or date."""
    from billing.entitlements.models import Credit, CreditGrant, LedgerEntry

    def digest(conn, start):
        rows = conn.execute(
            sa.select(
                CreditGrant.membership_id,
                CreditGrant.plan_version_id,
                CreditGrant.net_amount_minor,
                CreditGrant.currency,
                CreditGrant.actor,
                Credit.plan_item_id,
                Credit.treatment_id,
                Credit.product_type,
                Credit.unit_label,
                Credit.quantity,
                Credit.ssp_unit_minor,
                Credit.allocated_minor,
                LedgerEntry.kind,
                LedgerEntry.quantity,
                LedgerEntry.value_minor,
                LedgerEntry.actor,
                LedgerEntry.membership_id,
                LedgerEntry.expires_at == Credit.expires_at,
            )
            .join(Credit, Credit.grant_id == CreditGrant.id)
            .join(LedgerEntry, LedgerEntry.credit_id == Credit.id)
            .where(CreditGrant.period_start == start)
        ).all()
        out: dict[int, list] = {}
        for row in rows:
            out.setdefault(row[0], []).append(tuple(row))
        return {k: sorted(v, key=repr) for k, v in out.items()}

    engine = sa.create_engine(url)
    with engine.connect() as conn:
        a, b = digest(conn, first), digest(conn, second)
    engine.dispose()
    # Every membership grant_period granted must have the same rows from grant_periods (which
    # granted them all; with --each-sample, grant_period only the sample).
    return sum(1 for k in a if a[k] != b.get(k))


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

        # 1. grant_period for each membership (the renewal day), in `processes` processes; at
        # full size on a sample (--each-sample): at ~100/s, 100,000 would take a quarter hour.
        each = ids[: args.each_sample] if args.each_sample else ids
        chunks = [each[i :: args.processes] for i in range(args.processes)]
        t0 = time.perf_counter()
        if args.processes == 1:
            grant_each(url, each, P1, P2, "renewal")
        else:
            ctx = multiprocessing.get_context("spawn")
            with ctx.Pool(args.processes) as pool:
                pool.map(_child, [(url, c, P1, P2, "renewal") for c in chunks])
        service_s = time.perf_counter() - t0

        # 1b. The batched verb for the next period, and its statements per membership.
        batch_s, batch_statements = grant_batched(url, ids, P2, P3, "renewal", args.batch)
        mismatched = same_rows(url, P1, P2)

        # 2. The baseline: the same rows for the period after, in bulk.
        with app.app_context():
            t0 = time.perf_counter()
            counts = common.grant_rows_bulk(ids, period_start=P3, period_end=P4)
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
        profile_text, statements = profile_sample(url, sample, P4, P5)

    result.update(
        processes=args.processes,
        service_seconds=round(service_s, 2),
        service_memberships=len(each),
        service_per_s=round(len(each) / service_s, 1),
        batch=args.batch,
        batch_seconds=round(batch_s, 2),
        batch_per_s=round(len(ids) / batch_s, 1),
        batch_statements_per_membership=round(batch_statements / len(ids), 2),
        ratio_batch_to_bulk=common.ratio(bulk_s, batch_s),
        memberships_with_different_rows=mismatched,
        bulk_seconds=round(bulk_s, 2),
        bulk_per_s=round(len(ids) / bulk_s, 1),
        ratio_service_to_bulk=common.ratio(bulk_s * len(each) / len(ids), service_s),
        grants_written=granted,
        ledger_entries_written=entries_service,
        bulk_rows=counts,
        statements_per_membership=statements,
        target_per_s=2000,
        meets_target=len(ids) / batch_s >= 2000,
        profile_top=profile_text,
    )
    if granted != len(each):
        result["error"] = f"{granted} grants written for {len(each)} memberships"
    if mismatched:
        result["error"] = f"grant_periods wrote other rows than grant_period for {mismatched}"
    return result


def profile_sample(url: str, ids: list[int], start: datetime, end: datetime) -> tuple[str, float]:
    """cProfile grant_period over `ids` (one period), and count SQL statements per grant."""
    from billing.extensions import db

    app = common.make_app(url)
    with app.app_context():
        counter = {"n": 0}

        def count(*_a, **_k):
            counter["n"] += 1

        sa.event.listen(db.engine, "before_cursor_execute", count)
        profiler = cProfile.Profile()
        profiler.enable()
        grant_each_in_context(ids, start, end, "profiled")
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
            ("grant_periods (batched), memberships/s", result["batch_per_s"]),
            ("  memberships a call", result["batch"]),
            ("  SQL statements per membership", result["batch_statements_per_membership"]),
            (
                "  memberships whose rows differ from grant_period's",
                result["memberships_with_different_rows"],
            ),
            ("ratio grant_periods / bulk", result["ratio_batch_to_bulk"]),
            ("grant_period (one call each), memberships/s", result["service_per_s"]),
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
    parser.add_argument("--batch", type=int, default=1000, help="memberships per grant_periods")
    parser.add_argument(
        "--each-sample",
        type=int,
        default=0,
        help="run grant_period one by one on only the first N memberships (0: all)",
    )
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
