"""The paper broker's WebSocket: one connection for the account's events and order entry.

The connection is supervised: connect, ``authenticate``, ``listen`` to
``trade_updates``, then read until the connection dies; then reconnect with
exponential backoff (with jitter) until closed. Its state changes are events
on :meth:`PaperConnection.events`, in order with the order updates:

- ``connected`` once authorized and listening;
- ``disconnected`` as soon as the connection is found dead — the socket
  closed, or no pong to our ping within ``heartbeat_timeout_s`` (a broker
  that hangs without closing is caught within ``heartbeat_interval_s +
  heartbeat_timeout_s``; a heartbeat due while the reader waits for room in
  the event queue is not counted: the pong may be unread in the socket
  behind our own backlog) — then ``reconnecting`` while retrying; both once
  per outage. Before the first connection, a broker that refuses it is given
  ``heartbeat_timeout_s`` too (it may be starting beside us, as the paper
  broker does under ``tradebus up``): only if it is still out of reach then
  is that an outage. Announced at once, it would trip the risk-gate's
  ``connection_lost`` breaker and halt the account at every start where the
  gateway happened to come up first.

Order entry is a ``request`` per call, matched to its ``response`` by id,
with ``request_timeout_s`` per call. A call made while disconnected, or cut
by a disconnect, raises :class:`BrokerUnavailable` at once.

:class:`~services.broker_gateway.adapters.paper.client.PaperBroker` is this
connection with the broker's calls (the ``BrokerPort``) on top.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import random
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
from pydantic import SecretStr, ValidationError
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from libs import trace
from services.broker_gateway import metrics
from services.broker_gateway.adapters.paper import parse, schemas
from services.broker_gateway.domain.model import BrokerEvent, ConnectionState, ConnectionUpdate
from services.broker_gateway.errors import (
    AnswerUnread,
    AuthenticationFailed,
    BrokerError,
    BrokerUnavailable,
)

log = logging.getLogger(__name__)

#: Errors of opening a connection that mean "try again later".
CONNECT_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    InvalidHandshake,
    ConnectionClosed,
)
HANDSHAKE_ERRORS: tuple[type[BaseException], ...] = (
    *CONNECT_ERRORS,
    BrokerError,
    ValidationError,
    ValueError,
)


class PaperConnection:
    """The supervised WebSocket to the paper broker (see the module's docstring):
    its state, its stream of events, and :meth:`_call` for one request."""

    def __init__(
        self,
        *,
        account: str,
        url: str,
        key_id: str,
        secret_key: SecretStr,
        heartbeat_interval_s: float = 5.0,
        heartbeat_timeout_s: float = 5.0,
        request_timeout_s: float = 5.0,
        reconnect_initial_s: float = 0.25,
        reconnect_max_s: float = 10.0,
        max_events: int = 10_000,
    ) -> None:
        self.account = account
        self.url = url
        self._key_id = key_id
        self._secret = secret_key
        self.heartbeat_interval_s = heartbeat_interval_s
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self.request_timeout_s = request_timeout_s
        self.reconnect_initial_s = reconnect_initial_s
        self.reconnect_max_s = reconnect_max_s
        # Bounded: a full queue pauses the reader, and the socket pushes back.
        self._events: asyncio.Queue[BrokerEvent] = asyncio.Queue(max_events)
        self._ws: ClientConnection | None = None
        self._up = asyncio.Event()
        self._pending: dict[str, asyncio.Future[schemas.Response]] = {}
        self._ids = itertools.count(1)
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._outage_announced = False
        #: When the reader last waited for room in ``_events`` (inf while it
        #: waits): meanwhile the socket is not read (see ``_heartbeat``).
        self._held_up_until = 0.0
        self.state: ConnectionState | None = None

    # ------------------------------------------------------------ lifecycle

    @property
    def connected(self) -> bool:
        return self._up.is_set()

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._supervise(), name=f"paper-{self.account}")

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        ws, self._ws = self._ws, None
        self._up.clear()
        if ws is not None:
            with contextlib.suppress(*CONNECT_ERRORS):
                await ws.close()

    async def wait_connected(self, timeout: float | None = None) -> bool:
        try:
            async with asyncio.timeout(timeout):
                await self._up.wait()
        except TimeoutError:
            return False
        return True

    async def events(self) -> AsyncIterator[BrokerEvent]:
        while True:
            yield await self._events.get()

    # ----------------------------------------------------------- supervision

    async def _state(self, state: ConnectionState, detail: str) -> None:
        self.state = state
        metrics.CONNECTED.labels(account=self.account).set(1 if state == "connected" else 0)
        await self._events.put(ConnectionUpdate(state, detail))

    async def _outage(self, detail: str) -> None:
        """Announce an outage once: disconnected, then reconnecting."""
        if self._outage_announced:
            return
        self._outage_announced = True
        log.warning("broker %s disconnected: %s", self.account, detail)
        await self._state("disconnected", detail)
        await self._state("reconnecting", "")

    async def _supervise(self) -> None:
        backoff = self.reconnect_initial_s
        #: Until then, a refused first connection is not yet an outage.
        grace_until = time.monotonic() + self.heartbeat_timeout_s
        while not self._closed:
            try:
                ws = await connect(
                    self.url,
                    open_timeout=self.request_timeout_s,
                    ping_interval=None,  # our own heartbeat, with our own timeout
                    close_timeout=1,
                    compression=None,
                    max_size=4 * 1024 * 1024,
                )
            except InvalidURI:
                raise
            except CONNECT_ERRORS as e:
                detail = f"cannot connect: {type(e).__name__}: {e}"
                grace = grace_until - time.monotonic()
                if self.state is None and grace > 0:
                    log.info("broker %s not reachable yet (%s); retrying", self.account, detail)
                    await self._pause(min(backoff, grace))
                else:
                    await self._outage(detail)
                    await self._pause(backoff)
                backoff = min(backoff * 2, self.reconnect_max_s)
                continue
            try:
                await self._handshake(ws)
            except HANDSHAKE_ERRORS as e:
                await self._outage(f"handshake failed: {type(e).__name__}: {e}")
                with contextlib.suppress(*CONNECT_ERRORS):
                    await ws.close()
                await self._pause(backoff)
                backoff = min(backoff * 2, self.reconnect_max_s)
                continue
            self._ws = ws
            self._up.set()
            self._outage_announced = False
            log.info("broker %s connected (%s)", self.account, self.url)
            await self._state("connected", self.url)
            up_since = time.monotonic()
            cause = await self._run(ws)
            self._lost(ws)
            await self._outage(cause)
            if time.monotonic() - up_since >= self.heartbeat_interval_s:
                backoff = self.reconnect_initial_s  # it was up: reconnect at once
            else:
                # Lost as soon as it was up (a broker that closes right after
                # the handshake): backed off as a refused one is, or this loop
                # reconnects, and says so, as fast as the socket allows.
                await self._pause(backoff)
                backoff = min(backoff * 2, self.reconnect_max_s)

    async def _pause(self, backoff: float) -> None:
        await asyncio.sleep(random.uniform(backoff / 2, backoff))  # noqa: S311 - jitter

    def _lost(self, ws: ClientConnection) -> None:
        """The connection is gone: stop using it, fail the calls waiting on it."""
        self._up.clear()
        self._ws = None
        ws.transport.abort()
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(BrokerUnavailable(f"{self.account}: connection lost"))
        self._pending.clear()

    async def _handshake(self, ws: ClientConnection) -> None:
        auth = {"key_id": self._key_id, "secret_key": self._secret.get_secret_value()}
        await ws.send(orjson.dumps({"action": "authenticate", "data": auth}).decode())
        reply = await self._expect(ws, "authorization")
        status = schemas.Authorization.model_validate(reply.data).status
        if status != "authorized":
            raise AuthenticationFailed(f"{self.account}: broker answered {status}")
        listen = {"action": "listen", "data": {"streams": ["trade_updates"]}}
        await ws.send(orjson.dumps(listen).decode())
        reply = await self._expect(ws, "listening")
        if "trade_updates" not in schemas.Listening.model_validate(reply.data).streams:
            raise BrokerUnavailable(f"{self.account}: the broker would not stream trade_updates")

    async def _expect(self, ws: ClientConnection, stream: str) -> schemas.Envelope:
        deadline = time.monotonic() + self.request_timeout_s
        while True:
            async with asyncio.timeout(max(deadline - time.monotonic(), 0.001)):
                raw = await ws.recv()
            message = schemas.Envelope.model_validate_json(raw)
            if message.stream == stream:
                return message
            if message.stream == "authorization":  # unauthorized, for any action
                raise AuthenticationFailed(f"{self.account}: {message.data}")

    async def _run(self, ws: ClientConnection) -> str:
        """Read and heartbeat until either ends; returns why the connection is lost."""
        reader = asyncio.create_task(self._reader(ws), name=f"paper-read-{self.account}")
        heart = asyncio.create_task(self._heartbeat(ws), name=f"paper-ping-{self.account}")
        try:
            done, _ = await asyncio.wait({reader, heart}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (reader, heart):
                task.cancel()
            for task in (reader, heart):
                with contextlib.suppress(asyncio.CancelledError, *CONNECT_ERRORS):
                    await task
        first = done.pop()
        if first.cancelled():
            return "canceled"
        error = first.exception()
        return f"{type(error).__name__}: {error}" if error else first.result()

    async def _heartbeat(self, ws: ClientConnection) -> str:
        while True:
            await asyncio.sleep(self.heartbeat_interval_s)
            asked = time.monotonic()
            try:
                async with asyncio.timeout(self.heartbeat_timeout_s):
                    pong = await ws.ping()
                    await pong
            except TimeoutError:
                if self._held_up_until >= asked:
                    # Our reader waited for room in the event queue (a slow
                    # consumer): the socket was not read, the pong may wait
                    # in it. Not the broker's silence; and a loss could not
                    # be said before the updates queued ahead of it anyway.
                    continue
                return f"no heartbeat answer within {self.heartbeat_timeout_s:g}s"
            except ConnectionClosed as e:
                return f"connection closed ({e})"

    async def _reader(self, ws: ClientConnection) -> str:
        try:
            async for raw in ws:
                await self._dispatch(raw)
        except ConnectionClosed as e:
            return f"connection closed ({e})"
        return "connection closed by the broker"

    async def _dispatch(self, raw: str | bytes) -> None:
        arrived = time.time_ns() if trace.ON else 0
        try:
            message = schemas.Envelope.model_validate_json(raw)
            if message.stream == "response":
                response = schemas.Response.model_validate(message.data)
                fut = self._pending.get(response.id or "")
                if fut is not None and not fut.done():
                    fut.set_result(response)
            elif message.stream == "trade_updates":
                update = parse.trade_update(schemas.TradeUpdate.model_validate(message.data))
                if update is not None:
                    if trace.ON:
                        key = update.order.client_order_id
                        trace.mark(f"gateway: {update.kind} read", key, arrived)
                    await self._put(update)
            elif message.stream == "error":
                log.warning("broker %s says: %s", self.account, message.data)
        except (ValidationError, ValueError) as e:
            metrics.MALFORMED.labels(account=self.account).inc()
            log.error("broker %s sent a message we cannot read: %s", self.account, e)

    async def _put(self, update: BrokerEvent) -> None:
        """Queue a stream update; a full queue holds the reader (and the socket) up."""
        if not self._events.full():
            self._events.put_nowait(update)
            return
        self._held_up_until = math.inf
        try:
            await self._events.put(update)
        finally:
            self._held_up_until = time.monotonic()

    # ------------------------------------------------------------- requests

    async def _call(self, call: str, method: str, path: str, body: Any = None) -> schemas.Response:
        ws = self._ws
        if ws is None or not self._up.is_set():
            metrics.CALL_ERRORS.labels(account=self.account, call=call, error="unavailable").inc()
            raise BrokerUnavailable(f"{self.account}: not connected to the broker")
        rid = str(next(self._ids))
        fut: asyncio.Future[schemas.Response] = asyncio.get_running_loop().create_future()
        self._pending[rid] = fut
        started = time.perf_counter()
        request = {"id": rid, "method": method, "path": path}
        if body is not None:
            request["body"] = body
        try:
            await ws.send(orjson.dumps({"action": "request", "data": request}).decode())
            if trace.ON and isinstance(body, dict) and "client_order_id" in body:
                trace.mark(f"gateway: {call} sent", body["client_order_id"])
            # Not asyncio.wait_for: on 3.11, an answer that comes as the caller
            # is canceled is returned, the cancellation lost (a gateway told to
            # stop went on, and waited for ever on its stopped outbox).
            async with asyncio.timeout(self.request_timeout_s):
                return await fut
        # Before OSError: TimeoutError is one, and this one is no lost connection.
        except TimeoutError as e:
            metrics.CALL_ERRORS.labels(account=self.account, call=call, error="timeout").inc()
            raise AnswerUnread(
                f"{self.account}: no answer to {call} within {self.request_timeout_s:g}s"
            ) from e
        except (ConnectionClosed, OSError) as e:
            metrics.CALL_ERRORS.labels(account=self.account, call=call, error="unavailable").inc()
            raise BrokerUnavailable(f"{self.account}: connection lost during {call}") from e
        finally:
            self._pending.pop(rid, None)
            metrics.CALL_SECONDS.labels(account=self.account, call=call).observe(
                time.perf_counter() - started
            )
