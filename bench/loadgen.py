"""A lean HTTP/1.1 load generator: keep-alive connections over asyncio streams, one per desk.

Why not httpx: on 2 cores the load generator shares the CPUs with gunicorn and PostgreSQL, and
httpx spends about a millisecond of CPU per request, which the server then does not have. This
client formats a request with a few string operations and reads a response by Content-Length.
It speaks only what our server answers (HTTP/1.1, Content-Length bodies, keep-alive), to
127.0.0.1 only.

Two ways of driving:

* `closed_loop`: every desk sends its next request as soon as the previous one is answered:
  the most the server can do (saturation throughput).
* `open_loop`: the desks together send at a fixed rate, whatever the server does (each desk on
  its own schedule). A request that has to wait for its desk's previous one counts the wait:
  latency is measured from when the request was due, not from when it was sent, so a slow
  server cannot hide its queue (no "coordinated omission")."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

HOST = "127.0.0.1"


class HttpError(Exception):
    """The connection broke or the answer was not HTTP we understand."""


@dataclass
class Response:
    status: int
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode(errors="replace")


class Connection:
    """One keep-alive connection; reopened when the server closes it."""

    def __init__(self, base_url: str, headers: dict[str, str] | None = None):
        parts = urlsplit(base_url)
        if parts.hostname != HOST:
            raise ValueError("load goes to 127.0.0.1 only")
        self.port = parts.port or 80
        self.fixed = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def _open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(HOST, self.port)

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(OSError):
                await self.writer.wait_closed()
        self.reader = self.writer = None

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        headers: dict[str, str] | None = None,
        timeout: float = 30.0,
    ) -> Response:
        """`body` is serialised to JSON, or sent as it is when it is bytes already (a caller that
        serialises its bodies before the clock starts)."""
        if body is None:
            payload = b""
        elif isinstance(body, bytes):
            payload = body
        else:
            payload = json.dumps(body).encode()
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: {HOST}:{self.port}\r\n{self.fixed}"
            + "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
            + (
                f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
                if body is not None
                else "\r\n"
            )
        )
        return await self.exchange(head.encode() + payload, timeout)

    async def exchange(self, data: bytes, timeout: float = 30.0) -> Response:
        """Send one request's bytes, read its answer. The timeout is a context, not
        asyncio.wait_for: wait_for made a Task of every read, a few microseconds of the load
        generator's CPU a request on the cores the server is measured on."""
        for attempt in (1, 2):  # a keep-alive connection the server closed meanwhile: reopen once
            if self.writer is None:
                await self._open()
            try:
                self.writer.write(data)
                async with asyncio.timeout(timeout):
                    return await self._read()
            except (ConnectionError, asyncio.IncompleteReadError, HttpError):
                await self.close()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    async def _read(self) -> Response:
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        try:
            status = int(lines[0].split(" ", 2)[1])
        except (IndexError, ValueError):
            raise HttpError(f"not an HTTP answer: {lines[0]!r}") from None
        length, close = None, False
        for line in lines[1:]:
            name, _, value = line.partition(":")
            name = name.strip().lower()
            if name == "content-length":
                length = int(value)
            elif name == "connection" and value.strip().lower() == "close":
                close = True
        if length is None:
            raise HttpError("an answer without Content-Length")
        body = await self.reader.readexactly(length) if length else b""
        if close:
            await self.close()
        return Response(status, body)


@dataclass
class Recorder:
    """Latencies (seconds) and outcomes per request kind."""

    latencies: dict[str, list[float]] = field(default_factory=dict)
    statuses: dict[str, dict[str, int]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    started: float = 0.0
    finished: float = 0.0
    late: int = 0  # open loop: requests that could not start when they were due

    def record(self, name: str, seconds: float, status: int | str) -> None:
        self.latencies.setdefault(name, []).append(seconds)
        counts = self.statuses.setdefault(name, {})
        counts[str(status)] = counts.get(str(status), 0) + 1

    def error(self, text: str) -> None:
        if len(self.errors) < 50:
            self.errors.append(text[:500])

    def as_dict(self) -> dict[str, Any]:
        return {
            "latencies": self.latencies,
            "statuses": self.statuses,
            "errors": self.errors,
            "elapsed": self.finished - self.started,
            "late": self.late,
        }


# A desk's step: given its connection, the recorder and the moment the step was due, do one
# unit of work (one or more requests) and record it.
Step = Callable[[int, Connection, Recorder, float], Awaitable[None]]


async def timed(
    rec: Recorder,
    conn: Connection,
    name: str,
    method: str,
    path: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
    due: float | None = None,
) -> Response | None:
    """One request, recorded under `name`; latency from `due` (open loop) or from sending."""
    sent = time.perf_counter()
    try:
        r = await conn.request(method, path, body, headers)
    except Exception as exc:  # a benchmark counts failures, it does not stop
        rec.record(name, time.perf_counter() - (due or sent), type(exc).__name__)
        rec.error(f"{name}: {exc!r}")
        return None
    rec.record(name, time.perf_counter() - (due or sent), r.status)
    if r.status >= 500:
        rec.error(f"{name} {r.status}: {r.text[:300]}")
    return r


async def _run(
    desks: int,
    base_url: str,
    headers: dict[str, str] | None,
    seconds: float,
    loop_body: Callable[[int, Connection, Recorder, float], Awaitable[None]],
) -> Recorder:
    rec = Recorder()
    conns = [Connection(base_url, headers) for _ in range(desks)]
    rec.started = time.perf_counter()
    deadline = rec.started + seconds
    tasks = [asyncio.create_task(loop_body(i, conns[i], rec, deadline)) for i in range(desks)]
    done, pending = await asyncio.wait(tasks, timeout=seconds + 60)
    for task in pending:
        task.cancel()
    for task in done:
        if task.exception() is not None:
            rec.error(f"desk crashed: {task.exception()!r}")
    rec.finished = time.perf_counter()
    for conn in conns:
        await conn.close()
    return rec


async def closed_loop(
    desks: int, base_url: str, step: Step, *, seconds: float, headers=None
) -> Recorder:
    """Each desk runs `step` back to back until the time is up."""

    async def body(i: int, conn: Connection, rec: Recorder, deadline: float) -> None:
        while time.perf_counter() < deadline:
            await step(i, conn, rec, None)

    return await _run(desks, base_url, headers, seconds, body)


async def open_loop(
    desks: int, base_url: str, step: Step, *, rate: float, seconds: float, headers=None
) -> Recorder:
    """The desks together start `rate` steps per second, evenly spread: desk i's k-th step is due
    at start + (k + i / desks) * desks / rate. A desk still busy when its next step is due
    starts it late, and that step's latency includes the wait."""
    interval = desks / rate

    async def body(i: int, conn: Connection, rec: Recorder, deadline: float) -> None:
        due = rec.started + interval * i / desks
        while due < deadline:
            now = time.perf_counter()
            if due > now:
                await asyncio.sleep(due - now)
            elif now - due > 0.001:
                rec.late += 1
            await step(i, conn, rec, due)
            due += interval

    return await _run(desks, base_url, headers, seconds, body)
