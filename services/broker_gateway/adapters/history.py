"""The gateway's memory: order-path events of its accounts, from the event store.

On start-up the gateway rebuilds its order trackers from every recorded
``SubmitOrder``, ``CancelOrder``, ``FlattenAccount``, ``OrderAccepted``,
``OrderRejected``, ``FillReceived``, ``OrderCanceled`` and
``ClosingOrdersPlaced`` (what marks a flatten done) of its accounts.
Events it published just before a crash may still be on their way into the
store, so it first waits (up to a limit) for the recorder to reach the
stream's last sequence as it was at start-up; had it not, a redelivered
command could be answered twice — with the same derived ids, which
JetStream's duplicate window would still drop.

Not every order is read back. A settled order (rejected, canceled, or
filled to the last share) whose last event is older than ``settled_before_ns``
and lies before ``pending_from_seq`` (the first command the gateway's
consumer may still deliver) is left out: no command can come back for it,
and no broker fact can still arrive about it. Without this a start-up would
read, decode and hold every order ever placed, so each restart would be
slower than the one before (the memory was also let go only after the
rebuild). Positions do span all history: they are summed over every
recorded fill by PostgreSQL (``POSITIONS_SQL``), not folded here.

An option settlement (an order of fills with ``settlement`` set,
``domain/settlement.py``) is read back whatever its age: the broker lists its
activity for longer than the window (a read goes back a week, or to the
day before the earliest expiry held), and the tracker is what says it is
published. Left out, each of its fills was published again, which the
risk-gate (it forgets fill ids after a day) booked a second time. There is
one per position held at an expiry, not per order.

Nor is every flatten read back (a ``FlattenAccount`` and its
``ClosingOrdersPlaced`` name no order, and were all read, so the rebuild
still grew with the account's history). One is read if the consumer may
deliver it again (from ``pending_from_seq``: asked again, it must be known
for a repeat or for one a crash may have cut) or a consumer made anew may
replay it (not older than ``settled_before_ns``: such a one replays
``max_submit_delay_s``, no more), or if an order read back needs it: the
first flatten after the order came, if the order had not ended by then
(its cancel cause), one its events name as their cause (its closing
orders, its cancels), and one whose ``ClosingOrdersPlaced`` claimed it.
Every order read back is then exactly what folding the whole history makes.

A flatten before ``pending_from_seq`` was acknowledged: it ran to its
outcome, or was given up or dead-lettered, and JetStream will not deliver
it again. Its tracker does not count it among the flattens a crash may have
cut (``History.flattens_acknowledged``), whatever it recorded: else a start-up
held back unknown market orders waiting for it to come again, which it never
would (one given up records nothing, and it held them back at every restart).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal

import asyncpg

from libs.contract.envelope import Clock
from libs.contract.events import AnyEvent, FlattenAccount
from libs.store.connect import STORE_ERRORS
from libs.store.errors import StoreUnavailable
from libs.store.queries import stored_event
from libs.store.urls import asyncpg_url
from services.broker_gateway.domain.tracker import OrderTracker

log = logging.getLogger(__name__)

ORDER_PATH_TYPES = (
    "SubmitOrder",
    "CancelOrder",
    "FlattenAccount",
    "OrderAccepted",
    "OrderRejected",
    "FillReceived",
    "OrderCanceled",
    "ClosingOrdersPlaced",
)
POLL_S = 0.1

#: The account's order-path events, less the settled orders and the
#: flattens left out ($3: the first sequence that may still matter, $4: the
#: oldest ts_init that may).
HISTORY_SQL = """
WITH ev AS MATERIALIZED (
    SELECT seq, id, type, ts_event, ts_init, source, correlation_id, causation_id, payload,
           account, payload->>'order_id' AS order_id
    FROM events
    WHERE account = ANY($1::text[]) AND type = ANY($2::text[])
),
orders AS (
    SELECT order_id, min(account) AS account, min(seq) AS first_seq,
           -- Where it ended (rejected, canceled, filled to the last share); NULL: it has not.
           min(seq) FILTER (WHERE type IN ('OrderRejected', 'OrderCanceled')
               OR (type = 'FillReceived' AND (payload->>'leaves_quantity')::numeric = 0)
           ) AS end_seq,
           max(seq) AS last_seq, max(ts_init) AS last_ts,
           bool_or(type = 'FillReceived' AND payload->>'settlement' IS NOT NULL) AS settlement
    FROM ev
    WHERE order_id IS NOT NULL
    GROUP BY order_id
),
kept_orders AS (
    -- An option settlement whatever its age: its activity may be read again.
    SELECT * FROM orders
    WHERE end_seq IS NULL OR last_seq >= $3 OR last_ts >= $4 OR settlement
),
flattens AS (
    SELECT id, seq, ts_init, account FROM ev WHERE type = 'FlattenAccount'
),
-- Per kept order, the first flatten of its account after its first event
-- (ordered backwards, the running minimum is the next one).
next_flatten AS (
    SELECT order_id, end_seq, next_seq
    FROM (
        SELECT order_id, end_seq,
               min(flatten_seq) OVER (PARTITION BY account ORDER BY seq DESC
                                      ROWS UNBOUNDED PRECEDING) AS next_seq
        FROM (
            SELECT account, first_seq AS seq, order_id, end_seq, NULL::bigint AS flatten_seq
            FROM kept_orders
            UNION ALL
            SELECT account, seq, NULL, NULL, seq FROM flattens
        ) points
    ) o
    WHERE order_id IS NOT NULL
),
needed AS (
    -- One the consumer may deliver again, or a consumer made anew replay.
    SELECT id FROM flattens WHERE seq >= $3 OR ts_init >= $4
    UNION
    -- The cancel cause of a kept order working when it came (a later one
    -- finds the cause set).
    SELECT f.id FROM next_flatten n JOIN flattens f ON f.seq = n.next_seq
    WHERE n.end_seq IS NULL OR n.next_seq < n.end_seq
    UNION
    -- The cause of a kept order's events: its closing orders, its cancels.
    SELECT ev.causation_id FROM ev JOIN kept_orders USING (order_id)
    WHERE ev.causation_id IN (SELECT id FROM flattens)
    UNION
    -- The flatten that claimed a kept order (one taken in as nobody's first).
    SELECT c.causation_id
    FROM ev c CROSS JOIN jsonb_array_elements(c.payload->'orders') AS placed
    JOIN kept_orders k ON k.order_id = placed->>'order_id'
    WHERE c.type = 'ClosingOrdersPlaced' AND c.causation_id IS NOT NULL
),
kept AS (
    SELECT ev.* FROM ev
    WHERE CASE
        WHEN ev.order_id IS NOT NULL THEN ev.order_id IN (SELECT order_id FROM kept_orders)
        WHEN ev.type = 'FlattenAccount' THEN ev.id IN (SELECT id FROM needed)
        WHEN ev.type = 'ClosingOrdersPlaced' THEN ev.causation_id IN (SELECT id FROM needed)
        ELSE true
    END
),
counts AS (
    SELECT (SELECT count(*) FROM orders) - (SELECT count(*) FROM kept_orders) AS left_out,
           (SELECT count(*) FROM flattens f
            WHERE NOT EXISTS (SELECT 1 FROM needed n WHERE n.id = f.id)) AS flattens_left_out
)
-- One row at least, so that the counts come back when nothing is kept.
SELECT c.left_out, c.flattens_left_out, kept.seq, kept.id, kept.type, kept.ts_event,
       kept.ts_init, kept.source, kept.correlation_id, kept.causation_id, kept.payload
FROM counts c LEFT JOIN kept ON true
ORDER BY kept.seq
"""

#: Net quantity per (account, strategy, symbol) over every recorded fill; a
#: fill without a strategy is booked as the tracker books it, to its order's.
POSITIONS_SQL = """
WITH submits AS (
    SELECT DISTINCT ON (payload->>'order_id')
           payload->>'order_id' AS order_id, payload->>'strategy' AS strategy
    FROM events
    WHERE account = ANY($1::text[]) AND type = 'SubmitOrder'
    ORDER BY payload->>'order_id', seq
)
SELECT f.account, coalesce(f.payload->>'strategy', s.strategy) AS strategy,
       f.payload->>'symbol' AS symbol,
       sum(CASE f.payload->>'side'
               WHEN 'buy' THEN (f.payload->>'quantity')::numeric
               ELSE -(f.payload->>'quantity')::numeric
           END)::text AS quantity
FROM events f LEFT JOIN submits s ON s.order_id = f.payload->>'order_id'
WHERE f.account = ANY($1::text[]) AND f.type = 'FillReceived'
GROUP BY 1, 2, 3
"""

Positions = dict[tuple[str | None, str], Decimal]


@dataclass
class History:
    """What a start-up rebuild reads: events in stream order, positions per account."""

    events: list[AnyEvent]
    positions: dict[str, Positions] = field(default_factory=dict)
    #: Settled orders not read back (see the module's docstring).
    orders_left_out: int = 0
    #: Flattens not read back (see the module's docstring).
    flattens_left_out: int = 0
    #: The flattens read back that the command consumer has acknowledged
    #: (before ``pending_from_seq``): it will not deliver them again.
    flattens_acknowledged: set[uuid.UUID] = field(default_factory=set)

    def trackers(
        self, accounts: Sequence[str], *, clock: Clock, source: str
    ) -> dict[str, OrderTracker]:
        """Each account's tracker: the events folded, the positions set over
        all fills, the acknowledged flattens no longer waited for."""
        trackers = {a: OrderTracker(a, clock=clock, source=source) for a in accounts}
        for event in self.events:
            tracker = trackers.get(str(getattr(event.payload, "account", "")))
            if tracker is not None:
                tracker.evolve(event)
        for name, tracker in trackers.items():
            # Over every fill, those of the orders left out included.
            tracker.positions = dict(self.positions.get(name, {}))
            tracker.flattens_acknowledged(self.flattens_acknowledged)
        return trackers


async def order_path_history(
    database_url: str,
    accounts: Sequence[str],
    *,
    stream_last_seq: int,
    wait_s: float,
    pending_from_seq: int,
    settled_before_ns: int,
) -> History:
    """The accounts' order-path events in stream order (less old settled
    orders) and their positions over all recorded fills."""
    try:
        conn = await asyncpg.connect(asyncpg_url(database_url), timeout=10)
    except STORE_ERRORS as e:
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
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            rows = await conn.fetch(
                HISTORY_SQL,
                list(accounts),
                list(ORDER_PATH_TYPES),
                pending_from_seq,
                settled_before_ns,
            )
            sums = await conn.fetch(POSITIONS_SQL, list(accounts))
    except STORE_ERRORS as e:
        raise StoreUnavailable(f"cannot read the event store: {e}") from e
    finally:
        await conn.close()
    positions: dict[str, Positions] = {a: {} for a in accounts}
    for r in sums:
        positions[r["account"]][(r["strategy"], r["symbol"])] = Decimal(r["quantity"])
    events: list[AnyEvent] = []
    acknowledged: set[uuid.UUID] = set()
    for row in rows:
        event = _event(row)
        if event is None:
            continue
        events.append(event)
        if isinstance(event, FlattenAccount) and row["seq"] < pending_from_seq:
            acknowledged.add(event.id)
    return History(
        events,
        positions,
        orders_left_out=int(rows[0]["left_out"]),
        flattens_left_out=int(rows[0]["flattens_left_out"]),
        flattens_acknowledged=acknowledged,
    )


def _event(row: asyncpg.Record) -> AnyEvent | None:
    """The row's event; None for the history's summary row (no ``seq``) or
    one the contract no longer takes (``stored_event``: skipped, said, as the
    risk-gate's and the strategy-runner's rebuilds skip theirs; raised, it
    ended every start-up of the gateway)."""
    return None if row["seq"] is None else stored_event(row)
