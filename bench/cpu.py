"""CPU seconds by process, read from /proc: a server's whole process group and the PostgreSQL
backends serving one database. On a shared 2-core machine throughput moves with whatever else
runs; the CPU a request cost, split by who spent it, moves much less, and says where to look."""

from __future__ import annotations

import os

import sqlalchemy as sa


def proc_cpu(pid: int) -> float:
    """User + system CPU seconds of one process (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def group_pids(pgid: int) -> list[int]:
    """Every process of a process group (a gunicorn started in a session of its own)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.getpgid(int(entry)) == pgid:
                    pids.append(int(entry))
            except OSError:
                continue
    return pids


def backends(url: str) -> list[tuple[int, str]]:
    """(pid, application_name) of the backends connected to `url`'s database, but this one."""
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            return list(
                conn.execute(
                    sa.text(
                        "SELECT pid, application_name FROM pg_stat_activity "
                        "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                    )
                ).all()
            )
    finally:
        engine.dispose()


def server_and_database(server_pgid: int, url: str) -> dict[str, float]:
    """CPU seconds so far of a server's process group and of its database's backends."""
    return {
        "gunicorn": sum(proc_cpu(p) for p in group_pids(server_pgid)),
        "postgres": sum(proc_cpu(p) for p, _name in backends(url)),
    }


def per_request_ms(before: dict, after: dict, requests: int) -> dict[str, float]:
    """ms of CPU a request by who spent it, and their total."""
    if not requests:
        return {}
    ms = {k: (after[k] - before[k]) * 1000 / requests for k in before}
    ms["total"] = sum(ms.values())
    return {k: round(v, 2) for k, v in ms.items()}
