"""The bus: nats-py JetStream with our stream, dedup ids and retry policy.

- :meth:`Bus.connect` reconnects forever (a service outlives a NATS restart).
- :meth:`Bus.ensure_stream` declares the one recorded stream idempotently.
- :meth:`Bus.publish` sends an event with ``Nats-Msg-Id`` = event id and waits
  for JetStream's ack, retrying retryable errors until one deadline; a retry
  of a publish that did land is dropped by the server's duplicate window.
- :meth:`Bus.publish_many` pipelines many publishes (a bounded window of
  in-flight acks) for high-rate producers, with the same retry guarantee.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
import ssl
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self
from urllib.parse import urlsplit

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from nats.js import api as js_api

from libs import trace
from libs.bus.errors import (
    RETRYABLE_PUBLISH_ERRORS,
    BusUnavailable,
    ControlLineTooLong,
    NoStream,
    PublishFailed,
    StreamMismatch,
)
from libs.config import masked_url
from libs.contract.codec import encode
from libs.contract.envelope import Event
from libs.contract.subjects import RECORDED_SUBJECTS, STREAM, subject_for

log = logging.getLogger(__name__)

MSG_ID_HEADER = "Nats-Msg-Id"

#: Named timeouts (seconds) for each phase.
CONNECT_TIMEOUT = 2.0
PUBLISH_ACK_TIMEOUT = 2.0
PUBLISH_DEADLINE = 30.0
RECONNECT_WAIT = 0.25
#: How long Bus.close_now gives the close of a connection whose server may
#: not answer.
CLOSE_NOW_TIMEOUT = 1.0

#: The stream's duplicate window: a publish retried within it is stored once.
#: Whatever trims the stream keeps at least this much (the recorder's keep
#: window is validated against it).
DUPLICATE_WINDOW_S = 120.0


#: The longest protocol line nats-server takes from a client: its
#: ``max_control_line``, 4 KiB unless its config sets another (tradebus's
#: configs do not, and the server's INFO does not say). For a longer line
#: the server answers ``-ERR 'Maximum Control Line Exceeded'`` and closes
#: the connection, which nats-py then closes for good, no reconnect
#: (nats-server 2.15.1, nats-py 2.16): whatever was sent after it is lost.
#: A subject NATS took as sent can be too long once a prefix is put before
#: it (a replay's).
MAX_CONTROL_LINE = 4096

#: Characters of a subject whose plain publish fits MAX_CONTROL_LINE however
#: large its message and headers: at most 4 bytes a character, and after it
#: three spaces and two sizes of at most 20 digits.
SUBJECT_ALWAYS_FITS = (MAX_CONTROL_LINE - 43) // 4

#: A header block's first line, and the line end (also the empty line
#: that ends the block), as nats-py writes them.
_HEADER_FIRST_LINE = len(b"NATS/1.0\r\n")
_CRLF = len(b"\r\n")


def publish_line_length(subject: str, data: bytes, headers: Mapping[str, str] | None = None) -> int:
    """Bytes of the line of a plain publish (no reply) that nats-server
    compares with its ``max_control_line``: what follows ``PUB`` or
    ``HPUB``, ``<subject>  <size>`` or ``<subject>  <header size> <total
    size>`` (nats-py writes the empty reply between two spaces). The header
    block is sized as nats-py builds it: ``NATS/1.0``, ``Key: value`` per
    header, each line ending in CRLF, then an empty line (checked with
    nats-py 2.16 against nats-server 2.15.1:
    ``tests/integration/test_bus_control_line.py``)."""
    line = len(subject.encode()) + 2
    if headers is None:
        return line + len(str(len(data)))
    block = _HEADER_FIRST_LINE + _CRLF
    for key, value in headers.items():
        if key.strip():  # nats-py leaves out a header with an empty name
            block += len(key.strip().encode()) + 2 + len(value.strip().encode()) + _CRLF
    return line + len(str(block)) + 1 + len(str(block + len(data)))


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One message to publish: subject, bytes and its dedup id."""

    subject: str
    data: bytes
    msg_id: str

    @classmethod
    def of(cls, event: Event, subject: str | None = None) -> Outgoing:
        return cls(subject or subject_for(event), encode(event), str(event.id))


RETRYABLE_PUBLISH_ERRORS_OR_STALLED: tuple[type[BaseException], ...] = (
    *RETRYABLE_PUBLISH_ERRORS,
    nats.js.errors.TooManyStalledMsgsError,
)


def inbox_prefix(user: str | None) -> str:
    """Where ``user``'s replies arrive: ``_INBOX_<user>``, so that the NATS
    permissions can give each user its own replies, JetStream acks and pull
    batches and no one else's (``deploy/nats/nats-server.conf``); plain
    ``_INBOX`` without a user."""
    return f"_INBOX_{user}" if user else "_INBOX"


_REFUSED_PUBLISH = re.compile(r'permissions violation for publish to "([^"]+)"', re.IGNORECASE)


def refused_subject(error: Exception) -> str | None:
    """The subject of a publish the server refused (permissions), from the
    error nats-py hands to ``error_cb``; None for any other error. nats-py
    lower-cases the server's message, subject included."""
    m = _REFUSED_PUBLISH.search(str(error))
    return m.group(1) if m else None


def _refusal(error: BaseException) -> bool:
    """Whether a first connection's ``error`` is the server's (or the
    network's) answer, not its silence: trying again until a deadline would
    only meet it again."""
    return not isinstance(error, TimeoutError | nats.errors.TimeoutError)


def _describe(error: BaseException) -> str:
    """A connection error in words: ``connection refused``, the server's
    ``authorization violation``, the TLS or OS error's own text."""
    if isinstance(error, ConnectionRefusedError):
        return "connection refused (is nats-server running there?)"
    if isinstance(error, ssl.SSLError):
        return f"TLS: {error.reason or error}"
    if isinstance(error, TimeoutError | nats.errors.TimeoutError):
        return "timed out"
    if isinstance(error, OSError):
        return str(error.strerror or error) or type(error).__name__
    text = str(error).removeprefix("nats: ").strip("'")
    return text or type(error).__name__


def _backoff(attempt: int, base: float = 0.05, cap: float = 2.0) -> float:
    """Exponential backoff with full jitter."""
    return random.uniform(0, min(cap, base * 2**attempt))  # noqa: S311 - jitter, not crypto


class Bus:
    """A connected NATS client plus its JetStream context."""

    def __init__(
        self,
        nc: NatsClient,
        js: JetStreamContext,
        *,
        user: str | None = None,
        url: str = "",
        refusals: list[str] | None = None,
    ) -> None:
        self.nc = nc
        self.js = js
        #: The NATS user this connection is (None: no user).
        self.user = user
        #: The server's URL, its password masked (for messages).
        self.url = url
        # Subjects (lower case, as nats-py reports them) the server refused to
        # let this connection publish to, filled by the error callback.
        self._refusals = refusals if refusals is not None else []
        self._closed = False
        # The connection's reconnects as of the last settle (or as made): a
        # verdict counts only from the connection the publishes went to.
        self._settled_reconnects: int = nc.stats["reconnects"]

    def write_pending(self) -> None:
        """Hand what was just published to the socket now.

        nats-py buffers publishes and leaves the write to its flusher task,
        which runs a loop iteration later, after whatever else is ready (on a
        busy service: the next messages' handling). Publishers that are about
        to wait for their acks write at once instead. On the order path
        (bench/order_path.py, 200/s, two interleaved A/B sets of three runs
        each on a noisy host) the median from signal to broker ack went from
        2.53 to 2.26 ms and from 2.32 to 2.24 ms: a small gain, near the
        host's noise. Reaches into nats-py's buffer (checked with nats-py
        2.16): should a later release rename it, this does nothing and the
        flusher writes as before. The flusher, woken for data already
        written, finds nothing left.
        """
        nc: Any = self.nc
        pending = getattr(nc, "_pending", None)
        transport = getattr(nc, "_transport", None)
        if not pending or transport is None or not nc.is_connected:
            return
        transport.writelines(pending[:])
        nc._pending = []
        nc._pending_data_size = 0

    @classmethod
    async def connect(
        cls,
        url: str,
        *,
        name: str,
        user: str | None = None,
        password: str | None = None,
        max_pending_acks: int = 4096,
        first_connect_deadline_s: float | None = None,
    ) -> Bus:
        """Connect; a service waits for NATS as long as it takes, a command
        gives up after ``first_connect_deadline_s`` with :class:`BusUnavailable`.

        A command's first connection also ends at the first refusal (nothing
        listening, no such host, the user refused, TLS), naming the cause:
        nats-py would try again until the deadline and tell nobody why. Only
        a server that does not answer is waited for. Once connected, every
        connection reconnects forever (a service outlives a NATS restart).
        """

        refusals: list[str] = []
        connected = False
        #: The bus, once made (the callbacks below are set before it exists).
        made: list[Bus] = []
        loop = asyncio.get_running_loop()
        # A command's first connection: the first error that is an answer
        # (see _refusal) ends the wait at once; the last of any kind is named
        # should the deadline run out.
        first_refusal: asyncio.Future[BaseException] = loop.create_future()
        last_error: BaseException | None = None

        async def on_error(e: Exception) -> None:
            nonlocal last_error
            if subject := refused_subject(e):
                refusals.append(subject)
            if not connected:
                last_error = e
                if (
                    first_connect_deadline_s is not None
                    and _refusal(e)
                    and not first_refusal.done()
                ):
                    first_refusal.set_result(e)
            log.warning("nats error: %s", e)

        async def on_disconnect() -> None:
            if made and made[0]._closed:
                # Our own close(): no disconnection to warn of (tradebus up
                # printed it bare between its lines, services at every stop).
                log.debug("nats connection closed")
                return
            log.warning("nats disconnected")

        async def on_reconnect() -> None:
            log.info("nats reconnected")

        nc = NatsClient()
        connecting = asyncio.ensure_future(
            nc.connect(
                servers=[url],
                name=name,
                user=user,
                password=password,
                inbox_prefix=inbox_prefix(user or urlsplit(url).username),
                connect_timeout=CONNECT_TIMEOUT,  # type: ignore[arg-type]  # nats-py takes floats; its annotation says int
                reconnect_time_wait=RECONNECT_WAIT,  # type: ignore[arg-type]  # as above
                max_reconnect_attempts=-1,
                allow_reconnect=True,
                error_cb=on_error,
                disconnected_cb=on_disconnect,
                reconnected_cb=on_reconnect,
                # Keep what is published while reconnecting; bounded (bytes).
                pending_size=64 * 1024 * 1024,
            )
        )
        try:
            await asyncio.wait(
                (connecting, first_refusal),
                timeout=first_connect_deadline_s,
                return_when=asyncio.FIRST_COMPLETED,
            )
            if not connecting.done():
                connecting.cancel()
                with contextlib.suppress(asyncio.CancelledError, nats.errors.Error, OSError):
                    await connecting
                with contextlib.suppress(nats.errors.Error, OSError):
                    await nc.close()
                if first_refusal.done():
                    cause = first_refusal.result()
                    raise BusUnavailable(
                        f"cannot connect to NATS at {masked_url(url)}: {_describe(cause)}"
                    ) from cause
                why = f" (last error: {_describe(last_error)})" if last_error is not None else ""
                raise BusUnavailable(
                    f"cannot reach NATS at {masked_url(url)} within "
                    f"{first_connect_deadline_s} s{why}"
                )
            connecting.result()
        except (nats.errors.NoServersError, OSError, nats.errors.Error) as e:
            raise BusUnavailable(f"cannot connect to NATS at {masked_url(url)}: {e}") from e
        finally:
            if not connecting.done():  # cancelled from outside
                connecting.cancel()
        connected = True
        js = nc.jetstream(timeout=PUBLISH_ACK_TIMEOUT, publish_async_max_pending=max_pending_acks)
        bus = cls(
            nc,
            js,
            user=user or urlsplit(url).username,
            url=masked_url(url),
            refusals=refusals,
        )
        made.append(bus)
        return bus

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Flush and close; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        try:
            if self.nc.is_connected:
                await self.nc.drain()
            else:
                self._discard_pending()
                await self.nc.close()
        except (TimeoutError, nats.errors.Error) as e:
            log.debug("error while closing nats: %s", e)

    async def close_now(self, within_s: float = CLOSE_NOW_TIMEOUT) -> None:
        """Close without waiting on the server: what is still buffered is
        dropped, and the close is given up after ``within_s`` (the socket
        then goes with the process); safe to call twice, and after close().

        For a publisher that has had the server's verdict on what it sent
        (:meth:`settle`), or has said that it could not get it (a stopped
        replay): :meth:`close` drains, whose flush waits out nats-py's flush
        timeout (10 s) when the server stalls, for messages nobody counts on.
        Services keep :meth:`close`: they count on the drain to deliver what
        is buffered.
        """
        if self._closed:
            return
        self._closed = True
        self._discard_pending("not yet sent")
        try:
            async with asyncio.timeout(within_s):
                await self.nc.close()
        except (TimeoutError, nats.errors.Error, OSError) as e:
            log.debug("error while closing nats: %r", e)

    def _discard_pending(self, what: str = "buffered while NATS was away") -> None:
        """Drop what nats-py buffered while NATS was away (``what``: said in
        the log line of what was dropped).

        Its close writes that buffer to the connection it last had, which is
        dead; under uvloop, as the services run, that write raises (checked
        with nats-py 2.16), so a service stopped during an outage exited with
        a traceback and a risk-gate cycle ended in a crash, not a retry.
        Nothing is lost by dropping it: it holds publishes nobody got an ack
        for (their publishers retry or fail), pull requests and acks (the
        server redelivers). Reaches into nats-py's private buffer, like
        :meth:`write_pending`.
        """
        nc: Any = self.nc
        if getattr(nc, "_pending_data_size", 0):
            log.info("dropping %d bytes %s", nc._pending_data_size, what)
            nc._pending = []
            nc._pending_data_size = 0

    # ------------------------------------------------------- plain publish

    async def publish_plain(
        self, subject: str, data: bytes, headers: dict[str, str] | None = None
    ) -> None:
        """Publish with plain NATS (no stream, no ack), for subjects no stream
        captures (replays). The server judges it later: see :meth:`settle`.

        Raises :class:`ControlLineTooLong`, sending nothing, for a line the
        server would close the connection for (see :data:`MAX_CONTROL_LINE`)."""
        if len(subject) > SUBJECT_ALWAYS_FITS:
            length = publish_line_length(subject, data, headers)
            if length > MAX_CONTROL_LINE:
                raise ControlLineTooLong(subject, length, MAX_CONTROL_LINE)
        try:
            await self.nc.publish(subject, data, headers=headers)
        except nats.errors.Error as e:
            raise BusUnavailable(f"publishing to {subject} at {self.url} failed: {e!r}") from e

    async def settle(self) -> list[str]:
        """Wait until the server has judged everything published since the
        last call, and return the subjects it refused meanwhile (lower case).

        A plain publish the server refuses (permissions) is dropped, and the
        refusal comes back later as ``-ERR``, handed to the error callback by
        nats-py's read loop. The server handles one connection's messages in
        order, so once a PING sent after the publishes is answered every
        refusal for them has arrived. nats-py 2.16's ``flush()`` writes its
        PING ahead of publishes still in its buffer, so one flush is not a
        barrier; the second PING goes out after them.

        Only the connection the publishes went to can judge them: nats-py
        answers a flush at once while it reconnects (its read loop is gone),
        and what it wrote to a connection that then broke may be lost. So
        with the client disconnected, or reconnected since the last call (or
        since it connected, before the first), this raises
        :class:`BusUnavailable` rather than return a verdict nobody gave;
        the next call judges what is published on the new connection.
        """
        try:
            await self.nc.flush()
            await self.nc.flush()
        except nats.errors.Error as e:
            self._settled_reconnects = self.nc.stats["reconnects"]
            raise BusUnavailable(f"NATS at {self.url} did not answer a flush: {e!r}") from e
        reconnects = self.nc.stats["reconnects"]
        if not self.nc.is_connected or reconnects != self._settled_reconnects:
            self._settled_reconnects = reconnects
            raise BusUnavailable(
                f"the connection to NATS at {self.url} dropped before the server's verdict"
            )
        refused = list(self._refusals)
        self._refusals.clear()
        return refused

    # ------------------------------------------------------------ streams

    async def ensure_stream(
        self,
        *,
        name: str = STREAM,
        subjects: Sequence[str] = RECORDED_SUBJECTS,
        duplicate_window_s: float = DUPLICATE_WINDOW_S,
        max_msg_bytes: int = 1024 * 1024,
        storage: js_api.StorageType = js_api.StorageType.FILE,
    ) -> js_api.StreamInfo:
        """Create the stream, or check the existing one captures ``subjects``.

        The stream has no limits of its own (limits retention, no age or size
        limit, discard new): it is the buffer between producers and the
        recorder, and its sequence is the global order, so the server must
        never drop a message nobody recorded. The recorder trims it instead
        (``services/recorder/adapters/trim.py``): it purges only what the
        event store holds, what is older than its keep window and what every
        consumer that takes acks has acknowledged.
        """
        config = js_api.StreamConfig(
            name=name,
            subjects=list(subjects),
            retention=js_api.RetentionPolicy.LIMITS,
            storage=storage,
            duplicate_window=duplicate_window_s,
            max_msg_size=max_msg_bytes,
            discard=js_api.DiscardPolicy.NEW,
            allow_direct=True,
        )
        try:
            info = await self.js.stream_info(name)
        except nats.js.errors.NotFoundError:
            return await self.js.add_stream(config)
        have = set(info.config.subjects or [])
        if not set(subjects) <= have:
            try:
                return await self.js.update_stream(config)
            except nats.js.errors.APIError as e:
                raise StreamMismatch(
                    f"stream {name} captures {sorted(have)}, need {sorted(subjects)}: {e}"
                ) from e
        return info

    # ------------------------------------------------------------ publish

    async def publish(
        self,
        event: Event,
        *,
        subject: str | None = None,
        deadline_s: float = PUBLISH_DEADLINE,
        wait_for_stream: bool = True,
    ) -> js_api.PubAck:
        """Publish one event and wait for the stream to store it."""
        return await self.publish_raw(
            Outgoing.of(event, subject), deadline_s=deadline_s, wait_for_stream=wait_for_stream
        )

    async def publish_raw(
        self, out: Outgoing, *, deadline_s: float = PUBLISH_DEADLINE, wait_for_stream: bool = True
    ) -> js_api.PubAck:
        """Publish bytes with a dedup id, retrying until ``deadline_s``.

        A service waits for the stream (another may be creating it); a
        one-shot command passes ``wait_for_stream=False`` to be told at once,
        by :class:`NoStream`, that no stream captures the subject."""
        end = time.monotonic() + deadline_s
        attempt = 0
        while True:
            try:
                return await self.js.publish(
                    out.subject, out.data, headers={MSG_ID_HEADER: out.msg_id}
                )
            except RETRYABLE_PUBLISH_ERRORS as e:
                if not wait_for_stream and isinstance(e, nats.js.errors.NoStreamResponseError):
                    raise NoStream(f"no stream captures {out.subject}") from e
                if time.monotonic() >= end:
                    raise PublishFailed(f"{out.subject}: no ack within {deadline_s}s: {e!r}") from e
                await asyncio.sleep(_backoff(attempt))
                attempt += 1
            except nats.errors.ConnectionClosedError as e:
                raise BusUnavailable("NATS connection is closed") from e

    async def publish_together(
        self, events: Sequence[Event], *, deadline_s: float = PUBLISH_DEADLINE
    ) -> list[js_api.PubAck]:
        """Publish a few related events back to back, then wait for all acks.

        They leave on one connection in the order given, so the stream stores
        them in that order; waiting for the acks together costs one round trip
        instead of one per event. Any publish whose ack failed is retried on its
        own (same dedup id) before this returns, so when it returns every event
        is stored.
        """
        outs = [Outgoing.of(e) for e in events]
        futures: list[asyncio.Future[js_api.PubAck] | None] = []
        for out in outs:
            try:
                futures.append(
                    await self.js.publish_async(
                        out.subject, out.data, headers={MSG_ID_HEADER: out.msg_id}
                    )
                )
            except RETRYABLE_PUBLISH_ERRORS_OR_STALLED:
                # It and the ones after it are published one by one below, in
                # order: sent now, the later ones would be stored before it
                # (an order before the decision that allowed it).
                futures += [None] * (len(outs) - len(futures))
                break
        pending = [f for f in futures if f is not None]
        self.write_pending()
        if trace.ON:
            trace.published(events)
        if pending:
            _, late = await asyncio.wait(pending, timeout=PUBLISH_ACK_TIMEOUT)
            for straggler in late:
                straggler.cancel()
        acks: list[js_api.PubAck] = []
        for out, sent in zip(outs, futures, strict=True):
            if sent is not None and not sent.cancelled():
                error = sent.exception()
                if error is None:
                    acks.append(sent.result())
                    continue
                if not isinstance(error, RETRYABLE_PUBLISH_ERRORS):
                    raise PublishFailed(f"{out.subject}: {error!r}") from error
            acks.append(await self.publish_raw(out, deadline_s=deadline_s))
        return acks

    async def publish_many(
        self,
        events: Iterable[Event | Outgoing],
        *,
        window: int = 2048,
        deadline_s: float = PUBLISH_DEADLINE,
    ) -> int:
        """Publish many messages pipelined, each acknowledged; returns the count.

        Up to ``window`` publishes are in flight; a publish whose ack failed is
        retried individually with the same dedup id. Order on the stream follows
        the order given, except for retried messages.
        """
        pending: list[tuple[Outgoing, asyncio.Future[js_api.PubAck]]] = []
        count = 0

        async def settle(batch: list[tuple[Outgoing, asyncio.Future[js_api.PubAck]]]) -> None:
            # One ack deadline for the whole window (not one per message: a
            # NATS restart would otherwise cost window x timeout), then retry
            # whatever did not come back, one by one, with the same dedup ids.
            if not batch:
                return
            self.write_pending()
            _, late = await asyncio.wait([f for _, f in batch], timeout=PUBLISH_ACK_TIMEOUT)
            for fut in late:
                fut.cancel()
            for out, fut in batch:
                if not fut.cancelled():
                    error = fut.exception()
                    if error is None:
                        continue
                    if not isinstance(error, RETRYABLE_PUBLISH_ERRORS):
                        raise PublishFailed(f"{out.subject}: {error!r}") from error
                await self.publish_raw(out, deadline_s=deadline_s)

        for item in events:
            out = item if isinstance(item, Outgoing) else Outgoing.of(item)
            if trace.ON and not isinstance(item, Outgoing):
                trace.published([item])
            try:
                fut = await self.js.publish_async(
                    out.subject, out.data, headers={MSG_ID_HEADER: out.msg_id}
                )
            except RETRYABLE_PUBLISH_ERRORS_OR_STALLED:
                await settle(pending)
                pending = []
                await self.publish_raw(out, deadline_s=deadline_s)
                count += 1
                continue
            pending.append((out, fut))
            count += 1
            if len(pending) >= window:
                await settle(pending)
                pending = []
        await settle(pending)
        return count
