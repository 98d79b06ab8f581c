"""gunicorn settings for production (gunicorn reads ./gunicorn.conf.py by itself).

Threaded workers, because the front desk, the pages and Stripe keep their connections open: a
sync worker closes the connection after every response, so each request paid for a new TCP
connection and a worker sat idle while PostgreSQL answered. Measured on 2 cores (bench/README.md):
the plain /healthz went from ~750 to ~2,300 requests/s. Override with the environment.

Two threads a worker, not four: a request here is mostly Python with short waits on PostgreSQL,
so on 2 cores a few requests in flight keep both cores busy, and more only queue for the GIL and
the CPUs instead of in gunicorn, at a cost. Measured (bench/redeem_load.py, interleaved pairs
of runs, 32 desks): at 150 redemptions/s offered a lower p95 with 3 workers x 2 threads than with
3 x 4 in 5 pairs of 6, and ~14 % less CPU a request (gunicorn's and PostgreSQL's) at saturation,
lower in 11 pairs of 13; 4 x 2 was worse than 3 x 2 (README: Benchmarks). A request
that waits on Stripe (a card charged at checkout, a member joining) holds its thread meanwhile:
a site where many do at once can raise GUNICORN_THREADS."""

import os

bind = os.environ.get("GUNICORN_BIND", "127.0.0.1:5000")
workers = int(os.environ.get("GUNICORN_WORKERS", (os.cpu_count() or 1) + 1))
worker_class = "gthread"
threads = int(os.environ.get("GUNICORN_THREADS", 2))
keepalive = int(os.environ.get("GUNICORN_KEEPALIVE", 15))
timeout = int(os.environ.get("GUNICORN_TIMEOUT", 30))
graceful_timeout = 10
max_requests = int(os.environ.get("GUNICORN_MAX_REQUESTS", 0))  # 0: workers are not recycled
accesslog = os.environ.get("GUNICORN_ACCESSLOG") or None
# Each worker listens on its own socket (SO_REUSEPORT) and the kernel spreads new connections
# across them. On one shared socket, whichever worker woke first took a burst of keep-alive
# connections: 31 of 32 desks on one worker was seen, capping the server at what one process
# does (bench/redeem_load.py: ~155 redemptions/s instead of ~265).
reuse_port = os.environ.get("GUNICORN_REUSE_PORT", "true").lower() == "true"
