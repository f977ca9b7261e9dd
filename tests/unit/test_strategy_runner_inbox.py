"""The runner's bounded inbox: overflow is handled on purpose and counted."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from decimal import Decimal
from pathlib import Path

import pytest
from typer.testing import CliRunner

from libs.contract.envelope import Event
from libs.contract.events import BarClosed, FillReceived, OrderIntentCreated
from libs.strategy.base import Bar, Strategy, StrategyParams
from libs.strategy.runtime import InMemoryRuntime
from libs.strategy.spec import LoadedStrategy, StrategySpec
from libs.strategy.testing import EchoStrategy, bar, fill_chain
from libs.testing.wait import eventually
from services.cli import app
from services.strategy_runner.inbox import Inbox, Item, OverflowAction
from services.strategy_runner.runner import StrategyTask

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


#: The bars the strategies below were called with, in the order called.
SEEN: list[str] = []


class Watcher(Strategy[StrategyParams]):
    """Notes each bar it is shown; emits nothing (as most bars go)."""

    def on_bar(self, bar: Bar) -> None:
        SEEN.append(f"{self.ctx.name} {bar.close}")


async def test_one_strategy_s_backlog_does_not_hold_the_others_events_back() -> None:
    # A batch leaves 50 bars in busy's inbox and one in quick's. Each task must
    # let the others run between two events: taken all at once (its inbox never
    # empty, so no await suspends), busy's backlog held quick's bar, an exit
    # perhaps, until busy was through it, however long that took.
    SEEN.clear()
    runtime = InMemoryRuntime()
    tasks = []
    for name, symbol in (("busy", "AAPL"), ("quick", "MSFT")):
        spec = StrategySpec(name=name, kind="watcher", symbols=(symbol,), account="paper")
        loaded = LoadedStrategy(spec, Watcher, StrategyParams())
        tasks.append(StrategyTask(loaded, runtime.add_loaded(loaded), runtime))
    busy, quick = tasks
    for close in range(1, 51):
        await busy.inbox.put(Item(bar("AAPL", close, close * 60_000_000_000)))
    await quick.inbox.put(Item(bar("MSFT", 7, 60_000_000_000)))
    for task in tasks:
        task.inbox.close()

    async def publish(events: list[Event]) -> None:
        pass

    await asyncio.gather(*(task.run(publish) for task in tasks))
    assert len(SEEN) == 51
    assert SEEN.index("quick 7") < SEEN.index("busy 3")


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
