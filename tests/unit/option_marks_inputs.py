"""What the tests of option marks (test_option_marks_*) start from: the
contracts, the policies (``POLICY``, and ``STANDING`` with re-marks), quotes
at a time of the test's choosing, and the marks due at a time."""

from __future__ import annotations

from decimal import Decimal
from itertools import count
from typing import Literal

from libs.contract.events import MarkUpdated, QuotePayload, QuoteUpdated
from services.marketdata.domain.marks import MarkPolicy, OptionMarks

D = Decimal
MS = 1_000_000
S = 1_000_000_000
T0 = 1_773_154_800 * S
OPTION = "O:SPY241220P00720000"
OTHER = "O:SPY241220C00600000"
POLICY = MarkPolicy(min_interval_ns=S, min_change=D("0.01"), refresh_ns=30 * S)
#: POLICY with standing quotes re-marked every refresh, for 90 s at most.
STANDING = MarkPolicy(
    min_interval_ns=S, min_change=D("0.01"), refresh_ns=30 * S, max_standing_ns=90 * S
)
_seq = count(1)


class At:
    """A clock stopped at ``ns``."""

    def __init__(self, ns: int) -> None:
        self.ns = ns

    def now_ns(self) -> int:
        return self.ns


def quote(
    symbol: str,
    bid: str,
    ask: str,
    t: int = T0,
    *,
    bid_size: str = "5",
    ask_size: str = "7",
    seen: int | None = None,
    feed: Literal["polygon", "synthetic"] = "polygon",
) -> QuoteUpdated:
    """A quote at exchange time ``t``, made (``ts_init``) at ``seen`` (``t`` + 1 ms)."""
    event = QuoteUpdated.create(
        QuotePayload(
            symbol=symbol,
            bid_price=D(bid),
            bid_size=D(bid_size),
            ask_price=D(ask),
            ask_size=D(ask_size),
            sequence=next(_seq),
            feed=feed,
        ),
        source="marketdata/test",
        clock=At(seen if seen is not None else t + MS),
        ts_event=t,
    )
    return event


def due(marks: OptionMarks, now: int) -> list[MarkUpdated]:
    """The marks that fall due at ``now``."""
    made = marks.due(now).events
    assert all(isinstance(m, MarkUpdated) for m in made)
    return [m for m in made if isinstance(m, MarkUpdated)]
