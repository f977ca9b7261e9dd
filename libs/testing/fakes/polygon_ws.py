"""A fake Polygon WebSocket feed on 127.0.0.1, for tests and benchmarks.

It follows ``PROTOCOLS.md`` ("Polygon ... WebSocket") exactly:

1. on connect it sends
   ``[{"ev":"status","status":"connected","message":"Connected Successfully"}]``;
2. the client sends ``{"action":"auth","params":KEY}``;
3. it answers in a **separate** frame: ``auth_success`` (``"authenticated"``)
   or ``auth_failed`` (then closes); a client that does not authenticate
   within ``auth_timeout_s`` gets ``auth_timeout`` and is closed;
4. ``{"action":"subscribe","params":"T.AAPL,AM.MSFT"}`` (one comma-separated
   string, spaces trimmed, ``T.*`` for every ticker) is acknowledged per
   channel: ``{"ev":"status","status":"success","message":"subscribed to: T.AAPL"}``,
   all the acks in one frame; ``unsubscribe`` likewise.

Data goes out with :meth:`FakePolygonWs.publish`: a list of events in
Polygon's own shape (``ev``, ``sym``, ms timestamps, ...) is sent as **one
JSON array frame** to every authenticated connection, each getting only the
events it subscribed to (status events always pass), so one frame can carry
several events, status and data mixed.

Scripted faults, each on every open connection (or the one given):

- :meth:`drop`: the TCP connection is cut with no close frame (abrupt drop);
- :meth:`close`: a close frame with a non-clean code (default 1011);
- :meth:`kick`: a server status (``force_disconnect``, ``slow_consumer``),
  then a close (close code unconfirmed: ``kick_close_code``, default 1008);
- :meth:`send_raw`: any text frame, e.g. malformed JSON;
- silence (a stale feed) is simply not publishing.

``max_connections`` (default 1, as Polygon's default per asset class): when
one more connection authenticates, the oldest authenticated one is sent
``max_connections`` and closed (the newest kicks the oldest, as reported by
third parties). With ``refuse_newest=True`` the newcomer is the one refused
instead: ``max_connections`` comes as its auth reply (the variant the official
client's source allows for).

``unacked`` names channels a subscribe is neither acknowledged for nor
given: what Polygon answers for a channel it will not serve is not
confirmed (``PROTOCOLS.md`` documents only the ``success`` ack), so the
fake says nothing, the case a client must not take for success.

Use ``async with FakePolygonWs() as ws:``; ``ws.url`` is ``ws://127.0.0.1:PORT/stocks``
and ``ws.feed`` the ``host:port`` the official client takes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from types import TracebackType
from typing import Any, Self

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

CONNECTED = {"ev": "status", "status": "connected", "message": "Connected Successfully"}
AUTH_SUCCESS = {"ev": "status", "status": "auth_success", "message": "authenticated"}
AUTH_FAILED = {"ev": "status", "status": "auth_failed", "message": "authentication failed"}
AUTH_TIMEOUT = {"ev": "status", "status": "auth_timeout", "message": "no authentication received"}
MAX_CONNECTIONS_MESSAGE = (
    "Maximum number of websocket connections exceeded. You have been disconnected from the "
    "server. Please contact support if you believe this is in error."
)
FORCE_DISCONNECT_MESSAGE = "Server requested disconnect"

Event = Mapping[str, Any]


def _json_default(value: object) -> object:
    if isinstance(value, Decimal):
        # Polygon sends JSON numbers; a float's repr gives back the decimal
        # text exactly for the up-to-15 significant digits prices have.
        return float(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def encode_frame(events: Sequence[Event]) -> str:
    """One server frame: a JSON array of events (Decimals as JSON numbers)."""
    return json.dumps(list(events), default=_json_default, separators=(",", ":"))


def status(status: str, message: str) -> dict[str, str]:
    """A status event, e.g. ``status("force_disconnect", "...")``."""
    return {"ev": "status", "status": status, "message": message}


@dataclass(eq=False)
class FakeConnection:
    """One client connection as the fake sees it."""

    ws: ServerConnection
    number: int
    authenticated: bool = False
    closed: bool = False
    #: Subscriptions in force (``T.AAPL``, ``AM.*``).
    subscriptions: set[str] = field(default_factory=set)
    #: Every action received, in order (auth params included: tests may check the key).
    actions: list[dict[str, Any]] = field(default_factory=list)
    #: Set when this connection has at least one subscription.
    subscribed: asyncio.Event = field(default_factory=asyncio.Event)

    def wants(self, event: Event) -> bool:
        ev = event.get("ev")
        if ev == "status":
            return True
        subs = self.subscriptions
        return f"{ev}.{event.get('sym')}" in subs or f"{ev}.*" in subs


class FakePolygonWs:
    """Polygon's WebSocket feed for one market, in-process, on loopback."""

    def __init__(
        self,
        *,
        api_key: str = "test-key",
        market: str = "stocks",
        max_connections: int | None = 1,
        auth_timeout_s: float = 10.0,
        kick_close_code: int = 1008,
        refuse_newest: bool = False,
        compression: str | None = None,
        unacked: Iterable[str] = (),
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.api_key = api_key
        self.market = market
        self.max_connections = max_connections
        self.auth_timeout_s = auth_timeout_s
        self.kick_close_code = kick_close_code
        self.refuse_newest = refuse_newest
        self.compression = compression
        #: Channels a subscribe neither acknowledges nor streams (see the module docstring).
        self.unacked = frozenset(unacked)
        self.host = host
        self.port = port
        #: Every connection ever made, oldest first.
        self.connections: list[FakeConnection] = []
        self.auth_failures = 0
        self._server: Server | None = None
        self._changed = asyncio.Condition()

    # ------------------------------------------------------------ addresses

    @property
    def url(self) -> str:
        """``ws://127.0.0.1:PORT/stocks`` (set once started)."""
        return f"ws://{self.host}:{self.port}/{self.market}"

    @property
    def feed(self) -> str:
        """``host:port``, the ``feed`` the official ``WebSocketClient`` takes."""
        return f"{self.host}:{self.port}"

    # ------------------------------------------------------------ state

    @property
    def active(self) -> list[FakeConnection]:
        """Open, authenticated connections."""
        return [c for c in self.connections if c.authenticated and not c.closed]

    def subscribed_to(self, *channels: str) -> bool:
        """Whether one active connection has (at least) these subscriptions."""
        return any(set(channels) <= c.subscriptions for c in self.active)

    async def wait_subscribed(self, *channels: str, timeout: float = 10.0) -> FakeConnection:
        """Wait until an active connection holds ``channels``; returns it (the newest)."""

        def ready() -> FakeConnection | None:
            hits = [c for c in self.active if set(channels) <= c.subscriptions]
            return hits[-1] if hits else None

        async with asyncio.timeout(timeout), self._changed:
            while (conn := ready()) is None:
                await self._changed.wait()
        return conn

    async def wait_connections(self, count: int, *, timeout: float = 10.0) -> None:
        """Wait until ``count`` connections have been made in all."""
        async with asyncio.timeout(timeout), self._changed:
            while len(self.connections) < count:
                await self._changed.wait()

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> Self:
        self._server = await serve(
            self._handle,
            self.host,
            self.port,
            process_request=self._check_path,
            compression=self.compression,
            ping_interval=None,
            max_size=2**20,
        )
        sock = next(iter(self._server.sockets))
        self.port = int(sock.getsockname()[1])
        return self

    async def close_server(self) -> None:
        """Stop listening and drop every connection; safe to call twice."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close_server()

    # ------------------------------------------------------------ sending

    async def publish(self, events: Sequence[Event], conn: FakeConnection | None = None) -> int:
        """Send ``events`` as one array frame to each active connection; returns frames sent."""
        sent = 0
        for c in [conn] if conn is not None else self.active:
            wanted = [e for e in events if c.wants(e)]
            if wanted and not c.closed:
                with contextlib.suppress(ConnectionClosed):
                    await c.ws.send(encode_frame(wanted))
                    sent += 1
        return sent

    async def send_raw(self, text: str | bytes, conn: FakeConnection | None = None) -> None:
        """Send one frame as given (malformed JSON, a non-array, ...)."""
        for c in [conn] if conn is not None else self.active:
            with contextlib.suppress(ConnectionClosed):
                await c.ws.send(text)

    async def send_frames(self, frames: Iterable[str], conn: FakeConnection) -> int:
        """Send pre-encoded frames as fast as the connection takes them (benchmarks)."""
        count = 0
        for frame in frames:
            await conn.ws.send(frame)
            count += 1
        return count

    # ------------------------------------------------------------ faults

    def _targets(self, conn: FakeConnection | None) -> list[FakeConnection]:
        return [conn] if conn is not None else [c for c in self.connections if not c.closed]

    async def drop(self, conn: FakeConnection | None = None) -> None:
        """Cut the TCP connection: no close frame (the client sees 1006)."""
        for c in self._targets(conn):
            c.closed = True
            c.ws.transport.abort()

    async def close(
        self, code: int = 1011, reason: str = "", conn: FakeConnection | None = None
    ) -> None:
        """Close with a close frame carrying ``code`` (1011: not a clean close)."""
        for c in self._targets(conn):
            c.closed = True
            with contextlib.suppress(ConnectionClosed):
                await c.ws.close(code, reason)

    async def kick(
        self,
        status_name: str = "force_disconnect",
        message: str = FORCE_DISCONNECT_MESSAGE,
        conn: FakeConnection | None = None,
    ) -> None:
        """Send a server status (``force_disconnect``, ``slow_consumer``), then close."""
        for c in self._targets(conn):
            with contextlib.suppress(ConnectionClosed):
                await c.ws.send(encode_frame([status(status_name, message)]))
            c.closed = True
            with contextlib.suppress(ConnectionClosed):
                await c.ws.close(self.kick_close_code, status_name)

    # ------------------------------------------------------------ protocol

    def _check_path(self, connection: ServerConnection, request: Request) -> Response | None:
        if request.path.split("?", 1)[0] != f"/{self.market}":
            return Response(404, "Not Found", Headers(), b"not found\n")
        return None

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def _handle(self, ws: ServerConnection) -> None:
        conn = FakeConnection(ws=ws, number=len(self.connections) + 1)
        self.connections.append(conn)
        await self._notify()
        try:
            await ws.send(encode_frame([CONNECTED]))
            if not await self._authenticate(conn):
                return
            async for message in ws:
                await self._action(conn, message)
        except ConnectionClosed:
            pass
        finally:
            conn.closed = True
            await self._notify()

    async def _authenticate(self, conn: FakeConnection) -> bool:
        try:
            async with asyncio.timeout(self.auth_timeout_s):
                while True:
                    action = self._decode(await conn.ws.recv())
                    conn.actions.append(action)
                    if action.get("action") == "auth":
                        break
        except TimeoutError:
            await conn.ws.send(encode_frame([AUTH_TIMEOUT]))
            conn.closed = True
            await conn.ws.close(1008, "auth_timeout")
            return False
        if action.get("params") != self.api_key:
            self.auth_failures += 1
            await conn.ws.send(encode_frame([AUTH_FAILED]))
            conn.closed = True
            await conn.ws.close(1008, "auth_failed")
            return False
        if (
            self.refuse_newest
            and self.max_connections is not None
            and len(self.active) >= self.max_connections
        ):
            await conn.ws.send(encode_frame([status("max_connections", MAX_CONNECTIONS_MESSAGE)]))
            conn.closed = True
            await conn.ws.close(self.kick_close_code, "max_connections")
            return False
        # The newest connection kicks the oldest ones beyond the limit.
        if self.max_connections is not None:
            others = self.active
            excess = len(others) + 1 - self.max_connections
            for old in others[: max(0, excess)]:
                await self.kick("max_connections", MAX_CONNECTIONS_MESSAGE, conn=old)
        await conn.ws.send(encode_frame([AUTH_SUCCESS]))
        conn.authenticated = True
        await self._notify()
        return True

    @staticmethod
    def _decode(message: str | bytes) -> dict[str, Any]:
        try:
            value = json.loads(message)
        except ValueError:
            return {}
        return value if isinstance(value, dict) else {}

    async def _action(self, conn: FakeConnection, message: str | bytes) -> None:
        action = self._decode(message)
        conn.actions.append(action)
        verb = action.get("action")
        params = action.get("params")
        if verb not in ("subscribe", "unsubscribe") or not isinstance(params, str):
            await conn.ws.send(encode_frame([status("error", f"unknown action: {verb}")]))
            return
        channels = [p.strip() for p in params.split(",") if p.strip()]
        if verb == "subscribe":
            channels = [ch for ch in channels if ch not in self.unacked]
            conn.subscriptions.update(channels)
            acks = [status("success", f"subscribed to: {ch}") for ch in channels]
        else:
            conn.subscriptions.difference_update(channels)
            acks = [status("success", f"unsubscribed to: {ch}") for ch in channels]
        if acks:
            await conn.ws.send(encode_frame(acks))
        if conn.subscriptions:
            conn.subscribed.set()
        else:
            conn.subscribed.clear()
        await self._notify()
