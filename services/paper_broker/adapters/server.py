"""The paper broker's WebSocket server: Alpaca's trade_updates stream plus order entry.

One socket per client. The client authenticates (``authenticate`` with a key
id and secret, answered ``authorized`` or ``unauthorized``), may ``listen`` to
``trade_updates`` (every order event of its account), and sends order entry
as ``request`` messages that mirror Alpaca's REST API (method, path, body),
each answered by a ``response`` with an HTTP status. The protocol is written
up in this service's README.

Ordering: the trade updates a request causes are queued to every listening
socket of the account *before* that request's response, and every update is
appended to the journal before it is sent (write-ahead), so a client never
sees an order the broker would forget on restart.

Each socket has a bounded outbound queue; a client that lets it fill up is
disconnected (``slow consumer``) rather than stalling everyone else. Frames
queued together (a submit's ``new`` and ``fill`` updates and its answer)
are written under ``TCP_CORK``, so they leave in one segment and the client
wakes up once for them: on the order path that took about a tenth off the
gateway's CPU per order, and the gateway then publishes the order's ack and
fill together.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from types import TracebackType
from typing import Any, Self
from urllib.parse import parse_qs, urlsplit

import orjson
from pydantic import SecretStr
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from libs import trace
from services.paper_broker import metrics
from services.paper_broker.adapters import wire
from services.paper_broker.adapters.journal import Journal
from services.paper_broker.adapters.rest import OrderEntry
from services.paper_broker.domain.book import (
    JOURNAL_ONLY,
    PaperBook,
    Refused,
    Settlement,
    TradeUpdate,
)
from services.paper_broker.domain.fill_model import MarketUpdate

log = logging.getLogger(__name__)

CODE_BAD_REQUEST = 40010000
CODE_UNAUTHORIZED = 40110000
CODE_RATE_LIMITED = 42910000
#: Close codes: policy violation (auth), try again later (slow consumer).
CLOSE_POLICY = 1008
CLOSE_SLOW = 1013
TRADE_UPDATES = "trade_updates"
#: The methods the order-entry API serves; any other is counted as ``other``
#: (a label of what a client wrote would make a new series per made-up method).
METHODS = frozenset({"GET", "POST", "DELETE"})


@dataclass(frozen=True, slots=True)
class Credentials:
    """One API key pair and the paper account it opens."""

    key_id: str
    secret_key: SecretStr
    account: str


@dataclass(eq=False, slots=True)
class _Session:
    ws: ServerConnection
    queue: asyncio.Queue[bytes | None]
    account: str | None = None
    listening: bool = False
    closed: bool = False
    writer: asyncio.Task[None] | None = field(default=None)


class _Cork:
    """Holds a socket's small writes back (``TCP_CORK``) until the block ends.

    Where the option does not exist (not Linux) or the socket refuses it, the
    writes simply go out one by one.
    """

    def __init__(self, ws: ServerConnection) -> None:
        sock = ws.transport.get_extra_info("socket") if ws.transport is not None else None
        self._sock = sock if hasattr(socket, "TCP_CORK") else None

    def _set(self, on: bool) -> None:
        if self._sock is None:
            return
        try:
            self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1 if on else 0)
        except OSError:
            self._sock = None  # closed, or not TCP: write uncorked from now on

    def __enter__(self) -> None:
        self._set(True)

    def __exit__(self, *exc: object) -> None:
        self._set(False)


class PaperBrokerServer:
    """Serves the books over WebSocket until closed."""

    def __init__(
        self,
        book: PaperBook,
        credentials: Sequence[Credentials],
        *,
        journal: Journal | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        auth_timeout_s: float = 10.0,
        max_queue: int = 10_000,
        binary_frames: bool = True,
    ) -> None:
        self.book = book
        #: Alpaca's REST endpoints, which the ``request`` messages carry.
        self._orders = OrderEntry(book, self._publish)
        self._keys = {c.key_id: c for c in credentials}
        self.journal = journal
        self.host = host
        self.port = port
        self.auth_timeout_s = auth_timeout_s
        self.max_queue = max_queue
        self.binary_frames = binary_frames
        self._sessions: set[_Session] = set()
        self._closing: set[asyncio.Task[None]] = set()
        self._server: Server | None = None
        # The rate limit a test asks for (see throttle).
        self._throttle = 0
        self._retry_after_s: float | None = None
        #: When each request answered 429 came in (monotonic seconds).
        self.throttled_at: list[float] = []

    def throttle(self, requests: int, retry_after_s: float | None = None) -> None:
        """Answer the next ``requests`` requests 429, as Alpaca past its rate limit.

        The body is ``{"code": 42910000, "message": "rate limit exceeded"}``;
        with ``retry_after_s`` the response carries a ``Retry-After`` header.
        A test hook: the paper broker has no rate limit of its own.
        """
        self._throttle = requests
        self._retry_after_s = retry_after_s

    # ----------------------------------------------------------- lifecycle

    async def start(self) -> Self:
        self._server = await serve(
            self._handle,
            self.host,
            self.port,
            compression=None,  # latency over bandwidth: frames are small JSON
            max_size=1024 * 1024,
        )
        self.port = int(next(iter(self._server.sockets)).getsockname()[1])
        log.info("paper broker listening on ws://%s:%d/stream", self.host, self.port)
        return self

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop accepting, close every socket; safe to call twice."""
        if self._server is None:
            return
        server, self._server = self._server, None
        server.close()
        await server.wait_closed()

    @property
    def connections(self) -> int:
        return len(self._sessions)

    # -------------------------------------------------------------- market

    def market(self, update: MarketUpdate) -> None:
        """A price from the feed: it may fill working orders. The positions
        whose contract expired before it are settled first (at the
        underlying's price before it)."""
        metrics.MARKET_UPDATES.labels(kind=update.kind).inc()
        self.expire_orders(update.ts_ns)
        self._publish(self.book.on_market(update))

    def expire_orders(self, market_ns: int = 0) -> None:
        """Expire the ``day`` orders whose session has closed and the orders in
        an option contract past its expiry (also done before every price, so
        none fills after its close, and before every request, so none is
        canceled or holds shares after it), then settle the positions in such a
        contract (see ``PaperBook.settle_expired``; before a price of
        ``market_ns``, at the underlying's price before it)."""
        self._publish(self.book.expire_orders())
        self._settle(self.book.settle_expired(market_ns))

    def price(self, update: MarketUpdate) -> None:
        """A price from before the feed connected: the last price; it fills
        only market orders (and triggered stops) waiting for a price."""
        self.expire_orders(update.ts_ns)
        self._publish(self.book.set_last(update.symbol, update.last, ts_ns=update.ts_ns))

    def _settle(self, settlements: Sequence[Settlement]) -> None:
        """Journal positions settled at expiry. Nothing is streamed: as at
        Alpaca, a client reads them as account activities."""
        if not settlements:
            return
        for s in settlements:
            metrics.SETTLEMENTS.labels(
                account=s.account, activity_type=s.activities[0].activity_type
            ).inc()
            log.info(
                "settled %s of account %s at its expiry: %s",
                s.symbol,
                s.account,
                ", ".join(f"{a.activity_type} {a.symbol} {a.qty}" for a in s.activities),
            )
        if self.journal is not None:
            self.journal.append_settlements(settlements)
            if self.journal.due:
                self._compact(self.journal)

    def _publish(self, updates: Sequence[TradeUpdate]) -> list[wire.Json]:
        """Journal ``updates``, then queue them to their account's listeners;
        returns each one's wire JSON (built once, for the journal and the
        frame both)."""
        if not updates:
            return []
        data = [wire.trade_update_json(u) for u in updates]
        if self.journal is not None:
            self.journal.append(updates, data)
            if self.journal.due:
                self._compact(self.journal)
        for u, d in zip(updates, data, strict=True):
            if u.event in JOURNAL_ONLY:
                continue
            if u.execution_id is not None:
                metrics.FILLS.labels(account=u.order.account).inc()
            frame = self._encode({"stream": TRADE_UPDATES, "data": d})
            for session in list(self._sessions):
                if session.listening and session.account == u.order.account:
                    self._send(session, frame)
        return data

    def _compact(self, journal: Journal) -> None:
        """Write the journal anew as a snapshot of the books: here, between
        two appends, the books hold exactly what the journal holds. It holds
        the event loop for its time, which grows with what is kept, not with
        the history (about 0.2 s for 7,000 orders kept, bench/paper_journal.py).
        A failure (disk full) leaves the journal as it was."""
        journal.compact_or_keep(self.book)

    # ----------------------------------------------------------- sessions

    def _encode(self, message: dict[str, Any]) -> bytes:
        return orjson.dumps(message)

    def _send(self, session: _Session, frame: bytes) -> None:
        if session.closed:
            return
        try:
            session.queue.put_nowait(frame)
        except asyncio.QueueFull:
            metrics.SLOW_CONSUMERS.inc()
            log.warning("disconnecting a slow client of account %s", session.account)
            session.closed = True
            # The writer drains nothing more; closing wakes the handler up.
            task = asyncio.get_running_loop().create_task(
                session.ws.close(CLOSE_SLOW, "slow consumer"), name="close-slow-client"
            )
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    async def _writer(self, session: _Session) -> None:
        send: Callable[[bytes], Any]
        if self.binary_frames:
            send = session.ws.send
        else:

            async def send(frame: bytes) -> None:
                await session.ws.send(frame.decode())

        cork = _Cork(session.ws)
        with contextlib.suppress(ConnectionClosed):
            while (frame := await session.queue.get()) is not None:
                if session.queue.empty():
                    await send(frame)
                    if trace.ON:
                        _trace_written(frame)
                    continue
                # Several frames waiting (a submit's updates and its answer):
                # they leave in one TCP segment, so the client wakes once for
                # them, not once per frame.
                with cork:
                    await send(frame)
                    while not session.queue.empty():
                        if (frame := session.queue.get_nowait()) is None:
                            return
                        await send(frame)
                if trace.ON:
                    _trace_written(frame)

    async def _handle(self, ws: ServerConnection) -> None:
        session = _Session(ws, asyncio.Queue(self.max_queue))
        session.writer = asyncio.create_task(self._writer(session), name="paper-writer")
        self._sessions.add(session)
        metrics.CONNECTIONS.set(len(self._sessions))
        try:
            with contextlib.suppress(ConnectionClosed):
                await self._serve_session(session)
        finally:
            session.closed = True
            self._sessions.discard(session)
            metrics.CONNECTIONS.set(len(self._sessions))
            with contextlib.suppress(asyncio.QueueFull):
                session.queue.put_nowait(None)
            with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                # On timeout the writer is canceled too (so is a task being
                # awaited when its awaiter is), and TimeoutError goes on.
                async with asyncio.timeout(2):
                    await session.writer

    async def _serve_session(self, session: _Session) -> None:
        ws = session.ws
        # The client must be logged in by auth_timeout_s, whatever it sends
        # meanwhile (answered, 401 or unauthorized): else one message that is
        # not a login held an unauthenticated socket open for ever.
        try:
            async with asyncio.timeout(self.auth_timeout_s):
                while session.account is None:
                    await self._message(session, await ws.recv())
        except TimeoutError:
            await ws.close(CLOSE_POLICY, "authentication timeout")
            return
        async for raw in ws:
            await self._message(session, raw)

    async def _message(self, session: _Session, raw: str | bytes) -> None:
        arrived = time.time_ns() if trace.ON else 0
        try:
            # Decimals stay exact: a JSON number with a fraction is read as Decimal.
            msg = json.loads(raw, parse_float=Decimal)
        except ValueError:
            self._send(session, self._error(CODE_BAD_REQUEST, "invalid JSON"))
            return
        if not isinstance(msg, dict):
            self._send(session, self._error(CODE_BAD_REQUEST, "a message is a JSON object"))
            return
        action = msg.get("action")
        raw_data = msg.get("data")
        data: dict[str, Any] = raw_data if isinstance(raw_data, dict) else {}
        if action == "authenticate":
            await self._authenticate(session, data)
        elif action == "listen":
            self._listen(session, data)
        elif action == "request":
            self._request(session, data)
            if trace.ON:
                _trace_request(data, arrived)
        else:
            self._send(session, self._error(CODE_BAD_REQUEST, f"unknown action {action!r}"))

    def _error(self, code: int, message: str) -> bytes:
        return self._encode({"stream": "error", "data": wire.error_json(code, message)})

    async def _authenticate(self, session: _Session, data: dict[str, Any]) -> None:
        key_id, secret = data.get("key_id"), data.get("secret_key")
        cred = self._keys.get(key_id) if isinstance(key_id, str) else None
        ok = (
            cred is not None
            and isinstance(secret, str)
            and hmac.compare_digest(secret.encode(), cred.secret_key.get_secret_value().encode())
        )
        status = "authorized" if ok else "unauthorized"
        reply = {"stream": "authorization", "data": {"status": status, "action": "authenticate"}}
        self._send(session, self._encode(reply))
        if not ok or cred is None:
            metrics.AUTH_FAILURES.inc()
            log.warning("refused a client: bad key id or secret")
            # Let the writer flush the refusal before the close frame.
            session.queue.put_nowait(None)
            if session.writer is not None:
                with contextlib.suppress(ConnectionClosed):
                    await session.writer
            session.closed = True
            await session.ws.close(CLOSE_POLICY, "unauthorized")
            return
        session.account = cred.account
        log.info("client authenticated for account %s", cred.account)

    def _listen(self, session: _Session, data: dict[str, Any]) -> None:
        if session.account is None:
            refusal = {"status": "unauthorized", "action": "listen"}
            reply = {"stream": "authorization", "data": refusal}
            self._send(session, self._encode(reply))
            return
        streams = data.get("streams")
        wanted = [s for s in streams if isinstance(s, str)] if isinstance(streams, list) else []
        session.listening = TRADE_UPDATES in wanted
        listening = [TRADE_UPDATES] if session.listening else []
        self._send(session, self._encode({"stream": "listening", "data": {"streams": listening}}))

    # ------------------------------------------------------------ requests

    def _request(self, session: _Session, data: dict[str, Any]) -> None:
        rid = data.get("id")
        method = str(data.get("method", "GET")).upper()
        target = str(data.get("path", ""))
        headers: dict[str, str] = {}
        if session.account is None:
            status, body = 401, wire.error_json(CODE_UNAUTHORIZED, "not authenticated")
        elif self._throttle > 0:
            self._throttle -= 1
            self.throttled_at.append(time.monotonic())
            status, body = 429, wire.error_json(CODE_RATE_LIMITED, "rate limit exceeded")
            if self._retry_after_s is not None:
                headers["Retry-After"] = f"{self._retry_after_s:g}"
        else:
            parts = urlsplit(target)
            query = parse_qs(parts.query)
            # The answer is of the books as of now: what the close ended is
            # expired first (the periodic tick may be up to a second away),
            # so a day order is not canceled after it expired, nor a sell
            # the close ended held against a close-all. Nothing due: a look
            # at the head of each heap.
            self.expire_orders()
            try:
                status, body = self._orders.route(session.account, method, parts.path, query, data)
            except Refused as e:
                status, body = e.status, wire.error_json(e.code, e.message)
        metrics.REQUESTS.labels(
            method=method if method in METHODS else "other", status=str(status)
        ).inc()
        data = {"id": rid, "status": status, "body": body}
        if headers:
            data["headers"] = headers
        self._send(session, self._encode({"stream": "response", "data": data}))


def _trace_request(data: dict[str, Any], arrived: int) -> None:
    """Trace marks of a submit: when it came in, when its answer was queued."""
    body = data.get("body")
    if isinstance(body, dict) and "client_order_id" in body:
        trace.mark("paper-broker: submit in", body["client_order_id"], arrived)
        trace.mark("paper-broker: answer queued", body["client_order_id"])


def _trace_written(frame: bytes) -> None:
    """Trace mark of a frame (the last of a segment) handed to the socket."""
    data = orjson.loads(frame).get("data")
    if isinstance(data, dict):
        order = data.get("body") or data.get("order")
        if isinstance(order, dict) and "client_order_id" in order:
            trace.mark("paper-broker: written", order["client_order_id"])
