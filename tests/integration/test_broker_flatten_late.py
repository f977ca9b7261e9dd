"""A flatten whose closing order ends after its close-all has answered says
the position is still open, on the command path of command_path (real
NATS, consumer, worker and paper adapter, a real paper broker server)."""

from __future__ import annotations

from pathlib import Path

from libs.bus.client import Bus
from libs.contract.codec import derived_id
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
    stored,
)


async def test_a_closing_order_canceled_after_the_answer_leaves_the_position_open(
    bus: Bus, venues: list[Venue], tmp_path: Path
) -> None:
    """s1 holds 10 AAPL; the paper broker has restarted and has no price of
    it yet. A flatten's close-all places a market sell of the 10, which
    waits for a price: the answer lists it working, it is published among
    the closing orders, and the flatten says ``flattened``. Then the sell is
    canceled at the broker, nothing filled. Its cancel was all that was
    published: nothing said AAPL was still open while the broker held the
    10 (the recorded fills agree with it). Now AAPL is published as left
    open, caused by the flatten, naming the cancel, under the id the
    answer's refusal would have, and counted."""
    a = venues[0]
    a.book.on_market(MarketUpdate.trade("AAPL", D(100)))
    flat = flatten(a.account)
    async with gateway(bus, venues[:1]) as gw:
        w = gw.workers[a.account]
        assert await w.port.wait_connected(timeout=10)
        await holding_without_prices(bus, w, a, tmp_path / "paper.journal")
        before = {k: flattens(a.account, k) for k in ("flattened", "incomplete", "refused")}
        await bus.publish(flat)
        placed = await eventually(
            lambda: caused_by(bus, f"broker.close.{a.account}", flat.id), timeout=10
        )
        [closing] = a.book.orders(a.account, "open")
        assert (closing.side, closing.qty, closing.filled_qty) == ("sell", D(10), D(0))
        assert [o["symbol"] for o in placed[0]["payload"]["orders"]] == ["AAPL"]
        await w.wait_idle()
        assert flattens(a.account, "flattened") - before["flattened"] == 1
        assert await caused_by(bus, f"broker.reject.{a.account}", flat.id) is None
        await w.port.cancel(client_order_id=closing.client_order_id, broker_order_id=closing.id)
        rejected = await eventually(
            lambda: caused_by(bus, f"broker.reject.{a.account}", flat.id), timeout=10
        )
        await eventually(lambda: flattens(a.account, "refused") - before["refused"] == 1, timeout=5)
        assert w.tracker.position("AAPL", "s1") == D(10)
    [refusal] = rejected
    reason = refusal["payload"]["reason"]
    assert "AAPL position, which is still open" in reason
    assert f"closing order {closing.id} was canceled with nothing filled" in reason
    assert refusal["payload"]["order_id"] == str(
        derived_id("broker.close", a.account, flat.id, "AAPL")
    )
    canceled = [e for e in await stored(bus, f"broker.cancel.{a.account}") if e["causation_id"]]
    assert [e["causation_id"] for e in canceled] == [str(flat.id)]
    after = {k: flattens(a.account, k) for k in ("flattened", "incomplete", "refused")}
    assert {k: after[k] - before[k] for k in after} == {
        "flattened": 1,
        "incomplete": 0,
        "refused": 1,
    }
    assert [(p.symbol, p.qty) for p in a.book.positions(a.account)] == [("AAPL", D(10))]
    assert a.book.close_alls == 1
