"""Stale-feed detection (pure domain) and the exchange-calendar adapter."""

from __future__ import annotations

import datetime as dt

import pytest

from libs.config import ConfigError
from services.marketdata.adapters.polygon.hours import ExchangeHours
from services.marketdata.domain.staleness import AlwaysOpen, StaleMonitor

S = 1_000_000_000


class Schedule:
    """Open in [open_ns, close_ns)."""

    def __init__(self, open_ns: int, close_ns: int) -> None:
        self.open_ns, self.close_ns = open_ns, close_ns

    def is_open(self, ts_ns: int) -> bool:
        return self.open_ns <= ts_ns < self.close_ns


def test_stale_once_after_the_threshold_then_recovered_on_data() -> None:
    m = StaleMonitor(30 * S, AlwaysOpen(), now_ns=0)
    assert m.check(29 * S) is None
    assert m.check(30 * S) == "stale"
    assert m.stale
    assert "30.0s" in m.reason
    assert m.check(60 * S) is None  # reported once
    assert m.on_data(61 * S) == "recovered"
    assert not m.stale
    assert m.check(90 * S) is None
    assert m.check(91 * S) == "stale"


def test_data_keeps_it_fresh() -> None:
    m = StaleMonitor(10 * S, AlwaysOpen(), now_ns=0)
    for t in range(0, 100, 5):
        assert m.on_data(t * S) is None
        assert m.check(t * S + 9 * S) is None


def test_silence_out_of_market_hours_is_not_stale() -> None:
    m = StaleMonitor(10 * S, Schedule(1000 * S, 2000 * S), now_ns=0)
    assert m.check(500 * S) is None  # closed
    # At the open, the silence of the night does not count.
    assert m.check(1000 * S) is None
    assert m.check(1009 * S) is None
    assert m.check(1010 * S) == "stale"
    # The close ends staleness.
    assert m.check(2000 * S) == "recovered"
    assert m.reason == "market closed"
    assert m.check(3000 * S) is None


def test_threshold_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        StaleMonitor(0, AlwaysOpen(), now_ns=0)


def ns(text: str) -> int:
    return int(dt.datetime.fromisoformat(text).timestamp() * 1e9)


def test_exchange_calendar_hours() -> None:
    nyse = ExchangeHours("XNYS")
    assert nyse.is_open(ns("2024-03-15T14:00:00+00:00"))  # Friday 10:00 New York
    assert not nyse.is_open(ns("2024-03-15T13:00:00+00:00"))  # 09:00, before the open
    assert not nyse.is_open(ns("2024-03-16T15:00:00+00:00"))  # Saturday
    assert not nyse.is_open(ns("2024-12-25T15:00:00+00:00"))  # Christmas
    assert ExchangeHours("24/7").is_open(ns("2024-03-16T03:00:00+00:00"))
    with pytest.raises(ConfigError, match="TRADEBUS_CALENDAR"):
        ExchangeHours("NOT-A-CALENDAR")


@pytest.mark.parametrize(
    ("value", "says"),
    [("inf", "less than or equal to 86400"), ("1e-12", "less than a nanosecond")],
)
def test_a_stale_after_the_monitor_cannot_take_is_refused_with_the_settings(
    monkeypatch: pytest.MonkeyPatch, value: str, says: str
) -> None:
    from libs.config import load_settings
    from services.marketdata.config import MarketdataSettings

    # Accepted until this: the Polygon source, once connected, died of an
    # OverflowError (inf) or StaleMonitor's ValueError (0 ns), a traceback.
    monkeypatch.setenv("TRADEBUS_STALE_AFTER_S", value)
    with pytest.raises(ConfigError, match=f"TRADEBUS_STALE_AFTER_S: .*{says}"):
        load_settings(MarketdataSettings)
    monkeypatch.setenv("TRADEBUS_STALE_AFTER_S", "1e-9")
    stale_after_ns = int(load_settings(MarketdataSettings).stale_after_s * 1e9)
    assert StaleMonitor(stale_after_ns, AlwaysOpen(), now_ns=0).stale_after_ns == 1
