"""What reading positions costs on a store with a long history:
``positions``, ``positions_marked``, ``account_pnl`` and ``tradebus positions``.

``positions_marked`` (and ``account_pnl`` over it, which ``tradebus
positions`` and the dashboards read) prices each position at its symbol's
last trade (else last bar close) and last mark, each found in ``events``
with ``ORDER BY seq DESC LIMIT 1``. A symbol with none of a kind (an equity
never has a mark; a thin option contract may never trade) can cost a walk
over the whole history to prove there is none. This measures it.

On its own PostgreSQL (fresh, under a temporary directory, fsync off: only
the reads are timed) it builds a store of ``--events`` (3,000,000) events as
a feed records them:

- twenty equities' trades (33 %) and quotes (51 %), their 1-minute bars,
  and one more equity of which the store has bars only (a symbol priced
  from a bar feed);
- a dozen option contracts' quotes (12.7 %) and the marks made from them
  (3 %): three trade now and then and have bars, two have bars but never
  trade, five only ever have marks, one traded once at the very start of
  the history, and one has quotes but no mark (always too wide) and so no
  price at all;
- spread evenly over that history, ``--fills`` (3,000) fills of order
  chains (``SubmitOrder``, ``OrderAccepted``, one or two ``FillReceived``)
  by four strategies on two accounts: every equity above in the first, three
  of them and every option contract in the second; 36 positions, 30 left
  open and 6 flat (which ones is the seed's draw).

The market data is made in SQL (``generate_series``, one ``INSERT`` per
chunk of ``--chunk`` sequences, payloads as the recorder writes them), the
order chains as real events, COPYed at sequences kept free for them.

It measures after each of ``--steps`` (2) equal parts of the store are in:
``SELECT *`` of ``positions``, ``positions_marked`` and ``account_pnl`` on
one connection, and ``tradebus positions``' own query path
(``services.broker_gateway.positions.read_positions``: connect, query,
close), ``--runs`` (5) times each, interleaved: p50 and max in ms; and an
``EXPLAIN (ANALYZE, BUFFERS)`` of ``positions_marked`` of which it prints
the plan nodes that took the most time.

With ``--before REV`` the store is migrated to ``REV`` only; at each step
it is measured there, migrated to head (timed: what the migration costs on
a store of that size), measured again, and migrated back to ``REV``
before the next part is written: the same rows read before and after.

With ``--snapshot``, after the measurements at head of each step it empties
the snapshots of the fold (migration 0010) and measures with none (the fold
from the start), then writes one (``write_position_snapshot()``, timed) and
measures again, reading from it. Head's own measurement of the next step
then folds only the fills of its part after that snapshot (without
``--before``, which drops the snapshots going down).

Progress goes to stderr; stdout gets the figures and plan summaries and,
last, one JSON line with the figures (units in their names).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import statistics
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
from alembic import command
from harness import TEMPLATE_DB, Database, say  # bench/harness.py
from positions_query_store import place, write_part  # bench/positions_query_store.py

from libs.local.servers import PostgresServer
from libs.store.migrate import alembic_config, upgrade_async
from libs.store.urls import asyncpg_url
from services.broker_gateway.positions import read_positions

# ---------------------------------------------------------------- measuring

QUERIES = {
    "positions": "SELECT * FROM positions",
    "positions_marked": "SELECT * FROM positions_marked",
    "account_pnl": "SELECT * FROM account_pnl",
}


def summary(values: list[float]) -> dict[str, float]:
    return {"p50": round(statistics.median(values), 1), "max": round(max(values), 1)}


async def timed(url: str, runs: int) -> dict[str, dict[str, float]]:
    """ms of each query and of ``tradebus positions``' read, ``runs`` times, interleaved."""
    took: dict[str, list[float]] = {name: [] for name in (*QUERIES, "tradebus_positions")}
    conn = await asyncpg.connect(asyncpg_url(url))
    try:
        for _ in range(runs):
            for name, sql in QUERIES.items():
                started = time.perf_counter()
                await conn.fetch(sql)
                took[name].append((time.perf_counter() - started) * 1000)
            started = time.perf_counter()
            await read_positions(url)
            took["tradebus_positions"].append((time.perf_counter() - started) * 1000)
    finally:
        await conn.close()
    return {name: summary(values) for name, values in took.items()}


@dataclass
class Node:
    """A plan node's own share of an EXPLAIN ANALYZE: its time less its children's."""

    label: str
    self_ms: float
    loops: int
    rows: float
    removed: int
    hit: int
    read: int


def _nodes(plan: dict[str, Any], out: list[Node]) -> float:
    """Walk ``plan``; returns its inclusive ms (time per loop x loops)."""
    loops = int(plan.get("Actual Loops", 0))
    total = float(plan.get("Actual Total Time", 0.0)) * loops
    children = sum(_nodes(child, out) for child in plan.get("Plans", []))
    label = plan["Node Type"]
    if "Index Name" in plan:
        label += f" using {plan['Index Name']}"
    if "Relation Name" in plan:
        label += f" on {plan['Relation Name']}"
    if "Alias" in plan and plan.get("Relation Name"):
        label += f" {plan['Alias']}"
    for key in ("Index Cond", "Filter", "Recheck Cond"):
        if key in plan:
            label += f" [{key.lower()}: {plan[key]}]"
    out.append(
        Node(
            label,
            max(total - children, 0.0),
            loops,
            float(plan.get("Actual Rows", 0.0)),
            int(plan.get("Rows Removed by Filter", 0)) * max(loops, 1),
            int(plan.get("Shared Hit Blocks", 0)),
            int(plan.get("Shared Read Blocks", 0)),
        )
    )
    return total


async def explain(url: str, sql: str, top: int = 6) -> tuple[float, list[Node]]:
    """EXPLAIN (ANALYZE, BUFFERS) of ``sql``: its execution ms and its costliest nodes."""
    conn = await asyncpg.connect(asyncpg_url(url))
    try:
        raw = await conn.fetchval(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {sql}")
    finally:
        await conn.close()
    [doc] = json.loads(raw)
    nodes: list[Node] = []
    _nodes(doc["Plan"], nodes)
    nodes.sort(key=lambda n: -n.self_ms)
    return float(doc["Execution Time"]), nodes[:top]


def print_plan(title: str, execution_ms: float, nodes: list[Node]) -> None:
    print(f"  EXPLAIN (ANALYZE, BUFFERS) {title}: {execution_ms:,.1f} ms; costliest nodes:")
    for n in nodes:
        print(
            f"    {n.self_ms:9.1f} ms  loops {n.loops:>3}  rows/loop {n.rows:>9,.1f}  "
            f"removed {n.removed:>11,}  buffers hit {n.hit:>9,} read {n.read:>7,}"
        )
        print(f"               {n.label[:200]}")


async def store_figures(url: str) -> dict[str, int]:
    conn = await asyncpg.connect(asyncpg_url(url))
    try:
        row = await conn.fetchrow(
            "SELECT (SELECT count(*) FROM positions) AS positions, "
            "(SELECT count(*) FROM positions WHERE quantity <> 0) AS open_positions, "
            "(SELECT count(*) FROM fills) AS fills, "
            "pg_total_relation_size('events') AS events_bytes"
        )
    finally:
        await conn.close()
    return dict(row)


async def measure(url: str, runs: int, label: str) -> dict[str, Any]:
    say(f"  timing ({label}): {runs} runs of each query, interleaved")
    times = await timed(url, runs)
    execution_ms, nodes = await explain(url, QUERIES["positions_marked"])
    print(f"  {label}:")
    for name, s in times.items():
        print(f"    {name:<20} p50 {s['p50']:>10,.1f} ms   max {s['max']:>10,.1f} ms")
    print_plan("positions_marked", execution_ms, nodes)
    out: dict[str, Any] = {}
    for name, s in times.items():
        out[f"{name}_p50_ms"] = s["p50"]
        out[f"{name}_max_ms"] = s["max"]
    out["positions_marked_explain_ms"] = round(execution_ms, 1)
    return out


async def write_snapshot(url: str) -> float:
    """Seconds ``write_position_snapshot()`` took."""
    conn = await asyncpg.connect(asyncpg_url(url))
    try:
        started = time.perf_counter()
        await conn.fetchval("SELECT write_position_snapshot()")
        return time.perf_counter() - started
    finally:
        await conn.close()


async def migrate(url: str, revision: str, down: bool = False) -> float:
    """Seconds ``alembic upgrade/downgrade revision`` took."""
    started = time.perf_counter()
    if down:
        await asyncio.to_thread(command.downgrade, alembic_config(url), revision)
    else:
        await upgrade_async(url, revision)
    return time.perf_counter() - started


async def run(opts: argparse.Namespace, work: Path) -> dict[str, Any]:
    pg = PostgresServer(work / "pg", fsync=False)
    pg.start()
    try:
        db = Database(pg)
        if opts.before:
            await upgrade_async(pg.url(TEMPLATE_DB), opts.before)
        else:
            await db.migrate_template()
        url = await db.fresh("positions")
        say(f"placing {opts.fills:,} fills' order chains over {opts.events:,} events")
        placed = place(opts.events, opts.fills, opts.seed)
        steps: list[dict[str, Any]] = []
        conn = await asyncpg.connect(asyncpg_url(url))
        written = 0
        build_s = 0.0
        try:
            for step in range(1, opts.steps + 1):
                upto = opts.events * step // opts.steps
                say(f"writing events {written + 1:,}..{upto:,}")
                started = time.perf_counter()
                await write_part(conn, placed, written + 1, upto, opts.chunk, opts.events)
                build_s += time.perf_counter() - started
                written = upto
                figures: dict[str, Any] = {"events": upto, **await store_figures(url)}
                print(
                    f"store of {upto:,} events ({figures['events_bytes'] / 2**20:,.0f} MiB), "
                    f"{figures['fills']:,} fills, {figures['positions']} positions "
                    f"({figures['open_positions']} open)"
                )
                if opts.before:
                    figures["before"] = await measure(url, opts.runs, f"at {opts.before}")
                    say("  migrating to head")
                    figures["upgrade_s"] = round(await migrate(url, "head"), 2)
                    print(f"  migration {opts.before} -> head: {figures['upgrade_s']} s")
                    figures["after"] = await measure(url, opts.runs, "at head")
                    if step < opts.steps:
                        await migrate(url, opts.before, down=True)
                else:
                    figures.update(await measure(url, opts.runs, "at head"))
                if opts.snapshot:
                    await conn.execute("TRUNCATE position_snapshots, position_snapshot_unbooked")
                    figures["no_snapshot"] = await measure(
                        url, opts.runs, "at head, no snapshot (the fold from the start)"
                    )
                    figures["snapshot_s"] = round(await write_snapshot(url), 3)
                    print(f"  snapshot of the fold written in {figures['snapshot_s']} s")
                    figures["from_snapshot"] = await measure(
                        url, opts.runs, "at head, from a snapshot of the whole store"
                    )
                steps.append(figures)
        finally:
            await conn.close()
    finally:
        pg.stop()
    return {
        "events": opts.events,
        "fills": placed.fills,
        "orders": placed.orders,
        "runs": opts.runs,
        "before_revision": opts.before,
        "build_s": round(build_s, 1),
        "build_events_per_s": round(opts.events / build_s),
        "steps": steps,
    }


@contextlib.contextmanager
def workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="tradebus-positions-query-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=3_000_000, help="events in the store")
    parser.add_argument("--fills", type=int, default=3_000, help="fills (about) in the store")
    parser.add_argument("--steps", type=int, default=2, help="measure after each of N parts")
    parser.add_argument("--runs", type=int, default=5, help="timed runs of each query")
    parser.add_argument("--chunk", type=int, default=50_000, help="sequences per INSERT")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--before", metavar="REV", help="measure at REV, then at head, on the same store"
    )
    parser.add_argument(
        "--snapshot",
        action="store_true",
        help="write a snapshot of the fold after each step and measure from it",
    )
    opts = parser.parse_args()
    if opts.events < 10 * opts.fills or opts.steps < 1 or opts.runs < 1:
        parser.error("need --events >= 10 x --fills, --steps >= 1 and --runs >= 1")
    with workdir() as work:
        say(f"work directory {work}")
        figures = asyncio.run(run(opts, work))
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
