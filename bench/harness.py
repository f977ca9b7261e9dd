"""What the benchmarks stand on: processes, servers, the store, the clock.

Publisher processes that start on a signal (``bench/publisher.py``), the
recorder as a process, every child tracked so that all of them stop, fresh
streams and fresh databases, polling the store, and the machine's CPU
usage (so that a figure taken on a busy machine says so).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import statistics
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import nats.js.errors

from libs.bus.client import Bus
from libs.contract.envelope import Event
from libs.contract.subjects import RECORDER_CONSUMER, STREAM, subject_for
from libs.local.servers import PostgresServer
from libs.store.layout import COPY_COLUMNS
from libs.store.migrate import upgrade_async
from libs.store.urls import asyncpg_url
from libs.testing.procs import ServiceProcess

HERE = Path(__file__).resolve().parent
PUBLISHER = HERE / "publisher.py"
TEMPLATE_DB = "bench_template"

T = TypeVar("T")

#: Named timeouts (seconds).
READY_TIMEOUT = 60.0
RECORDER_START_TIMEOUT = 30.0
NATS_CONNECT_TIMEOUT = 10.0
STOP_TIMEOUT = 15.0

_T0 = time.monotonic()


def say(message: str) -> None:
    """Progress, to stderr."""
    print(f"[{time.monotonic() - _T0:6.1f}s] {message}", file=sys.stderr, flush=True)


class BenchError(RuntimeError):
    """A phase failed (a process died, a count did not add up, a timeout)."""


CpuSample = tuple[int, int]


def cpu_sample() -> CpuSample:
    """(busy, total) CPU ticks of the whole machine so far; (0, 0) without /proc."""
    try:
        with open("/proc/stat") as f:
            ticks = [int(v) for v in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return 0, 0
    idle = ticks[3] + ticks[4]  # idle + iowait
    return sum(ticks) - idle, sum(ticks)


def cpu_busy(before: CpuSample, after: CpuSample) -> float:
    """Share of all cores busy between two samples: anything near 1.0 means the
    machine, not the code under test, set the pace (and other jobs count too)."""
    total = after[1] - before[1]
    return (after[0] - before[0]) / total if total > 0 else 0.0


_TICK_S = 1.0 / os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 0.01


def _stat_fields(pid: int) -> list[str] | None:
    """``/proc/<pid>/stat`` after the command name (field 3 on); None if gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return None
    return text[text.rfind(")") + 2 :].split()


def process_cpu_s(pid: int, tree: bool = False) -> float:
    """CPU seconds (user + system) a process has used so far; with ``tree``,
    its live children's too (a PostgreSQL server's backends). 0.0 without
    /proc or once the process is gone."""
    fields = _stat_fields(pid)
    if fields is None:
        return 0.0
    total = int(fields[11]) + int(fields[12])  # utime, stime
    if tree:
        with contextlib.suppress(OSError):
            for entry in os.listdir("/proc"):
                if entry.isdigit():
                    child = _stat_fields(int(entry))
                    if child is not None and child[1] == str(pid):  # ppid
                        total += int(child[11]) + int(child[12])
    return total * _TICK_S


def cpu_by_process(pids: dict[str, tuple[int, bool]]) -> dict[str, float]:
    """CPU seconds so far of each named process (``name -> (pid, tree)``),
    and of this process itself as ``driver``."""
    used = {name: process_cpu_s(pid, tree) for name, (pid, tree) in pids.items()}
    used["driver"] = time.process_time()
    return used


def cpu_ms_per(before: dict[str, float], after: dict[str, float], count: int) -> dict[str, float]:
    """CPU milliseconds per unit of work (an order, an event) by process,
    busiest first, with their sum as ``total``."""
    per = {
        name: round((after[name] - before.get(name, 0.0)) * 1000 / count, 3)
        for name in after
        if count > 0
    }
    ordered = dict(sorted(per.items(), key=lambda kv: -kv[1]))
    ordered["total"] = round(sum(per.values()), 3)
    return ordered


def python_speed_ns() -> float:
    """Nanoseconds per iteration of a plain Python loop (best of three).

    A yardstick for the machine, not for tradebus: the same figure from two
    runs says whether the machine itself was faster or slower that day (on
    this kind of machine it has varied about fourfold between sessions), so
    absolute latencies from different days can be compared.
    """
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter_ns()
        total = 0
        for i in range(1_000_000):
            total += i
        best = min(best, (time.perf_counter_ns() - started) / 1_000_000)
    return round(best, 1)


def process_round_trip_us(trips: int = 5_000) -> float:
    """Microseconds for one byte to go to another process and back (median
    of five rounds, over a socket pair): what every hop between two services
    pays at least twice, and what a slow or busy host shows first.

    Forks: call it before an event loop or threads start.
    """
    rounds = []
    for _ in range(5):
        mine, theirs = socket.socketpair()
        child = os.fork()
        if child == 0:  # pragma: no cover - the echoing child
            mine.close()
            for _ in range(trips):
                theirs.send(theirs.recv(1))
            os._exit(0)
        theirs.close()
        started = time.perf_counter_ns()
        for _ in range(trips):
            mine.send(b"x")
            mine.recv(1)
        rounds.append((time.perf_counter_ns() - started) / trips / 1000)
        mine.close()
        os.waitpid(child, 0)
    return round(statistics.median(rounds), 1)


#: The idle gap before each timed piece of work in ``wake_cost_us``: the time
#: between two orders at 200/s.
IDLE_GAP_S = 0.005


def after_idle_us(work: Callable[[T], object], items: Sequence[T], gap_s: float) -> float:
    """Median microseconds of ``work(item)`` over ``items``, each after
    ``gap_s`` seconds of idling (none: back to back, warm).

    The sleep is the idle gap being measured, not a wait for anything.
    """
    took = []
    for item in items:
        if gap_s:
            time.sleep(gap_s)
        started = time.perf_counter_ns()
        work(item)
        took.append(time.perf_counter_ns() - started)
    return round(statistics.median(took) / 1000, 1)


def wake_cost_us(rounds: int = 300) -> dict[str, float]:
    """Microseconds to decode and re-encode one ``SubmitOrder`` (median of
    ``rounds``), warm (back to back) and after ``IDLE_GAP_S`` of idling.

    Every service on the order path handles each message after such a gap,
    so it runs as in the second figure, not the first; their ratio is what
    this host charges for waking up (caches and predictors gone cold while
    the virtual CPU was parked). ``bench/wake_cost.py`` gives the whole curve.
    """
    from libs.contract.codec import decode, encode
    from libs.testing.producer import make_submit_order

    frames = [encode(make_submit_order("yardstick")) for _ in range(rounds)]

    def codec(frame: bytes) -> bytes:
        return encode(decode(frame))

    after_idle_us(codec, frames, 0)  # first touch of the code paths
    warm = after_idle_us(codec, frames, 0)
    idle = after_idle_us(codec, frames, IDLE_GAP_S)
    return {
        "event_codec_warm_us": warm,
        "event_codec_after_idle_us": idle,
        "wake_cost_ratio": round(idle / warm, 1),
    }


# ---------------------------------------------------------------- processes


class Children:
    """Every child process the bench starts, so that all of them are stopped."""

    def __init__(self) -> None:
        self._procs: list[asyncio.subprocess.Process] = []
        self._services: list[ServiceProcess] = []

    def add(self, proc: asyncio.subprocess.Process) -> asyncio.subprocess.Process:
        self._procs.append(proc)
        return proc

    def add_service(self, svc: ServiceProcess) -> ServiceProcess:
        self._services.append(svc)
        return svc

    def stop_all(self) -> None:
        for svc in self._services:
            svc.terminate(timeout=STOP_TIMEOUT)
        for proc in self._procs:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
        self._services.clear()
        self._procs.clear()


@dataclass
class Published:
    """What a group of publisher processes reported."""

    count: int
    go: float  # monotonic time the go signal was sent
    start: float  # earliest publish start
    end: float  # latest publish end
    cpu: float = 0.0  # share of the machine's CPU busy meanwhile

    @property
    def seconds(self) -> float:
        return self.end - self.start

    @property
    def rate(self) -> float:
        return self.count / self.seconds


class Publishers:
    """P publisher processes: start them, let them go together, collect."""

    def __init__(self, children: Children, nats_url: str, events: int, count: int, tag: str):
        self.children = children
        self.nats_url = nats_url
        self.events = events
        self.count = count
        self.tag = tag
        self.procs: list[asyncio.subprocess.Process] = []
        self.go_at = 0.0
        self.cpu_at_go: CpuSample = (0, 0)

    async def ready(self, log_dir: Path) -> None:
        """Start the processes and wait until each has built its events and connected."""
        share, extra = divmod(self.events, self.count)
        for i in range(self.count):
            n = share + (1 if i < extra else 0)
            with (log_dir / f"publisher-{self.tag}-{i}.log").open("ab") as log:
                proc = await asyncio.create_subprocess_exec(
                    sys.executable, str(PUBLISHER),
                    "--nats", self.nats_url, "--count", str(n), "--source", f"bench-{self.tag}-{i}",
                    stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=log,
                )  # fmt: skip
            self.procs.append(self.children.add(proc))
        for proc in self.procs:
            line = await self._line(proc, READY_TIMEOUT)
            if not line.get("ready"):
                raise BenchError(f"publisher not ready: {line}")

    async def go(self) -> float:
        self.cpu_at_go = cpu_sample()
        self.go_at = time.monotonic()
        for proc in self.procs:
            assert proc.stdin is not None
            proc.stdin.write(b"go\n")
        for proc in self.procs:
            assert proc.stdin is not None
            await proc.stdin.drain()
        return self.go_at

    async def finish(self, timeout: float) -> Published:
        results = [await self._line(proc, timeout) for proc in self.procs]
        cpu = cpu_busy(self.cpu_at_go, cpu_sample())
        for proc in self.procs:
            async with asyncio.timeout(STOP_TIMEOUT):
                await proc.wait()
        count = sum(int(r["count"]) for r in results)
        if count != self.events:
            raise BenchError(f"publishers sent {count} events, expected {self.events}")
        return Published(
            count,
            self.go_at,
            min(float(r["start"]) for r in results),
            max(float(r["end"]) for r in results),
            cpu,
        )

    @staticmethod
    async def _line(proc: asyncio.subprocess.Process, timeout: float) -> dict[str, Any]:
        assert proc.stdout is not None
        async with asyncio.timeout(timeout):
            raw = await proc.stdout.readline()
        if not raw:
            await proc.wait()
            raise BenchError(f"publisher exited with {proc.returncode} (see its log)")
        result: dict[str, Any] = json.loads(raw)
        return result


def recorder_process(
    children: Children, work: Path, nats_url: str, database_url: str, batch: int, name: str
) -> ServiceProcess:
    svc = ServiceProcess(
        ["recorder", "run"],
        env={"NATS_URL": nats_url, "DATABASE_URL": database_url, "TRADEBUS_BATCH_SIZE": str(batch)},
        log_path=work / f"recorder-{name}.log",
        name=f"bench-{name}",
    )
    return children.add_service(svc.start())


def metric(text: str, name: str) -> float:
    """One unlabelled sample from a Prometheus text page (0 when absent)."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


# ---------------------------------------------------------------- NATS and Postgres


async def bench_bus(nats_url: str) -> Bus:
    """A bus for the bench's own checks; one that cannot connect fails the
    bench instead of reconnecting forever (as a service's bus would)."""
    async with asyncio.timeout(NATS_CONNECT_TIMEOUT):
        return await Bus.connect(nats_url, name="bench")


async def fresh_stream(nats_url: str) -> None:
    """Delete every stream and create the recorded one, empty."""
    async with await bench_bus(nats_url) as bus:
        for info in await bus.js.streams_info():
            if info.config.name:
                await bus.js.delete_stream(info.config.name)
        await bus.ensure_stream()


async def stream_holds(nats_url: str, events: int) -> None:
    async with await bench_bus(nats_url) as bus:
        state = (await bus.js.stream_info(STREAM)).state
    if (state.first_seq, state.last_seq, state.messages) != (1, events, events):
        raise BenchError(f"stream holds {state.messages} ({state.first_seq}..{state.last_seq})")


async def consumer_exists(nats_url: str) -> bool:
    async with await bench_bus(nats_url) as bus:
        try:
            await bus.js.consumer_info(STREAM, RECORDER_CONSUMER)
        except nats.js.errors.NotFoundError:
            return False
    return True


class Database:
    """Fresh databases on one Postgres server, copied from a migrated template."""

    def __init__(self, server: PostgresServer) -> None:
        self.server = server
        self._serial = 0

    async def migrate_template(self, revision: str = "head") -> None:
        await upgrade_async(self.server.url(TEMPLATE_DB), revision)

    async def fresh(self, label: str) -> str:
        self._serial += 1
        name = f"bench_{label}_{self._serial}"
        conn = await asyncpg.connect(asyncpg_url(self.server.url()))
        try:
            await conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{TEMPLATE_DB}"')
        finally:
            await conn.close()
        return self.server.url(name)


def event_row(seq: int, e: Event) -> tuple[object, ...]:
    """The store's row for ``e`` at ``seq`` (``COPY_COLUMNS``), as the recorder writes it."""
    p = e.payload
    return (
        seq,
        e.id,
        subject_for(e),
        e.type,
        e.ts_event,
        e.ts_init,
        e.source,
        e.correlation_id,
        e.causation_id,
        getattr(p, "strategy", None),
        getattr(p, "account", None),
        getattr(p, "symbol", None),
        p.model_dump_json(),
        None,
    )


async def copy_events(url: str, batches: Iterable[Sequence[Event]], first_seq: int) -> int:
    """Append the events of ``batches`` from ``first_seq`` on (COPY, one per batch,
    with progress every 200,000 rows; then ANALYZE); returns the next seq."""
    conn = await asyncpg.connect(asyncpg_url(url))
    seq = first_seq
    try:
        for batch in batches:
            records = [event_row(seq + k, e) for k, e in enumerate(batch)]
            await conn.copy_records_to_table("events", records=records, columns=COPY_COLUMNS)
            before, seq = seq, seq + len(batch)
            if (seq - first_seq) // 200_000 > (before - first_seq) // 200_000:
                say(f"store: {seq - 1:,} events")
        await conn.execute("ANALYZE events")
    finally:
        await conn.close()
    return seq


@contextlib.asynccontextmanager
async def store_poller(url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(asyncpg_url(url))
    try:
        yield conn
    finally:
        await conn.close()


async def top_seq(conn: asyncpg.Connection) -> int:
    # max(seq) reads one end of the primary key; the recorder writes seq
    # gaplessly from 1, so max(seq) == N means all N rows are in.
    return int(await conn.fetchval("SELECT coalesce(max(seq), 0) FROM events"))


@dataclass
class Arrival:
    first_at: float  # when rows were first seen
    first_seq: int  # how many were in by then
    done_at: float  # when all were seen
    first_cpu: CpuSample
    done_cpu: CpuSample


async def wait_for_rows(
    conn: asyncpg.Connection,
    events: int,
    *,
    interval: float,
    timeout: float,
    recorder: ServiceProcess,
) -> Arrival:
    """Poll the store until it holds ``events`` rows."""
    deadline = time.monotonic() + timeout
    first_at, first_seq, first_cpu = 0.0, 0, cpu_sample()
    while True:
        top = await top_seq(conn)
        now = time.monotonic()
        if top and not first_seq:
            first_at, first_seq, first_cpu = now, top, cpu_sample()
        if top >= events:
            return Arrival(first_at, first_seq, now, first_cpu, cpu_sample())
        if not recorder.alive:
            raise BenchError(f"recorder exited:\n{recorder.log_text()[-2000:]}")
        if now > deadline:
            raise BenchError(f"store holds {top} of {events} rows after {timeout}s")
        await asyncio.sleep(interval)  # polling the store, not synchronisation


async def check_timeline(url: str, events: int) -> None:
    async with store_poller(url) as conn:
        n, lo, hi = await conn.fetchrow("SELECT count(*), min(seq), max(seq) FROM events")
    if (n, lo, hi) != (events, 1, events):
        raise BenchError(f"store holds {n} rows, seq {lo}..{hi}; expected 1..{events}")


@dataclass
class Options:
    events: int
    producers: int
    batch_size: int
    fsync_off: bool
    poll_interval: float
    revision: str = "head"

    @property
    def phase_timeout(self) -> float:
        return 60.0 + self.events / 1000
