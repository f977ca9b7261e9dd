"""``tradebus up``: it warns of a strategy that would see no bar from the demo feed, and
refuses a bad config before it starts anything."""

from __future__ import annotations

import io
import re
from pathlib import Path

from services.stack.up import UpOptions, run_up
from services.stack.wiring import CONFIG_DIR, DEFAULT_CHANNELS, bar_interval_warnings

ENTRY = """
  - name: {name}
    kind: sma_crossover
    symbols: [AAPL]
    account: paper
    {interval}
    params: {{fast_period: 2, slow_period: 3, quantity: 10}}
"""


def strategies(tmp_path: Path, **intervals: str) -> Path:
    path = tmp_path / "strategies.yaml"
    path.write_text(
        "strategies:" + "".join(ENTRY.format(name=n, interval=iv) for n, iv in intervals.items())
    )
    return path


def test_the_deployed_strategies_take_the_demo_feeds_bars() -> None:
    assert bar_interval_warnings(CONFIG_DIR / "strategies.yaml", DEFAULT_CHANNELS) == []


def test_a_minute_strategy_on_the_second_bar_feed_is_named_with_its_fixes(
    tmp_path: Path,
) -> None:
    path = strategies(tmp_path, minute="", second="bar_interval: 1s", every="bar_interval: null")
    assert bar_interval_warnings(path, DEFAULT_CHANNELS) == [
        "strategy minute takes 1m bars (bar_interval), but the demo feed publishes 1s bars "
        "(TRADEBUS_CHANNELS=trades,quotes,second_bars): it will see no bar. Give it "
        "bar_interval: 1s or minute_bars in TRADEBUS_CHANNELS"
    ]
    assert bar_interval_warnings(path, "trades,quotes,second_bars,minute_bars") == []


def test_a_feed_without_bars(tmp_path: Path) -> None:
    (warning,) = bar_interval_warnings(strategies(tmp_path, s="bar_interval: 1s"), "trades")
    assert "the demo feed publishes no bars (TRADEBUS_CHANNELS=trades)" in warning
    assert warning.endswith("Give it second_bars in TRADEBUS_CHANNELS")


def test_up_refuses_a_bad_strategies_file_as_the_runner_does(tmp_path: Path) -> None:
    path = strategies(tmp_path, s="bar_interval: 1s")
    path.write_text(path.read_text().replace("sma_crossover", "sma_crosover"))
    out = io.StringIO()
    code = run_up(UpOptions(home=tmp_path / "home", strategies=path), out)
    assert code == 1
    text = re.sub(r"(?m)^up +\| ", "", out.getvalue())
    assert f"!!! {path} is invalid:\n  strategies[0].kind: " in text
    assert "sma_crosover" in text
    assert "Traceback" not in text
    assert not (tmp_path / "home" / "stack.json").exists()  # nothing was started
