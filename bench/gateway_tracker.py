"""What a settled order costs the broker-gateway, kept for good.

The gateway's order tracker keeps every order it has seen (a late or
repeated broker fact about an old order must still be recognised, and it is
rebuilt from all recorded order-path events at start-up), so the cost of one
settled order is what a long-running gateway grows by, and what each of the
garbage collector's full passes walks through. This fills ``--orders``
market orders through a tracker in-process (submit, acknowledgement, one
complete fill) and reports, per order: the bytes it still holds, the objects
the collector tracks, and the time of a full collection with them all held;
then that time again once they are kept for good (``libs.runtime.
keep_for_good``, as the gateway does with the trackers it rebuilt at
start-up). Last, what the start-up rebuild costs per order in the history:
decoding its recorded events from JSON and evolving a fresh tracker through
them (reading them from PostgreSQL comes on top).

The baseline, measured in the same run, is the same orders with their
``SubmitOrder`` commands kept alive beside the tracker: what a settled order
cost before settled orders kept only their commands' ids.

Progress goes to stderr; stdout gets a table and, as its last line, one JSON
object with the figures and their units.
"""

from __future__ import annotations

import argparse
import gc
import json
import time
import tracemalloc
from decimal import Decimal

from harness import say  # bench/harness.py

from libs.contract.codec import decode, encode
from libs.contract.envelope import Event, WallClock
from libs.runtime import GC_THRESHOLDS, keep_for_good
from libs.testing.producer import make_submit_order
from services.broker_gateway.domain.model import BrokerFill, BrokerOrder, OrderUpdate
from services.broker_gateway.domain.tracker import OrderTracker

ACCOUNT = "paper"
PRICE = Decimal("187.5")


def settle_one(tracker: OrderTracker, i: int) -> list[Event]:
    """Submit, acknowledge and completely fill one order; return its command
    and the events the tracker made of it (what the store records)."""
    command = make_submit_order(ACCOUNT, strategy="bench", source="bench", clock=tracker.clock)
    oid = command.payload.order_id
    if not tracker.plan_submit(command):
        raise RuntimeError(f"order {i} not submitted")
    request = tracker.request(oid)

    def broker_order(filled: int, status: str) -> BrokerOrder:
        return BrokerOrder(
            broker_order_id=f"b-{i}",
            client_order_id=request.client_order_id,
            symbol="AAPL",
            side="buy",
            quantity=Decimal(10),
            filled_quantity=Decimal(filled),
            filled_avg_price=PRICE if filled else None,
            status=status,  # type: ignore[arg-type]
        )

    accepted = tracker.submitted(oid, broker_order(0, "accepted"))
    done = broker_order(10, "filled")
    fill = BrokerFill(
        broker_order_id=done.broker_order_id,
        client_order_id=done.client_order_id,
        symbol="AAPL",
        side="buy",
        quantity=Decimal(10),
        price=PRICE,
        cumulative_quantity=Decimal(10),
        leaves_quantity=Decimal(0),
        ts_ns=1,
        execution_id=f"x-{i}",
    )
    events = tracker.on_update(OrderUpdate("fill", done, 1, fill=fill))
    t = tracker.get(oid)
    if [e.type for e in events] != ["FillReceived"] or t is None or t.terminal != "filled":
        raise RuntimeError(f"order {i} did not settle: {events}")
    return [command, *accepted, *events]


def measure(orders: int, keep_commands: bool) -> dict[str, float]:
    tracker = OrderTracker(ACCOUNT, clock=WallClock(), source="bench")
    kept: list[Event] = []
    for i in range(100):  # dicts past their first resizes
        settle_one(tracker, -i - 1)
    # As every service starts (libs.runtime.run_service): what is there
    # before the loop runs, modules and all, is out of the collector's sight.
    gc.collect()
    gc.freeze()
    objects_before = len(gc.get_objects())
    tracemalloc.start()
    bytes_before = tracemalloc.get_traced_memory()[0]
    for i in range(orders):
        command = settle_one(tracker, i)[0]
        if keep_commands:
            kept.append(command)
        if (i + 1) % 20_000 == 0:
            say(f"  {i + 1:,} / {orders:,} orders")
    gc.collect()
    held = tracemalloc.get_traced_memory()[0] - bytes_before
    tracemalloc.stop()
    tracked = len(gc.get_objects()) - objects_before
    passes = full_passes()
    if len(tracker.orders) != orders + 100:
        raise RuntimeError(f"tracker holds {len(tracker.orders)} orders")
    figures = {
        "bytes_per_order": held / orders,
        "gc_objects_per_order": tracked / orders,
        "full_gc_ms": min(passes) * 1e3,
    }
    if not keep_commands:
        # As the gateway does once it has rebuilt its trackers at start-up.
        keep_for_good()
        figures["full_gc_kept_for_good_us"] = min(full_passes()) * 1e6
    gc.unfreeze()
    return figures


def rebuild_cost(orders: int) -> dict[str, float]:
    """What rebuilding a tracker at start-up costs per order in the history:
    decoding its recorded events from JSON, and evolving a fresh tracker
    through them (the gateway also reads them from PostgreSQL first)."""
    tracker = OrderTracker(ACCOUNT, clock=WallClock(), source="bench")
    recorded = [encode(e) for i in range(orders) for e in settle_one(tracker, i)]
    thresholds = gc.get_threshold()
    gc.set_threshold(*GC_THRESHOLDS)  # the collector as the services run it
    start = time.perf_counter()
    events = [decode(data) for data in recorded]
    decoded = time.perf_counter()
    fresh = OrderTracker(ACCOUNT, clock=WallClock(), source="bench")
    for event in events:
        fresh.evolve(event)
    evolved = time.perf_counter()
    gc.set_threshold(*thresholds)
    if len(fresh.orders) != orders or any(t.terminal != "filled" for t in fresh.orders.values()):
        raise RuntimeError("the rebuilt tracker differs from the one it was recorded from")
    return {
        "events_per_order": len(recorded) / orders,
        "decode_us_per_order": (decoded - start) / orders * 1e6,
        "evolve_us_per_order": (evolved - decoded) / orders * 1e6,
    }


def full_passes() -> list[float]:
    passes = []
    for _ in range(3):
        start = time.perf_counter()
        gc.collect()
        passes.append(time.perf_counter() - start)
    return passes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=50_000)
    args = parser.parse_args()
    say(f"settling {args.orders:,} orders, commands kept (the baseline)")
    before = measure(args.orders, keep_commands=True)
    say(f"settling {args.orders:,} orders as the tracker keeps them")
    now = measure(args.orders, keep_commands=False)
    say(f"rebuilding a tracker from the {args.orders:,} orders' recorded events")
    rebuild = rebuild_cost(args.orders)
    print(f"{'':36s} {'commands kept':>14s} {'tracker':>10s} {'ratio':>7s}")
    rows = (
        ("bytes per settled order", "bytes_per_order"),
        ("gc objects per order", "gc_objects_per_order"),
        (f"full gc pass, {args.orders:,} orders (ms)", "full_gc_ms"),
    )
    for label, key in rows:
        print(f"{label:36s} {before[key]:14.2f} {now[key]:10.2f} {now[key] / before[key]:7.2f}")
    print(
        f"{'full gc pass, the same kept for good (us)':36s} {'':14s} "
        f"{now['full_gc_kept_for_good_us']:10.2f}"
    )
    print(
        f"rebuild at start-up, per order in the history ({rebuild['events_per_order']:.0f} events):"
        f" decode {rebuild['decode_us_per_order']:.1f} us,"
        f" evolve {rebuild['evolve_us_per_order']:.1f} us"
    )
    figures = {
        "orders": args.orders,
        "bytes_per_order": round(now["bytes_per_order"], 1),
        "gc_objects_per_order": round(now["gc_objects_per_order"], 2),
        "full_gc_ms": round(now["full_gc_ms"], 2),
        "full_gc_kept_for_good_us": round(now["full_gc_kept_for_good_us"], 1),
        "baseline_commands_kept": {k: round(v, 2) for k, v in before.items()},
        "ratio_bytes_vs_commands_kept": round(
            now["bytes_per_order"] / before["bytes_per_order"], 3
        ),
        "ratio_full_gc_vs_commands_kept": round(now["full_gc_ms"] / before["full_gc_ms"], 3),
        "rebuild_decode_us_per_order": round(rebuild["decode_us_per_order"], 1),
        "rebuild_evolve_us_per_order": round(rebuild["evolve_us_per_order"], 1),
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
