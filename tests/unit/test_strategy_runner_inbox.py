"""The runner's bounded inbox: overflow is handled on purpose and counted."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from decimal import Decimal
from pathlib import Path

import pytest
from typer.testing import CliRunner

from libs.contract.events import BarClosed, FillReceived, OrderIntentCreated
from libs.strategy.runtime import InMemoryRuntime
from libs.strategy.testing import EchoStrategy, bar, fill_chain
from libs.testing.wait import eventually
from services.cli import app
from services.strategy_runner.inbox import Inbox, Item, OverflowAction

IDS = itertools.count(1)


def fill() -> FillReceived:
    rt = InMemoryRuntime()
    rt.add("echo", EchoStrategy, symbols=("AAPL",))
    intent = next(e for e in rt.run([bar("AAPL", 1, 0)]) if isinstance(e, OrderIntentCreated))
    chain = fill_chain(intent, 1, ids=lambda: uuid.UUID(int=next(IDS)))
    last = chain[-1]
    assert isinstance(last, FillReceived)
    return last


def close_of(item: Item | None) -> Decimal | None:
    if item is None:
        return None
    assert isinstance(item.event, BarClosed)
    return item.event.payload.close


def md(close: int) -> Item:
    return Item(bar("AAPL", close, close * 60_000_000_000))


async def test_drop_oldest_drops_market_data_never_fills() -> None:
    actions: list[OverflowAction] = []
    inbox = Inbox(3, "drop_oldest", actions.append)
    f = Item(fill())
    for item in (md(1), f, md(2)):
        await inbox.put(item)
    await inbox.put(md(3))  # full: bar 1 goes
    await inbox.put(md(4))  # full: bar 2 goes (the fill stays)
    assert actions == ["dropped", "dropped"]
    inbox.close()
    got: list[Item] = []
    while (next_item := await inbox.get()) is not None:
        got.append(next_item)
    assert got[0] is f
    assert [close_of(i) for i in got[1:]] == [Decimal(3), Decimal(4)]


async def test_drop_oldest_waits_when_only_fills_are_queued() -> None:
    actions: list[OverflowAction] = []
    inbox = Inbox(1, "drop_oldest", actions.append)
    await inbox.put(Item(fill()))
    put = asyncio.create_task(inbox.put(md(1)))
    await eventually(lambda: actions == ["waited"], timeout=2)
    assert not put.done()
    first = await inbox.get()
    assert first is not None
    assert isinstance(first.event, FillReceived)
    await eventually(put.done, timeout=2)
    assert len(inbox) == 1


async def test_block_waits_for_room_and_counts_each_put_once() -> None:
    actions: list[OverflowAction] = []
    inbox = Inbox(2, "block", actions.append)
    await inbox.put(md(1))
    await inbox.put(md(2))
    put = asyncio.create_task(inbox.put(md(3)))
    await eventually(lambda: actions == ["waited"], timeout=2)
    assert not put.done()
    await inbox.get()
    await eventually(put.done, timeout=2)
    assert actions == ["waited"]
    inbox.close()
    rest = [await inbox.get(), await inbox.get(), await inbox.get()]
    assert [close_of(i) for i in rest] == [2, 3, None]
    with pytest.raises(RuntimeError, match="closed"):
        await inbox.put(md(4))


def test_cli_refuses_a_bad_file_naming_the_key(tmp_path: Path) -> None:
    bad = tmp_path / "strategies.yaml"
    bad.write_text(
        "strategies:\n"
        "  - {name: a, kind: sma_crossover, symbols: [AAPL], account: paper}\n"
        "  - {name: b, kind: sma_crossover, symbols: [AAPL], account: paper}\n"
        "  - name: c\n"
        "    kind: sma_crossover\n"
        "    symbols: [AAPL]\n"
        "    account: paper\n"
        "    params: {fast_period: 50, slow_period: 20}\n"
    )
    result = CliRunner().invoke(app, ["strategy-runner", "run", "--config", str(bad)])
    assert result.exit_code == 2
    assert "strategies[2].params.fast_period: must be < slow_period" in result.output
