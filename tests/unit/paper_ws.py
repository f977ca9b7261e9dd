"""A client of the paper broker's WebSocket server under test, and what its tests share.

``login`` connects and authenticates as ``CREDS``' key; ``request`` sends one
REST request over the socket and returns its response (trade updates before
it are read past); ``book`` is an empty book on the wall clock.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
from typing import Any
from zoneinfo import ZoneInfo

from pydantic import SecretStr
from websockets.asyncio.client import ClientConnection, connect

from libs.contract.envelope import WallClock
from services.paper_broker.adapters.server import Credentials
from services.paper_broker.domain.book import BookConfig, PaperBook

CREDS = [Credentials("key", SecretStr("secret"), "acct")]


def book() -> PaperBook:
    counter = itertools.count(1)
    return PaperBook(BookConfig(), clock=WallClock(), ids=lambda: f"id-{next(counter)}")


async def send(ws: ClientConnection, action: str, data: dict[str, Any]) -> None:
    await ws.send(json.dumps({"action": action, "data": data}))


async def recv(ws: ClientConnection) -> dict[str, Any]:
    raw = await ws.recv()
    assert isinstance(raw, bytes), "the paper broker sends binary frames, as Alpaca's paper does"
    message: dict[str, Any] = json.loads(raw)
    return message


async def login(port: int) -> ClientConnection:
    ws = await connect(f"ws://127.0.0.1:{port}/stream")
    await send(ws, "authenticate", {"key_id": "key", "secret_key": "secret"})
    assert (await recv(ws))["data"] == {"status": "authorized", "action": "authenticate"}
    return ws


async def request(ws: ClientConnection, method: str, path: str, body: Any = None) -> Any:
    await send(ws, "request", {"id": "r", "method": method, "path": path, "body": body})
    while (message := await recv(ws))["stream"] != "response":
        pass
    return message["data"]


class SetClock:
    def __init__(self, ns: int) -> None:
        self.ns = ns

    def now_ns(self) -> int:
        return self.ns


def new_york_ns(text: str) -> int:
    local = dt.datetime.fromisoformat(text).replace(tzinfo=ZoneInfo("America/New_York"))
    return int(local.timestamp()) * 1_000_000_000
