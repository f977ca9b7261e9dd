"""Replay recorded events from the store back onto NATS.

Events are republished in sequence order, by default under the ``replay.``
prefix, which the recorded stream does not capture: live consumers and the
audit timeline are untouched. A prefix that would land back inside the
recorded stream is refused. Each replayed message carries headers naming
its original sequence and subject.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

import asyncpg

from libs.bus.client import Bus
from libs.contract.subjects import REPLAY_PREFIX, is_recorded, replay_subject
from libs.store import queries
from libs.store.urls import asyncpg_url

ORIGINAL_SEQ_HEADER = "Tradebus-Original-Seq"
ORIGINAL_SUBJECT_HEADER = "Tradebus-Original-Subject"


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
    published: int = 0
    skipped: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    seconds: float = 0.0


Progress = Callable[[int, int], None]  # (done, total)


async def replay(
    database_url: str,
    bus: Bus | None,
    request: ReplayRequest,
    *,
    progress: Progress | None = None,
) -> ReplayResult:
    """Publish the selected recorded events (or only count them with dry_run)."""
    request.check()
    conn = await asyncpg.connect(asyncpg_url(database_url))
    result = ReplayResult()
    started = time.monotonic()
    try:
        total = await queries.count_range(
            conn,
            subject=request.subject,
            from_seq=request.from_seq,
            to_seq=request.to_seq,
            since_ns=request.since_ns,
            until_ns=request.until_ns,
        )
        if progress:
            progress(0, total)
        interval = 1.0 / request.rate_per_s if request.rate_per_s else 0.0
        next_at = time.monotonic()
        done = 0
        async for row in queries.iter_range(
            conn,
            subject=request.subject,
            from_seq=request.from_seq,
            to_seq=request.to_seq,
            since_ns=request.since_ns,
            until_ns=request.until_ns,
        ):
            done += 1
            if not row.is_event and not (request.include_undecodable and row.raw is not None):
                result.skipped += 1
            elif not request.dry_run:
                assert bus is not None, "a bus is needed unless dry_run"
                if interval:
                    delay = next_at - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)  # pacing to the requested rate
                    next_at = max(next_at, time.monotonic() - 1.0) + interval
                await bus.nc.publish(
                    replay_subject(row.subject, request.into),
                    row.wire_bytes(),
                    headers={
                        ORIGINAL_SEQ_HEADER: str(row.seq),
                        ORIGINAL_SUBJECT_HEADER: row.subject,
                    },
                )
                result.published += 1
            else:
                result.published += 1
            result.first_seq = result.first_seq or row.seq
            result.last_seq = row.seq
            if progress and (done % 500 == 0 or done == total):
                progress(done, total)
        if bus is not None and not request.dry_run:
            await bus.nc.flush()
    finally:
        await conn.close()
    result.seconds = time.monotonic() - started
    return result
