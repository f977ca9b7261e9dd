"""Read models derived from the events: fills, orders, positions and P&L.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24

Everything here is a view over ``events`` (plus the function and aggregate
that compute a position), so it is always exactly what the timeline says and
is rebuilt by construction: there is no projection state to repair.

- ``fills``: every ``FillReceived`` once (a fill recorded twice under two ids
  counts once: an order's cumulative quantity identifies its fill), with the
  strategy it is booked to: the fill's own ``strategy``, else that of the
  ``SubmitOrder`` with the same order id.
- ``orders``: one row per order id of an account, with what was asked
  (from the ``SubmitOrder``), what the broker did, and its latest status:
  ``rejected``, ``filled``, ``canceled``, ``partially_filled``, ``accepted`` or
  ``submitted`` (a command no broker event has answered yet).
- ``positions``: per account, strategy and symbol, from the fills in stream
  order: net quantity, average price of the open quantity and realized P&L
  (average-cost method, commissions deducted). ``position_state`` is the
  ordered aggregate doing it; ``fill_positions`` gives the state after each fill.
- ``positions_marked``: ``positions`` with the last recorded trade price of the
  symbol (the last bar's close when no trade was recorded) and the unrealized
  P&L at that price; ``account_pnl`` sums them per account.

The read-only role (``deploy/postgres/10-readonly-role.sql``) gets SELECT on
the views when it exists.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

READONLY_ROLE = "tradebus_readonly"
ORDER_PATH_TYPES = (
    "'SubmitOrder', 'CancelOrder', 'OrderAccepted', 'OrderRejected', 'FillReceived', "
    "'OrderCanceled'"
)
VIEWS = (
    "account_pnl",
    "positions_marked",
    "positions",
    "fill_positions",
    "orders",
    "fills",
)

POSITION_STEP = """
CREATE FUNCTION position_step(state numeric[], qty numeric, price numeric, commission numeric)
RETURNS numeric[] LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    q numeric := state[1];         -- net quantity, signed
    avg_price numeric := state[2]; -- average price of the open quantity
    realized numeric := state[3];
    n numeric := q + qty;
BEGIN
    IF q = 0 OR sign(q) = sign(qty) THEN
        -- Opening or adding: the average moves.
        avg_price := (abs(q) * avg_price + abs(qty) * price) / abs(n);
    ELSE
        -- Reducing: realize against the average; past zero the rest opens at price.
        realized := realized + least(abs(qty), abs(q)) * (price - avg_price) * sign(q);
        IF n = 0 THEN
            avg_price := 0;
        ELSIF sign(n) <> sign(q) THEN
            avg_price := price;
        END IF;
    END IF;
    RETURN ARRAY[n, avg_price, realized - coalesce(commission, 0)];
END $$
"""

FILLS = """
CREATE VIEW fills AS
SELECT DISTINCT ON (f.account, f.order_id, f.cumulative_quantity)
    f.seq, f.event_id, f.ts_event, f.account,
    coalesce(f.strategy, s.strategy) AS strategy,
    f.symbol, f.order_id, f.broker_order_id, f.fill_id, f.side,
    f.quantity, f.price, f.cumulative_quantity, f.leaves_quantity, f.status,
    f.commission, f.correlation_id, f.causation_id
FROM (
    SELECT e.seq, e.id AS event_id, e.ts_event, e.account, e.strategy, e.symbol,
           (e.payload->>'order_id')::uuid AS order_id,
           e.payload->>'broker_order_id' AS broker_order_id,
           e.payload->>'fill_id' AS fill_id,
           e.payload->>'side' AS side,
           (e.payload->>'quantity')::numeric AS quantity,
           (e.payload->>'price')::numeric AS price,
           (e.payload->>'cumulative_quantity')::numeric AS cumulative_quantity,
           (e.payload->>'leaves_quantity')::numeric AS leaves_quantity,
           e.payload->>'status' AS status,
           coalesce((e.payload->>'commission')::numeric, 0) AS commission,
           e.correlation_id, e.causation_id
    FROM events e
    WHERE e.type = 'FillReceived'
) f
LEFT JOIN LATERAL (
    SELECT c.strategy FROM events c
    WHERE c.type = 'SubmitOrder' AND c.account = f.account
      AND (c.payload->>'order_id')::uuid = f.order_id
    ORDER BY c.seq LIMIT 1
) s ON true
ORDER BY f.account, f.order_id, f.cumulative_quantity, f.seq
"""

ORDERS = """
CREATE VIEW orders AS
WITH ids AS (
    SELECT account, (payload->>'order_id')::uuid AS order_id,
           min(seq) AS first_seq, max(seq) AS last_seq
    FROM events
    WHERE type IN ('SubmitOrder', 'OrderAccepted', 'OrderRejected', 'FillReceived',
                   'OrderCanceled')
    GROUP BY 1, 2
)
SELECT
    i.account, i.order_id,
    coalesce(sub.strategy, fl.strategy) AS strategy,
    coalesce(sub.symbol, acc.symbol, fl.symbol) AS symbol,
    coalesce(sub.payload->>'side', fl.side) AS side,
    (sub.payload->>'quantity')::numeric AS quantity,
    sub.payload->>'order_type' AS order_type,
    (sub.payload->>'limit_price')::numeric AS limit_price,
    sub.correlation_id,
    sub.ts_event AS submitted_ns,
    coalesce(acc.payload->>'broker_order_id', fl.broker_order_id) AS broker_order_id,
    coalesce(fl.filled_quantity, 0) AS filled_quantity,
    fl.avg_fill_price,
    CASE
        WHEN rej.seq IS NOT NULL THEN 'rejected'
        WHEN fl.leaves_quantity = 0 THEN 'filled'
        WHEN can.seq IS NOT NULL THEN 'canceled'
        WHEN fl.filled_quantity > 0 THEN 'partially_filled'
        WHEN acc.seq IS NOT NULL THEN 'accepted'
        ELSE 'submitted'
    END AS status,
    coalesce(rej.payload->>'reason', can.payload->>'reason') AS reason,
    rej.payload->>'code' AS reject_code,
    i.first_seq, i.last_seq
FROM ids i
LEFT JOIN LATERAL (
    SELECT * FROM events e WHERE e.type = 'SubmitOrder' AND e.account = i.account
      AND (e.payload->>'order_id')::uuid = i.order_id ORDER BY e.seq LIMIT 1
) sub ON true
LEFT JOIN LATERAL (
    SELECT * FROM events e WHERE e.type = 'OrderAccepted' AND e.account = i.account
      AND (e.payload->>'order_id')::uuid = i.order_id ORDER BY e.seq LIMIT 1
) acc ON true
LEFT JOIN LATERAL (
    SELECT * FROM events e WHERE e.type = 'OrderRejected' AND e.account = i.account
      AND (e.payload->>'order_id')::uuid = i.order_id ORDER BY e.seq LIMIT 1
) rej ON true
LEFT JOIN LATERAL (
    SELECT * FROM events e WHERE e.type = 'OrderCanceled' AND e.account = i.account
      AND (e.payload->>'order_id')::uuid = i.order_id ORDER BY e.seq LIMIT 1
) can ON true
LEFT JOIN LATERAL (
    SELECT max(f.cumulative_quantity) AS filled_quantity,
           min(f.leaves_quantity) AS leaves_quantity,
           sum(f.quantity * f.price) / nullif(sum(f.quantity), 0) AS avg_fill_price,
           min(f.strategy) AS strategy, min(f.symbol) AS symbol, min(f.side) AS side,
           min(f.broker_order_id) AS broker_order_id
    FROM fills f WHERE f.account = i.account AND f.order_id = i.order_id
) fl ON true
"""

FILL_POSITIONS = """
CREATE VIEW fill_positions AS
SELECT s.seq, s.event_id, s.ts_event, s.account, s.strategy, s.symbol, s.order_id,
       s.side, s.quantity, s.price,
       s.state[1] AS position_quantity,
       round(s.state[2], 12) AS position_avg_price,
       round(s.state[3], 12) AS realized_pnl
FROM (
    SELECT f.*,
           position_state(
               CASE f.side WHEN 'buy' THEN f.quantity ELSE -f.quantity END,
               f.price, f.commission
           ) OVER (PARTITION BY f.account, f.strategy, f.symbol ORDER BY f.seq) AS state
    FROM fills f
) s
"""

POSITIONS = """
CREATE VIEW positions AS
SELECT p.account, p.strategy, p.symbol,
       p.state[1] AS quantity,
       round(p.state[2], 12) AS avg_price,
       round(p.state[3], 12) AS realized_pnl,
       p.fills, p.last_fill_seq, p.last_fill_ns
FROM (
    SELECT account, strategy, symbol,
           position_state(
               CASE side WHEN 'buy' THEN quantity ELSE -quantity END, price, commission
               ORDER BY seq
           ) AS state,
           count(*) AS fills, max(seq) AS last_fill_seq, max(ts_event) AS last_fill_ns
    FROM fills
    GROUP BY account, strategy, symbol
) p
"""

POSITIONS_MARKED = """
CREATE VIEW positions_marked AS
SELECT p.*,
       coalesce(t.price, b.price) AS last_price,
       coalesce(t.ts_event, b.ts_event) AS last_price_ns,
       CASE
           WHEN p.quantity = 0 THEN 0
           ELSE round((coalesce(t.price, b.price) - p.avg_price) * p.quantity, 12)
       END AS unrealized_pnl
FROM positions p
LEFT JOIN LATERAL (
    SELECT (e.payload->>'price')::numeric AS price, e.ts_event FROM events e
    WHERE e.type = 'TradePrinted' AND e.symbol = p.symbol ORDER BY e.seq DESC LIMIT 1
) t ON true
LEFT JOIN LATERAL (
    SELECT (e.payload->>'close')::numeric AS price, e.ts_event FROM events e
    WHERE e.type = 'BarClosed' AND e.symbol = p.symbol AND t.price IS NULL
    ORDER BY e.seq DESC LIMIT 1
) b ON true
"""

ACCOUNT_PNL = """
CREATE VIEW account_pnl AS
SELECT account,
       sum(realized_pnl) AS realized_pnl,
       sum(unrealized_pnl) AS unrealized_pnl,
       sum(realized_pnl) + coalesce(sum(unrealized_pnl), 0) AS total_pnl,
       count(*) FILTER (WHERE quantity <> 0) AS open_positions
FROM positions_marked
GROUP BY account
"""


def upgrade() -> None:
    # Order-path lookups by order id (a small share of the rows). The last
    # price of a symbol needs no index of its own: the primary key read
    # backwards finds an active symbol's last trade at once, ix_events_symbol a
    # quiet one's; an index over every trade would cost the recorder ~15% of
    # its COPY throughput.
    op.execute(
        "CREATE INDEX ix_events_order_id ON events "
        "(account, type, ((payload->>'order_id')::uuid)) "
        f"WHERE type IN ({ORDER_PATH_TYPES})"
    )
    op.execute(POSITION_STEP)
    op.execute(
        "CREATE AGGREGATE position_state(numeric, numeric, numeric) ("
        "SFUNC = position_step, STYPE = numeric[], INITCOND = '{0,0,0}')"
    )
    for ddl in (FILLS, ORDERS, FILL_POSITIONS, POSITIONS, POSITIONS_MARKED, ACCOUNT_PNL):
        op.execute(ddl)
    views = ", ".join(VIEWS)
    op.execute(
        f"""
        DO $$ BEGIN
            IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{READONLY_ROLE}') THEN
                GRANT SELECT ON {views} TO {READONLY_ROLE};
            END IF;
        END $$
        """  # noqa: S608 - the names are this module's constants, not input
    )


def downgrade() -> None:
    for view in VIEWS:
        op.execute(f"DROP VIEW IF EXISTS {view}")
    op.execute("DROP AGGREGATE IF EXISTS position_state(numeric, numeric, numeric)")
    op.execute("DROP FUNCTION IF EXISTS position_step(numeric[], numeric, numeric, numeric)")
    op.execute("DROP INDEX IF EXISTS ix_events_order_id")
