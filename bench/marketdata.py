"""Polygon feed throughput against the raw JetStream publish rate, and the
cost of option marks, in one run.

``make bench`` runs this. On its own nats-server (fresh, under a temporary
directory) it measures, with N Polygon records (``--events``: trades and
quotes alternating over eight stocks, ``--option-share`` of the quotes, a
quarter by default, of four option contracts instead; ``--frame-size``
records per WebSocket frame as Polygon batches them):

1. **feed**: a fake Polygon WebSocket server in its own process sends the N
   records, pre-encoded, as fast as the connection takes them; the real
   ``PolygonSource`` parses them and publishes through the service's
   ``JetStreamSink``, without marks. Rate = N / (the server starting to send
   until JetStream has acknowledged the N-th record's event).
   ``time.monotonic`` is the system's monotonic clock, the same in both
   processes.
2. **marks**: the same, the sink making option marks as the service does
   (``OptionMarks`` with the service's default ``TRADEBUS_MARK_*`` policy,
   through ``run_source`` so held quotes are marked when due; the records'
   times start at the wall clock, so the throttle and standing quotes behave
   as live). Rate = N records / the same span; the marks are published on
   top, and counted. ``--mark-every-quote`` marks every option quote
   instead (no interval, no minimum change): the most marks can cost.
3. **raw**: ``Bus.publish_many`` of the N records' events, already built,
   with the sink's window of unacknowledged publishes. Rate = N / its
   duration.

The option records go over the stocks connection (the fake sends the frames
as they are; the parser does not care which market a record came on), so
both feed paths hold one connection.

Each figure is the median of ``--rounds`` rounds, alternating, each on a
freshly created stream (so deduplication never helps). The target is feed
>= 0.7 x raw. The cost of marks is ``marks_ratio`` = marks / feed (rates,
1.0 = free) and ``marks_cpu_ratio`` = feed / marks (CPU per record). Beside
the rates it reports this process's CPU time per record on each path, whose
ratios move much less than the rates when other work shares the cores. Every
path runs with the garbage collector as the feed sets it
(``collector_tuned_for_throughput``). ``--profile FILE`` writes a cProfile
of one more feed round with marks.

Progress goes to stderr; stdout gets a short table and, as its last line,
one JSON object with the figures and their units. Other work on the same
cores lowers both figures; the ratio is what to compare across runs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import dataclasses
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
from libs.contract.events import FeedStatusChanged, MarkUpdated
from libs.local.servers import NatsServer
from libs.testing.fakes.polygon_data import quote, trade
from libs.testing.fakes.polygon_ws import FakePolygonWs, encode_frame
from services.marketdata.adapters.polygon.client import (
    PolygonSource,
    collector_tuned_for_throughput,
)
from services.marketdata.adapters.polygon.parse import FrameParser
from services.marketdata.config import MarketdataSettings
from services.marketdata.domain.marks import MarkPolicy, OptionMarks
from services.marketdata.domain.staleness import AlwaysOpen
from services.marketdata.main import flush_every_s, run_source
from services.marketdata.sink import WINDOW, JetStreamSink

TARGET_RATIO = 0.7
SYMBOLS = ("AAPL", "MSFT", "NVDA", "SPY", "QQQ", "AMZN", "TSLA", "META")
OPTIONS = (
    "O:SPY241220P00720000",
    "O:SPY241220C00600000",
    "O:AAPL250117C00200000",
    "O:QQQ241220P00500000",
)
KEY = "bench-key"


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def is_option_quote(quote_index: int, share: float) -> bool:
    """Whether the ``quote_index``-th quote is an option's: ``share`` of them,
    spread evenly (the one where the running count of options steps up)."""
    return int((quote_index + 1) * share) > int(quote_index * share)


def make_frames(
    events: int, frame_size: int, *, option_share: float = 0.0, t0_ms: int = 1_700_000_040_000
) -> list[str]:
    """Polygon frames of trades and quotes (alternating), ``frame_size`` records
    each; ``option_share`` of the quotes are of the four :data:`OPTIONS`
    (around 1 to 6, a cent or more apart: each moves its midpoint by more
    than the marks' minimum change, its spread far narrower than their
    limit). Ten records per millisecond from ``t0_ms``."""
    records: list[dict[str, Any]] = []
    options = 0
    for i in range(events):
        sym = SYMBOLS[i % len(SYMBOLS)]
        seq = i // len(SYMBOLS) + 1
        t = t0_ms + i // 10
        cents = Decimal(i % 500) / 100
        if i % 2:
            records.append(trade(sym, seq, t, Decimal("100") + cents, 100, conditions=(12, 37)))
        elif is_option_quote(i // 2, option_share):
            contract = OPTIONS[options % len(OPTIONS)]
            options += 1
            bid = Decimal("1.00") + cents
            records.append(quote(contract, options, t, bid, bid + Decimal("0.05")))
        else:
            records.append(quote(sym, seq, t, Decimal("99.99") + cents, Decimal("100.01") + cents))
    return [encode_frame(records[i : i + frame_size]) for i in range(0, len(records), frame_size)]


def is_record(event: Event) -> bool:
    """An event made from one of the feed's records (not a status, not a mark)."""
    return not isinstance(event, FeedStatusChanged | MarkUpdated)


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


class AckCounter(JetStreamSink):
    """The service's JetStream sink, noting when the N-th record's event is
    acknowledged (statuses and marks are not records)."""

    def __init__(self, bus: Bus, target: int, marks: OptionMarks | None = None) -> None:
        super().__init__(bus, marks=marks)
        self.target = target
        self.data = 0
        self.done = asyncio.Event()
        self.done_at = 0.0
        self.calls = 0
        #: Marks acknowledged (with their quotes, and held ones when due).
        self.marks_published = 0

    async def publish(self, events: Sequence[Event]) -> None:
        await super().publish(events)
        self.calls += 1
        self.data += sum(is_record(e) for e in events)
        if self.data >= self.target and not self.done.is_set():
            self.done_at = time.monotonic()
            self.done.set()

    async def _send(self, events: Sequence[Event]) -> None:
        await super()._send(events)
        if self.marks is not None:
            self.marks_published += sum(type(e) is MarkUpdated for e in events)


async def fresh_stream(bus: Bus) -> None:
    for info in await bus.js.streams_info():
        assert info.config.name is not None
        await bus.js.delete_stream(info.config.name)
    await bus.ensure_stream()


@dataclass
class Round:
    rate: float  # records per second
    cpu_us: float  # this process's CPU time per record, microseconds
    marks: int = 0  # marks published


async def feed_round(
    bus: Bus,
    ws_url: str,
    events: int,
    started: Any,
    timeout: float,
    marks: MarkPolicy | None = None,
) -> Round:
    """One feed round; with ``marks``, the sink makes option marks by that policy."""
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
    clock = WallClock()
    source = PolygonSource(settings, clock=clock, hours=AlwaysOpen())
    sink = AckCounter(bus, events, OptionMarks(marks) if marks is not None else None)
    stop = asyncio.Event()
    cpu = time.process_time()
    task = asyncio.create_task(
        run_source(source, sink, stop, clock, flush_every_s=flush_every_s(settings))
    )
    try:
        async with asyncio.timeout(timeout):
            await sink.done.wait()
        cpu = time.process_time() - cpu
        made = sink.marks_published
        began = await asyncio.to_thread(started.get, True, 10)
    finally:
        stop.set()
        await task
    path = "marks" if marks is not None else "feed"
    say(f"  {path}: {sink.calls} sink calls, {events / max(1, sink.calls):.0f} records per call")
    return Round(events / (sink.done_at - began), cpu / events * 1e6, made)


async def raw_round(bus: Bus, prebuilt: list[Event]) -> Round:
    await fresh_stream(bus)
    # The collector as the feed runs it (PolygonSource.run), for a fair baseline.
    with collector_tuned_for_throughput():
        cpu = time.process_time()
        began = time.monotonic()
        sent = await bus.publish_many(prebuilt, window=WINDOW)
        wall = time.monotonic() - began
    return Round(sent / wall, (time.process_time() - cpu) / sent * 1e6)


def mark_policy(every_quote: bool) -> MarkPolicy:
    """The service's default marks policy, or one marking every option quote."""
    policy = MarketdataSettings().mark_policy()
    if every_quote:
        # Every other setting the service's: a new one comes along unedited.
        return dataclasses.replace(policy, min_interval_ns=0, min_change=Decimal(0))
    return policy


async def bench(opts: argparse.Namespace, work: Path) -> dict[str, Any]:
    frames = make_frames(
        opts.events,
        opts.frame_size,
        option_share=opts.option_share,
        t0_ms=time.time_ns() // 1_000_000,
    )
    parser = FrameParser(source="marketdata/bench", clock=WallClock())
    prebuilt = [e for f in frames for e in parser.parse(f).events]
    assert len(prebuilt) == opts.events
    option_quotes = sum(e.payload.symbol.startswith("O:") for e in prebuilt)
    policy = mark_policy(opts.mark_every_quote)
    # What the bench itself keeps (frames, pre-built events) is not the
    # service's: keep it out of the garbage collector's way for both paths.
    gc.collect()
    gc.freeze()
    frames_file = work / "frames.json"
    frames_file.write_text(json.dumps(frames))
    say(
        f"{opts.events} records in {len(frames)} frames of {opts.frame_size},"
        f" {option_quotes} option quotes"
    )

    nats = NatsServer(work / "nats").start()
    ctx = mp.get_context("spawn")
    ready, started = ctx.Queue(), ctx.Queue()
    rounds = 2 * opts.rounds + (1 if opts.profile else 0)  # feed and marks rounds
    child = ctx.Process(
        target=serve_frames, args=(str(frames_file), ready, started, rounds), daemon=True
    )
    child.start()
    try:
        ws_url = await asyncio.to_thread(ready.get, True, 30)
        async with await Bus.connect(nats.url, name="bench/marketdata") as bus:
            raw: list[Round] = []
            feed: list[Round] = []
            marked: list[Round] = []
            for r in range(opts.rounds):
                raw.append(await raw_round(bus, prebuilt))
                feed.append(await feed_round(bus, ws_url, opts.events, started, opts.timeout))
                marked.append(
                    await feed_round(bus, ws_url, opts.events, started, opts.timeout, policy)
                )
                say(
                    f"round {r + 1}: raw {raw[-1].rate:,.0f}/s ({raw[-1].cpu_us:.1f} us CPU/event),"
                    f" feed {feed[-1].rate:,.0f}/s ({feed[-1].cpu_us:.1f} us CPU/event),"
                    f" marks {marked[-1].rate:,.0f}/s ({marked[-1].cpu_us:.1f} us CPU/event,"
                    f" {marked[-1].marks} marks)"
                )
            if opts.profile:
                profiler = cProfile.Profile()
                profiler.enable()
                await feed_round(bus, ws_url, opts.events, started, opts.timeout, policy)
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
    marks_rate = statistics.median(r.rate for r in marked)
    raw_cpu = statistics.median(r.cpu_us for r in raw)
    feed_cpu = statistics.median(r.cpu_us for r in feed)
    marks_cpu = statistics.median(r.cpu_us for r in marked)
    return {
        "bench": "marketdata",
        "events": opts.events,
        "frame_size": opts.frame_size,
        "rounds": opts.rounds,
        "option_quotes": option_quotes,
        "marks_policy": "every option quote" if opts.mark_every_quote else "service default",
        "raw_publish_events_per_s": round(raw_rate),
        "feed_events_per_s": round(feed_rate),
        "ratio": round(feed_rate / raw_rate, 3),
        "feed_with_marks_events_per_s": round(marks_rate),
        "marks_published": round(statistics.median(r.marks for r in marked)),
        "marks_ratio": round(marks_rate / feed_rate, 3),
        "raw_cpu_us_per_event": round(raw_cpu, 1),
        "feed_cpu_us_per_event": round(feed_cpu, 1),
        "feed_with_marks_cpu_us_per_event": round(marks_cpu, 1),
        "cpu_ratio": round(raw_cpu / feed_cpu, 3),
        "marks_cpu_ratio": round(feed_cpu / marks_cpu, 3),
        "target_ratio": TARGET_RATIO,
        "meets_target": feed_rate >= TARGET_RATIO * raw_rate,
        "units": {
            "raw_publish_events_per_s": "events/s acknowledged by JetStream (publish_many)",
            "feed_events_per_s": "Polygon records/s, fake feed to JetStream-acknowledged events",
            "ratio": "feed / raw",
            "feed_with_marks_events_per_s": "Polygon records/s as feed, the sink making marks",
            "marks_published": "marks acknowledged in a marks round (median)",
            "marks_ratio": "feed with marks / feed (1.0: marks cost nothing)",
            "raw_cpu_us_per_event": "microseconds of this process's CPU per event",
            "feed_cpu_us_per_event": "microseconds of this process's CPU per record",
            "feed_with_marks_cpu_us_per_event": "microseconds of this process's CPU per record",
            "cpu_ratio": "raw CPU per event / feed CPU per event (steadier on a busy machine)",
            "marks_cpu_ratio": "feed CPU per record / feed-with-marks CPU per record",
        },
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=60_000)
    ap.add_argument("--frame-size", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--timeout", type=float, default=300.0, help="per feed round, seconds")
    ap.add_argument(
        "--option-share", type=float, default=0.25, help="fraction of quotes of option contracts"
    )
    ap.add_argument(
        "--mark-every-quote",
        action="store_true",
        help="marks without interval or minimum change (the default: the service's policy)",
    )
    ap.add_argument(
        "--profile", metavar="FILE", help="cProfile one more feed round with marks into FILE"
    )
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
            f"feed with marks        {result['feed_with_marks_events_per_s']:>10,} records/s"
            f" ({result['marks_published']:,} marks from {result['option_quotes']:,}"
            f" option quotes, {result['marks_policy']})\n"
            f"marks ratio            {result['marks_ratio']:>10} (with / without)\n"
            f"CPU per event          {result['raw_cpu_us_per_event']:>10} us raw,"
            f" {result['feed_cpu_us_per_event']} us feed (ratio {result['cpu_ratio']}),"
            f" {result['feed_with_marks_cpu_us_per_event']} us with marks"
            f" (ratio {result['marks_cpu_ratio']})"
        )
        print(json.dumps(result))
        return 0
    return 130


if __name__ == "__main__":
    sys.exit(main())
