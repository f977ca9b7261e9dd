"""Micro-benchmarks of the recorder's steps, next to the alternatives proposed.

``python bench/components.py`` times, per event, on one core:

- the CPU steps of a recorder batch (``to_stream_message``, ``to_row`` and
  its parts, ``Row()``, ``dataclasses.astuple``) and a cheaper way to do
  each of the slow ones;
- reading a pre-filled stream through nats-py's ``PullSubscription.fetch``
  (one task, one ``wait_for`` and one ``uuid4`` per message inside
  ``next_msg``) against the same pull requests answered into a callback
  subscription (its own nats-server, in a temporary directory).

Prints a table, then one JSON line. Figures are per event, microseconds;
other work on the machine inflates them.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import operator
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import orjson
from nats.aio.msg import Msg
from nats.js import api as js_api

from libs.bus.client import Bus, Outgoing
from libs.contract.codec import DEFAULT_MAX_BYTES, decode, encode
from libs.contract.subjects import STREAM, subject_for
from libs.local.servers import NatsServer
from libs.store.writer import Row
from libs.testing.producer import make_trades
from services.recorder.adapters.stream import to_stream_message
from services.recorder.domain.rows import StreamMessage, to_row


def per_item_us(fn: Callable[[Any], object], items: Sequence[Any]) -> float:
    t0 = time.perf_counter()
    for item in items:
        fn(item)
    return (time.perf_counter() - t0) / len(items) * 1e6


def jetstream_msg(seq: int, m: StreamMessage, pending: int) -> Msg:
    """A delivered message as nats-py builds it (v1 ack-reply format)."""
    reply = f"$JS.ACK.{STREAM}.event-recorder.1.{seq}.{seq}.1700000000123456789.{pending}"
    # No client: these messages are only parsed, never acked.
    client: Any = None
    return Msg(_client=client, subject=m.subject, reply=reply, data=m.data, headers=dict(m.headers))


def from_reply(msg: Msg) -> StreamMessage:
    """Proposed ``to_stream_message``: read the v1 ack-reply tokens directly
    (sequence and the integer nanosecond timestamp, no datetime, no float)."""
    tokens = msg.reply.split(".")
    return StreamMessage(int(tokens[5]), msg.subject, msg.data, msg.headers or {}, int(tokens[7]))


def cpu_steps(count: int) -> dict[str, float]:
    events = list(make_trades(count, "components"))
    msgs = [
        StreamMessage(seq, subject_for(e), encode(e), {"Nats-Msg-Id": str(e.id)}, 1)
        for seq, e in enumerate(events, start=1)
    ]
    decoded = [decode(m.data) for m in msgs]
    rows = [to_row(m, max_bytes=DEFAULT_MAX_BYTES).row for m in msgs]
    row_fields = operator.attrgetter(*(f.name for f in dataclasses.fields(Row)))

    def new_row(r: Row) -> Row:
        return Row(*row_fields(r))

    out = {
        "to_stream_message": per_item_us(
            to_stream_message, [jetstream_msg(m.seq, m, count - m.seq) for m in msgs]
        ),
        "to_stream_message.proposed_parse_ack_reply": per_item_us(
            from_reply, [jetstream_msg(m.seq, m, count - m.seq) for m in msgs]
        ),
        "to_row": per_item_us(lambda m: to_row(m, max_bytes=DEFAULT_MAX_BYTES), msgs),
        "to_row.decode_pydantic": per_item_us(lambda m: decode(m.data), msgs),
        "to_row.orjson_payload_round_trip": per_item_us(
            lambda m: orjson.dumps(orjson.loads(m.data)["payload"]).decode(), msgs
        ),
        "to_row.getattr_missing_field": per_item_us(
            lambda e: getattr(e.payload, "strategy", None), decoded
        ),
        "to_row.proposed_dict_get": per_item_us(
            lambda e: e.payload.__dict__.get("strategy"), decoded
        ),
        "to_row.new_row": per_item_us(new_row, rows),
        "astuple": per_item_us(dataclasses.astuple, rows),
        "astuple.proposed_attrgetter": per_item_us(row_fields, rows),
    }
    return {k: round(v, 2) for k, v in out.items()}


async def read_with_fetch(bus: Bus, durable: str, count: int, batch: int) -> float:
    sub = await bus.js.pull_subscribe_bind(durable, stream=STREAM, pending_msgs_limit=200_000)
    got = 0
    t0 = time.perf_counter()
    while got < count:
        msgs = await sub.fetch(batch, timeout=0.5)
        got += len(msgs)
        await msgs[-1].ack()
    seconds = time.perf_counter() - t0
    await sub.unsubscribe()
    return seconds


async def read_with_callback(bus: Bus, durable: str, count: int, batch: int) -> float:
    """Pull requests of ``batch`` answered into a callback subscription."""
    inbox = bus.nc.new_inbox()
    got: list[Msg] = []
    full = asyncio.Event()
    wanted = 0

    async def on_msg(msg: Msg) -> None:
        if not msg.data and msg.headers and "Status" in msg.headers:
            full.set()  # 404 no messages / 408 request expired: the batch is what we have
            return
        got.append(msg)
        if len(got) >= wanted:
            full.set()

    sub = await bus.nc.subscribe(inbox, cb=on_msg, pending_msgs_limit=200_000)
    request = json.dumps({"batch": batch, "expires": 500_000_000}).encode()
    read = 0
    t0 = time.perf_counter()
    while read < count:
        got.clear()
        full.clear()
        wanted = batch
        await bus.nc.publish(f"$JS.API.CONSUMER.MSG.NEXT.{STREAM}.{durable}", request, inbox)
        await asyncio.wait_for(full.wait(), 5)
        read += len(got)
        await got[-1].ack()
    seconds = time.perf_counter() - t0
    await sub.unsubscribe()
    return seconds


async def fetch_paths(count: int, batch: int) -> dict[str, float]:
    work = Path(tempfile.mkdtemp(prefix="tradebus-components-"))
    server = NatsServer(work / "nats")
    try:
        server.start()
        async with await Bus.connect(server.url, name="components") as bus:
            await bus.ensure_stream()
            await bus.publish_many([Outgoing.of(e) for e in make_trades(count, "components")])
            out: dict[str, float] = {}
            # Twice each, alternating; the second (warm) figure is kept.
            for i, (name, read) in enumerate(
                [
                    ("nats_py_fetch", read_with_fetch),
                    ("proposed_callback_pull", read_with_callback),
                ]
                * 2
            ):
                durable = f"components-{i}"
                await bus.js.add_consumer(
                    STREAM,
                    js_api.ConsumerConfig(
                        durable_name=durable,
                        ack_policy=js_api.AckPolicy.ALL,
                        max_ack_pending=200_000,
                    ),
                )
                seconds = await read(bus, durable, count, batch)
                out[name] = round(seconds / count * 1e6, 2)
        return out
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--events", type=int, default=20_000)
    ap.add_argument("--batch-size", type=int, default=2000)
    args = ap.parse_args()
    # Closing a bus logs "nats disconnected" as a warning; here that is expected.
    logging.getLogger("libs.bus.client").setLevel(logging.ERROR)
    print("measuring CPU steps...", file=sys.stderr)
    result = {"cpu_us_per_event": cpu_steps(args.events)}
    print("measuring fetch paths (own nats-server)...", file=sys.stderr)
    result["fetch_us_per_event"] = asyncio.run(fetch_paths(args.events, args.batch_size))
    for section, figures in result.items():
        print(section)
        for name, us in figures.items():
            print(f"  {name:<44}{us:>8.2f} µs")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
