"""``positions`` folds only the fills after the latest snapshot of the fold.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-08

Reading ``positions`` (and ``positions_marked``, ``account_pnl`` over it)
folded every fill of the history each time: about 5.5 µs a fill after 0009
(150-164 ms at 29,623 fills, ``bench/positions_query.py``), growing for
ever.
``position_snapshots`` holds the fold's state per account, strategy and
symbol as of stream sequence ``upto_seq`` (the exact state array the
aggregate keeps, not the rounded columns), and ``positions`` starts from the
latest snapshot and folds only the fills after it (``position_states``:
an aggregate seeded by the snapshot's row, which sorts before every fill
after it). On 29,623 fills: 0.5-1.4 ms from a snapshot of the whole store,
64 ms with 7,423 fills after it (about 9 µs a fill after the snapshot,
whatever came before), 197 ms with none (0009: 160 ms).

The snapshot is a cache of the fold, never a source:

- No snapshot (the table emptied, or the latest no longer holds, below):
  ``positions`` folds every fill of ``fills`` from the start, as 0009 did
  (a branch of the view that runs only then: the tail's probe per fill for
  an earlier copy would cost more than ``fills``' one sort of them all).
  The migration writes the first snapshot; the recorder writes one every
  ``TRADEBUS_POSITION_SNAPSHOT_EVERY_S`` (``services/recorder/adapters/
  snapshot.py``). The views depend on the table: it cannot be dropped
  without them, only emptied.
- ``write_position_snapshot()`` is its one writer. In one statement it
  reads the fold and the last sequence in ``events`` under the same MVCC
  snapshot, so the state is that of exactly the fills up to ``upto_seq``:
  the recorder commits the stream in sequence order, gapless, so what is
  visible is a prefix of it. Then it deletes the older snapshots. A lock on
  the table makes two writers take turns; the second finds the sequence
  written and writes nothing (two copies of one snapshot would count twice).
- A fill with no strategy of its own and no ``SubmitOrder`` recorded yet is
  booked to no strategy, until its command is recorded (later in the
  stream) and books it: its booking is not final. Each snapshot lists the
  orders it booked to no strategy (``position_snapshot_unbooked``: orders
  placed outside tradebus, a few); once a command is recorded for one of
  them the snapshot no longer holds (``position_snapshot_latest``, one
  probe per listed order) and ``positions`` folds from the start until the
  next snapshot, which books it.
- A fill recorded twice under two ids still counts once: a fill after the
  snapshot is folded only if no earlier copy of it (same account, order id
  and cumulative quantity) exists anywhere, before the snapshot or after
  (one probe of ``ix_events_order_id``). That is ``fills``' rule (it keeps
  the first copy by sequence), so the first copy's strategy books it.
- ``fill_positions`` and ``fills`` are unchanged: they list every fill.
- ``position_states`` is a view, not a SQL function taking a bound: a view
  reads its tables with its owner's rights, and the read-only role is
  granted the views only.
- A later migration that changes the fold (``fills``, ``position_step``,
  the multiplier) must empty the table in the same transaction.

Downgrade puts 0006's ``positions`` back and drops the rest.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

from libs.store.migrate import revision_module

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

READONLY_ROLE = "tradebus_readonly"

SNAPSHOTS = """
CREATE TABLE position_snapshots (
    upto_seq bigint NOT NULL,
    account text,
    strategy text,
    symbol text,
    state numeric[] NOT NULL,
    fills bigint NOT NULL,
    last_fill_seq bigint NOT NULL,
    last_fill_ns bigint NOT NULL
)
"""

# The orders of the fills up to a snapshot that were booked to no strategy
# (none of their own, no SubmitOrder recorded): a command recorded later
# books them, which changes the fold before the snapshot.
UNBOOKED = """
CREATE TABLE position_snapshot_unbooked (
    upto_seq bigint NOT NULL,
    account text,
    order_id uuid
)
"""

# The latest snapshot still true (0: none): it is not once a command has
# been recorded for one of the orders it booked to no strategy.
LATEST = """
CREATE VIEW position_snapshot_latest AS
SELECT coalesce(max(s.upto_seq), 0) AS upto_seq
FROM (SELECT max(upto_seq) AS upto_seq FROM position_snapshots) s
WHERE NOT EXISTS (
    SELECT 1 FROM position_snapshot_unbooked u
    WHERE u.upto_seq = s.upto_seq
      AND EXISTS (
          SELECT 1 FROM events c
          WHERE c.type = 'SubmitOrder' AND c.account = u.account
            AND (c.payload->>'order_id')::uuid = u.order_id
      )
)
"""

# The fold resumed: a seed row (a snapshot's state, ordered before every fill
# after it) replaces the state; a fill steps it as position_state does.
RESUME_STEP = """
CREATE FUNCTION position_resume_step(
    state numeric[], seed numeric[], qty numeric, price numeric, commission numeric
) RETURNS numeric[] LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN seed IS NOT NULL THEN seed
                ELSE position_step(state, qty, price, commission) END
$$
"""
RESUME = (
    "CREATE AGGREGATE position_resume(numeric[], numeric, numeric, numeric) ("
    "SFUNC = position_resume_step, STYPE = numeric[], INITCOND = '{0,0,0}')"
)

# The fold: the latest snapshot, then the fills after it. A view, not a
# function: a view reads its tables with its owner's rights (the read-only
# role is granted the views, not the tables), a SQL function with the caller's.
POSITION_STATES = """
CREATE VIEW position_states AS
WITH latest AS (
    SELECT upto_seq FROM position_snapshot_latest
),
tail AS (
    -- The fills after the snapshot (when there is one).
    SELECT e.seq, e.ts_event, e.account,
           coalesce(
               e.strategy,
               (SELECT c.strategy FROM events c
                WHERE c.type = 'SubmitOrder' AND c.account = e.account
                  AND (c.payload->>'order_id')::uuid = (e.payload->>'order_id')::uuid
                ORDER BY c.seq LIMIT 1)
           ) AS strategy,
           e.symbol,
           CASE e.payload->>'side'
               WHEN 'buy' THEN (e.payload->>'quantity')::numeric
               ELSE -(e.payload->>'quantity')::numeric
           END AS qty,
           (e.payload->>'price')::numeric * contract_multiplier(e.symbol) AS price,
           coalesce((e.payload->>'commission')::numeric, 0) AS commission
    FROM events e
    WHERE e.type = 'FillReceived' AND e.seq > (SELECT l.upto_seq FROM latest l)
      AND (SELECT l.upto_seq FROM latest l) > 0
      -- The first copy of the fill (fills keeps the first by seq): a copy
      -- recorded earlier, before the snapshot or after it, was counted
      -- there. A scalar subquery, so it is one probe of ix_events_order_id
      -- per fill after the snapshot, never a join with every fill.
      AND e.seq = (
          SELECT min(d.seq) FROM events d
          WHERE d.type = 'FillReceived' AND d.account = e.account
            AND (d.payload->>'order_id')::uuid = (e.payload->>'order_id')::uuid
            AND (d.payload->>'cumulative_quantity')::numeric
                IS NOT DISTINCT FROM (e.payload->>'cumulative_quantity')::numeric
      )
      AND (SELECT l.upto_seq FROM latest l) > 0
),
folded AS (
    SELECT s.account, s.strategy, s.symbol, s.last_fill_seq AS seq, s.last_fill_ns AS ts_event,
           s.state AS seed, NULL::numeric AS qty, NULL::numeric AS price,
           NULL::numeric AS commission, s.fills
    FROM position_snapshots s, latest
    WHERE s.upto_seq = latest.upto_seq
    UNION ALL
    SELECT t.account, t.strategy, t.symbol, t.seq, t.ts_event, NULL, t.qty, t.price,
           t.commission, 1
    FROM tail t
    UNION ALL
    -- No snapshot: every fill, as 0009 folds them (one sort of them all is
    -- cheaper than the tail's probe for an earlier copy of each).
    SELECT f.account, f.strategy, f.symbol, f.seq, f.ts_event, NULL,
           CASE f.side WHEN 'buy' THEN f.quantity ELSE -f.quantity END,
           f.price * contract_multiplier(f.symbol), f.commission, 1
    FROM fills f
    WHERE (SELECT l.upto_seq FROM latest l) = 0
)
SELECT f.account, f.strategy, f.symbol,
       position_resume(f.seed, f.qty, f.price, f.commission ORDER BY f.seq) AS state,
       sum(f.fills)::bigint AS fills, max(f.seq) AS last_fill_seq,
       max(f.ts_event) AS last_fill_ns
FROM folded f
GROUP BY f.account, f.strategy, f.symbol
"""

POSITIONS = """
CREATE OR REPLACE VIEW positions AS
SELECT p.account, p.strategy, p.symbol,
       p.state[1] AS quantity,
       round(p.state[2] / contract_multiplier(p.symbol), 12) AS avg_price,
       round(p.state[3], 12) AS realized_pnl,
       p.fills, p.last_fill_seq, p.last_fill_ns
FROM position_states p
"""

WRITE_SNAPSHOT = """
CREATE FUNCTION write_position_snapshot() RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    written bigint;
BEGIN
    -- Writers take turns (readers are not blocked): the one that comes
    -- second sees the first's rows in its own statement below.
    LOCK TABLE position_snapshots IN SHARE ROW EXCLUSIVE MODE;
    -- One statement, so the fold, max(seq) and the unbooked orders are read
    -- under the same MVCC snapshot: the state is that of exactly the fills
    -- up to upto_seq, and so is the list of orders it booked to no strategy.
    WITH done AS (
        SELECT coalesce(max(upto_seq), 0) AS seq FROM position_snapshots
    ), latest AS (
        SELECT upto_seq AS seq FROM position_snapshot_latest
    ), upto AS (
        SELECT max(seq) AS seq FROM events
    ), unbooked AS (
        -- The latest snapshot's list if it still holds (none of it booked
        -- since), and the fills after it; every fill if it does not.
        SELECT u.account, u.order_id FROM position_snapshot_unbooked u, latest
        WHERE u.upto_seq = latest.seq
        UNION
        SELECT e.account, (e.payload->>'order_id')::uuid FROM events e, latest
        WHERE e.type = 'FillReceived' AND e.seq > latest.seq AND e.strategy IS NULL
          AND NOT EXISTS (
              SELECT 1 FROM events c
              WHERE c.type = 'SubmitOrder' AND c.account = e.account
                AND (c.payload->>'order_id')::uuid = (e.payload->>'order_id')::uuid
          )
    ), listed AS (
        INSERT INTO position_snapshot_unbooked (upto_seq, account, order_id)
        SELECT upto.seq, u.account, u.order_id FROM unbooked u, upto, done
        WHERE upto.seq > done.seq
    ), fresh AS (
        INSERT INTO position_snapshots
            (upto_seq, account, strategy, symbol, state, fills, last_fill_seq, last_fill_ns)
        SELECT upto.seq, p.account, p.strategy, p.symbol, p.state, p.fills,
               p.last_fill_seq, p.last_fill_ns
        FROM position_states p, upto, done
        WHERE upto.seq > done.seq
        RETURNING upto_seq
    )
    SELECT max(upto_seq) INTO written FROM fresh;
    IF written IS NOT NULL THEN
        DELETE FROM position_snapshots WHERE upto_seq < written;
        DELETE FROM position_snapshot_unbooked WHERE upto_seq < written;
    END IF;
    RETURN written;
END $$
"""


def upgrade() -> None:
    for ddl in (
        SNAPSHOTS,
        UNBOOKED,
        LATEST,
        RESUME_STEP,
        RESUME,
        POSITION_STATES,
        POSITIONS,
        WRITE_SNAPSHOT,
    ):
        op.execute(ddl)
    op.execute(
        f"""
        DO $$ BEGIN
            IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{READONLY_ROLE}') THEN
                GRANT SELECT ON position_states TO {READONLY_ROLE};
            END IF;
        END $$
        """  # noqa: S608 - the names are this module's constants, not input
    )
    # The first snapshot, so positions read fast from now on even before the
    # recorder writes one (0.4 s at 30,000 fills).
    op.execute("SELECT write_position_snapshot()")


def downgrade() -> None:
    # 0006's view (itself written as CREATE OR REPLACE), then what it no longer uses.
    op.execute(revision_module("0006").POSITIONS)
    op.execute("DROP FUNCTION IF EXISTS write_position_snapshot()")
    op.execute("DROP VIEW IF EXISTS position_states")
    op.execute("DROP AGGREGATE IF EXISTS position_resume(numeric[], numeric, numeric, numeric)")
    op.execute(
        "DROP FUNCTION IF EXISTS "
        "position_resume_step(numeric[], numeric[], numeric, numeric, numeric)"
    )
    op.execute("DROP VIEW IF EXISTS position_snapshot_latest")
    op.execute("DROP TABLE IF EXISTS position_snapshot_unbooked")
    op.execute("DROP TABLE IF EXISTS position_snapshots")
