"""The strategy watchdog: a callback past its budget is stopped, nothing else is.

These run the real thing: the watchdog's thread, SIGUSR2 and the handler in
this (the main) thread. Each runaway callback below would end by itself
after RUNAWAY_S and say so: the tests check it did not get that far.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from decimal import Decimal

import pytest

from libs.contract.events import SignalGenerated, StrategyFaulted
from libs.strategy import Bar, InMemoryRuntime, Strategy, StrategyParams
from libs.strategy.testing import EchoStrategy, bar
from libs.strategy.watchdog import SIGNAL, CallbackOverrun, Watchdog

#: How long a runaway callback would run if nothing stopped it.
RUNAWAY_S = 10.0
BUDGET_S = 0.2


@pytest.fixture
def watchdog() -> Iterator[Watchdog]:
    with Watchdog(tick_s=0.02) as w:
        yield w


class Runaway:
    """A loop that does some work per turn, as a buggy strategy's would."""

    def __init__(self) -> None:
        self.turns = 0
        self.finished = False

    def __call__(self) -> None:
        end = time.monotonic() + RUNAWAY_S
        while time.monotonic() < end:
            self.turns += 1
        self.finished = True


def test_a_callback_past_its_budget_is_stopped(watchdog: Watchdog) -> None:
    loop = Runaway()
    with pytest.raises(CallbackOverrun) as stopped:
        watchdog.run(loop, BUDGET_S)
    assert str(stopped.value) == "the callback ran past its budget of 0.2s"
    assert loop.turns > 0
    assert not loop.finished
    assert watchdog.overruns == 1


def test_a_blocking_sleep_is_stopped(watchdog: Watchdog) -> None:
    finished = []

    def sleeper() -> None:
        time.sleep(RUNAWAY_S)
        finished.append(True)

    with pytest.raises(CallbackOverrun):
        watchdog.run(sleeper, BUDGET_S)
    assert finished == []


def test_except_exception_in_the_strategy_does_not_swallow_it(watchdog: Watchdog) -> None:
    caught: list[BaseException] = []
    loop = Runaway()

    def stubborn() -> None:
        try:
            loop()
        except Exception as e:  # what a careless strategy writes
            caught.append(e)

    with pytest.raises(CallbackOverrun):
        watchdog.run(stubborn, BUDGET_S)
    assert caught == []
    assert not loop.finished


def test_a_swallowed_overrun_comes_again_after_another_budget(watchdog: Watchdog) -> None:
    swallowed = 0

    def obstinate() -> None:
        nonlocal swallowed
        end = time.monotonic() + RUNAWAY_S
        while time.monotonic() < end:
            try:
                Runaway()()
            except CallbackOverrun:
                swallowed += 1
                if swallowed == 2:
                    raise

    with pytest.raises(CallbackOverrun):
        watchdog.run(obstinate, BUDGET_S)
    assert swallowed == 2
    assert watchdog.overruns == 2


def test_callbacks_within_budget_and_code_outside_them_are_left_alone(
    watchdog: Watchdog,
) -> None:
    turns = 0

    def short() -> None:
        nonlocal turns
        end = time.monotonic() + BUDGET_S / 4
        while time.monotonic() < end:
            turns += 1

    for _ in range(3):
        watchdog.run(short, BUDGET_S)
    # Busy outside any callback for several budgets: nothing is raised here.
    end = time.monotonic() + 3 * BUDGET_S
    while time.monotonic() < end:
        turns += 1
    assert turns > 0
    assert watchdog.overruns == 0


def test_extend_gives_each_part_of_a_long_callback_its_own_budget(watchdog: Watchdog) -> None:
    parts = 0

    def warm_up() -> None:
        nonlocal parts
        for _ in range(4):  # 4 x 0.6 budgets in all: more than one budget
            watchdog.extend()
            end = time.monotonic() + BUDGET_S * 0.6
            while time.monotonic() < end:
                pass
            parts += 1

    watchdog.run(warm_up, BUDGET_S)
    assert parts == 4
    assert watchdog.overruns == 0


def test_without_a_budget_or_before_start_it_just_calls() -> None:
    called = []
    idle = Watchdog()
    idle.run(lambda: called.append(1), BUDGET_S)
    with Watchdog() as w:
        w.run(lambda: called.append(2), None)
    assert called == [1, 2]


def test_close_puts_the_previous_handler_back() -> None:
    before = signal.getsignal(SIGNAL)
    w = Watchdog().start()
    assert signal.getsignal(SIGNAL) != before
    w.close()
    assert signal.getsignal(SIGNAL) == before


def test_it_refuses_to_start_outside_the_main_thread() -> None:
    errors: list[BaseException] = []

    def start() -> None:
        try:
            Watchdog().start()
        except RuntimeError as e:
            errors.append(e)

    t = threading.Thread(target=start)
    t.start()
    t.join()
    assert [str(e) for e in errors] == ["the watchdog must be started in the main thread"]


# ------------------------------------------------------------ in the host


class Spinner(StrategyParams):
    warmup: int = 0


class SlowWarmUp(Strategy[Spinner]):
    """Warms up on every past bar slowly: a long start, but no overrun."""

    @classmethod
    def warmup_bars(cls, params: Spinner) -> int:
        return params.warmup

    def on_warmup(self, bar: Bar) -> None:
        end = time.monotonic() + BUDGET_S * 0.6
        while time.monotonic() < end:
            pass

    def on_bar(self, bar: Bar) -> None:
        self.ctx.signal(bar.symbol, "slow", "long", reason="a bar")


def test_a_hanging_strategy_is_a_fault_and_the_others_keep_trading(watchdog: Watchdog) -> None:
    rt = InMemoryRuntime(watchdog=watchdog)
    rt.add(
        "hang",
        EchoStrategy,
        {"hang_on_close": ["13"]},
        symbols=("MSFT",),
        restart="always",
        max_restarts=1,
        max_callback_s=BUDGET_S,
    )
    rt.add("echo", EchoStrategy, symbols=("MSFT",), max_callback_s=BUDGET_S)
    rt.start()

    out = rt.feed(bar("MSFT", 13, 0))
    (fault,) = [e for e in out if isinstance(e, StrategyFaulted)]
    assert fault.payload.strategy == "hang"
    assert fault.payload.action == "restarted"
    assert fault.payload.error == "CallbackOverrun: the callback ran past its budget of 0.2s"
    # All or nothing: the signal and intent it emitted before hanging are dropped;
    # the other strategy answered the same bar.
    assert [e.payload.strategy for e in out if isinstance(e, SignalGenerated)] == ["echo"]

    # The fresh instance trades; hanging again stops it for good.
    calm = rt.feed(bar("MSFT", 12, 60_000_000_000))
    assert sorted(e.payload.strategy for e in calm if isinstance(e, SignalGenerated)) == [
        "echo",
        "hang",
    ]
    again = rt.feed(bar("MSFT", 13, 120_000_000_000))
    assert [e.payload.action for e in again if isinstance(e, StrategyFaulted)] == ["stopped"]
    assert rt.hosts["hang"].state == "stopped"
    assert rt.hosts["echo"].running
    assert watchdog.overruns == 2


def test_a_warm_up_longer_than_one_budget_is_not_an_overrun(watchdog: Watchdog) -> None:
    rt = InMemoryRuntime(watchdog=watchdog)
    host = rt.add("slow", SlowWarmUp, {"warmup": 3}, symbols=("AAPL",), max_callback_s=BUDGET_S)
    host.remember(bar("AAPL", Decimal(10 + i), i * 60_000_000_000) for i in range(3))
    assert rt.start() == []
    assert host.running
    out = rt.feed(bar("AAPL", 20, 300_000_000_000))
    assert [type(e).__name__ for e in out] == ["SignalGenerated"]
    assert watchdog.overruns == 0


def test_the_in_memory_runtime_without_a_watchdog_has_no_limit() -> None:
    rt = InMemoryRuntime()
    host = rt.add("slow", SlowWarmUp, {"warmup": 1}, symbols=("AAPL",), max_callback_s=0.001)
    host.remember([bar("AAPL", 10, 0)])
    assert rt.start() == []
    assert host.running
