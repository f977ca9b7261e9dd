"""A subject pattern that starts with a wildcard (``*.*.acct-a``: an
account's commands and broker events; ``*.trade.AAPL``) selects what NATS
would deliver to it, in replay and in ``tradebus events``."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from libs.bus.client import Bus
from libs.contract.codec import decode
from libs.contract.subjects import subject_for
from libs.replay import ReplayRequest, replay
from libs.testing.producer import make_trades
from tests.integration.recorded_chains import cli, order_chain, record


async def test_a_pattern_starting_with_a_wildcard_selects_what_nats_would_deliver(
    tmp_path: Path, bus: Bus, nats_url: str, database_url: str
) -> None:
    """The store's filter took the pattern's literal start as a LIKE prefix,
    and for a pattern with none it was ".": ``*.*.acct-a`` and
    ``*.trade.AAPL`` matched nothing, so a replay of them published nothing
    (exit 0) and ``events`` listed nothing, as if nothing was recorded."""
    trades = list(make_trades(12, "wild"))
    chain = order_chain()
    events = [*trades[:6], *chain, *trades[6:]]
    await record(tmp_path, bus, nats_url, database_url, events)
    of_account = [e for e in chain if subject_for(e).endswith(".acct-a")]  # type: ignore[arg-type]
    assert len(of_account) == 3  # SubmitOrder, OrderAccepted, FillReceived
    aapl = [t for t in trades if t.payload.symbol == "AAPL"]
    assert aapl

    for pattern, expected in (("*.*.acct-a", of_account), ("*.trade.AAPL", aapl)):
        sub = await bus.nc.subscribe("replay.>")
        result = await replay(database_url, bus, ReplayRequest(subject=pattern))
        assert result.published == len(expected), pattern
        got = [decode((await sub.next_msg(timeout=5)).data) for _ in expected]
        assert got == expected, pattern
        await sub.unsubscribe()

    proc = await asyncio.to_thread(
        cli, "events", "--json", "--subject", "*.*.acct-a", database_url=database_url
    )
    assert proc.returncode == 0, proc.stderr
    listed = [json.loads(line)["id"] for line in proc.stdout.splitlines()]
    assert listed == [str(e.id) for e in of_account]  # type: ignore[attr-defined]
