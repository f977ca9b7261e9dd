"""The event-recorder: JetStream -> Postgres, in stream order, nothing lost.

One cycle: take the writer lock (waiting while another recorder has it),
read the last committed sequence, point the consumer right after it, then
loop: fetch a batch, fill any holes by reading those positions directly,
convert every message to a row (undecodable ones included, raw bytes kept),
write the batch in one transaction, and only then ack (ack-all) the highest
sequence written. Dead letters are published before the commit, with ids
derived from their position so a retry does not repeat them. A message that
decodes but whose row the store refuses on its own (a value it cannot hold)
is recorded as undecodable too, reason ``unstorable``, and dead-lettered.
One under the id of an event already recorded is a ``DuplicateSuppressed``
pointer to the first, never a dead letter; if it says something else, the
pointer keeps its bytes and names what differs, and it is counted
(``libs/store/writer.py`` says what counts as the same).

Any fault (NATS or Postgres away, lock lost) ends the cycle; the next one
starts from what is committed, which is why a crash at any point loses
nothing and duplicates nothing.

Beside the two stages, the writer trims the stream every ``trim_every_s``:
it purges what the store has committed and nobody still needs there
(``services/recorder/adapters/trim.py``). A trim that fails is logged,
counted and tried again at the next; it never ends the cycle. So does a
snapshot of the positions fold, every ``position_snapshot_every_s``
(``services/recorder/adapters/snapshot.py``): a cache the ``positions``
view starts from, never needed for it to be right.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import nats.errors

from libs.bus.client import Bus
from libs.bus.errors import BusError
from libs.continuity import refused
from libs.contract.codec import dead_letter
from libs.contract.envelope import Clock, WallClock
from libs.store.errors import RowRefused, StoreError
from libs.store.writer import Copy, EventWriter, Row
from services.recorder import metrics
from services.recorder.adapters.snapshot import write_position_snapshot
from services.recorder.adapters.stream import Batch, RecorderStream
from services.recorder.adapters.trim import StreamTrimmer, Trimmed
from services.recorder.config import RecorderSettings
from services.recorder.domain.rows import (
    RECORDER_SOURCE,
    UNSTORABLE,
    StreamMessage,
    merge,
    missing_row,
    plan,
    to_row,
    unstorable_row,
)
from services.recorder.domain.trim import KEEP_WINDOW, STORE

log = logging.getLogger(__name__)

SERVICE = "recorder"

#: How long the writer may sit with nothing to write before it checks that
#: the store (and so its lock) is still there.
IDLE_CHECK_S = 1.0

#: How often the recorder logs how far it got while it is busy.
PROGRESS_EVERY_S = 10.0

#: Faults that end a cycle; the next one starts again from the store.
RESTARTABLE = (StoreError, BusError, nats.errors.Error, OSError, TimeoutError)


class Trimmer(Protocol):
    """Trims the stream below what the store committed (see :class:`StreamTrimmer`)."""

    async def trim(self, committed: int) -> Trimmed: ...


TrimmerFactory = Callable[[Bus], Trimmer]
#: Writes a snapshot of the positions fold into the store at a URL; returns
#: the sequence it is as of (None: nothing new).
SnapshotWriter = Callable[[str], Awaitable[int | None]]


@dataclass(frozen=True, slots=True)
class Prepared:
    """A converted batch on its way to the writer."""

    rows: list[Row]
    ack_subject: str | None
    top_seq: int
    num_pending: int
    started: float
    #: The messages behind the rows, by sequence (not the missing positions).
    messages: dict[int, StreamMessage] = field(default_factory=dict)

    def sent(self, seq: int) -> bytes | None:
        """The bytes of the message at ``seq``, as it was sent."""
        m = self.messages.get(seq)
        return None if m is None else m.data


def _count_copy(copy: Copy) -> None:
    """A message under a recorded id, written as a pointer: counted when it
    says something else (the writer logs each)."""
    if copy.differs:
        # At most the 31 combinations of EVENT_FIELDS: bounded.
        metrics.ID_REUSES.labels(differs=",".join(copy.differs)).inc()


class Recorder:
    """Runs recorder cycles until stopped."""

    def __init__(
        self,
        settings: RecorderSettings,
        *,
        clock: Clock | None = None,
        trimmer: TrimmerFactory | None = None,
        snapshot: SnapshotWriter | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock or WallClock()
        self.make_trimmer: TrimmerFactory = trimmer or self._stream_trimmer
        self.write_snapshot: SnapshotWriter = snapshot or write_position_snapshot
        #: What held the stream back at the last trim, to warn once per holder.
        self._held_by: str | None = None
        self.stopping = asyncio.Event()
        self.is_writer = False
        self.last_seq = 0
        self.problem: str | None = None
        #: What keeps failing unexpectedly, until a batch commits again: a
        #: fault that repeats (the same batch refused on every retry) is
        #: reported by /health, not only logged.
        self.failing: str | None = None

    def health(self) -> tuple[bool, dict[str, Any]]:
        """Healthy unless something needs an operator; writer or standby."""
        detail: dict[str, Any] = {
            "service": SERVICE,
            "role": "writer" if self.is_writer else "standby",
            "last_seq": self.last_seq,
        }
        problem = self.problem or self.failing
        if problem is not None:
            detail["problem"] = problem
        return problem is None, detail

    def stop(self) -> None:
        self.stopping.set()

    async def run(self) -> None:
        """Cycle until :meth:`stop`; each fault restarts from the store."""
        while not self.stopping.is_set():
            try:
                await self._cycle()
            except* RESTARTABLE as group:
                await self._after_fault(group.exceptions[0], expected=True)
            except* Exception as group:
                # Not a known outage: say so loudly (with the traceback), but
                # keep recording; the next cycle starts again from the store.
                await self._after_fault(group.exceptions[0], expected=False)

    async def _after_fault(self, error: BaseException, *, expected: bool) -> None:
        cause = type(error).__name__
        metrics.RESTARTS.labels(cause=cause).inc()
        # A stream that does not continue the store is said and reported by
        # refused(); any other fault is said here.
        self.problem, backoff = refused(error, self.settings.retry_backoff_s, log)
        if self.problem is None and expected:
            log.warning("recorder cycle ended (%s: %s); restarting", cause, error)
        elif self.problem is None:
            log.error("recorder cycle failed unexpectedly; restarting", exc_info=error)
            self.failing = f"recording after sequence {self.last_seq} failed: {cause}: {error}"[
                :500
            ]
        self._set_writer(False)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(backoff):
                await self.stopping.wait()

    def _standing_by(self) -> None:
        # Another recorder holds the timeline now: what failed in this one's
        # turn is no longer its problem to report (the writer reports its own).
        self.failing = None

    def _set_writer(self, value: bool) -> None:
        self.is_writer = value
        metrics.IS_WRITER.set(1 if value else 0)
        if not value:
            # Not recording, the lag is not known: the last commit's figure,
            # kept, would show a small lag while the stream grows unrecorded.
            metrics.CONSUMER_LAG.forget()

    async def _cycle(self) -> None:
        s = self.settings
        writer = await self._open_writer()
        if writer is None:
            return
        async with writer:
            self._set_writer(True)
            self.last_seq = writer.last_seq
            metrics.LAST_SEQUENCE.set(writer.last_seq)
            bus = await Bus.connect(
                s.nats_url,
                name=f"recorder/{s.instance}",
                user=s.nats_user,
                password=s.nats_password.get_secret_value() if s.nats_password else None,
            )
            async with bus:
                stream = RecorderStream(bus, ack_wait_s=s.ack_wait_s)
                await stream.start_at(writer.tail)
                self.problem = None
                # Two stages: the reader fetches, fills holes and converts the
                # next batch while the writer commits (then acks) the previous
                # one. The queue is FIFO and small, so batches stay contiguous
                # and in order, and at most two are in memory.
                queue: asyncio.Queue[Prepared | None] = asyncio.Queue(maxsize=2)
                try:
                    async with asyncio.TaskGroup() as tasks:
                        tasks.create_task(self._read_loop(stream, bus, queue, writer.last_seq))
                        tasks.create_task(self._write_loop(writer, stream, queue))
                        if s.trim_every_s > 0:
                            trimmer = self.make_trimmer(bus)
                            tasks.create_task(
                                self._every(
                                    s.trim_every_s,
                                    lambda: self._trim(trimmer, writer.last_seq),
                                )
                            )
                        if s.position_snapshot_every_s > 0:
                            tasks.create_task(
                                self._every(s.position_snapshot_every_s, self._snapshot)
                            )
                finally:
                    await stream.close()

    async def _open_writer(self) -> EventWriter | None:
        """Wait for the writer lock, unless asked to stop meanwhile."""
        opening = asyncio.ensure_future(
            EventWriter.open(
                self.settings.database_url.get_secret_value(),
                standing_by=self._standing_by,
                on_copy=_count_copy,
            )
        )
        stopping = asyncio.ensure_future(self.stopping.wait())
        done, _ = await asyncio.wait({opening, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if opening in done:
            stopping.cancel()
            return opening.result()
        opening.cancel()
        try:
            writer = await opening
        except asyncio.CancelledError:
            return None
        await writer.close()
        return None

    async def _read_loop(
        self,
        stream: RecorderStream,
        bus: Bus,
        queue: asyncio.Queue[Prepared | None],
        planned: int,
    ) -> None:
        s = self.settings
        while not self.stopping.is_set():
            batch = await stream.fetch(s.batch_size, s.fetch_timeout_s, s.linger_s)
            if not batch.messages and queue.empty():
                # Caught up: nothing pending for the consumer, nothing queued
                # for the writer (with no commit, the lag is set here only).
                metrics.CONSUMER_LAG.set(0)
            while batch.messages:
                prepared = await self._prepare(batch, planned, stream, bus)
                if prepared.rows:
                    planned = prepared.rows[-1].seq
                await queue.put(prepared)
                # A hole too long for one plan was read in part: plan the
                # rest of the batch after it (it is acked with the last part).
                if not prepared.rows or planned >= prepared.top_seq:
                    break
        # Asked to stop: the writer commits what is queued, then ends. (On a
        # fault the task group cancels both stages instead.)
        await queue.put(None)

    async def _prepare(
        self, batch: Batch, planned: int, stream: RecorderStream, bus: Bus
    ) -> Prepared:
        """Rows for the positions after ``planned`` (holes filled), dead letters sent."""
        started = time.perf_counter()
        p = plan(planned + 1, batch.messages)
        filled: list[StreamMessage] = []
        rows: list[Row] = []
        for seq in p.holes:
            msg = await stream.read(seq)
            metrics.HOLES_FILLED.inc()
            if msg is None:
                log.error("stream position %d is gone; recording it as missing", seq)
                rows.append(missing_row(seq, self.clock.now_ns()))
            else:
                filled.append(msg)
        dead: list[tuple[StreamMessage, str, Any]] = []
        messages = merge(p.fresh, filled)
        for m in messages:
            converted = to_row(m, max_bytes=self.settings.max_event_bytes)
            rows.append(converted.row)
            # A bad message on a dead-letter subject is recorded but not
            # dead-lettered again: that way lies an endless loop.
            if converted.error is not None and not m.subject.startswith("deadletter."):
                dead.append((m, converted.error.reason, converted.error))
        rows.sort(key=lambda r: r.seq)
        # Dead letters go out before the commit: their ids derive from the
        # stream position, so if the commit fails and the batch is redone the
        # server drops the repeats, and a recorded bad message always has its
        # dead letter.
        for m, reason, error in dead:
            await self._dead_letter(bus, m, reason, error)
        top_seq = max(m.seq for m in batch.messages)
        return Prepared(
            rows,
            batch.ack_subject,
            top_seq,
            batch.num_pending,
            started,
            messages={m.seq: m for m in messages},
        )

    async def _write_loop(
        self, writer: EventWriter, stream: RecorderStream, queue: asyncio.Queue[Prepared | None]
    ) -> None:
        report_at = time.monotonic() + PROGRESS_EVERY_S
        reported = writer.last_seq
        while True:
            try:
                async with asyncio.timeout(IDLE_CHECK_S):
                    prepared = await queue.get()
            except TimeoutError:
                await writer.ping()
                continue
            if prepared is None:
                break
            written = await self._write(writer, stream.bus, prepared)
            self.failing = None
            if reported == 0 or time.monotonic() >= report_at:
                log.info(
                    "recorded up to sequence %d (+%d), %d pending in the stream",
                    writer.last_seq,
                    writer.last_seq - reported,
                    prepared.num_pending,
                )
                reported, report_at = writer.last_seq, time.monotonic() + PROGRESS_EVERY_S
            # Committed: now, and only now, acknowledge. Ack-all on the
            # highest sequence of the batch acknowledges every lower one, and
            # none of them is above the last committed sequence.
            if prepared.ack_subject is not None and prepared.top_seq <= writer.last_seq:
                await stream.ack_all(prepared.ack_subject)
            self.last_seq = writer.last_seq
            metrics.EVENTS_RECORDED.inc(written)
            metrics.LAST_SEQUENCE.set(writer.last_seq)
            metrics.CONSUMER_LAG.set(prepared.num_pending)
            metrics.BATCH_SIZE.observe(len(prepared.rows))
            metrics.BATCH_SECONDS.observe(time.perf_counter() - prepared.started)

    async def _write(self, writer: EventWriter, bus: Bus, prepared: Prepared) -> int:
        """Commit ``prepared``; returns the rows newly written. A message whose
        row the store refuses on its own (a value it cannot hold) is recorded
        as undecodable (``unstorable``, its bytes kept) and dead-lettered, as
        one that does not decode: retried as it was, its batch would fail for
        ever and the timeline stop there."""
        before = writer.last_seq
        rows = prepared.rows
        replaced: set[int] = set()
        while True:
            try:
                await writer.write(rows, sent=prepared.sent)
            except RowRefused as refused:
                m = prepared.messages.get(refused.seq)
                if m is None or refused.seq in replaced:
                    # A row of the recorder's own making: nothing to put
                    # in its place. Reported (/health) until it commits.
                    raise refused.error from refused
                replaced.add(refused.seq)
                log.error("the store refuses stream seq %d: %s", m.seq, refused.error)
                error = f"{UNSTORABLE}: the store refuses its row: {refused.error}"
                if not m.subject.startswith("deadletter."):
                    # Before the commit, as in _prepare: its id derives
                    # from the position, so a retry does not repeat it.
                    await self._dead_letter(bus, m, UNSTORABLE, error)
                row = unstorable_row(m, str(refused.error))
                rows = [row if r.seq == m.seq else r for r in rows]
                continue
            return writer.last_seq - before

    def _stream_trimmer(self, bus: Bus) -> Trimmer:
        return StreamTrimmer(bus, keep_s=self.settings.stream_keep_s, clock=self.clock)

    async def _every(self, period_s: float, work: Callable[[], Awaitable[None]]) -> None:
        """``work()`` every ``period_s`` until asked to stop (the writer's trims
        and snapshots, in its cycle; ``work`` says and counts its own failures)."""
        while not self.stopping.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(period_s):
                    await self.stopping.wait()
            if not self.stopping.is_set():
                await work()

    async def _trim(self, trimmer: Trimmer, committed: int) -> None:
        """One trim; a failure is said and counted, and recording goes on."""
        try:
            trimmed = await trimmer.trim(committed)
        except Exception as e:  # a trim never stops recording
            metrics.TRIM_FAILURES.labels(cause=type(e).__name__).inc()
            log.warning(
                "trimming the stream failed (%s: %s); trying again in %g s",
                type(e).__name__,
                e,
                self.settings.trim_every_s,
            )
            return
        metrics.STREAM_TRIMMED.inc(trimmed.purged)
        metrics.STREAM_FIRST_SEQUENCE.set(trimmed.first_seq)
        if trimmed.purged:
            log.info(
                "trimmed %d messages from the stream below sequence %d (held by %s); "
                "it holds %d to %d, the store up to %d",
                trimmed.purged,
                trimmed.floor.seq,
                trimmed.floor.held_by,
                trimmed.first_seq,
                trimmed.last_seq,
                committed,
            )
        held_by = trimmed.floor.held_by
        if held_by not in (STORE, KEEP_WINDOW):  # then it is below the keep window
            # A consumer that takes acks and does not: the stream grows until
            # it does (or is deleted). Said once per holder.
            if held_by != self._held_by:
                log.warning(
                    "%s holds the stream from sequence %d, %d sequences before the keep "
                    "window: nothing older is trimmed until it acknowledges",
                    held_by,
                    trimmed.floor.seq,
                    trimmed.keep_from - trimmed.floor.seq,
                )
            self._held_by = held_by
        else:
            self._held_by = None

    async def _snapshot(self) -> None:
        """One snapshot; a failure is said and counted, and recording goes on."""
        try:
            upto = await self.write_snapshot(self.settings.database_url.get_secret_value())
        except Exception as e:  # a cache: never stops recording
            metrics.POSITION_SNAPSHOT_FAILURES.labels(cause=type(e).__name__).inc()
            log.warning(
                "snapshotting the positions fold failed (%s: %s); trying again in %g s",
                type(e).__name__,
                e,
                self.settings.position_snapshot_every_s,
            )
            return
        if upto is not None:
            metrics.POSITION_SNAPSHOT_SEQUENCE.set(upto)

    async def _dead_letter(self, bus: Bus, m: StreamMessage, reason: str, error: Any) -> None:
        record = dead_letter(
            service=SERVICE,
            subject=m.subject,
            data=m.data,
            error=error,
            clock=self.clock,
            source=f"{RECORDER_SOURCE}/{self.settings.instance}",
            headers=m.headers,
            stream_seq=m.seq,
        )
        log.warning("dead-lettered stream seq %d on %s: %s", m.seq, m.subject, error)
        await bus.publish(record)
        metrics.DEAD_LETTERS.labels(service=SERVICE, reason=reason).inc()
