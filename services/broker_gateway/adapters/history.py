"""The gateway's memory: order-path events of its accounts, from the event store.

On start-up the gateway rebuilds its order trackers from every recorded
``SubmitOrder``, ``CancelOrder``, ``FlattenAccount``, ``OrderAccepted``,
``OrderRejected``, ``FillReceived`` and ``OrderCanceled`` of its accounts.
Events it published just before a crash may still be on their way into the
store, so it first waits (up to a limit) for the recorder to reach the
stream's last sequence as it was at start-up; had it not, a redelivered
command could be answered twice — with the same derived ids, which
JetStream's duplicate window would still drop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence

import asyncpg
import orjson

from libs.contract.events import EVENT_ADAPTER, AnyEvent
from libs.store.errors import StoreUnavailable
from libs.store.urls import asyncpg_url

log = logging.getLogger(__name__)

ORDER_PATH_TYPES = (
    "SubmitOrder",
    "CancelOrder",
    "FlattenAccount",
    "OrderAccepted",
    "OrderRejected",
    "FillReceived",
    "OrderCanceled",
)
POLL_S = 0.1


async def order_path_history(
    database_url: str,
    accounts: Sequence[str],
    *,
    stream_last_seq: int,
    wait_s: float,
) -> list[AnyEvent]:
    """The accounts' order-path events in stream order."""
    try:
        conn = await asyncpg.connect(asyncpg_url(database_url), timeout=10)
    except (OSError, TimeoutError, asyncpg.PostgresError) as e:
        raise StoreUnavailable(f"cannot read the event store: {e}") from e
    try:
        deadline = time.monotonic() + wait_s
        while True:
            recorded = int(await conn.fetchval("SELECT coalesce(max(seq), 0) FROM events"))
            if recorded >= stream_last_seq:
                break
            if time.monotonic() >= deadline:
                log.warning(
                    "the recorder is at %d, the stream at %d: rebuilding from what is recorded",
                    recorded,
                    stream_last_seq,
                )
                break
            await asyncio.sleep(POLL_S)  # polling the recorder's progress
        rows = await conn.fetch(
            "SELECT id, type, ts_event, ts_init, source, correlation_id, causation_id, payload "
            "FROM events WHERE account = ANY($1::text[]) AND type = ANY($2::text[]) ORDER BY seq",
            list(accounts),
            list(ORDER_PATH_TYPES),
        )
    except (OSError, TimeoutError, asyncpg.PostgresError) as e:
        raise StoreUnavailable(f"cannot read the event store: {e}") from e
    finally:
        await conn.close()
    return [
        EVENT_ADAPTER.validate_python({**dict(r), "payload": orjson.loads(r["payload"])})
        for r in rows
    ]
