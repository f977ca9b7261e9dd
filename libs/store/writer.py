"""The single writer of the ``events`` table.

Invariant: rows are written in stream-sequence order, each batch in one
transaction, and a batch must start right after the last committed sequence
— so ``events.seq`` stays gapless and strictly increasing.

Single writer: :meth:`EventWriter.open` takes a session-level advisory lock on
the very connection that writes. A second recorder waits for the lock; when
the holder dies its connection closes, Postgres frees the lock and the waiter
takes over. Because the lock and the writes share one connection, a writer
that lost its connection (and so its lock) cannot commit anything more: that
is the fence.

Event ids are unique in the store. A message under a recorded id, at a new
stream position, is written as a ``DuplicateSuppressed`` pointer to the
first. If it says something else (:data:`EVENT_FIELDS`: a producer making
an event again after a restart may make it a little differently), the
pointer keeps its bytes and names what differs, so nothing it says is lost
(:func:`duplicate_row`); the writer logs it and reports it (``on_copy``).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import NamedTuple, Self

import asyncpg
import orjson

from libs.contract.codec import derived_id
from libs.store import exact_json, queries
from libs.store.errors import LockLost, RowRefused, StoreError, StoreUnavailable
from libs.store.layout import COPY_COLUMNS, DUPLICATE
from libs.store.queries import Tail
from libs.store.urls import asyncpg_url

log = logging.getLogger(__name__)

#: Advisory lock key of the event-recorder ("tradebus" as an int).
RECORDER_LOCK_KEY = 0x7472616465627573
LOCK_POLL_INTERVAL = 0.25
CONNECT_TIMEOUT = 5.0
COMMAND_TIMEOUT = 30.0
#: Most time one batch's transaction may take (it normally takes milliseconds).
WRITE_TIMEOUT = 10.0
#: Most time the idle check of the writer's connection may take.
PING_TIMEOUT = 2.0

#: Errors for a row the store refuses for what it holds, the same on every
#: retry: a value it cannot hold (SQLSTATE class 22, data exception: an
#: index's cast or sum out of range), or one past a limit of its own (class
#: 54, program limit exceeded: a subject longer than its index takes).
REFUSED_ERRORS: tuple[type[asyncpg.PostgresError], ...] = (
    asyncpg.DataError,
    asyncpg.ProgramLimitExceededError,
)

#: Errors that mean "the database went away": reconnect and start over.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    # Seen when the server shuts down in the middle of a COPY: the client's
    # protocol state is left "in COPY", and the next statement fails.
    asyncpg.InternalClientError,
)


class Row(NamedTuple):
    """One ``events`` row, in :data:`COPY_COLUMNS` order (a tuple: COPY takes it as is)."""

    seq: int
    id: uuid.UUID
    subject: str
    type: str
    ts_event: int
    ts_init: int
    source: str
    correlation_id: uuid.UUID
    causation_id: uuid.UUID | None
    strategy: str | None
    account: str | None
    symbol: str | None
    payload: str  # JSON text
    raw: bytes | None


@dataclass(frozen=True, slots=True)
class Copy:
    """The message at ``seq`` carries the id ``id`` of the event at
    ``first_seq`` and was written as a pointer to it; ``differs`` names the
    :data:`EVENT_FIELDS` in which it says otherwise (empty: the same event
    sent again)."""

    seq: int
    id: uuid.UUID
    first_seq: int
    differs: tuple[str, ...] = ()

    def __str__(self) -> str:
        if not self.differs:
            return f"event {self.id} at seq {self.seq} duplicates seq {self.first_seq}"
        return (
            f"event {self.id} at seq {self.seq} reuses the id of seq {self.first_seq}, "
            f"differing in {', '.join(self.differs)}; its pointer keeps its bytes"
        )


#: The bytes the message at a stream sequence was sent as (None: no message
#: is behind its row, one the caller made itself: a position missing from
#: the stream).
SentBytes = Callable[[int], bytes | None]


class EventWriter:
    """Holds the recorder lock and appends rows. Use :meth:`open`."""

    def __init__(
        self,
        conn: asyncpg.Connection,
        tail: Tail | None,
        *,
        on_copy: Callable[[Copy], None] | None = None,
    ) -> None:
        self._conn = conn
        #: The store's last row when the writer opened (see libs.continuity).
        self.tail = tail
        self.last_seq = queries.last_seq_of(tail)
        #: Called for each copy written as a pointer, once it is committed.
        self.on_copy = on_copy
        self._closed = False

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        lock_key: int = RECORDER_LOCK_KEY,
        standing_by: Callable[[], None] | None = None,
        on_copy: Callable[[Copy], None] | None = None,
    ) -> EventWriter:
        """Connect, wait for the single-writer lock, read the last sequence.
        ``standing_by`` is called once if another writer holds the lock;
        ``on_copy`` once for each :class:`Copy` committed."""
        try:
            conn = await asyncpg.connect(
                asyncpg_url(url),
                timeout=CONNECT_TIMEOUT,
                command_timeout=COMMAND_TIMEOUT,
                # Notice a silently dead client quickly, so its lock frees.
                server_settings={
                    "application_name": "tradebus-recorder",
                    "tcp_keepalives_idle": "5",
                    "tcp_keepalives_interval": "2",
                    "tcp_keepalives_count": "3",
                },
            )
        except (*CONNECTION_ERRORS, asyncpg.PostgresError) as e:
            raise StoreUnavailable(f"cannot connect to the event store: {e}") from e
        try:
            announced = False
            while not await conn.fetchval("SELECT pg_try_advisory_lock($1)", lock_key):
                if not announced:
                    log.info("another recorder holds the writer lock; standing by")
                    announced = True
                    if standing_by is not None:
                        standing_by()
                await asyncio.sleep(LOCK_POLL_INTERVAL)
            last = await queries.tail(conn)
        except BaseException as e:
            await conn.close(timeout=1)
            if isinstance(e, CONNECTION_ERRORS):
                raise StoreUnavailable(f"event store connection lost: {e}") from e
            raise
        log.info("holding the writer lock; last recorded sequence %d", queries.last_seq_of(last))
        return cls(conn, last, on_copy=on_copy)

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
        """Release the lock by closing the connection; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        try:
            await self._conn.close(timeout=2)
        except CONNECTION_ERRORS:
            self._conn.terminate()

    async def ping(self) -> None:
        """Check, while idle, that the connection (and so the lock) is still there.

        Without it, a recorder with nothing to write would go on saying it is
        the writer long after Postgres went away, and find out only at the
        next event.
        """
        await self._fenced(self._conn.fetchval("SELECT 1"), PING_TIMEOUT, "idle")

    async def write(self, rows: Sequence[Row], *, sent: SentBytes) -> int:
        """Append ``rows`` (contiguous, starting at or before ``last_seq + 1``).

        Rows at or below ``last_seq`` are already recorded and skipped, so
        writing the same batch twice is a no-op. Returns rows newly written.
        A row under a recorded event's id is written as a pointer to it
        (:func:`duplicate_row`; ``sent`` gives the bytes a copy that differs
        was sent as, which its pointer keeps). Raises :class:`RowRefused`
        for a row the store refuses on its own, once every row before it is
        committed (``last_seq`` says how far).
        """
        fresh = [r for r in rows if r.seq > self.last_seq]
        if not fresh:
            return 0
        expected = self.last_seq + 1
        for offset, row in enumerate(fresh):
            if row.seq != expected + offset:
                raise StoreError(
                    f"refusing to write past a hole: expected seq {expected + offset}, "
                    f"got {row.seq}"
                )
        # One deadline for the whole transaction: a COPY cut off by a server
        # shutdown has been seen to hang instead of failing.
        await self._fenced(self._append_all(fresh, sent), WRITE_TIMEOUT, "writing")
        return len(fresh)

    async def _fenced(self, work: Awaitable[object], timeout: float, doing: str) -> None:
        """``work`` within ``timeout``; if it fails or hangs the connection is
        dropped (and with it the lock): :class:`LockLost`."""
        try:
            async with asyncio.timeout(timeout):
                await work
        except TimeoutError as e:
            self._conn.terminate()
            raise LockLost(f"event store did not answer within {timeout} s ({doing})") from e
        except CONNECTION_ERRORS as e:
            self._conn.terminate()
            raise LockLost(f"event store connection lost while {doing}: {e}") from e

    async def _append_all(self, rows: list[Row], sent: SentBytes) -> None:
        pending = rows
        while pending:
            try:
                copies = await self._append(pending, sent)
            except REFUSED_ERRORS:
                # A value the store cannot hold (an index's cast or sum out of
                # range, a subject too long for its index): the same batch
                # would fail on every retry, and the timeline would stop
                # there. Commit what comes before it.
                await self._commit_until_refused(pending, sent)
                pending = [r for r in pending if r.seq > self.last_seq]
                continue
            self._committed(pending[-1].seq, copies)
            return

    def _committed(self, last_seq: int, copies: list[Copy]) -> None:
        """Rows up to ``last_seq`` are committed, ``copies`` among them: said
        here, once (a transaction rolled back and redone says nothing twice)."""
        self.last_seq = last_seq
        for copy in copies:
            log.warning("%s", copy)
            if self.on_copy is not None:
                self.on_copy(copy)

    async def _commit_until_refused(self, rows: list[Row], sent: SentBytes) -> None:
        """``rows`` were refused as a whole: commit those before the first one
        refused on its own and raise :class:`RowRefused` for it (a bisection:
        a few round trips, not one per row). Commits at least one row if it
        does not raise."""
        low, high = 0, len(rows)  # rows[:low] committed; rows[low:high] refused as a whole
        while high - low > 1:
            mid = (low + high) // 2
            try:
                copies = await self._append(rows[low:mid], sent)
            except REFUSED_ERRORS:
                high = mid
                continue
            self._committed(rows[mid - 1].seq, copies)
            low = mid
        # Refused on its own, not only with others, before it is given up on.
        try:
            copies = await self._append(rows[low : low + 1], sent)
        except REFUSED_ERRORS as e:
            raise RowRefused(rows[low].seq, e) from e
        self._committed(rows[low].seq, copies)

    async def _append(self, fresh: list[Row], sent: SentBytes) -> list[Copy]:
        """Commit ``fresh``; returns the copies written as pointers."""
        try:
            async with self._conn.transaction():
                await self._conn.copy_records_to_table(
                    "events", records=fresh, columns=COPY_COLUMNS
                )
        except asyncpg.UniqueViolationError:
            # An event id we already have, arriving again at a new stream
            # position (re-published after the dedup window). Keep the
            # position, mark it as a duplicate: the sequence stays gapless.
            return await self._write_with_duplicates(fresh, sent)
        return []

    async def _write_with_duplicates(self, rows: list[Row], sent: SentBytes) -> list[Copy]:
        ids = [r.id for r in rows]
        async with self._conn.transaction():
            # Look the ids up through the unique index. The plan cached for
            # this statement may date from when the table looked tiny, and a
            # sequential scan of the whole store per batch of duplicates took
            # a core's worth of CPU once the table had grown.
            await self._conn.execute("SET LOCAL enable_seqscan = off")
            known = {
                rec["id"]: (rec["seq"], what_it_says(*(rec[f] for f in EVENT_FIELDS)))
                for rec in await self._conn.fetch(
                    f"SELECT id, {', '.join(EVENT_FIELDS)}, seq FROM events "  # noqa: S608 (constants)
                    "WHERE id = ANY($1::uuid[])",
                    ids,
                )
            }
            in_batch: dict[uuid.UUID, Row] = {}
            out: list[Row] = []
            copies: list[Copy] = []
            for r in rows:
                if r.id in known:
                    first_seq, says = known[r.id]
                elif (earlier := in_batch.get(r.id)) is not None:
                    first_seq, says = earlier.seq, said_by(earlier)
                else:
                    in_batch[r.id] = r
                    out.append(r)
                    continue
                # Not dead-lettered when it differs: producers make events
                # again under derived ids after a restart, and some of what
                # they say then is of that moment (a clock's ts_event, a
                # reason text). The pointer keeps all of it.
                differs = differences(r, says)
                copies.append(Copy(r.seq, r.id, first_seq, differs))
                out.append(
                    duplicate_row(r, first_seq, differs, sent=sent(r.seq) if differs else None)
                )
            await self._conn.copy_records_to_table("events", records=out, columns=COPY_COLUMNS)
        return copies


#: What an event says, beyond its id: two messages with one id whose
#: :func:`what_it_says` is equal are one event sent again (a publish retried
#: past JetStream's duplicate window, a producer making the same fact again
#: under its derived id after a restart), and the second one's
#: DuplicateSuppressed pointer needs nothing more. The payload counts as a
#: JSON value (canonical: key order, spacing and escapes of the bytes do not
#: count). Left out are ``ts_init`` and ``source``, when and by which
#: instance this copy was made (a producer making it again gives new ones),
#: and the subject; the pointer row keeps the copy's own of those (and of
#: ``ts_event``). A copy that differs in any of these fields keeps its bytes
#: in its pointer too (:func:`duplicate_row`).
EVENT_FIELDS = ("type", "ts_event", "correlation_id", "causation_id", "payload")


def what_it_says(
    event_type: str,
    ts_event: int,
    correlation_id: uuid.UUID,
    causation_id: uuid.UUID | None,
    payload: str,
) -> tuple[object, ...]:
    """The :data:`EVENT_FIELDS` of a row, its payload (JSON text) canonical."""
    canonical = exact_json.dumps(exact_json.loads(payload), sort_keys=True)
    return (event_type, ts_event, correlation_id, causation_id, canonical)


def said_by(row: Row) -> tuple[object, ...]:
    """:func:`what_it_says` of a row."""
    return what_it_says(*(getattr(row, f) for f in EVENT_FIELDS))


def differences(row: Row, first: tuple[object, ...]) -> tuple[str, ...]:
    """The :data:`EVENT_FIELDS` in which ``row`` says other than ``first``
    (:func:`what_it_says` of the first event with its id); empty: the same event."""
    return tuple(f for f, a, b in zip(EVENT_FIELDS, said_by(row), first, strict=True) if a != b)


def duplicate_row(
    row: Row, first_seq: int, differs: Sequence[str] = (), *, sent: bytes | None
) -> Row:
    """The DuplicateSuppressed row for ``row``, under the id of the event at
    ``first_seq``: a pointer to it, with the copy's own subject, times and
    source (and its bytes, if it was stored altered). A copy that says
    otherwise (``differs``, see :func:`differences`) keeps its bytes as
    ``sent``, and the pointer names what differs: everything the copy says
    is in its row. ``sent`` is None for a row with no message behind it (one
    the caller made itself): such a copy keeps its event's JSON."""
    dup_id = derived_id("duplicate", row.seq)
    pointer: dict[str, object] = {"duplicate_of": str(row.id), "first_seq": first_seq}
    raw = row.raw
    if differs:
        pointer["differs"] = list(differs)
        raw = sent if sent is not None else raw if raw is not None else _as_sent(row)
    return row._replace(
        id=dup_id,
        type=DUPLICATE,
        correlation_id=dup_id,
        causation_id=row.id,
        payload=orjson.dumps(pointer).decode(),
        raw=raw,
    )


def _as_sent(row: Row) -> bytes:
    """The event of ``row`` as JSON (no message is behind it: no bytes were sent)."""
    return exact_json.dumps(
        {
            "id": str(row.id),
            "type": row.type,
            "ts_event": row.ts_event,
            "ts_init": row.ts_init,
            "source": row.source,
            "correlation_id": str(row.correlation_id),
            "causation_id": str(row.causation_id) if row.causation_id else None,
            "payload": exact_json.loads(row.payload),
        }
    )
