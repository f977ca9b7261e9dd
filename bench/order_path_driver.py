"""The driver of ``bench/order_path.py``: it publishes one bar per order at a
fixed rate, joins the acks to their signals, and says what one paced run
measured (``Step``: latencies, backlog, CPU, where the time went).
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
import uuid
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import nats.errors
import orjson
from harness import (  # bench/harness.py
    cpu_busy,
    cpu_by_process,
    cpu_ms_per,
    cpu_sample,
    say,
    store_poller,
)
from nats.aio.msg import Msg
from nats.js import api as js_api

from libs.bus.client import MSG_ID_HEADER, Bus
from libs.bus.pull import PullFetcher
from libs.contract.envelope import WallClock
from libs.contract.events import BarClosed, BarPayload
from libs.contract.subjects import STREAM

#: Named timeouts (seconds).
DRAIN_TIMEOUT = 30.0
#: After a run that did not drain: the chain counts as clear of its backlog
#: once no ack has come for QUIET_S (up to SETTLE_TIMEOUT).
QUIET_S = 3.0
SETTLE_TIMEOUT = 900.0


@dataclass
class Percentiles:
    count: int
    p50_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float

    @classmethod
    def of(cls, latencies_ns: list[int]) -> Percentiles:
        xs = sorted(latencies_ns)
        n = len(xs)

        def q(p: float) -> float:
            return xs[min(n - 1, int(p * n))] / 1e6

        return cls(n, q(0.50), q(0.99), q(0.999), xs[-1] / 1e6)

    def row(self) -> str:
        return f"p50 {self.p50_ms:7.2f}  p99 {self.p99_ms:7.2f}  p99.9 {self.p999_ms:7.2f} ms"


@dataclass
class Step:
    """What one paced run measured."""

    rate: float  # asked for, orders/s
    sent_rate: float  # what the driver achieved
    latencies_ns: list[int]  # in ack arrival order
    seen_ns: list[int]  # when the driver saw each ack (wall clock), same order
    backlog_end: int  # orders not yet acked when the last bar was sent
    cpu: float
    drained: bool
    hops_ms: dict[str, float] = field(default_factory=dict)
    #: The same, over the slowest 1% of orders: which hop the tail comes from.
    slow_hops_ms: dict[str, float] = field(default_factory=dict)
    #: CPU milliseconds each process (and the driver) used per order.
    cpu_ms_per_order: dict[str, float] = field(default_factory=dict)
    #: Order id -> when the driver saw its ack (wall clock ns), for ``--trace``.
    acked_orders: dict[str, int] = field(default_factory=dict)

    @property
    def stats(self) -> Percentiles:
        return Percentiles.of(self.latencies_ns)

    def sustainable(self) -> bool:
        """The chain kept up: the driver kept pace, every ack came, and the
        latency did not climb through the run (a backlog grows)."""
        n = len(self.latencies_ns)
        if not self.drained or n < 20 or self.sent_rate < 0.95 * self.rate:
            return False
        quarter = n // 4
        first = statistics.median(self.latencies_ns[:quarter])
        last = statistics.median(self.latencies_ns[-quarter:])
        growing = last > 2 * first + 2_000_000
        return not growing and self.backlog_end <= max(20, int(0.05 * self.rate))


@dataclass
class Driver:
    """Publishes bars at a rate; joins acks to signals by correlation id.

    It listens to acks only, and reads the run's signals from the stream once
    the acks are in (``_read_signals``): every subscription adds a delivery
    per order to the same two cores it measures, and a signal leaves together
    with its intent, so listening to signals woke the driver just when the
    next hop (the risk-gate, or the floor's relay) needed a core. Where the
    time goes in between comes afterwards from the store (``hop_medians_ms``).
    """

    bus: Bus
    database_url: str
    breakdown: bool  # whether the chain's events carry their own ts_init per hop
    #: The processes whose CPU time is counted per order: name -> (pid, with children).
    processes: dict[str, tuple[int, bool]] = field(default_factory=dict)
    signals: dict[str, int] = field(default_factory=dict)  # signal id -> ts_init
    acks: dict[str, int] = field(default_factory=dict)  # correlation id -> seen at (ns)
    order_ids: dict[str, str] = field(default_factory=dict)  # correlation id -> order id
    ack_order: list[str] = field(default_factory=list)
    target: int = 0
    all_acked: asyncio.Event = field(default_factory=asyncio.Event)
    heard: asyncio.Event = field(default_factory=asyncio.Event)  # an ack came

    async def start(self) -> None:
        await self.bus.nc.subscribe("broker.ack.>", cb=self._on_ack)

    async def _read_signals(self, start_seq: int) -> None:
        """``ts_init`` of the signals stored from ``start_seq`` on, until every
        acked order's signal is known (or none comes for a while)."""
        name = f"bench-signals-{uuid.uuid4().hex[:8]}"
        await self.bus.js.add_consumer(
            STREAM,
            js_api.ConsumerConfig(
                name=name,
                filter_subject="strategy.signal.>",
                deliver_policy=js_api.DeliverPolicy.BY_START_SEQUENCE,
                opt_start_seq=start_seq,
                ack_policy=js_api.AckPolicy.NONE,
                inactive_threshold=60.0,
            ),
        )
        fetcher = PullFetcher(self.bus, STREAM, name)
        await fetcher.start()
        try:
            while any(c not in self.signals for c in self.acks):
                msgs = await fetcher.fetch(4096, timeout=QUIET_S)
                if not msgs:
                    break  # some acked order's signal is not in the stream
                for msg in msgs:
                    event = orjson.loads(msg.data)
                    self.signals[event["id"]] = int(event["ts_init"])
        finally:
            await fetcher.close()
            with contextlib.suppress(nats.errors.Error):
                await self.bus.js.delete_consumer(STREAM, name)

    async def hop_medians_ms(self) -> tuple[dict[str, float], dict[str, float]]:
        """Median time from the signal to each event's ``ts_init`` (as the
        store recorded them), and to the driver seeing the ack: over a sample
        of all orders, and over the slowest 1%."""
        latency = {c: t - self.signals[c] for c, t in self.acks.items() if c in self.signals}
        slowest = sorted(latency, key=latency.__getitem__)[-max(1, len(latency) // 100) :]
        sample = self.ack_order[:: max(1, len(self.ack_order) // 2000)]
        rows: list[Any] = []
        if self.breakdown and self.acks:
            wanted = [uuid.UUID(c) for c in {*sample, *slowest}]
            async with store_poller(self.database_url) as conn:
                deadline = time.monotonic() + DRAIN_TIMEOUT
                query = (
                    "SELECT type, correlation_id, ts_event, ts_init FROM events "
                    "WHERE correlation_id = ANY($1::uuid[])"
                )
                while True:
                    rows = await conn.fetch(query, wanted)
                    accepted = sum(1 for r in rows if r["type"] == "OrderAccepted")
                    if accepted >= len(wanted) or time.monotonic() > deadline:
                        break
                    await asyncio.sleep(0.1)  # polling the store, not synchronisation

        def medians(ids: list[str]) -> dict[str, float]:
            chosen = set(ids)
            by_type: dict[str, list[int]] = {}
            for r in rows:
                corr = str(r["correlation_id"])
                start = self.signals.get(corr)
                if corr in chosen and start is not None and r["type"] != "SignalGenerated":
                    by_type.setdefault(r["type"], []).append(r["ts_init"] - start)
                    if r["type"] == "OrderAccepted":  # its ts_event is the broker's clock
                        by_type.setdefault("accepted at the broker", []).append(
                            r["ts_event"] - start
                        )
            by_type["ack seen by driver"] = [latency[c] for c in ids if c in latency]
            return {
                kind: round(statistics.median(xs) / 1e6, 3)
                for kind, xs in sorted(by_type.items(), key=lambda kv: statistics.median(kv[1]))
                if xs
            }

        return medians(sample), medians(slowest)

    async def _on_ack(self, msg: Msg) -> None:
        seen = time.time_ns()
        self.heard.set()
        event = orjson.loads(msg.data)
        corr = event["correlation_id"]
        if corr not in self.acks:
            self.acks[corr] = seen
            self.order_ids[corr] = str(event["payload"].get("order_id", ""))
            self.ack_order.append(corr)
            if len(self.acks) >= self.target:
                self.all_acked.set()

    async def _settle(self) -> None:
        """Let a backlog the chain did not clear in time flow out, so that it
        does not slow, and count in, the next run."""
        say("waiting for the chain to work off its backlog")
        deadline = time.monotonic() + SETTLE_TIMEOUT
        while time.monotonic() < deadline:
            self.heard.clear()
            try:
                async with asyncio.timeout(QUIET_S):
                    await self.heard.wait()
            except TimeoutError:
                return  # quiet

    async def run(self, orders: int, rate: float) -> Step:
        self.signals.clear()
        self.acks.clear()
        self.order_ids.clear()
        self.ack_order.clear()
        self.target = orders
        self.all_acked.clear()
        bars = [_bar(i) for i in range(orders)]
        first_seq = int((await self.bus.js.stream_info(STREAM)).state.last_seq) + 1
        cpu0, by_process0 = cpu_sample(), cpu_by_process(self.processes)
        start = time.monotonic()
        for i, data in enumerate(bars):
            due = start + i / rate
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)  # pacing the producer, not synchronisation
            await self.bus.nc.publish(
                "md.bar.1m.AAPL", data, headers={MSG_ID_HEADER: uuid.uuid4().hex}
            )
        sent_for = time.monotonic() - start
        backlog = orders - len(self.acks)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(DRAIN_TIMEOUT):
                await self.all_acked.wait()
        cpu = cpu_busy(cpu0, cpu_sample())
        cpu_per_order = cpu_ms_per(by_process0, cpu_by_process(self.processes), orders)
        await self._read_signals(first_seq)
        joined = [c for c in self.ack_order if c in self.signals]
        latencies = [self.acks[c] - self.signals[c] for c in joined]
        hops, slow_hops = await self.hop_medians_ms()
        if len(latencies) < orders:
            await self._settle()
        return Step(
            rate=rate,
            sent_rate=orders / sent_for if sent_for > 0 else float("inf"),
            latencies_ns=latencies,
            seen_ns=[self.acks[c] for c in joined],
            backlog_end=backlog,
            cpu=cpu,
            drained=len(latencies) >= orders,
            hops_ms=hops,
            slow_hops_ms=slow_hops,
            cpu_ms_per_order=cpu_per_order,
            acked_orders={self.order_ids[c]: self.acks[c] for c in joined},
        )


_CLOCK = WallClock()


def _bar(i: int) -> bytes:
    now = time.time_ns()
    close = Decimal(100) + Decimal(i % 100) / 100
    event = BarClosed.create(
        BarPayload(
            symbol="AAPL",
            interval="1m",
            open=close,
            high=close,
            low=close,
            close=close,
            volume=Decimal(1000),
            start_ns=now - 60_000_000_000,
            end_ns=now,
            feed="synthetic",
        ),
        source="bench/marketdata",
        clock=_CLOCK,
    )
    return event.model_dump_json().encode()
