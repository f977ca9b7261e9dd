"""The order path's floor: the same four hops over the same subjects, no logic.

One process per role (``bench/order_path.py`` starts them):

- ``strategy``: pulls ``md.>``; per message publishes a ``SignalGenerated``
  and an ``OrderIntentCreated`` (bytes built from a dict, no validation) on
  ``strategy.signal.bench`` / ``strategy.intent.bench``.
- ``risk``: pulls ``strategy.intent.>``; republishes the bytes, under a new
  event id, on ``orders.cmd.paper``.
- ``gateway``: pulls ``orders.cmd.>``; sends the bytes over a WebSocket to
  ``echo`` and publishes what comes back, under a new event id, on
  ``broker.ack.paper``.
- ``echo``: a WebSocket server that sends every frame back.

The WebSocket runs without permessage-deflate, as between the gateway and
the paper broker (websockets would otherwise compress every frame: a cost
the real chain does not pay). Every hop is a durable JetStream pull consumer read through
:class:`libs.bus.pull.PullFetcher` (as the services read), explicit acks
after the publish is stored, publishes acknowledged by the stream. The
correlation id of the signal is carried to the ack, so the driver measures
both chains the same way. Each process prints ``ready`` on stdout when it
can take messages and stops on SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import signal
import time
import uuid

import orjson
from nats.aio.msg import Msg
from nats.js import api as js_api
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve

from libs.bus.client import MSG_ID_HEADER, Bus
from libs.bus.consumer import ensure_consumer
from libs.bus.pull import PullFetcher
from libs.contract.subjects import STREAM
from libs.runtime import run_service

FETCH_BATCH = 256
FETCH_TIMEOUT_S = 1.0
STRATEGY = "bench"
ACCOUNT = "paper"


def _signal_and_intent(md: bytes) -> tuple[bytes, str, bytes, str]:
    cause = orjson.loads(md)["id"]
    sig_id, intent_id = str(uuid.uuid4()), str(uuid.uuid4())
    now = time.time_ns()
    sig = {
        "id": sig_id,
        "type": "SignalGenerated",
        "ts_event": now,
        "ts_init": now,
        "source": "relay/strategy",
        "correlation_id": sig_id,
        "causation_id": cause,
        "payload": {"strategy": STRATEGY, "symbol": "AAPL", "name": "relay", "direction": "long"},
    }
    intent = {
        "id": intent_id,
        "type": "OrderIntentCreated",
        "ts_event": now,
        "ts_init": now,
        "source": "relay/strategy",
        "correlation_id": sig_id,
        "causation_id": sig_id,
        "payload": {
            "strategy": STRATEGY,
            "account": ACCOUNT,
            "symbol": "AAPL",
            "side": "buy",
            "quantity": "1",
        },
    }
    return orjson.dumps(sig), sig_id, orjson.dumps(intent), intent_id


ID_PREFIX = b'{"id":"'
ID_END = len(ID_PREFIX) + 36


def _with_new_id(body: bytes) -> tuple[bytes, str]:
    """``body`` (an event this relay built) under a fresh event id.

    Every hop's event is its own event, as in the real chain: were the bytes
    passed on unchanged, the recorder would see one event id at three stream
    positions and take its (slower) duplicate path on every order.
    """
    assert body.startswith(ID_PREFIX), "relay events start with their id"
    new_id = str(uuid.uuid4())
    return ID_PREFIX + new_id.encode() + body[ID_END:], new_id


async def _pull(bus: Bus, durable: str, subject: str) -> PullFetcher:
    await ensure_consumer(
        bus,
        durable,
        filter_subject=subject,
        deliver_policy=js_api.DeliverPolicy.NEW,
        ack_wait_s=30,
    )
    fetcher = PullFetcher(bus, STREAM, durable)
    await fetcher.start()
    return fetcher


async def _publish(bus: Bus, subject: str, data: bytes, msg_id: str) -> None:
    await bus.js.publish(subject, data, headers={MSG_ID_HEADER: msg_id})


async def run_strategy(bus: Bus, stop: asyncio.Event) -> None:
    fetcher = await _pull(bus, "relay-strategy", "md.>")
    print("ready", flush=True)
    while not stop.is_set():
        for msg in await fetcher.fetch(FETCH_BATCH, FETCH_TIMEOUT_S):
            sig, sig_id, intent, intent_id = _signal_and_intent(msg.data)
            await _publish(bus, f"strategy.signal.{STRATEGY}", sig, sig_id)
            await _publish(bus, f"strategy.intent.{STRATEGY}", intent, intent_id)
            await msg.ack()


async def run_risk(bus: Bus, stop: asyncio.Event) -> None:
    fetcher = await _pull(bus, "relay-risk", "strategy.intent.>")
    print("ready", flush=True)
    while not stop.is_set():
        for msg in await fetcher.fetch(FETCH_BATCH, FETCH_TIMEOUT_S):
            cmd, cmd_id = _with_new_id(msg.data)
            await _publish(bus, f"orders.cmd.{ACCOUNT}", cmd, cmd_id)
            await msg.ack()


async def run_gateway(bus: Bus, stop: asyncio.Event, ws_url: str) -> None:
    fetcher = await _pull(bus, "relay-gateway", "orders.cmd.>")
    pending: collections.deque[Msg] = collections.deque()
    async with connect(ws_url, compression=None) as ws:  # as the paper client

        async def replies() -> None:
            async for frame in ws:
                msg = pending.popleft()
                data = frame if isinstance(frame, bytes) else frame.encode()
                ack, ack_id = _with_new_id(data)
                await _publish(bus, f"broker.ack.{ACCOUNT}", ack, ack_id)
                await msg.ack()

        reader = asyncio.create_task(replies())
        print("ready", flush=True)
        try:
            while not stop.is_set():
                for msg in await fetcher.fetch(FETCH_BATCH, FETCH_TIMEOUT_S):
                    pending.append(msg)
                    await ws.send(msg.data)
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader


async def run_echo(port: int, stop: asyncio.Event) -> None:
    async def echo(ws: ServerConnection) -> None:
        async for frame in ws:
            await ws.send(frame)

    async with serve(echo, "127.0.0.1", port, compression=None):  # as the paper broker
        print("ready", flush=True)
        await stop.wait()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("role", choices=["strategy", "risk", "gateway", "echo"])
    parser.add_argument("--nats", default="nats://127.0.0.1:4222")
    parser.add_argument("--port", type=int, default=0, help="echo: port to listen on")
    parser.add_argument("--ws", default="", help="gateway: the echo's ws:// URL")
    args = parser.parse_args()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if args.role == "echo":
        await run_echo(args.port, stop)
        return
    bus = await Bus.connect(args.nats, name=f"relay-{args.role}")
    async with bus:
        work = {
            "strategy": lambda: run_strategy(bus, stop),
            "risk": lambda: run_risk(bus, stop),
            "gateway": lambda: run_gateway(bus, stop, args.ws),
        }[args.role]()
        task = asyncio.create_task(work)
        stopped = asyncio.create_task(stop.wait())
        await asyncio.wait([task, stopped], return_when=asyncio.FIRST_COMPLETED)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


if __name__ == "__main__":
    run_service(main())  # as every service runs: uvloop, the same gc settings
