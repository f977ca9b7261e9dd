"""A benchmark publisher process that starts on a signal and reports its clock.

Like ``libs.testing.producer`` but built for timing several processes
together: it prepares (imports, builds and encodes its events, connects),
prints ``{"ready": true}``, waits for a line on stdin, publishes with
:meth:`Bus.publish_many` (every message acknowledged by JetStream), and
prints one JSON line with its count and its ``start``/``end`` on the
system-wide monotonic clock, so the parent can take "first start to last
finish" across processes without counting interpreter start-up.

Run by ``bench/recorder.py``; not meant to be run by hand.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

from libs.bus.client import Bus, Outgoing
from libs.testing.producer import make_trades


async def publish(url: str, count: int, source: str, window: int) -> dict[str, float]:
    events = [Outgoing.of(e) for e in make_trades(count, source)]
    async with await Bus.connect(url, name=f"bench/{source}") as bus:
        print(json.dumps({"ready": True}), flush=True)
        # The go line; EOF (parent gone) means stop without publishing.
        line = await asyncio.to_thread(sys.stdin.readline)
        if not line:
            return {"count": 0, "start": 0.0, "end": 0.0}
        start = time.monotonic()
        sent = await bus.publish_many(events, window=window)
        end = time.monotonic()
    return {"count": sent, "start": start, "end": end}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--nats", required=True)
    ap.add_argument("--count", type=int, required=True)
    ap.add_argument("--source", required=True)
    ap.add_argument("--window", type=int, default=2048)
    args = ap.parse_args()
    result = asyncio.run(publish(args.nats, args.count, args.source, args.window))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
