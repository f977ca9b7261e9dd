"""Recorder throughput against the raw speed of JetStream and of Postgres COPY.

``make bench`` runs this. On its own nats-server and PostgreSQL (fresh
store and data directories under a temporary directory, Postgres with
fsync on as in production) it measures, with N events (``--events``) and P
producer processes (``--producers``):

1. raw publish: P processes publish N events in total with
   ``Bus.publish_many`` (each acked), no recorder: N / (first start to last
   finish);
2. raw COPY: the N rows the recorder would build (``to_row``) copied into a
   fresh ``events`` table in batches of the recorder's batch size, one
   transaction per batch, nothing else;
3. the recorder as its own process: end to end (recorder idle on an empty
   stream, then the producers publish N events: N / (producers' start until
   the store holds N rows)), and drain (the stream already holds N events:
   rows per second from the first committed batch to the last).

For the raw COPY and the drain it also gives the CPU time PostgreSQL (the
server and its processes) took per row: what a change to the table (an
index) costs it, in a figure that hardly moves when other work shares the
cores, as the rates do.

With fsync off (unless ``--no-fsync-off``) the COPY and recorder figures
are taken again on a second server. ``--revision REV`` migrates the stores
to REV instead of head: two runs, at the revision before a migration and
at head, say what it costs the recorder (an index, say).

Progress goes to stderr; stdout gets a table and, as its last line, one JSON
object. Everything it starts is stopped and removed on exit, Ctrl-C included.
The figures are only as quiet as the machine: other work on the same cores
(tests, builds) lowers them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import (  # bench/harness.py
    RECORDER_START_TIMEOUT,
    STOP_TIMEOUT,
    BenchError,
    Children,
    Database,
    Options,
    Published,
    Publishers,
    check_timeline,
    consumer_exists,
    cpu_busy,
    cpu_sample,
    fresh_stream,
    metric,
    process_cpu_s,
    recorder_process,
    say,
    store_poller,
    stream_holds,
    wait_for_rows,
)

from libs.contract.codec import DEFAULT_MAX_BYTES, encode
from libs.contract.subjects import subject_for
from libs.local.servers import NatsServer, PostgresServer
from libs.store.layout import COPY_COLUMNS
from libs.testing.producer import make_trades
from services.recorder.domain.rows import StreamMessage, to_row

TARGET_RATIO = 0.8
TARGET_EVENTS_PER_S = 15_000

# ---------------------------------------------------------------- the phases


@dataclass
class Rows:
    """The recorder's rows for N events, and what building them cost."""

    tuples: list[tuple[Any, ...]]
    convert_rows_per_s: float
    tuple_rows_per_s: float


def build_rows(events: int) -> Rows:
    """Rows exactly as the recorder builds them: wire bytes -> ``to_row`` -> tuple."""
    now = time.time_ns()
    msgs = [
        StreamMessage(seq, subject_for(e), encode(e), {"Nats-Msg-Id": str(e.id)}, now)
        for seq, e in enumerate(make_trades(events, "bench-copy"), start=1)
    ]
    t0 = time.perf_counter()
    rows = [to_row(m, max_bytes=DEFAULT_MAX_BYTES).row for m in msgs]
    t1 = time.perf_counter()
    tuples = [tuple(r) for r in rows]
    t2 = time.perf_counter()
    return Rows(tuples, events / (t1 - t0), events / (t2 - t1))


def postgres_cpu_s(db: Database) -> float:
    """CPU seconds PostgreSQL has used so far: the server and its live
    processes (backends, WAL writer, checkpointer). Unlike a rate, what it
    takes per row hardly moves when other work shares the cores."""
    proc = db.server.proc
    return process_cpu_s(proc.pid, tree=True) if proc is not None else 0.0


async def raw_copy(db: Database, rows: Rows, batch: int) -> tuple[float, float, float]:
    """Rows/s of bare COPY batches, one transaction each, into a fresh table,
    the share of the machine's CPU busy meanwhile, and PostgreSQL's CPU µs per row."""
    url = await db.fresh("copy")
    async with store_poller(url) as conn:
        cpu0, pg0 = cpu_sample(), postgres_cpu_s(db)
        t0 = time.perf_counter()
        for i in range(0, len(rows.tuples), batch):
            async with conn.transaction():
                await conn.copy_records_to_table(
                    "events", records=rows.tuples[i : i + batch], columns=COPY_COLUMNS
                )
        seconds = time.perf_counter() - t0
        cpu, pg_us = cpu_busy(cpu0, cpu_sample()), (postgres_cpu_s(db) - pg0) * 1e6
    await check_timeline(url, len(rows.tuples))
    return len(rows.tuples) / seconds, cpu, pg_us / len(rows.tuples)


async def raw_publish(children: Children, work: Path, nats_url: str, opts: Options) -> Published:
    await fresh_stream(nats_url)
    group = Publishers(children, nats_url, opts.events, opts.producers, "raw")
    await group.ready(work)
    await group.go()
    published = await group.finish(opts.phase_timeout)
    await stream_holds(nats_url, opts.events)
    return published


@dataclass
class Drain:
    rate: float  # first committed batch to last
    rate_with_startup: float  # process start to last
    # Sum of per-batch latencies (convert -> committed -> acked) from the
    # recorder's metrics; batches overlap (two-stage pipeline), so this is a
    # latency figure, not a rate.
    batch_seconds: float
    batches: int
    wall: float
    cpu: float  # share of the machine's CPU busy while draining
    postgres_us_per_event: float  # PostgreSQL's CPU, recorder start to the last row


async def drain(
    children: Children, work: Path, nats_url: str, db: Database, opts: Options, label: str
) -> Drain:
    """Start a recorder on the pre-filled stream and time it recording."""
    await stream_holds(nats_url, opts.events)
    url = await db.fresh(f"drain_{label}")
    async with store_poller(url) as conn:
        spawned, pg0 = time.monotonic(), postgres_cpu_s(db)
        rec = recorder_process(children, work, nats_url, url, opts.batch_size, f"drain-{label}")
        got = await wait_for_rows(
            conn, opts.events, interval=opts.poll_interval, timeout=opts.phase_timeout, recorder=rec
        )
        # Before the recorder's backend exits with its connection.
        pg_us = (postgres_cpu_s(db) - pg0) * 1e6
    page = rec.metrics()
    if rec.terminate(timeout=STOP_TIMEOUT) != 0:
        raise BenchError(f"recorder did not exit cleanly:\n{rec.log_text()[-2000:]}")
    await check_timeline(url, opts.events)
    wall = got.done_at - got.first_at
    return Drain(
        rate=(opts.events - got.first_seq) / wall,
        rate_with_startup=opts.events / (got.done_at - spawned),
        batch_seconds=metric(page, "tradebus_recorder_batch_seconds_sum"),
        batches=int(metric(page, "tradebus_recorder_batch_seconds_count")),
        wall=wall,
        cpu=cpu_busy(got.first_cpu, got.done_cpu),
        postgres_us_per_event=pg_us / opts.events,
    )


@dataclass
class EndToEnd:
    rate: float
    publish: Published
    lag: float  # from the last publish ack to the last row in the store
    cpu: float  # share of the machine's CPU busy from go to the last row


async def end_to_end(
    children: Children, work: Path, nats_url: str, db: Database, opts: Options, label: str
) -> EndToEnd:
    """Recorder running on an empty stream; producers publish; time to all rows in."""
    await fresh_stream(nats_url)
    url = await db.fresh(f"e2e_{label}")
    rec = recorder_process(children, work, nats_url, url, opts.batch_size, f"e2e-{label}")
    deadline = time.monotonic() + RECORDER_START_TIMEOUT
    while (rec.health() or {}).get("role") != "writer" or not await consumer_exists(nats_url):
        if not rec.alive or time.monotonic() > deadline:
            raise BenchError(f"recorder did not start:\n{rec.log_text()[-2000:]}")
        await asyncio.sleep(0.05)  # polling a process we started
    group = Publishers(children, nats_url, opts.events, opts.producers, f"e2e-{label}")
    await group.ready(work)
    async with store_poller(url) as conn:
        go = await group.go()
        got = await wait_for_rows(
            conn, opts.events, interval=opts.poll_interval, timeout=opts.phase_timeout, recorder=rec
        )
    published = await group.finish(opts.phase_timeout)
    if rec.terminate(timeout=STOP_TIMEOUT) != 0:
        raise BenchError(f"recorder did not exit cleanly:\n{rec.log_text()[-2000:]}")
    await check_timeline(url, opts.events)
    return EndToEnd(
        opts.events / (got.done_at - go),
        published,
        got.done_at - published.end,
        cpu_busy(group.cpu_at_go, got.done_cpu),
    )


@dataclass
class ServerFigures:
    fsync: bool
    copy: float = 0.0
    copy_cpu: float = 0.0
    copy_postgres_us: float = 0.0
    drain: Drain | None = None
    e2e: EndToEnd | None = None


async def postgres_phases(
    children: Children,
    work: Path,
    nats_url: str,
    rows: Rows,
    opts: Options,
    *,
    fsync: bool,
) -> ServerFigures:
    label = "on" if fsync else "off"
    say(f"postgres (fsync {label}): initdb, start, migrate")
    pg = PostgresServer(work / f"pg-fsync-{label}", fsync=fsync)
    try:
        pg.start()
        db = Database(pg)
        await db.migrate_template(opts.revision)
        out = ServerFigures(fsync)
        say(f"raw COPY, fsync {label}: {opts.events} rows in batches of {opts.batch_size}")
        out.copy, out.copy_cpu, out.copy_postgres_us = await raw_copy(db, rows, opts.batch_size)
        say(f"  {out.copy:,.0f} rows/s")
        say(f"recorder drain, fsync {label}: pre-filled stream of {opts.events}")
        out.drain = await drain(children, work, nats_url, db, opts, label)
        say(f"  {out.drain.rate:,.0f} events/s")
        say(f"recorder end to end, fsync {label}: {opts.producers} producers while it runs")
        out.e2e = await end_to_end(children, work, nats_url, db, opts, label)
        say(f"  {out.e2e.rate:,.0f} events/s")
        return out
    finally:
        children.stop_all()
        pg.stop()


# ---------------------------------------------------------------- report


def figures(
    opts: Options, raw_pub: Published, rows: Rows, servers: list[ServerFigures], seconds: float
) -> dict[str, Any]:
    on = servers[0]
    assert on.drain is not None
    assert on.e2e is not None
    e2e = on.e2e.rate
    out: dict[str, Any] = {
        "events": opts.events,
        "producers": opts.producers,
        "batch_size": opts.batch_size,
        "revision": opts.revision,
        "cpu_count": os.cpu_count(),
        "raw_publish_events_per_s": round(raw_pub.rate),
        "raw_copy_rows_per_s": round(on.copy),
        "raw_copy_postgres_cpu_us_per_row": round(on.copy_postgres_us, 2),
        "recorder_end_to_end_events_per_s": round(e2e),
        "recorder_drain_events_per_s": round(on.drain.rate),
        "recorder_drain_postgres_cpu_us_per_event": round(on.drain.postgres_us_per_event, 2),
        "ratio_vs_raw_publish": round(e2e / raw_pub.rate, 3),
        "drain_ratio_vs_raw_publish": round(on.drain.rate / raw_pub.rate, 3),
        "target_ratio": TARGET_RATIO,
        "target_events_per_s": TARGET_EVENTS_PER_S,
        "meets_target": e2e >= TARGET_RATIO * raw_pub.rate and e2e >= TARGET_EVENTS_PER_S,
        "e2e_publish_events_per_s": round(on.e2e.publish.rate),
        "e2e_lag_after_last_publish_s": round(on.e2e.lag, 3),
        "drain_with_startup_events_per_s": round(on.drain.rate_with_startup),
        "drain_mean_batch_latency_ms": round(
            1000 * on.drain.batch_seconds / max(on.drain.batches, 1), 1
        ),
        "to_row_rows_per_s": round(rows.convert_rows_per_s),
        "tuple_rows_per_s": round(rows.tuple_rows_per_s),
        "cpu_busy_share": {
            "raw_publish": round(raw_pub.cpu, 2),
            "raw_copy": round(on.copy_cpu, 2),
            "drain": round(on.drain.cpu, 2),
            "end_to_end": round(on.e2e.cpu, 2),
        },
    }
    for s in servers[1:]:
        assert s.drain is not None
        assert s.e2e is not None
        out["fsync_off"] = {
            "raw_copy_rows_per_s": round(s.copy),
            "raw_copy_postgres_cpu_us_per_row": round(s.copy_postgres_us, 2),
            "recorder_drain_events_per_s": round(s.drain.rate),
            "recorder_end_to_end_events_per_s": round(s.e2e.rate),
            "ratio_vs_raw_publish": round(s.e2e.rate / raw_pub.rate, 3),
        }
    out["bench_seconds"] = round(seconds, 1)
    return out


def table(opts: Options, raw_pub: Published, rows: Rows, servers: list[ServerFigures]) -> str:
    """The human-readable figures: one column per Postgres (fsync on, off)."""
    drains = [s.drain for s in servers if s.drain is not None]
    e2es = [s.e2e for s in servers if s.e2e is not None]
    pad = [""] * (len(servers) - 1)
    lines: list[tuple[str, list[str]]] = [
        ("raw publish (events/s)", [f"{raw_pub.rate:,.0f}", *pad]),
        ("  machine CPU busy", [f"{raw_pub.cpu:.0%}", *pad]),
        ("to_row in-process, 1 core (rows/s)", [f"{rows.convert_rows_per_s:,.0f}", *pad]),
        ("raw COPY (rows/s)", [f"{s.copy:,.0f}" for s in servers]),
        ("  machine CPU busy", [f"{s.copy_cpu:.0%}" for s in servers]),
        ("  PostgreSQL CPU per row (µs)", [f"{s.copy_postgres_us:.1f}" for s in servers]),
        ("recorder end to end (events/s)", [f"{e.rate:,.0f}" for e in e2es]),
        ("  ratio vs raw publish", [f"{e.rate / raw_pub.rate:.2f}" for e in e2es]),
        ("  producers meanwhile (events/s)", [f"{e.publish.rate:,.0f}" for e in e2es]),
        ("  lag after the last ack (s)", [f"{e.lag:.2f}" for e in e2es]),
        ("  machine CPU busy", [f"{e.cpu:.0%}" for e in e2es]),
        ("recorder drain (events/s)", [f"{d.rate:,.0f}" for d in drains]),
        ("  with process start-up (events/s)", [f"{d.rate_with_startup:,.0f}" for d in drains]),
        (
            "  mean batch latency (ms)",
            [f"{1000 * d.batch_seconds / max(d.batches, 1):,.1f}" for d in drains],
        ),
        ("  machine CPU busy", [f"{d.cpu:.0%}" for d in drains]),
        ("  PostgreSQL CPU per event (µs)", [f"{d.postgres_us_per_event:.1f}" for d in drains]),
    ]
    width = max(len(name) for name, _ in lines)
    cols = [f"fsync {'on' if s.fsync else 'off'}" for s in servers]
    out = [
        f"recorder bench: {opts.events:,} events, {opts.producers} producers, "
        f"batch {opts.batch_size}, {os.cpu_count()} CPUs",
        f"{'':<{width}}  " + "  ".join(f"{c:>12}" for c in cols),
    ]
    out += [f"{n:<{width}}  " + "  ".join(f"{v:>12}" for v in vals) for n, vals in lines]
    return "\n".join(out)


# ---------------------------------------------------------------- main


async def bench(opts: Options, work: Path) -> dict[str, Any]:
    started = time.monotonic()
    children = Children()
    say(f"work dir {work}")
    nats_server = NatsServer(work / "nats")
    try:
        say("nats-server: start")
        nats_server.start()
        say(f"raw publish: {opts.producers} producers, {opts.events} events, no recorder")
        raw_pub = await raw_publish(children, work, nats_server.url, opts)
        say(f"  {raw_pub.rate:,.0f} events/s over {raw_pub.seconds:.2f}s")
        say(f"building {opts.events} rows with to_row (as the recorder does)")
        rows = await asyncio.to_thread(build_rows, opts.events)  # stays responsive to Ctrl-C
        servers = [await postgres_phases(children, work, nats_server.url, rows, opts, fsync=True)]
        if opts.fsync_off:
            servers.append(
                await postgres_phases(children, work, nats_server.url, rows, opts, fsync=False)
            )
    finally:
        children.stop_all()
        nats_server.stop()
    print(table(opts, raw_pub, rows, servers))
    return figures(opts, raw_pub, rows, servers, time.monotonic() - started)


async def run(opts: Options, work: Path) -> dict[str, Any]:
    """:func:`bench`, cancelled on Ctrl-C or SIGTERM so that every ``finally``
    (processes, servers) runs before the work directory is removed."""
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    interrupted = asyncio.Event()

    def interrupt() -> None:
        if not interrupted.is_set():
            say("interrupted: stopping everything")
        interrupted.set()
        task.cancel()

    async def keep_cancelling() -> None:
        # Python 3.11's wait_for can swallow a cancellation that races with
        # the awaited future completing (nats-py uses it; our code no longer
        # does, and asyncpg has its own, 3.12-style); cancel again until the
        # bench has unwound.
        await interrupted.wait()
        while True:
            await asyncio.sleep(0.5)
            task.cancel()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, interrupt)
    watchdog = asyncio.create_task(keep_cancelling())
    try:
        return await bench(opts, work)
    finally:
        watchdog.cancel()


@contextlib.contextmanager
def workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="tradebus-bench-"))
    try:
        yield path
    finally:
        # Postgres files belong to its own user when we are root: still ours to delete.
        shutil.rmtree(path, ignore_errors=True)


def parse_args(argv: list[str] | None = None) -> Options:
    ap = argparse.ArgumentParser(
        description="Recorder throughput vs raw JetStream publish and raw Postgres COPY."
    )
    ap.add_argument("--events", type=int, default=60_000, help="events per phase (60000)")
    ap.add_argument("--producers", type=int, default=2, help="producer processes (2)")
    ap.add_argument("--batch-size", type=int, default=2000, help="recorder batch size (2000)")
    ap.add_argument(
        "--no-fsync-off", dest="fsync_off", action="store_false",
        help="skip the second pass on a Postgres with fsync off",
    )  # fmt: skip
    ap.add_argument("--poll-interval", type=float, default=0.01, help="store poll interval (s)")
    ap.add_argument(
        "--revision", default="head",
        help="migrate the store to this revision (head): what a migration costs the recorder",
    )  # fmt: skip
    a = ap.parse_args(argv)
    if a.events < a.producers or a.producers < 1 or a.batch_size < 1:
        ap.error("need --events >= --producers >= 1 and --batch-size >= 1")
    return Options(a.events, a.producers, a.batch_size, a.fsync_off, a.poll_interval, a.revision)


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    # Closing a bus logs "nats disconnected" as a warning; here that is expected.
    logging.getLogger("libs.bus.client").setLevel(logging.ERROR)
    try:
        with workdir() as work:
            result = asyncio.run(run(opts, work))
    except (KeyboardInterrupt, asyncio.CancelledError):
        say("interrupted; everything stopped and removed")
        return 130
    except BenchError as e:
        say(f"failed: {e}")
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
