"""Signal-to-broker-ack latency of the order path, against a no-logic floor.

``make bench`` runs this. On its own nats-server and PostgreSQL (fresh, under
a temporary directory) it runs two chains, each hop its own OS process:

- **real**: ``strategy-runner`` (``EchoStrategy``: one signal and one market
  buy intent per bar) -> ``risk-gate`` (caps that accept everything) ->
  ``broker-gateway`` -> ``paper-broker`` over WebSocket -> ``OrderAccepted``
  on ``broker.ack.paper``; the recorder runs too, as in production.
- **floor**: ``bench/relay.py`` processes over the same subjects with no
  logic (strategy-like publisher, relay risk, relay gateway, WebSocket echo),
  with the recorder running as well.

The driver publishes one ``BarClosed`` on ``md.bar.1m.AAPL`` per order at a
fixed rate and subscribes to ``broker.ack.>``; once the acks are in, it reads
the run's signals from the stream (listening to them live would wake it just
as the intent leaves). Latency per order = the wall clock when the driver
sees the ack minus the signal's ``ts_init`` (same machine, same clock). For
each chain: p50 / p99 / p99.9 over ``--orders`` orders at ``--rate`` (200/s), then the maximum
sustainable rate (doubling, then bisecting, until the backlog grows), then
``--orders`` orders at that rate.

Then ``--pairs`` interleaved runs: floor and real alternately, each on
freshly started processes, ``--pair-orders`` orders at ``--rate``; the
median of their p50 ratios (``interleaved`` in the JSON) is what to judge
the ratio target by where the host's speed drifts during a run (on shared
machines one run of each has given 1.2x to 2.5x on the same code).

With ``--trace`` the real chain's services run with ``TRADEBUS_TRACE`` (see
``libs/trace.py``) and, once they have exited, its fixed-rate run is shown
hop by hop inside them: from the intent leaving the runner, through the
gate, the gateway and the paper broker, to the driver seeing the ack
(``trace_hops_at_rate_ms`` in the JSON). The marks cost a little themselves
(the paper broker reads back each segment's last frame to key it), so
compare traced runs with traced runs.

Progress goes to stderr; stdout gets a table and, as its last line, one JSON
object with the figures and their units. Everything started is stopped on
exit. Other work on the same two cores shows up in every figure: the CPU
share is reported with each phase. The JSON's ``machine`` holds yardsticks
of the host taken at the start (a Python loop iteration, a round trip to
another process, an event decoded and encoded warm and after 5 ms idle): on
this kind of machine the same code has run about four times slower on one
day than on another, and these say which; the last one says what a service
pays for waking up between orders (``bench/wake_cost.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import statistics
import tempfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import (  # bench/harness.py
    IDLE_GAP_S,
    fresh_stream,
    process_round_trip_us,
    python_speed_ns,
    say,
    wake_cost_us,
)
from order_path_chains import Chain, FloorChain, RealChain  # bench/order_path_chains.py
from order_path_driver import Driver, Step  # bench/order_path_driver.py

from libs import trace
from libs.bus.client import Bus
from libs.local.servers import NatsServer, PostgresServer
from libs.store.migrate import upgrade_async

TARGET_P99_MS = 5.0
TARGET_P50_RATIO = 1.3


# ------------------------------------------------------------------ the run


@dataclass
class ChainResult:
    at_rate: Step
    max_rate: float
    at_max: Step
    search: list[tuple[float, bool]]
    #: ``--trace``: the fixed-rate run's orders, hop by hop.
    trace_hops: list[trace.Hop] = field(default_factory=list)


@contextlib.asynccontextmanager
async def driving(chain: Chain) -> AsyncIterator[Driver]:
    """``chain`` started on an empty stream, and a driver listening to it."""
    await fresh_stream(chain.nats_url)
    await chain.start()
    async with await Bus.connect(chain.nats_url, name=f"bench-driver-{chain.name}") as bus:
        driver = Driver(
            bus,
            chain.database_url,
            breakdown=isinstance(chain, RealChain),
            processes=chain.processes,
        )
        await driver.start()
        yield driver


async def measure_once(chain: Chain, opts: argparse.Namespace) -> Step:
    """One fixed-rate run of ``--pair-orders`` on freshly started processes."""
    async with driving(chain) as driver:
        chain.check_alive()
        await driver.run(min(opts.warmup, 100), 100)
        chain.check_alive()
        return await driver.run(opts.pair_orders, opts.rate)


async def measure(chain: Chain, opts: argparse.Namespace) -> ChainResult:
    say(f"{chain.name}: starting processes")
    async with driving(chain) as driver:

        async def step(orders: int, rate: float, label: str) -> Step:
            chain.check_alive()
            result = await driver.run(orders, rate)
            ok = result.sustainable()
            if opts.dump:
                dump = Path(opts.dump) / f"{chain.name}-{label.replace(' ', '-')}-{rate:.0f}.csv"
                dump.parent.mkdir(parents=True, exist_ok=True)
                rows = zip(result.seen_ns, result.latencies_ns, strict=True)
                dump.write_text("seen_ns,latency_ns\n" + "".join(f"{a},{b}\n" for a, b in rows))
            say(
                f"{chain.name}: {label} {orders} @ {rate:.0f}/s: sent {result.sent_rate:.0f}/s, "
                f"acked {len(result.latencies_ns)}, backlog at end {result.backlog_end}, "
                f"{result.stats.row() if result.latencies_ns else 'no acks'}, "
                f"cpu {result.cpu:.0%}, {'sustained' if ok else 'NOT sustained'}; "
                f"median ms from the signal: {result.hops_ms}; "
                f"over the slowest 1%: {result.slow_hops_ms}; "
                f"cpu ms per order: {result.cpu_ms_per_order}"
            )
            return result

        await step(opts.warmup, 100, "warm-up")
        at_rate = await step(opts.orders, opts.rate, "fixed rate")

        search: list[tuple[float, bool]] = []

        async def probe(rate: float) -> bool:
            n = max(300, int(rate * opts.probe_seconds))
            ok = (await step(n, rate, "probe")).sustainable()
            search.append((rate, ok))
            return ok

        good, bad = 0.0, 0.0
        rate = opts.rate
        while rate <= opts.rate_cap:
            if await probe(rate):
                good, rate = rate, rate * 2
            else:
                bad = rate
                break
        if bad == 0.0:
            bad = rate
        while good == 0.0 and rate / 2 >= opts.rate_floor:
            # Not even the fixed rate holds: halve until one does.
            rate /= 2
            if await probe(rate):
                good = rate
            else:
                bad = rate
        for _ in range(opts.bisect):
            if good == 0.0 or bad / good < 1.15:
                break
            mid = round((good + bad) / 2, -1)
            if await probe(mid):
                good = mid
            else:
                bad = mid
        max_rate = good or opts.rate_floor
        at_max = await step(opts.orders, max_rate, "max rate")
        # A short probe can hold where the full run does not (a backlog builds
        # slowly): step down until the full run holds too.
        while not at_max.sustainable() and max_rate > opts.rate_floor:
            lower = min(max_rate - 5, round(max_rate * 0.85, -1))  # always lower
            max_rate = max(opts.rate_floor, lower)
            at_max = await step(opts.orders, max_rate, "max rate")
    return ChainResult(at_rate, max_rate, at_max, search)


#: The marks an order passes on the real chain (``libs.trace``), then the driver.
TRACE_PATH = (*trace.ORDER_PATH, "ack seen by driver")


def traced_hops(directory: Path, step: Step) -> list[trace.Hop]:
    """The hops of ``step``'s orders from the services' trace files (plus
    when the driver saw each ack)."""
    if not directory.exists():
        return []
    marks = trace.read(directory)
    wanted = {order: marks.get(order, []) for order in step.acked_orders}
    for order, seen in step.acked_orders.items():
        wanted[order].append((seen, "ack seen by driver"))
    return trace.hop_table(wanted, TRACE_PATH)


def print_hops(hops: list[trace.Hop]) -> None:
    print(f"{'hop (real chain, fixed rate)':<62} {'p50':>7} {'p90':>7} {'p99':>7}")
    for h in hops:
        print(f"{h.start + ' -> ' + h.end:<62} {h.p50_ms:>7.3f} {h.p90_ms:>7.3f} {h.p99_ms:>7.3f}")
    total = sum(h.p50_ms for h in hops)
    print(f"{'sum of the hop medians':<62} {total:>7.3f}")


def table(results: dict[str, ChainResult], opts: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {
        "orders": opts.orders,
        "rate_per_s": opts.rate,
        "units": {"latency": "ms", "rate": "orders/s"},
        "targets": {"p99_ms": TARGET_P99_MS, "p50_ratio_to_floor": TARGET_P50_RATIO},
    }
    print(f"{'chain':<6} {'phase':<18} {'n':>6} {'p50':>8} {'p99':>8} {'p99.9':>8} {'cpu':>5}")
    for name, r in results.items():
        for phase, s in (
            (f"{r.at_rate.rate:.0f}/s", r.at_rate),
            (f"max {r.max_rate:.0f}/s", r.at_max),
        ):
            st = s.stats
            print(
                f"{name:<6} {phase:<18} {st.count:>6} {st.p50_ms:>8.2f} {st.p99_ms:>8.2f} "
                f"{st.p999_ms:>8.2f} {s.cpu:>5.0%}"
            )
        out[name] = {
            "at_rate": _stats_json(r.at_rate),
            "max_sustainable_orders_per_s": r.max_rate,
            "at_max_rate": _stats_json(r.at_max),
            "search": [{"rate": rate, "sustained": ok} for rate, ok in r.search],
        }
        if r.trace_hops:
            print_hops(r.trace_hops)
            out[name]["trace_hops_at_rate_ms"] = [
                {
                    "from": h.start,
                    "to": h.end,
                    "p50_ms": h.p50_ms,
                    "p90_ms": h.p90_ms,
                    "p99_ms": h.p99_ms,
                }
                for h in r.trace_hops
            ]
    if "real" in results and "floor" in results:
        real, floor = results["real"].at_rate.stats, results["floor"].at_rate.stats
        ratio = real.p50_ms / floor.p50_ms if floor.p50_ms else float("inf")
        out["p50_ratio_to_floor"] = round(ratio, 3)
        out["meets_p99_target"] = real.p99_ms <= TARGET_P99_MS
        out["meets_p50_ratio_target"] = ratio <= TARGET_P50_RATIO
        print(
            f"real vs floor at {opts.rate:.0f}/s: p50 {real.p50_ms:.2f} / {floor.p50_ms:.2f} ms "
            f"= {ratio:.2f}x (target <= {TARGET_P50_RATIO}x); real p99 {real.p99_ms:.2f} ms "
            f"(target <= {TARGET_P99_MS} ms)"
        )
    return out


def _stats_json(s: Step) -> dict[str, Any]:
    st = s.stats
    return {
        "count": st.count,
        "p50_ms": round(st.p50_ms, 3),
        "p99_ms": round(st.p99_ms, 3),
        "p99_9_ms": round(st.p999_ms, 3),
        "max_ms": round(st.max_ms, 3),
        "rate_per_s": s.rate,
        "sent_per_s": round(s.sent_rate, 1),
        "cpu_busy": round(s.cpu, 3),
        "sustained": s.sustainable(),
        "median_ms_from_signal_to": s.hops_ms,
        "slowest_1pct_median_ms_from_signal_to": s.slow_hops_ms,
        "cpu_ms_per_order": s.cpu_ms_per_order,
    }


async def run(opts: argparse.Namespace, work: Path, machine: dict[str, float]) -> dict[str, Any]:
    nats_server = NatsServer(work / "nats")
    pg = PostgresServer(work / "pg", fsync=False)
    results: dict[str, ChainResult] = {}
    pairs: dict[int, dict[str, Step]] = {}
    try:
        # What nats-server runs on (libs.local.servers.nats_gomaxprocs); 0: Go's
        # default, a thread per core.
        go_threads = nats_server.go_threads or 0
        machine["nats_gomaxprocs"] = go_threads
        say(f"starting nats-server (GOMAXPROCS {go_threads or 'per core'}) and PostgreSQL")
        nats_server.start()
        pg.start()
        assert nats_server.proc is not None
        assert pg.proc is not None
        servers = {"nats-server": (nats_server.proc.pid, False), "postgres": (pg.proc.pid, True)}
        chains: list[tuple[str, Callable[[str, str], Chain]]] = []
        if not opts.no_floor:
            chains.append(
                ("floor", lambda db, label: FloorChain(work, nats_server.url, db, servers, label))
            )
        if not opts.no_real:
            traced = work / "trace" if opts.trace else None
            chains.append(
                (
                    "real",
                    lambda db, label: RealChain(
                        work,
                        nats_server.url,
                        db,
                        servers,
                        label,
                        trace_dir=None if label else traced,
                    ),
                )
            )
        for name, make in chains:
            db_url = pg.url(f"bench_{name}")
            await upgrade_async(db_url)
            chain = make(db_url, "")
            try:
                results[name] = await measure(chain, opts)
            finally:
                say(f"{name}: stopping processes")
                chain.stop()
            if chain.trace_dir is not None:
                # The services wrote their marks as they exited.
                hops = traced_hops(chain.trace_dir, results[name].at_rate)
                results[name].trace_hops = hops
                if hops:
                    say(f"{name}: hop trace over {hops[0].count} orders of the fixed-rate run")
        if len(chains) == 2:
            for i in range(opts.pairs):
                for name, make in chains:
                    db_url = pg.url(f"bench_{name}_pair{i + 1}")
                    await upgrade_async(db_url)
                    chain = make(db_url, f"-pair{i + 1}")
                    try:
                        step = await measure_once(chain, opts)
                    finally:
                        chain.stop()
                    say(
                        f"pair {i + 1}/{opts.pairs} {name}: "
                        f"{opts.pair_orders} @ {opts.rate:.0f}/s: "
                        f"{step.stats.row() if step.latencies_ns else 'no acks'}, "
                        f"cpu {step.cpu:.0%}, cpu ms per order "
                        f"{step.cpu_ms_per_order.get('total', 0.0)}"
                    )
                    pairs.setdefault(i, {})[name] = step
    finally:
        nats_server.stop()
        pg.stop()
    figures = table(results, opts)
    if pairs:
        figures["interleaved"] = interleaved(pairs, opts)
    figures["machine"] = machine
    return figures


def interleaved(pairs: dict[int, dict[str, Step]], opts: argparse.Namespace) -> dict[str, Any]:
    """Floor and real run alternately on fresh processes: the ratio of each
    pair, and their median, which a host whose speed drifts (as it does on
    shared machines) skews far less than one run of each."""
    runs = []
    for i in sorted(pairs):
        floor, real = pairs[i].get("floor"), pairs[i].get("real")
        if floor is None or real is None or not floor.latencies_ns or not real.latencies_ns:
            continue
        f, r = floor.stats, real.stats
        runs.append(
            {
                "floor_p50_ms": round(f.p50_ms, 3),
                "real_p50_ms": round(r.p50_ms, 3),
                "p50_ratio": round(r.p50_ms / f.p50_ms, 3),
                "floor_p99_ms": round(f.p99_ms, 3),
                "real_p99_ms": round(r.p99_ms, 3),
                "floor_cpu_ms_per_order": floor.cpu_ms_per_order.get("total", 0.0),
                "real_cpu_ms_per_order": real.cpu_ms_per_order.get("total", 0.0),
                "real_sustained": real.sustainable(),
            }
        )
    out: dict[str, Any] = {"orders_per_run": opts.pair_orders, "rate_per_s": opts.rate}
    out["runs"] = runs
    if runs:
        median = statistics.median(run["p50_ratio"] for run in runs)
        out["median_p50_ratio"] = round(median, 3)
        out["meets_p50_ratio_target"] = median <= TARGET_P50_RATIO
        ratios = ", ".join(f"{run['p50_ratio']:.2f}" for run in runs)
        print(
            f"interleaved ({len(runs)} pairs of {opts.pair_orders} @ {opts.rate:.0f}/s): "
            f"p50 ratios {ratios}; median {median:.2f}x (target <= {TARGET_P50_RATIO}x)"
        )
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=10_000, help="orders per measured phase")
    parser.add_argument("--rate", type=float, default=200, help="the fixed rate, orders/s")
    parser.add_argument("--warmup", type=int, default=300, help="orders before measuring")
    parser.add_argument("--probe-seconds", type=float, default=3, help="length of a rate probe")
    parser.add_argument("--rate-cap", type=float, default=6400, help="highest rate probed")
    parser.add_argument("--rate-floor", type=float, default=25, help="lowest rate probed")
    parser.add_argument("--bisect", type=int, default=2, help="bisection probes after doubling")
    parser.add_argument(
        "--pairs", type=int, default=3, help="interleaved floor/real runs after the main phases"
    )
    parser.add_argument("--pair-orders", type=int, default=3000, help="orders per interleaved run")
    parser.add_argument("--no-floor", action="store_true", help="skip the floor chain")
    parser.add_argument("--no-real", action="store_true", help="skip the real chain")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    parser.add_argument(
        "--trace",
        action="store_true",
        help="real chain: hop by hop inside the services (libs.trace), fixed-rate run",
    )
    parser.add_argument("--dump", default="", help="directory for per-order latency CSVs")
    opts = parser.parse_args(argv)
    # Yardsticks of the machine itself (before any loop or thread starts: one
    # forks): latencies from two days compare only as far as these agree.
    machine: dict[str, Any] = {
        "python_loop_ns_per_iteration": python_speed_ns(),
        "process_round_trip_us": process_round_trip_us(),
        **wake_cost_us(),
    }
    say(
        f"machine: a Python loop iteration {machine['python_loop_ns_per_iteration']} ns, "
        f"a round trip to another process {machine['process_round_trip_us']} us, "
        f"an event decoded and encoded in {machine['event_codec_warm_us']} us warm and "
        f"{machine['event_codec_after_idle_us']} us after {IDLE_GAP_S * 1000:g} ms idle"
    )
    work = Path(tempfile.mkdtemp(prefix="tradebus-order-path-"))
    say(f"work directory {work}")
    try:
        figures = asyncio.run(run(opts, work, machine))
    finally:
        if not opts.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
