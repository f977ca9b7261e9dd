"""Polygon feed throughput against the raw JetStream publish rate, in one run.

``make bench`` runs this. On its own nats-server (fresh, under a temporary
directory) it measures, with N Polygon records (``--events``, trades and
quotes over eight symbols, ``--frame-size`` records per WebSocket frame as
Polygon batches them):

1. **feed**: a fake Polygon WebSocket server in its own process sends the N
   records, pre-encoded, as fast as the connection takes them; the real
   ``PolygonSource`` parses them and publishes through the service's
   ``JetStreamSink``. Rate = N / (the server starting to send until
   JetStream has acknowledged the N-th event). ``time.monotonic`` is the
   system's monotonic clock, the same in both processes.
2. **raw**: ``Bus.publish_many`` of the same N events, already built, with
   the sink's window of unacknowledged publishes. Rate = N / its duration.

Each figure is the median of ``--rounds`` rounds, alternating, each on a
freshly created stream (so deduplication never helps). The target is feed
>= 0.7 x raw. Beside the rates it reports this process's CPU time per event
on each path, whose ratio moves much less than the rates when other work
shares the cores. Both paths run with the garbage collector as the feed sets
it (``collector_tuned_for_throughput``). ``--profile FILE`` writes a cProfile
of one more feed round.

Progress goes to stderr; stdout gets a short table and, as its last line,
one JSON object with the figures and their units. Other work on the same
cores lowers both figures; the ratio is what to compare across runs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import gc
import json
import logging
import multiprocessing as mp
import pstats
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from libs.bus.client import Bus
from libs.contract.envelope import Event, WallClock
from libs.local.servers import NatsServer
from libs.testing.fakes.polygon_data import quote, trade
from libs.testing.fakes.polygon_ws import FakePolygonWs, encode_frame
from services.marketdata.adapters.polygon.client import (
    PolygonSource,
    collector_tuned_for_throughput,
)
from services.marketdata.adapters.polygon.parse import FrameParser
from services.marketdata.config import MarketdataSettings
from services.marketdata.domain.staleness import AlwaysOpen
from services.marketdata.sink import WINDOW, JetStreamSink

TARGET_RATIO = 0.7
SYMBOLS = ("AAPL", "MSFT", "NVDA", "SPY", "QQQ", "AMZN", "TSLA", "META")
KEY = "bench-key"
T0_MS = 1_700_000_040_000


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def make_frames(events: int, frame_size: int) -> list[str]:
    """Polygon frames of trades and quotes (alternating), ``frame_size`` records each."""
    records: list[dict[str, Any]] = []
    for i in range(events):
        sym = SYMBOLS[i % len(SYMBOLS)]
        seq = i // len(SYMBOLS) + 1
        t = T0_MS + i // 10
        cents = Decimal(i % 500) / 100
        if i % 2:
            records.append(trade(sym, seq, t, Decimal("100") + cents, 100, conditions=(12, 37)))
        else:
            records.append(quote(sym, seq, t, Decimal("99.99") + cents, Decimal("100.01") + cents))
    return [encode_frame(records[i : i + frame_size]) for i in range(0, len(records), frame_size)]


# ------------------------------------------------------------ the fake feed


def serve_frames(frames_file: str, ready: Any, started: Any, rounds: int) -> None:
    """Child process: a fake Polygon feed sending every frame to each new subscriber."""
    frames = json.loads(Path(frames_file).read_text())

    async def serve() -> None:
        async with FakePolygonWs(api_key=KEY, max_connections=None) as ws:
            ready.put(ws.url)
            served = 0
            for _ in range(rounds):
                while True:
                    conn = await ws.wait_subscribed("T.AAPL", timeout=120)
                    if conn.number > served:
                        break
                    await asyncio.sleep(0.01)  # polling for the next subscriber
                served = conn.number
                started.put(time.monotonic())
                await ws.send_frames(frames, conn)
            # Keep serving until the parent stops us (its last round may still read).
            await asyncio.Event().wait()

    asyncio.run(serve())


class AckCounter:
    """The service's JetStream sink, noting when the N-th data event is acknowledged."""

    def __init__(self, bus: Bus, target: int) -> None:
        self.sink = JetStreamSink(bus)
        self.target = target
        self.data = 0
        self.done = asyncio.Event()
        self.done_at = 0.0
        self.calls = 0

    async def publish(self, events: Sequence[Event]) -> None:
        await self.sink.publish(events)
        self.calls += 1
        self.data += sum(e.type != "FeedStatusChanged" for e in events)
        if self.data >= self.target and not self.done.is_set():
            self.done_at = time.monotonic()
            self.done.set()


async def fresh_stream(bus: Bus) -> None:
    for info in await bus.js.streams_info():
        assert info.config.name is not None
        await bus.js.delete_stream(info.config.name)
    await bus.ensure_stream()


@dataclass
class Round:
    rate: float  # events per second
    cpu_us: float  # this process's CPU time per event, microseconds


async def feed_round(bus: Bus, ws_url: str, events: int, started: Any, timeout: float) -> Round:
    await fresh_stream(bus)
    settings = MarketdataSettings(
        polygon_api_key=KEY,
        polygon_ws_url=ws_url,
        symbols=",".join(SYMBOLS),
        channels="trades,quotes",
        stale_after_s=3600,
        instance="bench",
        polygon_resume_from_stream=False,
    )
    source = PolygonSource(settings, clock=WallClock(), hours=AlwaysOpen())
    sink = AckCounter(bus, events)
    stop = asyncio.Event()
    cpu = time.process_time()
    task = asyncio.create_task(source.run(sink, stop))
    try:
        await asyncio.wait_for(sink.done.wait(), timeout)
        cpu = time.process_time() - cpu
        began = await asyncio.to_thread(started.get, True, 10)
    finally:
        stop.set()
        await task
    say(f"  feed: {sink.calls} sink calls, {events / max(1, sink.calls):.0f} events per call")
    return Round(events / (sink.done_at - began), cpu / events * 1e6)


async def raw_round(bus: Bus, prebuilt: list[Event]) -> Round:
    await fresh_stream(bus)
    # The collector as the feed runs it (PolygonSource.run), for a fair baseline.
    with collector_tuned_for_throughput():
        cpu = time.process_time()
        began = time.monotonic()
        sent = await bus.publish_many(prebuilt, window=WINDOW)
        wall = time.monotonic() - began
    return Round(sent / wall, (time.process_time() - cpu) / sent * 1e6)


async def bench(opts: argparse.Namespace, work: Path) -> dict[str, Any]:
    frames = make_frames(opts.events, opts.frame_size)
    parser = FrameParser(source="marketdata/bench", clock=WallClock())
    prebuilt = [e for f in frames for e in parser.parse(f).events]
    assert len(prebuilt) == opts.events
    # What the bench itself keeps (frames, pre-built events) is not the
    # service's: keep it out of the garbage collector's way for both paths.
    gc.collect()
    gc.freeze()
    frames_file = work / "frames.json"
    frames_file.write_text(json.dumps(frames))
    say(f"{opts.events} records in {len(frames)} frames of {opts.frame_size}")

    nats = NatsServer(work / "nats").start()
    ctx = mp.get_context("spawn")
    ready, started = ctx.Queue(), ctx.Queue()
    rounds = opts.rounds + (1 if opts.profile else 0)
    child = ctx.Process(
        target=serve_frames, args=(str(frames_file), ready, started, rounds), daemon=True
    )
    child.start()
    try:
        ws_url = await asyncio.to_thread(ready.get, True, 30)
        async with await Bus.connect(nats.url, name="bench/marketdata") as bus:
            raw: list[Round] = []
            feed: list[Round] = []
            for r in range(opts.rounds):
                raw.append(await raw_round(bus, prebuilt))
                feed.append(await feed_round(bus, ws_url, opts.events, started, opts.timeout))
                say(
                    f"round {r + 1}: raw {raw[-1].rate:,.0f}/s ({raw[-1].cpu_us:.1f} us CPU/event),"
                    f" feed {feed[-1].rate:,.0f}/s ({feed[-1].cpu_us:.1f} us CPU/event)"
                )
            if opts.profile:
                profiler = cProfile.Profile()
                profiler.enable()
                await feed_round(bus, ws_url, opts.events, started, opts.timeout)
                profiler.disable()
                profiler.dump_stats(opts.profile)
                stats = pstats.Stats(profiler, stream=sys.stderr)
                stats.sort_stats("cumulative").print_stats(25)
    finally:
        child.terminate()
        child.join(10)
        nats.stop()
    raw_rate = statistics.median(r.rate for r in raw)
    feed_rate = statistics.median(r.rate for r in feed)
    raw_cpu = statistics.median(r.cpu_us for r in raw)
    feed_cpu = statistics.median(r.cpu_us for r in feed)
    return {
        "bench": "marketdata",
        "events": opts.events,
        "frame_size": opts.frame_size,
        "rounds": opts.rounds,
        "raw_publish_events_per_s": round(raw_rate),
        "feed_events_per_s": round(feed_rate),
        "ratio": round(feed_rate / raw_rate, 3),
        "raw_cpu_us_per_event": round(raw_cpu, 1),
        "feed_cpu_us_per_event": round(feed_cpu, 1),
        "cpu_ratio": round(raw_cpu / feed_cpu, 3),
        "target_ratio": TARGET_RATIO,
        "meets_target": feed_rate >= TARGET_RATIO * raw_rate,
        "units": {
            "raw_publish_events_per_s": "events/s acknowledged by JetStream (publish_many)",
            "feed_events_per_s": "Polygon records/s, fake feed to JetStream-acknowledged events",
            "ratio": "feed / raw",
            "raw_cpu_us_per_event": "microseconds of this process's CPU per event",
            "feed_cpu_us_per_event": "microseconds of this process's CPU per event",
            "cpu_ratio": "raw CPU per event / feed CPU per event (steadier on a busy machine)",
        },
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=60_000)
    ap.add_argument("--frame-size", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--timeout", type=float, default=300.0, help="per feed round, seconds")
    ap.add_argument("--profile", metavar="FILE", help="cProfile one more feed round into FILE")
    opts = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    # Closing a bus logs "nats disconnected" as a warning; here that is expected.
    logging.getLogger("libs.bus.client").setLevel(logging.ERROR)
    with (
        tempfile.TemporaryDirectory(prefix="tradebus-bench-md-") as tmp,
        contextlib.suppress(KeyboardInterrupt),
    ):
        result = asyncio.run(bench(opts, Path(tmp)))
        print(
            f"raw JetStream publish  {result['raw_publish_events_per_s']:>10,} events/s\n"
            f"Polygon feed -> acked  {result['feed_events_per_s']:>10,} events/s\n"
            f"ratio                  {result['ratio']:>10} (target >= {TARGET_RATIO})\n"
            f"CPU per event          {result['raw_cpu_us_per_event']:>10} us raw,"
            f" {result['feed_cpu_us_per_event']} us feed (ratio {result['cpu_ratio']})"
        )
        print(json.dumps(result))
        return 0
    return 130


if __name__ == "__main__":
    sys.exit(main())
