"""A flatten whose closing order died (ended with nothing filled) says the
position is still open, on the command path of command_path (real NATS,
consumer, worker and paper adapter, a real paper broker server), here on
the recovery after a gateway crash (kill -9) cut it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from libs.bus.client import Bus
from libs.testing.wait import eventually
from services.paper_broker.domain.fill_model import MarketUpdate
from tests.integration.command_path import (
    D,
    Venue,
    caused_by,
    flatten,
    flattens,
    gateway,
    holding_without_prices,
    rebuilt,
    stored,
)


async def test_a_recovered_flatten_whose_closing_order_was_canceled_leaves_the_position_open(
    bus: Bus, venues: list[Venue], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """s1 holds 10 AAPL; the paper broker has restarted and has no price of
    it yet. A flatten's close-all places a market sell of the 10, which waits
    for a price, and the gateway dies (kill -9) before the answer is read.
    While it is down the sell is canceled at the broker, nothing filled.
    Restarted, the gateway gets the flatten again and finds the canceled
    sell among the orders its close-all made: it counted AAPL as closed,
    published no refusal and said ``flattened``, while the broker held the
    10 (and the recorded fills agree with it, so no positions check said
    otherwise). Now AAPL is published as left open, caused by the flatten,
    naming the cancel, and the flatten is ``incomplete``; no second
    close-all is sent."""
    a = venues[0]
    a.book.on_market(MarketUpdate.trade("AAPL", D(100)))
    flat = flatten(a.account)
    crashed = asyncio.Event()
    async with gateway(bus, venues[:1]) as gw:
        w = gw.workers[a.account]
        assert await w.port.wait_connected(timeout=10)
        await holding_without_prices(bus, w, a, tmp_path / "paper.journal")

        async def acted_then_died() -> None:
            a.book.close_all(a.account, cancel_orders=True)  # its news reaches no one
            crashed.set()
            await asyncio.Event().wait()  # dead: nothing after this runs

        monkeypatch.setattr(w.port, "close_all", acted_then_died)
        await bus.publish(flat)
        await eventually(crashed.is_set, timeout=10)
    [closing] = a.book.orders(a.account, "open")
    assert (closing.side, closing.qty, closing.filled_qty) == ("sell", D(10), D(0))
    a.book.cancel(a.account, closing.id)
    before = flattens(a.account, "flattened"), flattens(a.account, "incomplete")
    tracker = await rebuilt(bus, a.account)
    async with gateway(bus, venues[:1], trackers={a.account: tracker}) as gw:
        w = gw.workers[a.account]
        await eventually(lambda: w.tracker.flattened(flat.id), timeout=20)
        await w.wait_idle()
        rejected = await eventually(
            lambda: caused_by(bus, f"broker.reject.{a.account}", flat.id), timeout=10
        )
        assert w.tracker.position("AAPL", "s1") == D(10)
    [refusal] = rejected
    reason = refusal["payload"]["reason"]
    assert "AAPL position, which is still open" in reason
    assert f"closing order {closing.id} was canceled with nothing filled" in reason
    after = flattens(a.account, "flattened"), flattens(a.account, "incomplete")
    assert (after[0] - before[0], after[1] - before[1]) == (0, 1)
    assert a.book.close_alls == 1  # no second close-all
    assert [(p.symbol, p.qty) for p in a.book.positions(a.account)] == [("AAPL", D(10))]
    placed = await caused_by(bus, f"broker.close.{a.account}", flat.id)
    assert placed is None, "no closing order placed"
    canceled = [e for e in await stored(bus, f"broker.cancel.{a.account}") if e["causation_id"]]
    assert [e["causation_id"] for e in canceled] == [str(flat.id)]
