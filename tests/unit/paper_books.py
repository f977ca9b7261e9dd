"""The paper broker's books under test: a book on a clock that ticks at each read."""

from __future__ import annotations

import itertools
from decimal import Decimal

from services.paper_broker.domain.book import BookConfig, PaperBook, TradeUpdate

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
