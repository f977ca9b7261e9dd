"""The paper broker's ledger with prices: each symbol's newest print by the
market's time, and the option positions settled at expiry against it.

:class:`PricedLedger` is a :class:`~services.paper_broker.domain.ledger.Ledger`
with a clock, an id factory and each symbol's newest print; it makes the
:class:`Settlement` of an option position at its contract's expiry
(:meth:`PricedLedger.settle_expired`, the rule in ``settlement.py``).
:class:`~services.paper_broker.domain.book.PaperBook` is one that also
trades (``book.py``). Pure and synchronous: time from the injected clock.
"""

from __future__ import annotations

import datetime as dt
import heapq
from collections.abc import Callable
from decimal import Decimal

from libs.contract.envelope import Clock
from libs.contract.options import parse_option
from services.paper_broker.domain.ledger import Ledger
from services.paper_broker.domain.model import BookConfig, Settlement
from services.paper_broker.domain.settlement import settle

#: A position whose underlying has no price at all is settled (expired
#: worthless) only this long after its expiry, or after the broker started,
#: whichever is later: at start-up the feed brings each symbol's last price
#: a moment after the journal's positions are in.
NO_PRICE_WAIT_NS = 300 * 1_000_000_000


class PricedLedger(Ledger):
    """Every account's orders and positions (its :class:`Ledger`), and the
    newest price of each symbol, against which option positions are settled
    at expiry (see the module's docstring)."""

    def __init__(self, config: BookConfig, *, clock: Clock, ids: Callable[[], str]) -> None:
        super().__init__(config)
        self.clock = clock
        self.ids = ids
        # Each symbol's newest print by its own time (a trade's, a bar's end;
        # at the same time the later to arrive) and that time: the price a
        # market order fills at and a position is valued at, what stands for
        # a closing auction and prices an expired contract's underlying (see
        # _newest_print). Not the last to arrive: a print reported late,
        # older than one before it, is not the market's price. Its time is
        # the latest trade time or bar end seen of the symbol (an order's
        # placed_at_market_ns): _print keeps the greatest.
        self._newest: dict[str, tuple[Decimal, int]] = {}
        self._started_ns = clock.now_ns()
        # The settlements (entries of _settlements) waiting for a first print
        # of their underlying, by underlying, and (end of wait, underlying,
        # entry) of each, the soonest first. Only such a print (_print) or
        # the end of its wait can change what a waiting entry comes to, so
        # it is out of _settlements till then: settle_expired, run before
        # every request, does not pop and parse it again on every call. An
        # entry released by a print leaves its end of wait behind here, to
        # be skipped; a root with a print never has one waiting again.
        self._no_price: dict[str, set[tuple[int, str, str]]] = {}
        self._no_price_ends: list[tuple[int, str, tuple[int, str, str]]] = []

    # ------------------------------------------------------------- queries

    def last_price(self, symbol: str) -> Decimal | None:
        """``symbol``'s price now: its newest print by the market's time (not
        a trade reported late, older than one before it); None: none yet."""
        return self._newest_print(symbol)[0]

    def settle_expired(self, market_ns: int = 0) -> list[Settlement]:
        """Settle every position in an option contract whose expiry day has
        closed: by the broker's clock, or by the market's (``market_ns``, the
        time of a price about to be taken in: one stamped after the close is
        settled before, so the underlying's price it is settled at is its
        last at or before the close). Soonest expiry first.

        The underlying's price is its newest by the market's time the book
        holds (not the last to arrive: a print reported late, older than one
        before it, is not the close's): at or before the close, unless the
        book has seen none of it since before the close (a broker started
        after it: then the newest it has). With no price of
        the underlying at all, the settlement waits for one, up to
        :data:`NO_PRICE_WAIT_NS` past the expiry or the broker's start
        (prices come a moment after the journal at start-up), then the
        contract expires worthless and its activity says why: nothing tells
        the broker it was in the money, and a position kept for ever would
        block every close-all of the account and the gate's caps."""
        now = self.clock.now_ns()
        due_at = max(now, market_ns)
        pending = self._settlements
        ends = self._no_price_ends
        while ends and ends[0][0] <= now:
            _, root, item = heapq.heappop(ends)
            parked = self._no_price.get(root)
            if parked is not None and item in parked:
                parked.discard(item)
                if not parked:
                    del self._no_price[root]
                heapq.heappush(pending, item)  # its expiry is past: taken below
        out: list[Settlement] = []
        while pending and pending[0][0] <= due_at:
            item = heapq.heappop(pending)
            expiry, account, symbol = item
            position = self._account(account).positions.get(symbol)
            if position is None:
                continue  # closed before its expiry (or settled: an entry per opening)
            contract = parse_option(symbol)
            underlying, _ = self._newest_print(contract.root)
            note = ""
            if underlying is None:
                ends_ns = max(expiry, self._started_ns) + NO_PRICE_WAIT_NS
                if now < ends_ns:
                    self._no_price.setdefault(contract.root, set()).add(item)
                    heapq.heappush(self._no_price_ends, (ends_ns, contract.root, item))
                    continue
                note = f"no price of {contract.root} known to the paper broker"
            activities = settle(
                account=account,
                symbol=symbol,
                contract=contract,
                position_qty=position.qty,
                underlying=underlying,
                now_ns=now,
                ids=self._activity_id,
                note=note,
            )
            settlement = Settlement(account, symbol, activities)
            self.apply_settlement(settlement)
            out.append(settlement)
        return out

    def _activity_id(self) -> str:
        # Alpaca's activity ids: the time (UTC) to the millisecond, "::", a
        # uuid. In whole seconds and nanoseconds: seconds as a float rounded
        # a time a nanosecond before a millisecond (or midnight) up to it.
        seconds, rest = divmod(self.clock.now_ns(), 1_000_000_000)
        at = dt.datetime.fromtimestamp(seconds, dt.UTC)
        return f"{at:%Y%m%d%H%M%S}{rest // 1_000_000:03d}::{self.ids()}"

    # ------------------------------------------------------------- helpers

    def _print(self, symbol: str, price: Decimal, ts_ns: int) -> None:
        """``price`` of ``ts_ns`` is ``symbol``'s newest print unless one
        newer by the market's time came before it (a late-reported trade)."""
        newest = self._newest.get(symbol)
        if newest is None or ts_ns >= newest[1]:
            self._newest[symbol] = (price, ts_ns)
        for item in self._no_price.pop(symbol, ()):
            heapq.heappush(self._settlements, item)  # settled by the next settle_expired

    def _newest_print(self, symbol: str) -> tuple[Decimal | None, int]:
        """``symbol``'s newest print by the market's time and that time
        ((None, 0): none yet): its last price (:meth:`last_price`), a closing
        auction's price once the session has closed, and the underlying's
        price an expired contract is settled at. The last to arrive and the
        latest time seen belonged to two prints after a late one: the close
        took a trade stamped 15:30, or before the open, that Polygon reported
        after the 15:59:59 one, and a market order filled at it."""
        newest = self._newest.get(symbol)
        return (None, 0) if newest is None else newest
