"""What every benchmark (and the reliability suite) shares: a throwaway PostgreSQL database per
run, a gunicorn on 127.0.0.1 sized for this machine, bulk seeding, a load generator that runs in
its own process, and percentiles.

Nothing here sends traffic anywhere but 127.0.0.1, and every loop is bounded in count and time."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import random
import runpy
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python bench/x.py` puts bench/ on the path, not the repo
    sys.path.insert(0, str(ROOT))

import sqlalchemy as sa  # noqa: E402

from bench import loadgen  # noqa: E402

VENV_BIN = Path(sys.executable).parent
DEFAULT_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
WEBHOOK_SECRET = "whsec_test_secret"  # TestingConfig's, so tests/stripe_fixtures signs for it
HOST = "127.0.0.1"  # the only host anything here talks to


def admin_url() -> str:
    """The PostgreSQL server to create throwaway databases on (never another host than localhost)."""
    url = (
        os.environ.get("BENCH_DATABASE_URL")
        or os.environ.get("TEST_DATABASE_URL")
        or DEFAULT_ADMIN_URL
    )
    if not url.startswith("postgresql"):
        raise SystemExit(f"the benchmarks need PostgreSQL; {url!r} is not")
    host = sa.engine.make_url(url).host
    if host not in (None, "", "127.0.0.1", "localhost", "::1"):
        raise SystemExit(f"refusing to benchmark a database on {host!r}: use 127.0.0.1")
    return url


def nproc() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def default_workers() -> int:
    """What gunicorn.conf.py runs in production: cores + 1 threaded workers, so a thread waiting
    on PostgreSQL leaves its core to another and connections stay open."""
    return nproc() + 1


def default_threads() -> int:
    """The threads a worker that gunicorn.conf.py gives production (GUNICORN_THREADS, else its
    default): read from the file, so a benchmark measures what is deployed."""
    return int(runpy.run_path(str(ROOT / "gunicorn.conf.py"))["threads"])


# ---------------------------------------------------------------------------------------------
# Databases


def app_config(url: str, **overrides: Any) -> dict[str, Any]:
    """The configuration a benchmark's own process uses to seed and check (not the server's).

    Not debug, as the server is not: create_app lays a dict of settings over BILLING_ENV's
    class, development's by default, whose DEBUG pretty-prints every JSON response through
    the json module's pure-Python encoder, a cost the server never pays."""
    from config import TestingConfig

    config = {k: getattr(TestingConfig, k) for k in dir(TestingConfig) if k.isupper()}
    config.update(
        DEBUG=False,
        TESTING=False,
        SQLALCHEMY_DATABASE_URI=url,
        SCHEMA_FROM_MODELS=True,
        STRIPE_WEBHOOK_SECRET=WEBHOOK_SECRET,
    )
    config.update(overrides)
    return config


def make_app(url: str, **overrides: Any):
    from billing import create_app

    return create_app(app_config(url, **overrides))


def create_database(prefix: str = "bench") -> str:
    """Create an empty database with the schema built from the models; returns its URL."""
    admin = admin_url()
    name = f"{prefix}_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    engine = sa.create_engine(admin, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    url = sa.engine.make_url(admin).set(database=name).render_as_string(hide_password=False)
    app = make_app(url)
    from billing.extensions import db

    with app.app_context():
        db.create_all()
        db.engine.dispose()
    return url


def drop_database(url: str) -> None:
    name = sa.engine.make_url(url).database
    engine = sa.create_engine(admin_url(), isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sa.text("ALTER DATABASE " + _quote(name) + " ALLOW_CONNECTIONS true"))
        conn.execute(
            sa.text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = :n AND pid <> pg_backend_pid()"
            ),
            {"n": name},
        )
        conn.execute(sa.text(f"DROP DATABASE IF EXISTS {_quote(name)}"))
    engine.dispose()


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


@contextlib.contextmanager
def fresh_database(prefix: str = "bench", keep: bool = False) -> Iterator[str]:
    """A database of its own for one run, dropped afterwards (unless keep=True)."""
    url = create_database(prefix)
    try:
        yield url
    finally:
        if not keep:
            drop_database(url)


def set_connections_allowed(url: str, allowed: bool) -> int:
    """Cut (or restore) one database without touching the server: refuse new connections to it and
    end the ones it has. Returns how many connections were ended."""
    name = sa.engine.make_url(url).database
    engine = sa.create_engine(admin_url(), isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(
            sa.text(f"ALTER DATABASE {_quote(name)} ALLOW_CONNECTIONS {str(allowed).lower()}")
        )
        ended = 0
        if not allowed:
            ended = len(
                conn.execute(
                    sa.text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = :n AND pid <> pg_backend_pid()"
                    ),
                    {"n": name},
                ).all()
            )
    engine.dispose()
    return ended


def postgres_version(url: str | None = None) -> str:
    engine = sa.create_engine(url or admin_url())
    with engine.connect() as conn:
        version = conn.execute(sa.text("SHOW server_version")).scalar_one()
    engine.dispose()
    return str(version).split()[0]


def libpq_args(url: str) -> list[str]:
    """-h/-p/-U/dbname for the PostgreSQL command-line tools (pgbench)."""
    u = sa.engine.make_url(url)
    args = ["-h", u.host or HOST, "-p", str(u.port or 5432), "-U", u.username or "postgres"]
    return [*args, u.database or "postgres"]


def libpq_env(url: str) -> dict[str, str]:
    env = dict(os.environ)
    password = sa.engine.make_url(url).password
    if password:
        env["PGPASSWORD"] = str(password)
    return env


# ---------------------------------------------------------------------------------------------
# The server


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def server_env(database_url: str, **extra: str) -> dict[str, str]:
    """What the gunicorn process is configured with: production settings, a local database."""
    env = dict(os.environ)
    env.update(
        BILLING_ENV="production",
        DATABASE_URL=database_url,
        SECRET_KEY="bench-not-secret",
        STRIPE_WEBHOOK_SECRET=WEBHOOK_SECRET,
        SCHEDULER_ENABLED="false",
        PYTHONPATH=os.pathsep.join(
            p for p in (str(ROOT), os.environ.get("BENCH_PYTHONPATH", "")) if p
        ),
    )
    for name in ("STRIPE_API_KEY", "STRIPE_API_BASE"):  # never let a server reach Stripe
        env.pop(name, None)
    env.update(extra)
    return env


class _ProcessGroup:
    """A process started in a session of its own (its pid is its group's id), so that it can be
    stopped, or killed -9, as a whole and only it: `process` and `log_path` are the subclass's."""

    process: subprocess.Popen | None
    log_path: Path | None
    stop_grace_s: float = 15

    def log_tail(self, chars: int = 4000) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")[-chars:]

    def stop(self) -> None:
        """SIGTERM to the group (a graceful stop), SIGKILL if it is still there after the grace."""
        if self.process is None:
            return
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=self.stop_grace_s)
            except subprocess.TimeoutExpired:
                self.kill9()
        self._reap_group()
        self.process = None

    def kill9(self) -> None:
        """The crash: SIGKILL to the group leader and every child at once, no goodbye."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=10)
        self._reap_group()

    def _reap_group(self) -> None:
        # Children orphaned by a killed leader share its group id (the leader's pid).
        pgid = self.process.pid if self.process else None
        if pgid is None:
            return
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                return
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
            time.sleep(0.05)

    def __exit__(self, *exc) -> None:
        self.stop()
        if self.log_path is not None:
            with contextlib.suppress(OSError):
                self.log_path.unlink()


@dataclass
class Server(_ProcessGroup):
    """gunicorn on 127.0.0.1 in a process group of its own, so it can be stopped (or killed -9)
    as a whole, and only it."""

    database_url: str
    workers: int = field(default_factory=default_workers)
    threads: int = field(default_factory=default_threads)
    app: str = field(default_factory=lambda: os.environ.get("BENCH_APP", "billing:create_app()"))
    env: dict[str, str] = field(default_factory=dict)
    port: int = 0
    timeout: int = 30
    process: subprocess.Popen | None = None
    log_path: Path | None = None

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self, wait_seconds: float = 60) -> Server:
        self.port = self.port or free_port()
        log = tempfile.NamedTemporaryFile(  # noqa: SIM115 (kept open while the server runs)
            prefix="gunicorn-", suffix=".log", delete=False
        )
        self.log_path = Path(log.name)
        args = [
            str(VENV_BIN / "gunicorn"),
            self.app,
            "--bind",
            f"{HOST}:{self.port}",
            "--workers",
            str(self.workers),
            "--timeout",
            str(self.timeout),
            "--graceful-timeout",
            "5",
            "--backlog",
            "2048",
            "--chdir",
            str(ROOT),
            "--log-level",
            "warning",
        ]
        # gunicorn.conf.py (production's settings) is read from --chdir; these override it.
        args += ["--config", str(ROOT / "gunicorn.conf.py"), "--threads", str(self.threads)]
        self.process = subprocess.Popen(
            args,
            env=server_env(self.database_url, **self.env),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=str(ROOT),
        )
        log.close()
        self.wait_ready(wait_seconds)
        return self

    def wait_ready(self, wait_seconds: float = 60) -> None:
        import httpx

        deadline = time.monotonic() + wait_seconds
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"gunicorn exited:\n{self.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.base_url + "/healthz", timeout=2).status_code == 200:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"gunicorn did not answer within {wait_seconds}s:\n{self.log_tail()}")

    def __enter__(self) -> Server:
        return self.start() if self.process is None else self


@dataclass
class Worker(_ProcessGroup):
    """The Stripe event worker as deployed (`flask --app wsgi billing stripe work`, queued
    intake), in a process group of its own so it can be stopped or killed -9 as a whole.
    `faulty=True` runs bench.common.faulty_worker_main instead: handler failures injected on
    first tries (BENCH_FAIL_FIRST_PERCENT, mode 2 of chosen_for_failure). `nice` as deployed
    (deploy/billing-stripe-worker.service)."""

    database_url: str
    env: dict[str, str] = field(default_factory=dict)
    faulty: bool = False
    nice: int = 10
    process: subprocess.Popen | None = None
    log_path: Path | None = None
    stop_grace_s = 30  # SIGTERM: the batch in hand commits, then it exits

    def start(self) -> Worker:
        log = tempfile.NamedTemporaryFile(  # noqa: SIM115 (kept open while the worker runs)
            prefix="stripe-worker-", suffix=".log", delete=False
        )
        self.log_path = Path(log.name)
        if self.faulty:
            args = [sys.executable, "-c", "from bench.common import faulty_worker_main as m; m()"]
        else:
            args = [str(VENV_BIN / "flask"), "--app", "wsgi", "billing", "stripe", "work"]
        if self.nice:
            args = ["nice", "-n", str(self.nice), *args]
        self.process = subprocess.Popen(
            args,
            env=server_env(self.database_url, STRIPE_WEBHOOK_PROCESSING="queued", **self.env),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=str(ROOT),
        )
        log.close()
        return self

    def waiting(self) -> int:
        """Events not done yet: received, or failed and due another try."""
        engine = sa.create_engine(self.database_url, poolclass=sa.pool.NullPool)
        with engine.connect() as conn:
            n = conn.execute(
                sa.text(
                    "SELECT COUNT(*) FROM stripe_events WHERE status = 'received' "
                    "OR (status = 'failed' AND next_attempt_at IS NOT NULL)"
                )
            ).scalar_one()
        engine.dispose()
        return int(n)

    def wait_idle(self, timeout: float = 120, poll: float = 0.2) -> float:
        """Seconds until nothing is waiting (perf_counter time it became so); raises on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"the worker exited:\n{self.log_tail()}")
            if not self.waiting():
                return time.perf_counter()
            time.sleep(poll)
        raise RuntimeError(f"events still waiting after {timeout}s:\n{self.log_tail()}")

    def __enter__(self) -> Worker:
        return self.start() if self.process is None else self


def faulty_worker_main() -> None:
    """The worker with handler failures injected: an event chosen for mode 2 raises on the
    first try this process makes (the worker records it failed and tries it again when due)."""
    from billing import create_app
    from billing.stripe_sync import handlers, worker

    app = create_app()
    percent = int(os.environ.get("BENCH_FAIL_FIRST_PERCENT", "0"))
    failed_once: set[str] = set()

    def failing(handler):
        def wrapped(obj, ctx):
            chosen = chosen_for_failure(ctx.event_id or "", percent) == 2
            if chosen and ctx.event_id not in failed_once:
                failed_once.add(ctx.event_id)
                raise RuntimeError(f"injected handler failure for {ctx.event_id}")
            return handler(obj, ctx)

        return wrapped

    for name, handler in list(handlers.HANDLERS.items()):
        handlers.HANDLERS[name] = failing(handler)
    with app.app_context():
        worker.run(app, report=print)


def chosen_for_failure(event_id: str, percent: int) -> int | None:
    """Which failure (0, 1, 2) an event gets on its first delivery, or None: a hash of its id,
    so every gunicorn worker (and the test that checks) agrees without sharing state."""
    import hashlib

    digest = int(hashlib.sha256(event_id.encode()).hexdigest()[:8], 16)
    return digest % 3 if digest % 100 < percent else None


def faulty_app():
    """The app with failures injected on first deliveries (gunicorn "bench.common:faulty_app()").

    For an event whose id falls in BENCH_FAIL_FIRST_PERCENT, a delivery carrying
    `X-Test-Attempt: 1` fails, as Stripe would see it, in one of three ways:
      0. before the app sees it (a proxy's 503): nothing stored;
      1. after the app processed it (the response was lost): a 500 after the work committed;
      2. inside its handler (the handler raises): stored as failed, a 500, kept for a retry or
         `flask billing stripe replay --failed`.
    A retry (attempt 2 and later) goes through untouched."""
    import io

    from billing import create_app
    from billing.stripe_sync import handlers

    app = create_app()
    percent = int(os.environ.get("BENCH_FAIL_FIRST_PERCENT", "0"))
    inner = app.wsgi_app
    local = threading.local()  # gthread workers run several requests at once

    def first_attempt() -> set[str]:
        """This request's event, when it is a first delivery (per thread)."""
        if not hasattr(local, "ids"):
            local.ids = set()
        return local.ids

    def failing(handler):
        def wrapped(obj, ctx):
            if ctx.event_id in first_attempt():
                raise RuntimeError(f"injected handler failure for {ctx.event_id}")
            return handler(obj, ctx)

        return wrapped

    for name, handler in list(handlers.HANDLERS.items()):
        handlers.HANDLERS[name] = failing(handler)

    def wsgi(environ, start_response):
        first_attempt().clear()
        if not percent or environ.get("HTTP_X_TEST_ATTEMPT") != "1":
            return inner(environ, start_response)
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        environ["wsgi.input"] = io.BytesIO(body)
        try:
            event_id = str(json.loads(body).get("id", ""))
        except (ValueError, AttributeError):
            return inner(environ, start_response)
        mode = chosen_for_failure(event_id, percent)
        if mode == 0:
            start_response("503 Service Unavailable", [("Content-Type", "text/plain")])
            return [b"injected: failed before the app"]
        if mode == 1:
            body_iter = inner(environ, lambda *a, **k: None)
            for _chunk in body_iter:
                pass
            if hasattr(body_iter, "close"):
                body_iter.close()
            start_response("500 Internal Server Error", [("Content-Type", "text/plain")])
            return [b"injected: the response was lost"]
        if mode == 2:
            first_attempt().add(event_id)
        return inner(environ, start_response)

    app.wsgi_app = wsgi
    return app


# ---------------------------------------------------------------------------------------------
# Stripe: members billed through Stripe, a renewal's worth of signed events, and a digest of
# what they leave behind.

STORM_P1 = datetime(2026, 2, 28, 16, 0, tzinfo=UTC)
STORM_P2 = datetime(2026, 3, 31, 16, 0, tzinfo=UTC)
STORM_P3 = datetime(2026, 4, 30, 16, 0, tzinfo=UTC)
STRIPE_PRICE = "price_bench_glow"


def seed_stripe_members(n: int) -> dict[str, Any]:
    """n members, each with a Stripe customer and a pending membership linked to a Stripe
    subscription, on a tier whose version has a Stripe price. Needs an app context."""
    from billing.extensions import db
    from billing.plans.models import PlanVersion

    catalogue = seed_catalogue()
    version = db.session.get(PlanVersion, catalogue.version_id)
    version.stripe_price_id = STRIPE_PRICE
    db.session.commit()
    member_ids = seed_members(n)
    membership_ids = seed_memberships(
        member_ids,
        catalogue.version_id,
        period_start=STORM_P1,
        period_end=STORM_P2,
        state="pending",
        with_subscription=True,
    )
    from billing.members.models import Member

    customers = {
        mid: customer
        for part in in_batches(member_ids)
        for mid, customer in db.session.execute(
            sa.select(Member.id, Member.stripe_customer_id).where(Member.id.in_(part))
        ).all()
    }
    db.session.remove()
    pairs = [(customers[mid], subscription_for(customers[mid])) for mid in member_ids]
    return {"member_ids": member_ids, "membership_ids": membership_ids, "pairs": pairs}


def storm_events(
    pairs: Sequence[tuple[str, str]], *, cancel_every: int = 4
) -> list[dict[str, Any]]:
    """Two paid months per member, in the order Stripe would send them: the subscription turns
    active, invoice.paid for period 1, invoice.paid for period 2 and the subscription's new
    period; every `cancel_every`-th member then asks to cancel at the period's end."""
    from tests import stripe_fixtures as sf

    events = []
    t0 = int(STORM_P1.timestamp())
    for mid, (customer, sub) in enumerate(pairs, 1):

        def invoice(start, end, customer=customer, sub=sub):
            return sf.invoice(
                id=f"in_{sub}_{start:%Y%m}",
                customer=customer,
                subscription=sub,
                price=STRIPE_PRICE,
                amount=32700,
                period_start=start,
                period_end=end,
                billing_reason="subscription_cycle",
            )

        def subscription(start, end, sub=sub, customer=customer, **kw):
            return sf.subscription(
                id=sub,
                customer=customer,
                price=STRIPE_PRICE,
                period_start=start,
                period_end=end,
                **kw,
            )

        steps = [
            ("customer.subscription.updated", subscription(STORM_P1, STORM_P2), t0),
            ("invoice.paid", invoice(STORM_P1, STORM_P2), t0 + 1),
            ("invoice.paid", invoice(STORM_P2, STORM_P3), t0 + 86400 * 31),
            (
                "customer.subscription.updated",
                subscription(STORM_P2, STORM_P3),
                t0 + 86400 * 31 + 1,
            ),
        ]
        if cancel_every and mid % cancel_every == 0:
            steps.append(
                (
                    "customer.subscription.updated",
                    subscription(STORM_P2, STORM_P3, cancel_at_period_end=True),
                    t0 + 86400 * 40,
                )
            )
        for n, (kind, obj, created) in enumerate(steps):
            events.append(sf.event(kind, obj, created=created, id=f"evt_{sub}_{n}"))
    return events


def signed_delivery(event: dict[str, Any], attempt: int = 1) -> tuple[bytes, dict[str, str]]:
    """The body and headers of one delivery, signed now (Stripe re-signs every retry)."""
    from tests import stripe_fixtures as sf

    body = json.dumps(event, separators=(",", ":"))
    return body.encode(), {
        "Stripe-Signature": sf.signature(body, secret=WEBHOOK_SECRET),
        "Content-Type": "application/json",
        "X-Test-Attempt": str(attempt),
    }


def storm_digest() -> dict[str, Any]:
    """What the events left behind, by Stripe ids (never our row ids, which depend on arrival
    order): each membership's state, period and paid periods, its grants and ledger totals, and
    each invoice and payment. Needs an app context."""
    from billing.entitlements.models import CreditGrant, LedgerEntry
    from billing.extensions import db
    from billing.memberships.models import Membership
    from billing.payments.models import Invoice, Payment

    db.session.expire_all()
    subs = {
        m.id: m.stripe_subscription_id
        for m in db.session.execute(sa.select(Membership)).scalars()
        if m.stripe_subscription_id
    }
    memberships = {
        m.stripe_subscription_id: (
            m.state,
            m.current_period_start.isoformat() if m.current_period_start else None,
            m.current_period_end.isoformat() if m.current_period_end else None,
            m.paid_periods,
            f"{m.plan_version.plan.code}:v{m.plan_version.version}",
        )
        for m in db.session.execute(sa.select(Membership)).scalars()
        if m.stripe_subscription_id
    }
    grants = sorted(
        (subs[g.membership_id], g.period_start.isoformat(), g.source_ref, g.net_amount_minor)
        for g in db.session.execute(sa.select(CreditGrant)).scalars()
    )
    ledger = sorted(
        (subs[mid], kind, int(q), int(v))
        for mid, kind, q, v in db.session.execute(
            sa.select(
                LedgerEntry.membership_id,
                LedgerEntry.kind,
                sa.func.sum(LedgerEntry.quantity),
                sa.func.sum(LedgerEntry.value_minor),
            ).group_by(LedgerEntry.membership_id, LedgerEntry.kind)
        )
    )
    invoices = sorted(
        (i.stripe_invoice_id, i.status, i.amount_paid_minor, i.net_minor, i.tax_minor)
        for i in db.session.execute(sa.select(Invoice)).scalars()
    )
    payments = sorted(
        (p.kind, p.amount_minor, p.stripe_id or "", p.stripe_payment_intent_id or "")
        for p in db.session.execute(sa.select(Payment)).scalars()
    )
    return {
        "memberships": memberships,
        "grants": grants,
        "ledger": ledger,
        "invoices": invoices,
        "payments": payments,
    }


def event_statuses() -> dict[str, str]:
    from billing.extensions import db
    from billing.stripe_sync.models import StripeEvent

    return dict(db.session.execute(sa.select(StripeEvent.id, StripeEvent.status)).all())


# ---------------------------------------------------------------------------------------------
# Numbers


def percentile(values: Sequence[float], p: float) -> float:
    """The p-th percentile (0-100) by linear interpolation between closest ranks."""
    if not values:
        return float("nan")
    data = sorted(values)
    if len(data) == 1:
        return float(data[0])
    k = (len(data) - 1) * p / 100
    lo = int(k)
    hi = min(lo + 1, len(data) - 1)
    return float(data[lo] + (data[hi] - data[lo]) * (k - lo))


def summarize_ms(latencies_s: Sequence[float]) -> dict[str, float]:
    """Latencies in seconds -> {n, p50, p95, p99, max, mean} in milliseconds."""
    ms = [x * 1000 for x in latencies_s]
    return {
        "n": len(ms),
        "p50": round(percentile(ms, 50), 2),
        "p95": round(percentile(ms, 95), 2),
        "p99": round(percentile(ms, 99), 2),
        "max": round(max(ms), 2) if ms else float("nan"),
        "mean": round(sum(ms) / len(ms), 2) if ms else float("nan"),
    }


def ratio(a: float, b: float) -> float:
    return round(a / b, 3) if b else float("nan")


def print_table(title: str, rows: Sequence[tuple[str, Any]]) -> None:
    width = max(len(str(name)) for name, _ in rows) if rows else 10
    print(f"\n{title}")
    print("-" * (width + 24))
    for name, value in rows:
        shown = f"{value:,.2f}" if isinstance(value, float) else str(value)
        print(f"{name:<{width}}  {shown:>20}")


def emit(result: dict[str, Any], json_out: str | None) -> None:
    """Write the figures for run_all.py (a JSON file) when asked."""
    if json_out:
        Path(json_out).write_text(json.dumps(result, indent=2, default=str))


def machine() -> dict[str, Any]:
    mem_kb = 0
    with contextlib.suppress(OSError), open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": nproc(),
        "ram_gib": round(mem_kb / 1024 / 1024, 1),
        "python": platform.python_version(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }


# ---------------------------------------------------------------------------------------------
# The load generator: the same script re-run in its own process (so it does not share a GIL or
# the seeding process's memory with anything), driving bench/loadgen.py.


# One recorder for every load generator here (bench/loadgen.py's).
Recorder = loadgen.Recorder


def run_driver(script: str, plan: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    """Run `python <script> --drive PLAN --drive-out OUT` and return what it wrote."""
    with tempfile.TemporaryDirectory(prefix="bench-drive-") as tmp:
        plan_path, out_path = Path(tmp, "plan.json"), Path(tmp, "out.json")
        plan_path.write_text(json.dumps(plan))
        completed = subprocess.run(
            [sys.executable, script, "--drive", str(plan_path), "--drive-out", str(out_path)],
            timeout=timeout_s + 60,
            cwd=str(ROOT),
            capture_output=True,
            text=True,
        )
        if completed.returncode != 0 or not out_path.exists():
            raise RuntimeError(
                f"load generator failed ({completed.returncode}):\n{completed.stderr[-4000:]}"
            )
        return json.loads(out_path.read_text())


# ---------------------------------------------------------------------------------------------
# Seeding. The catalogue and keys go through the service layer; volume goes in with bulk
# inserts of the same rows the services would write.

FIRST_NAMES = [
    "Mei",
    "Wei",
    "Jia",
    "Hui",
    "Xin",
    "Li",
    "Ying",
    "Shu",
    "Pei",
    "Siew",
    "Aisha",
    "Nur",
    "Siti",
    "Priya",
    "Anjali",
    "Kavya",
    "Deepa",
    "Rachel",
    "Sarah",
    "Emily",
    "Chloe",
    "Grace",
    "Olivia",
    "Hannah",
    "Sophie",
    "Amelia",
    "Isabel",
    "Charlotte",
    "Zoe",
    "Lucy",
    "Ming",
    "Yan",
    "Farah",
    "Lakshmi",
    "Meera",
    "Divya",
    "Nadia",
    "Yuki",
    "Hana",
    "Sakura",
    "Min",
    "Ji",
    "Seo",
    "Yeon",
    "Ana",
    "Maria",
    "Sofia",
]
LAST_NAMES = [
    "Tan",
    "Lim",
    "Lee",
    "Ng",
    "Ong",
    "Wong",
    "Goh",
    "Chua",
    "Chan",
    "Koh",
    "Teo",
    "Ang",
    "Yeo",
    "Tay",
    "Ho",
    "Low",
    "Toh",
    "Sim",
    "Chong",
    "Chia",
    "Seah",
    "Kumar",
    "Singh",
    "Raj",
    "Pillai",
    "Nair",
    "Menon",
    "Rahman",
    "Ismail",
    "Abdullah",
    "Hassan",
    "Smith",
    "Brown",
    "Taylor",
    "Wilson",
    "Nakamura",
    "Tanaka",
    "Suzuki",
    "Kim",
    "Park",
    "Choi",
    "Nguyen",
    "Tran",
    "Pham",
    "Santos",
    "Reyes",
    "Cruz",
    "Garcia",
    "Fernandez",
]


def member_rows(n: int, *, start: int = 0, seed: int = 7) -> list[dict[str, Any]]:
    """n distinct members with searchable names, emails and Singapore phone numbers."""
    rnd = random.Random(seed + start)
    now = datetime(2026, 1, 5, 2, 0, tzinfo=UTC)
    rows = []
    for i in range(start, start + n):
        first, last = rnd.choice(FIRST_NAMES), rnd.choice(LAST_NAMES)
        email = f"{first.lower()}.{last.lower()}.{i}@example.com"
        phone = f"+65 {8 + i % 2}{i % 1000:03d} {i // 1000 % 10000:04d}"
        rows.append(
            {
                "first_name": first,
                "last_name": last,
                "email": email,
                "email_normalized": email,
                "search_name": f"{first} {last}".lower(),
                "last_name_lower": last.lower(),
                "phone": phone,
                "phone_digits": "".join(ch for ch in phone if ch.isdigit()),
                "notes": "",
                "stripe_customer_id": f"cus_bench{i:07d}",
                "created_at": now,
                "updated_at": now,
            }
        )
    return rows


def in_batches(ids, size: int = 30_000) -> Iterator[list[int]]:
    """Ids in lists a statement can take (PostgreSQL allows 65,535 parameters a statement)."""
    ids = list(ids)
    for i in range(0, len(ids), size):
        yield ids[i : i + size]


def bulk_insert(conn, table: sa.Table, rows: list[dict[str, Any]], *, batch: int = 5000) -> None:
    for i in range(0, len(rows), batch):
        conn.execute(table.insert(), rows[i : i + batch])


def bulk_insert_returning_ids(
    conn, table: sa.Table, rows: list[dict[str, Any]], *, batch: int = 5000
) -> list[int]:
    """Insert and return the new ids in the order of `rows`."""
    ids: list[int] = []
    for i in range(0, len(rows), batch):
        result = conn.execute(
            table.insert().returning(table.c.id, sort_by_parameter_order=True),
            rows[i : i + batch],
        )
        ids.extend(r[0] for r in result)
    return ids


@dataclass
class Catalogue:
    location_id: int
    provider_id: int
    treatment_ids: list[int]
    version_id: int
    items: list[tuple[int, int | None, int]]  # plan_item_id, treatment_id, quantity


def seed_catalogue(*, credits_per_period: int = 4) -> Catalogue:
    """One location, one aesthetician on duty, two spa treatments (no medical rules), and a
    monthly tier granting `credits_per_period` facials and one choice credit. Needs an app
    context."""
    from billing.clinic.models import Location
    from billing.extensions import db
    from billing.plans.models import Plan, PlanItem, PlanItemOption, PlanVersion, Treatment
    from billing.staff.models import DutyShift, Staff

    location = Location(code="orchard", name="Orchard")
    db.session.add(location)
    db.session.flush()
    provider = Staff(name="Bench Aesthetician", role="aesthetician", location_id=location.id)
    db.session.add(provider)
    facial = Treatment(
        code="hydrafacial",
        name="HydraFacial",
        category="spa_facial",
        list_price_minor=18000,
        currency="SGD",
    )
    massage = Treatment(
        code="lymphatic-massage",
        name="Lymphatic Massage",
        category="spa_facial",
        list_price_minor=12000,
        currency="SGD",
    )
    db.session.add_all([facial, massage])
    db.session.flush()
    plan = Plan(code="glow", name="Glow", kind="tier")
    version = PlanVersion(plan=plan, version=1, price_minor=32700, currency="SGD")
    db.session.add_all([plan, version])
    first = PlanItem(
        version=version, position=0, kind="treatment", treatment=facial, quantity=credits_per_period
    )
    choice = PlanItem(version=version, position=1, kind="choice", quantity=1, label="Any one of")
    choice.options = [PlanItemOption(treatment=facial), PlanItemOption(treatment=massage)]
    db.session.add_all([first, choice])
    db.session.flush()
    today = datetime.now(UTC).date()
    db.session.add_all(
        DutyShift(staff_id=provider.id, location_id=location.id, day=today + timedelta(days=d))
        for d in range(-1, 3)
    )
    db.session.commit()
    return Catalogue(
        location_id=location.id,
        provider_id=provider.id,
        treatment_ids=[facial.id, massage.id],
        version_id=version.id,
        items=[(first.id, facial.id, first.quantity), (choice.id, None, choice.quantity)],
    )


def seed_members(n: int, *, start: int = 0) -> list[int]:
    """Bulk insert n members; returns their ids. Needs an app context."""
    from billing.extensions import db
    from billing.members.models import Member

    with db.engine.begin() as conn:
        return bulk_insert_returning_ids(conn, Member.__table__, member_rows(n, start=start))


def subscription_for(customer_id: str) -> str:
    """The Stripe subscription of a seeded member: named after its customer (never a row id, so
    two databases seeded alike name them alike)."""
    return customer_id.replace("cus_", "sub_", 1)


def seed_memberships(
    member_ids: Sequence[int],
    version_id: int,
    *,
    period_start: datetime,
    period_end: datetime,
    state: str = "active",
    with_subscription: bool = False,
) -> list[int]:
    """Bulk insert one active membership per member (as if its first period were paid)."""
    from billing.extensions import db
    from billing.members.models import Member
    from billing.memberships.models import Membership

    customers = {
        mid: customer
        for part in in_batches(member_ids)
        for mid, customer in db.session.execute(
            sa.select(Member.id, Member.stripe_customer_id).where(Member.id.in_(part))
        ).all()
    }
    db.session.rollback()
    rows = [
        {
            "member_id": mid,
            "plan_version_id": version_id,
            "state": state,
            "source": "online" if with_subscription else "desk",
            "started_at": period_start,
            "activated_at": period_start if state != "pending" else None,
            "current_period_start": period_start if state != "pending" else None,
            "current_period_end": period_end if state != "pending" else None,
            "paid_periods": 1 if state != "pending" else 0,
            "payment_attempts": 0,
            "stripe_subscription_id": subscription_for(customers[mid])
            if with_subscription
            else None,
            "created_at": period_start,
            "updated_at": period_start,
        }
        for mid in member_ids
    ]
    with db.engine.begin() as conn:
        return bulk_insert_returning_ids(conn, Membership.__table__, rows)


def grant_rows_bulk(
    membership_ids: Sequence[int],
    *,
    period_start: datetime,
    period_end: datetime,
    source_prefix: str = "bulk",
    actor: str = "bench",
) -> dict[str, int]:
    """Insert, in bulk, exactly the rows grant_period writes for each membership (one grant, its
    credits with their allocated value, one `grant` ledger entry per credit). The same values are
    computed the same way (entitlements.service) once per plan version. Needs an app context.

    Returns row counts."""
    from billing.entitlements import service as ledger
    from billing.entitlements.models import Credit, CreditGrant, EntryKind, LedgerEntry
    from billing.extensions import db
    from billing.memberships.models import Membership
    from billing.money import allocate
    from billing.settings import clinic_settings

    settings = clinic_settings()
    versions = {
        m.id: m.plan_version
        for part in in_batches(membership_ids)
        for m in db.session.execute(sa.select(Membership).where(Membership.id.in_(part))).scalars()
    }
    plans: dict[int, tuple] = {}
    for version in set(versions.values()):
        lines = [(i, i.quantity) for i in version.items]
        net = ledger.version_net_price(version, settings)
        ssps = [ledger.ssp_per_credit(item) for item, _ in lines]
        shares = allocate(net, [s * q for s, (_, q) in zip(ssps, lines, strict=True)])
        expires = ledger.credit_expiry(version, period_start, period_end, settings)
        plans[version.id] = (version, lines, net, ssps, shares, expires)
    db.session.rollback()
    counts = {"grants": 0, "credits": 0, "entries": 0}
    order = list(membership_ids)
    with db.engine.begin() as conn:
        for i in range(0, len(order), 5000):
            chunk = order[i : i + 5000]
            grant_rows = []
            for mid in chunk:
                version, lines, net, *_ = plans[versions[mid].id]
                grant_rows.append(
                    {
                        "membership_id": mid,
                        "period_start": period_start,
                        "period_end": period_end,
                        "source_ref": f"{source_prefix}:{mid}:{period_start:%Y%m%d}",
                        "invoice_id": None,
                        "plan_version_id": version.id,
                        "net_amount_minor": net,
                        "currency": version.currency,
                        "actor": actor,
                        "reason": "",
                        "created_at": period_start,
                    }
                )
            grant_ids = bulk_insert_returning_ids(conn, CreditGrant.__table__, grant_rows)
            credit_rows, meta = [], []
            for mid, gid in zip(chunk, grant_ids, strict=True):
                version, lines, net, ssps, shares, expires = plans[versions[mid].id]
                for (item, qty), ssp, share in zip(lines, ssps, shares, strict=True):
                    credit_rows.append(
                        {
                            "grant_id": gid,
                            "membership_id": mid,
                            "plan_item_id": item.id,
                            "treatment_id": item.treatment_id if item.kind == "treatment" else None,
                            "product_type": "tier",
                            "unit_label": "session",
                            "quantity": qty,
                            "ssp_unit_minor": ssp,
                            "allocated_minor": share,
                            "currency": version.currency,
                            "period_start": period_start,
                            "period_end": period_end,
                            "expires_at": expires,
                            "created_at": period_start,
                        }
                    )
                    meta.append((mid, qty, share, expires, version.currency))
            credit_ids = bulk_insert_returning_ids(conn, Credit.__table__, credit_rows)
            entry_rows = [
                {
                    "credit_id": cid,
                    "membership_id": mid,
                    "kind": EntryKind.GRANT.value,
                    "quantity": qty,
                    "value_minor": share,
                    "currency": currency,
                    "expires_at": expires,
                    "period_start": period_start,
                    "period_end": period_end,
                    "actor": actor,
                    "reason": "granted in bulk",
                    "created_at": period_start,
                }
                for cid, (mid, qty, share, expires, currency) in zip(credit_ids, meta, strict=True)
            ]
            bulk_insert(conn, LedgerEntry.__table__, entry_rows)
            counts["grants"] += len(grant_ids)
            counts["credits"] += len(credit_ids)
            counts["entries"] += len(entry_rows)
    return counts


@contextlib.contextmanager
def statement_counter(engine) -> Iterator[dict[str, int]]:
    """Count the SQL statements sent through `engine` inside the block."""
    counts = {"n": 0}

    def count(*_args, **_kwargs) -> None:
        counts["n"] += 1

    sa.event.listen(engine, "before_cursor_execute", count)
    try:
        yield counts
    finally:
        sa.event.remove(engine, "before_cursor_execute", count)


def api_key(role: str, member_id: int | None = None) -> str:
    """A plaintext API key made through the service (needs an app context)."""
    from billing.auth.service import create_api_key

    _, plaintext = create_api_key(name=f"bench-{role}", role=role, member_id=member_id)
    return plaintext


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def analyze(url: str) -> None:
    """Fresh planner statistics after a bulk load, and its first vacuum done now (hint bits,
    the visibility map): otherwise the run pays for them, or, where autovacuum is on, its first
    pass over every bulk-loaded table lands in the middle of a measurement."""
    engine = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sa.text("VACUUM ANALYZE"))
    engine.dispose()


def base_args(parser, *, quick_help: str = "") -> None:
    parser.add_argument("--json-out", help="also write the figures as JSON to this file")
    parser.add_argument("--workers", type=int, default=default_workers(), help="gunicorn workers")
    parser.add_argument("--keep-db", action="store_true", help="do not drop the database")
    parser.add_argument("--drive", help=argparse_hidden())
    parser.add_argument("--drive-out", help=argparse_hidden())


def argparse_hidden():
    import argparse

    return argparse.SUPPRESS
