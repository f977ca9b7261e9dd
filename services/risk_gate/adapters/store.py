"""Rebuild the risk state from the event store.

Every recorded event, in sequence order, goes through ``evolve`` (the rows
of types evolve ignores are left in the database). The read is one
repeatable-read snapshot up to the store's last sequence at the start, so
the result is exactly "the state after sequence N"; the live consumer then
starts at N + 1, and nothing is missed or applied twice.

The fold starts from the newest usable checkpoint (``checkpoint.py``: the
same fold up to an earlier sequence) when there is one, instead of from the
first event; :func:`rebuild` with ``write_checkpoint`` then stores the new
fold as the next checkpoint when enough events came after the last one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from pydantic import ValidationError

from libs.contract.events import EVENT_ADAPTER
from libs.store import queries
from libs.store.connect import STORE_ERRORS, connect
from libs.store.errors import StoreUnavailable
from services.risk_gate.adapters import checkpoint
from services.risk_gate.domain.evolve import RELEVANT_TYPES, evolve
from services.risk_gate.domain.state import RiskState

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 5.0


#: Events folded since the checkpoint that make a rebuild write a new one.
CHECKPOINT_AFTER = 10_000
#: A long fold reports its progress every this many events.
PROGRESS_EVERY = 100_000
#: ``progress(folded, seq, last_seq)``: events folded so far, the sequence
#: reached, the sequence the fold goes to.
Progress = Callable[[int, int, int], None]


@dataclass(frozen=True, slots=True)
class Rebuilt:
    state: RiskState
    #: How many events went through evolve (the checkpoint's count included).
    events: int
    #: The store's last row (None when empty): what the stream must continue.
    tail: queries.Tail | None = None
    #: The checkpoint the fold started from (its sequence), if any.
    from_checkpoint: int | None = None
    #: Events folded by this rebuild itself (after the checkpoint).
    folded: int = 0
    #: Whether this rebuild wrote a checkpoint.
    wrote_checkpoint: bool = False

    @property
    def last_seq(self) -> int:
        """The last store sequence folded in (0 for an empty store)."""
        return queries.last_seq_of(self.tail)


async def rebuild(
    database_url: str,
    state: RiskState,
    *,
    write_checkpoint: bool = False,
    checkpoint_after: int = CHECKPOINT_AFTER,
    progress: Progress | None = None,
) -> Rebuilt:
    """Fold every recorded event into ``state`` (an initial state: its limits
    are used), starting from the newest usable checkpoint; with
    ``write_checkpoint``, store the result as a checkpoint when at least
    ``checkpoint_after`` events were folded after the last one. ``progress``
    is called every :data:`PROGRESS_EVERY` events folded."""
    conn = await connect(database_url, timeout=CONNECT_TIMEOUT)  # StoreUnavailable naming it
    count = folded = 0
    start: checkpoint.Checkpoint | None = None
    wrote = False
    try:
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            tail = await queries.tail(conn)
            last = queries.last_seq_of(tail)
            start, skipped = await checkpoint.latest(conn, up_to=last, limits=state.limits)
            if skipped is not None:
                log.warning("%s; folding from an earlier point", skipped)
            if start is not None:
                state, count = start.state, start.events
            rows = queries.iter_range(
                conn,
                from_seq=start.seq + 1 if start is not None else 1,
                to_seq=last,
                types=sorted(RELEVANT_TYPES),
            )
            async for rec in rows:
                try:
                    event = EVENT_ADAPTER.validate_python(rec.envelope())
                except ValidationError as e:
                    # Recorded as an event, so it decoded once; a contract change since
                    # could make it fail now. Skip it loudly rather than refuse to start.
                    log.error("store sequence %d (%s) no longer decodes: %s", rec.seq, rec.type, e)
                    continue
                state = evolve(state, event)
                folded += 1
                if progress is not None and folded % PROGRESS_EVERY == 0:
                    progress(folded, rec.seq, last)
        count += folded
        if write_checkpoint and tail is not None and folded >= checkpoint_after:
            wrote = await checkpoint.write(conn, checkpoint.Checkpoint(last, count, state))
    except STORE_ERRORS as e:
        raise StoreUnavailable(f"event store read failed: {e}") from e
    finally:
        await conn.close()
    return Rebuilt(
        state,
        count,
        tail,
        from_checkpoint=start.seq if start is not None else None,
        folded=folded,
        wrote_checkpoint=wrote,
    )
