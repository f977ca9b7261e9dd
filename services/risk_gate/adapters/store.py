"""Rebuild the risk state from the event store.

Every recorded event, in sequence order, goes through ``evolve`` (the rows
evolve ignores are skipped before they are decoded). The read is one
repeatable-read snapshot up to the store's last sequence at the start, so
the result is exactly "the state after sequence N"; the live consumer then
starts at N + 1, and nothing is missed or applied twice.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import asyncpg
from pydantic import ValidationError

from libs.contract.events import EVENT_ADAPTER
from libs.store import queries
from libs.store.errors import StoreUnavailable
from libs.store.urls import asyncpg_url
from services.risk_gate.domain.evolve import RELEVANT_TYPES, evolve
from services.risk_gate.domain.state import RiskState

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 5.0
#: Errors that mean "the database is not there": retry the rebuild later.
STORE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
)


@dataclass(frozen=True, slots=True)
class Rebuilt:
    state: RiskState
    #: How many events went through evolve.
    events: int
    #: The store's last row (None when empty): what the stream must continue.
    tail: queries.Tail | None = None

    @property
    def last_seq(self) -> int:
        """The last store sequence folded in (0 for an empty store)."""
        return queries.last_seq_of(self.tail)


async def rebuild(database_url: str, state: RiskState) -> Rebuilt:
    """Fold every recorded event into ``state``."""
    try:
        conn = await asyncpg.connect(asyncpg_url(database_url), timeout=CONNECT_TIMEOUT)
    except STORE_ERRORS as e:
        raise StoreUnavailable(f"cannot reach the event store: {e}") from e
    count = 0
    try:
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            tail = await queries.tail(conn)
            async for rec in queries.iter_range(conn, to_seq=queries.last_seq_of(tail)):
                if rec.type not in RELEVANT_TYPES:
                    continue
                try:
                    event = EVENT_ADAPTER.validate_python(rec.envelope())
                except ValidationError as e:
                    # Recorded as an event, so it decoded once; a contract change since
                    # could make it fail now. Skip it loudly rather than refuse to start.
                    log.error("store sequence %d (%s) no longer decodes: %s", rec.seq, rec.type, e)
                    continue
                state = evolve(state, event)
                count += 1
    except STORE_ERRORS as e:
        raise StoreUnavailable(f"event store read failed: {e}") from e
    finally:
        await conn.close()
    return Rebuilt(state, count, tail)
