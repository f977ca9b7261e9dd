"""The paper broker's books under test: a book on a clock that ticks at each
read, and the journal tests' book on a clock the test sets."""

from __future__ import annotations

import itertools
from decimal import Decimal

from services.paper_broker.domain.book import BookConfig, PaperBook, TradeUpdate
from services.paper_broker.domain.fill_model import FillModelConfig

D = Decimal


class Ticks:
    def __init__(self) -> None:
        self.t = 1_000

    def now_ns(self) -> int:
        self.t += 1
        return self.t


def book(**kwargs: object) -> PaperBook:
    counter = itertools.count(1)
    config = BookConfig(**kwargs)  # type: ignore[arg-type]
    return PaperBook(config, clock=Ticks(), ids=lambda: f"id-{next(counter)}")


def events(updates: list[TradeUpdate]) -> list[str]:
    return [u.event for u in updates]


#: The journal tests' book: fills of at most 7 with 3 bps of slippage, one
#: halted symbol.
JOURNAL_CONFIG = BookConfig(
    fill_model=FillModelConfig(max_fill_quantity=D(7), slippage_bps=D(3)),
    halted_symbols=frozenset({"HALT"}),
)


class Clock:
    """The time the test sets (``t``), the same at every read."""

    def __init__(self, t: int = 1_700_000_000 * 10**9) -> None:
        self.t = t

    def now_ns(self) -> int:
        return self.t


def new_book(clock: Clock) -> PaperBook:
    """A book on JOURNAL_CONFIG and ``clock``, its ids i0, i1, ... (a
    compaction's subprocess builds the same one)."""
    ids = itertools.count()
    return PaperBook(JOURNAL_CONFIG, clock=clock, ids=lambda: f"i{next(ids)}")
