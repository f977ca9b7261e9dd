"""Replay recorded events from the store back onto NATS.

Events are republished in sequence order, by default under the ``replay.``
prefix, which the recorded stream does not capture: live consumers and the
audit timeline are untouched. A prefix that would land back inside the
recorded stream is refused. Each replayed message carries headers naming
its original sequence and subject, and the event's id as ``Nats-Msg-Id``
(as a live publish does), so that a stream an operator makes over the
replay's subjects stores a range replayed twice once. The payload is the
stored one, re-serialised: equal to what was published, not byte for byte
(the store keeps ``jsonb``).

Replays are plain NATS publishes (no stream captures ``replay.>``), which the
server judges after the fact: a publish it refuses (the user lacks the
permission) is dropped and reported back asynchronously. So a message counts
as published only once the server has judged it and not refused it
(:meth:`libs.bus.client.Bus.settle`), and the first refusal stops the replay
with :class:`ReplayRefused`: a replay with holes in it would mislead whoever
reads it.

A message counts as published only on a verdict from the connection it was
sent on: nats-py answers a flush at once while it is reconnecting, and what
it wrote to a connection that then broke may be gone, so a window whose
connection dropped stops the replay with :class:`ReplayBusLost`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from libs.bus.client import (
    MAX_CONTROL_LINE,
    MSG_ID_HEADER,
    SUBJECT_ALWAYS_FITS,
    Bus,
    publish_line_length,
)
from libs.bus.errors import BusUnavailable
from libs.config import masked_url
from libs.contract.subjects import (
    REPLAY_PREFIX,
    SubjectPatternError,
    check_pattern,
    check_prefix,
    is_recorded,
    replay_subject,
)
from libs.store import queries
from libs.store.connect import STORE_ERRORS, connect
from libs.store.errors import StoreUnavailable
from libs.store.layout import DUPLICATE, MISSING, UNDECODABLE

ORIGINAL_SEQ_HEADER = "Tradebus-Original-Seq"
ORIGINAL_SUBJECT_HEADER = "Tradebus-Original-Subject"

#: Messages published before the server's verdict on them is awaited: the
#: first alone (a user without the permission learns it from one refusal),
#: then up to WINDOW of them or what WINDOW_S brought, whichever comes first.
FIRST_WINDOW = 1
WINDOW = 256
WINDOW_S = 0.25

#: Progress is reported every PROGRESS_EVERY events or PROGRESS_EVERY_S
#: seconds, whichever comes first (a paced replay is slow in events).
PROGRESS_EVERY = 500
PROGRESS_EVERY_S = 0.5


class ReplayError(ValueError):
    """The replay request cannot be carried out as asked."""


@dataclass(frozen=True, slots=True)
class ReplayRequest:
    subject: str = ">"
    from_seq: int = 1
    to_seq: int | None = None
    since_ns: int | None = None
    until_ns: int | None = None
    rate_per_s: float | None = None  # None: as fast as possible
    into: str = REPLAY_PREFIX
    dry_run: bool = False
    include_undecodable: bool = False

    def check(self) -> None:
        try:
            check_pattern(self.subject)
        except SubjectPatternError as e:
            raise ReplayError(f"--subject: {e}") from e
        try:
            if self.into:
                check_prefix(self.into)
        except SubjectPatternError as e:
            raise ReplayError(f"--into: {e}") from e
        if self.into and is_recorded(self.into):
            raise ReplayError(
                f"--into {self.into!r} is a recorded domain: replaying there would re-enter "
                "the audit timeline; pick a prefix such as 'replay'"
            )
        if not self.into:
            raise ReplayError("--into must not be empty: live subjects are never replay targets")
        if self.to_seq is not None and self.to_seq < self.from_seq:
            raise ReplayError(f"--to-seq {self.to_seq} is before --from-seq {self.from_seq}")
        if self.rate_per_s is not None and self.rate_per_s <= 0:
            raise ReplayError("--rate must be positive")


@dataclass
class ReplayResult:
    #: Messages the server took (with dry_run: that would be published).
    published: int = 0
    #: Rows left out, all kinds (the four below together).
    skipped: int = 0
    #: Messages that did not decode as events (include_undecodable
    #: republishes their bytes instead).
    skipped_undecodable: int = 0
    #: DuplicateSuppressed pointers: the event each repeats is replayed.
    skipped_duplicate: int = 0
    #: MessageMissing positions: the stream no longer held their message.
    skipped_missing: int = 0
    #: Messages whose subject under the prefix makes a publish line longer
    #: than NATS takes (MAX_CONTROL_LINE): the server would close the
    #: connection for it, ending the replay there.
    skipped_too_long: int = 0
    #: Messages the server refused (the replay stopped at the first of them).
    refused: int = 0
    first_seq: int | None = None
    #: The last row replayed: once the replay is stopped (refused,
    #: interrupted, its store lost), every selected row up to it went out
    #: (or was skipped), so ``--from-seq last_seq + 1`` goes on from there.
    last_seq: int | None = None
    seconds: float = 0.0

    def skip(self, row_type: str) -> None:
        """Count a row left out, by its type (a row the recorder made)."""
        self.skipped += 1
        if row_type == DUPLICATE:
            self.skipped_duplicate += 1
        elif row_type == MISSING:
            self.skipped_missing += 1
        else:
            self.skipped_undecodable += 1

    def skip_too_long(self) -> None:
        """Count a message left out as too long for NATS under the prefix."""
        self.skipped += 1
        self.skipped_too_long += 1


class ReplayStopped(Exception):
    """A replay that stopped before its end. :attr:`result` says how far it
    got: every selected row up to ``last_seq`` was published (or skipped),
    so ``--from-seq last_seq + 1`` resumes it. None after it went out,
    unless the server's verdict on the rows sent after it, up to
    :attr:`unjudged_to`, never came: some of them may have gone out too
    (None: nothing was left unjudged)."""

    def __init__(
        self, message: str, result: ReplayResult, *, unjudged_to: int | None = None
    ) -> None:
        self.result = result
        self.unjudged_to = unjudged_to
        super().__init__(message)


class ReplayInterrupted(ReplayStopped):
    """The replay was cancelled (Ctrl-C). Rows are left unjudged when the
    wait for the server's verdict timed out, NATS was lost, or a second
    Ctrl-C ended it."""

    def __init__(self, result: ReplayResult, *, unjudged_to: int | None = None) -> None:
        super().__init__(
            f"replay interrupted after store sequence {result.last_seq}",
            result,
            unjudged_to=unjudged_to,
        )


class ReplayStoreLost(ReplayStopped):
    """Reading the event store failed mid-replay (the server stopped, the
    connection broke). :attr:`cause` is the
    :class:`~libs.store.errors.StoreUnavailable` naming the store. Rows are
    left unjudged when NATS did not answer for the messages sent last
    either (it stalled, or was lost too)."""

    def __init__(
        self, cause: StoreUnavailable, result: ReplayResult, *, unjudged_to: int | None = None
    ) -> None:
        self.cause = cause
        super().__init__(
            f"{cause} (replayed up to store sequence {result.last_seq})",
            result,
            unjudged_to=unjudged_to,
        )


class ReplayBusLost(ReplayStopped):
    """NATS was lost mid-replay (the server stopped, the connection broke):
    every selected row up to ``last_seq`` went out. The server's verdict on
    the rows sent after it, up to :attr:`unjudged_to`, never came: some of
    them may have gone out too. :attr:`cause` is the
    :class:`~libs.bus.errors.BusUnavailable`, :attr:`url` the server's."""

    def __init__(
        self, cause: BusUnavailable, result: ReplayResult, *, url: str, unjudged_to: int | None
    ) -> None:
        self.cause = cause
        self.url = url
        super().__init__(
            f"{cause} (replayed up to store sequence {result.last_seq})",
            result,
            unjudged_to=unjudged_to,
        )


#: How long a stopped replay (cancelled, or its store lost) waits for the
#: server's verdict on what it published last, so that its counts are exact.
SETTLE_ON_STOP_S = 5.0


@dataclass
class ReplaySoFar:
    """How far a running replay is known to have got, kept up to date as it
    runs (:func:`replay`'s ``so_far``): for a caller that must say so
    without the replay's own end. A second Ctrl-C ends the CLI while a
    stopped replay still waits for the server's verdict, so the replay
    never gets to say how far it got: the CLI says it from this."""

    #: Its counts so far; ``last_seq`` is the last row read, settled or not.
    result: ReplayResult = field(default_factory=ReplayResult)
    #: The last row read whose fate is known: skipped, counted (dry_run), or
    #: published and judged. Every selected row up to it went out.
    settled_seq: int | None = None
    #: Published, not yet judged by the server: (store sequence, subject).
    window: list[tuple[int, str]] = field(default_factory=list)
    #: When it started publishing (``time.monotonic()``).
    started: float = field(default_factory=time.monotonic)

    @property
    def unjudged_to(self) -> int | None:
        """The last row sent whose verdict has not come (None: none waits)."""
        return self.window[-1][0] if self.window else None

    def interrupted(self) -> ReplayInterrupted:
        """The replay stopped as it stands, as its Ctrl-C reports it: its
        counts, ``last_seq`` the last row whose fate is known, and the rows
        sent after it that the server has not judged (some may have gone out)."""
        result = dataclasses.replace(
            self.result, last_seq=self.settled_seq, seconds=time.monotonic() - self.started
        )
        if self.settled_seq is None:
            result.first_seq = None
        return ReplayInterrupted(result, unjudged_to=self.unjudged_to)


class ReplayRefused(Exception):
    """The server refused to let this NATS user publish a replayed message;
    :attr:`result` counts what it did take before the replay stopped."""

    def __init__(
        self, *, subject: str, seq: int, user: str | None, url: str, result: ReplayResult
    ) -> None:
        self.subject = subject
        self.seq = seq
        self.user = user
        self.url = url
        self.result = result
        who = f"NATS user {user!r}" if user else "an anonymous NATS connection (no user)"
        super().__init__(
            f"NATS at {url} refused to let {who} publish to {subject!r} (permissions "
            f"violation; store sequence {seq}): {result.published} message(s) published "
            "before the replay stopped"
        )


Progress = Callable[[int, int], None]  # (done, total)


async def replay(
    database_url: str,
    bus: Bus | None,
    request: ReplayRequest,
    *,
    progress: Progress | None = None,
    so_far: ReplaySoFar | None = None,
    waiting: Callable[[int, float], None] | None = None,
) -> ReplayResult:
    """Publish the selected recorded events (or only count them with dry_run).

    ``so_far``, if given, is kept up to date with how far it is known to
    have got (its result is the one returned). ``waiting`` is called as a
    stopped replay starts to wait for the server's verdict on the messages
    it sent last: how many, and for at most how many seconds.

    Raises :class:`ReplayError` for a request that cannot be carried out,
    :class:`ReplayRefused` when the server refuses a message,
    :class:`ReplayInterrupted` in place of a cancellation (its counts),
    :class:`ReplayStoreLost` when reading the store fails once rows are
    being published (its counts),
    :class:`ReplayBusLost` when NATS is lost once they are (its counts),
    :class:`~libs.store.errors.StoreUnavailable` and
    :class:`~libs.bus.errors.BusUnavailable` when a server cannot be used.
    """
    request.check()
    shown = masked_url(database_url)
    state = so_far if so_far is not None else ReplaySoFar()
    result = state.result
    try:
        conn = await connect(database_url)
    except asyncio.CancelledError:
        # Ctrl-C while the store is reached: nothing went out, and it says so.
        raise ReplayInterrupted(result) from None
    started = state.started = time.monotonic()
    # Published, not yet judged by the server (the state's, so that a caller
    # can say what was left unjudged; cleared, never replaced).
    window = state.window
    window_size = FIRST_WINDOW
    window_started = started
    # state.settled_seq: the last row read whose fate is known. A cancelled
    # replay reports it as its last_seq.

    async def judge() -> None:
        nonlocal window_size, window_started
        assert bus is not None
        # BusUnavailable unless the verdict came from the connection the
        # window was sent on (no reconnect since the last judge).
        refused = set(await bus.settle())
        bad = [(seq, subject) for seq, subject in window if subject.lower() in refused]
        if refused and not bad:  # named differently than sent: trust none of them
            bad = list(window)
        result.published += len(window) - len(bad)
        if window and not bad:
            state.settled_seq = result.last_seq
        if bad:
            # Every selected row before the first refused one went out; the
            # rows read after it (up to a window's worth) are no part of a
            # replay that has a hole there, even those the server took.
            before = [seq for seq, _ in window if seq < bad[0][0]]
            state.settled_seq = before[-1] if before else state.settled_seq
        window.clear()
        window_size, window_started = WINDOW, time.monotonic()
        if bad:
            result.refused = len(bad)
            result.last_seq = state.settled_seq
            if state.settled_seq is None:
                result.first_seq = None
            result.seconds = time.monotonic() - started
            seq, subject = bad[0]
            raise ReplayRefused(subject=subject, seq=seq, user=bus.user, url=bus.url, result=result)

    def lost(e: Exception) -> StoreUnavailable:
        reason = str(e) or type(e).__name__
        return StoreUnavailable(f"reading the event store at {shown} failed: {reason}")

    async def rows(to_seq: int) -> AsyncIterator[queries.Recorded]:
        # The store's errors as ours, naming it; only the reads, not what
        # the loop does with each row (the bus has errors of its own).
        try:
            async for row in queries.iter_range(
                conn,
                subject=request.subject,
                from_seq=request.from_seq,
                to_seq=to_seq,
                since_ns=request.since_ns,
                until_ns=request.until_ns,
            ):
                yield row
        except STORE_ERRORS as e:
            raise lost(e) from e

    async def stop() -> int | None:
        """Judge what was published last (briefly: the server may be what
        stalls), and make last_seq the last row whose fate is known. Returns
        the last row sent whose verdict did not come (None: all judged)."""
        unjudged_to = None
        if window:
            if waiting is not None:
                waiting(len(window), SETTLE_ON_STOP_S)
            try:
                async with asyncio.timeout(SETTLE_ON_STOP_S):
                    await judge()
            except (TimeoutError, BusUnavailable):
                # Reported as it stood: the rows sent after last_seq may in
                # part have gone out. (Before, they were dropped unsaid, and
                # "none after it" was said of them.)
                unjudged_to = state.unjudged_to
        result.last_seq = state.settled_seq
        if state.settled_seq is None:
            result.first_seq = None
        result.seconds = time.monotonic() - started
        return unjudged_to

    def headers(row: queries.Recorded) -> dict[str, str]:
        return {
            # The event's id, as the live publishers send it: a stream made
            # over the replay's subjects stores a range replayed twice
            # (within its window) once.
            MSG_ID_HEADER: str(row.id),
            ORIGINAL_SEQ_HEADER: str(row.seq),
            # An undecodable row on a subject cut to fit the store goes out
            # under the whole subject, as it was sent.
            ORIGINAL_SUBJECT_HEADER: row.sent_subject,
        }

    def too_long(row: queries.Recorded) -> bool:
        """Whether the row's publish line is longer than NATS takes (its
        subject can be, NATS having taken it without the prefix)."""
        subject = replay_subject(row.sent_subject, request.into)
        if len(subject) <= SUBJECT_ALWAYS_FITS:
            return False  # fits however large: no need to size the message
        return publish_line_length(subject, row.wire_bytes(), headers(row)) > MAX_CONTROL_LINE

    try:
        # The range ends where the store ended as the replay started (or at
        # --to-seq before it): the store only grows at its end, so the rows
        # up to there are fixed, and the count is what will be read. Left
        # open, a replay chased the recorder's newest rows, and one paced
        # slower than a live feed never ended.
        try:
            last = queries.last_seq_of(await queries.tail(conn))
            to_seq = last if request.to_seq is None else min(request.to_seq, last)
            total = await queries.count_range(
                conn,
                subject=request.subject,
                from_seq=request.from_seq,
                to_seq=to_seq,
                since_ns=request.since_ns,
                until_ns=request.until_ns,
            )
        except STORE_ERRORS as e:
            raise lost(e) from e
        if progress:
            progress(0, total)
        shown_at = time.monotonic()
        interval = 1.0 / request.rate_per_s if request.rate_per_s else 0.0
        next_at = time.monotonic()
        done = 0
        async for row in rows(to_seq):
            done += 1
            subject: str | None = None  # where the row goes, if published
            # An undecodable message's bytes, if asked for; never a
            # DuplicateSuppressed pointer's (a copy it keeps): the event
            # it repeats is replayed.
            undecodable = row.type == UNDECODABLE and row.raw is not None
            if not row.is_event and not (request.include_undecodable and undecodable):
                result.skip(row.type)
            elif too_long(row):
                # Sent, the server would close the connection: the replay
                # would end there as NATS lost, whatever came after it.
                result.skip_too_long()
            elif request.dry_run:
                result.published += 1
            else:
                assert bus is not None, "a bus is needed unless dry_run"
                if interval:
                    delay = next_at - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)  # pacing to the requested rate
                    next_at = max(next_at, time.monotonic() - 1.0) + interval
                subject = replay_subject(row.sent_subject, request.into)
                # In the window before the publish: a cancellation inside it
                # may leave the message in the client's buffer, which the
                # settling on the way out sends and judges.
                window.append((row.seq, subject))
            result.first_seq = result.first_seq or row.seq
            result.last_seq = row.seq
            if subject is not None:
                assert bus is not None
                await bus.publish_plain(subject, row.wire_bytes(), headers=headers(row))
                if len(window) >= window_size or time.monotonic() - window_started >= WINDOW_S:
                    await judge()
            elif not window:
                state.settled_seq = row.seq
            if progress and (
                done % PROGRESS_EVERY == 0
                or done == total
                or time.monotonic() - shown_at >= PROGRESS_EVERY_S
            ):
                progress(done, total)
                shown_at = time.monotonic()
        if window:
            await judge()
    except asyncio.CancelledError:
        # Ctrl-C: say how far it got rather than nothing.
        raise ReplayInterrupted(result, unjudged_to=await stop()) from None
    except StoreUnavailable as e:
        # The store went away (or broke) mid-replay: what was read went out.
        # NATS, still there, says (within SETTLE_ON_STOP_S) which of the
        # messages sent last it took, and the counts are exact; should it not
        # answer (it stalls, or is gone too), those are named as unjudged,
        # never said not to have gone out.
        raise ReplayStoreLost(e, result, unjudged_to=await stop()) from e
    except BusUnavailable as e:
        # NATS went away (or the connection broke) mid-replay: what it judged
        # went out; nobody is left to judge the rest, which may in part have.
        assert bus is not None
        unjudged_to = window[-1][0] if window else None
        window.clear()
        await stop()
        raise ReplayBusLost(e, result, url=bus.url, unjudged_to=unjudged_to) from e
    finally:
        # A lost connection is closed already; a broken one must not hide
        # why the replay stopped.
        with contextlib.suppress(*STORE_ERRORS):
            await conn.close()
    result.seconds = time.monotonic() - started
    return result
