"""bench/marketdata.py's stream with option quotes: what the marks round is
fed, and what it counts as the feed's records."""

from __future__ import annotations

import importlib.util
import sys
from itertools import pairwise
from pathlib import Path
from typing import Any

from libs.contract.envelope import Event, WallClock
from libs.contract.events import FeedStatusChanged, MarkUpdated, QuoteUpdated, TradePrinted
from services.marketdata.adapters.polygon.parse import FrameParser
from services.marketdata.config import MarketdataSettings
from services.marketdata.domain.marks import OptionMarks


def _load_bench() -> Any:
    """bench/marketdata.py, a script among scripts (they import each other as
    top-level modules, so bench/ is no package): loaded from its file."""
    path = Path(__file__).resolve().parents[2] / "bench" / "marketdata.py"
    spec = importlib.util.spec_from_file_location("bench_marketdata", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


bench = _load_bench()
OPTIONS, is_record, make_frames, mark_policy = (
    bench.OPTIONS,
    bench.is_record,
    bench.make_frames,
    bench.mark_policy,
)


def parsed(frames: list[str]) -> list[Event]:
    parser = FrameParser(source="marketdata/bench", clock=WallClock())
    return [e for f in frames for e in parser.parse(f).events]


def test_a_share_of_the_quotes_is_of_option_contracts_spread_evenly() -> None:
    events = parsed(make_frames(4000, 50, option_share=0.25))
    assert len(events) == 4000
    quotes = [e for e in events if isinstance(e, QuoteUpdated)]
    trades = [e for e in events if isinstance(e, TradePrinted)]
    assert (len(quotes), len(trades)) == (2000, 2000)
    options = [i for i, q in enumerate(quotes) if q.payload.symbol.startswith("O:")]
    assert len(options) == 500
    assert {quotes[i].payload.symbol for i in options} == set(OPTIONS)
    assert {b - a for a, b in pairwise(options)} == {4}
    assert len({e.id for e in events}) == 4000, "every record its own id"
    assert not any(
        q.payload.symbol.startswith("O:")
        for q in parsed(make_frames(400, 50))
        if isinstance(q, QuoteUpdated)
    ), "no share, no options (the stream as before)"


def test_every_option_quote_makes_a_mark_when_marking_every_quote() -> None:
    """The option quotes move their midpoint and are two-sided and narrow, so
    --mark-every-quote marks each: the most marks can cost."""
    events = parsed(make_frames(4000, 50, option_share=0.25))
    marked = OptionMarks(mark_policy(every_quote=True)).with_marks(events)
    assert (marked.marks, dict(marked.skipped)) == (500, {})
    assert mark_policy(every_quote=False) == MarketdataSettings().mark_policy()


def test_marks_and_statuses_are_not_records() -> None:
    events = parsed(make_frames(40, 10, option_share=0.5))
    marked = OptionMarks(mark_policy(every_quote=True)).with_marks(events).events
    assert sum(isinstance(e, MarkUpdated) for e in marked) == 10
    assert sum(is_record(e) for e in marked) == 40
    status = FeedStatusChanged.model_validate(
        {
            "id": "00000000-0000-0000-0000-000000000001",
            "ts_event": 1,
            "ts_init": 1,
            "source": "marketdata/bench",
            "correlation_id": "00000000-0000-0000-0000-000000000001",
            "payload": {"feed": "polygon", "status": "connected"},
        }
    )
    assert not is_record(status)
