"""The paper broker's ledger: what its journal rebuilds.

Every account's orders (by id and by client order id), positions, fill
activities and non-trade activities of option events; the working orders of
each symbol in time priority; and when each thing the book must act on is
due: a working order's expiry (a ``day`` order's close, an option contract's
expiry), an auction order's auction, an option position's settlement.
:meth:`Ledger.apply` (a trade update), :meth:`Ledger.apply_settlement` and
:meth:`Ledger.restore` (a snapshot's piece) are the only ways in, live and
when the journal is replayed; :meth:`Ledger.state` is the snapshot.
:class:`~services.paper_broker.domain.book.PaperBook` is a ledger that also
trades: it makes the updates and settlements (``book.py``).

Pure and synchronous: no clock, no ids, no market prices.
"""

from __future__ import annotations

import functools
import heapq
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, localcontext
from typing import Literal

from libs.contract.options import OPTION_PREFIX, parse_option
from libs.contract.sessions import Session
from services.paper_broker.domain.auction import AUCTION_WAIT_NS, AUCTIONS, session_for
from services.paper_broker.domain.auction import Session as AuctionSession
from services.paper_broker.domain.fill_model import WIDE, Side
from services.paper_broker.domain.model import (
    AccountPosition,
    BookConfig,
    DayOrderClose,
    FillActivity,
    JournalEntry,
    PaperOrder,
    Position,
    Restored,
    Settlement,
    TradeUpdate,
)
from services.paper_broker.domain.new_york import new_york, next_session, ns_at, regular_session
from services.paper_broker.domain.settlement import OptionActivity

#: Decimal places kept in an average fill or entry price.
AVG_QUANTUM = Decimal("1e-12")


def day_order_expiry_ns(created_ns: int, close: DayOrderClose) -> int:
    """When a ``day`` order placed at ``created_ns`` expires: at the close of
    the day's regular session (13:00 New York on a half day) for ``"close"``,
    at ``close`` (New York time) for a time, or at the session's close if
    that is earlier (a day order never outlives its session); on the day it
    was placed, or at the next session's if it was placed at or after that
    or on a day without a session (a weekend, a holiday)."""
    return _expiry_ns(created_ns // 1_000_000_000, close)


def _expiry_on(session: Session, close: DayOrderClose) -> int:
    if close == "close":
        return session.close_ns
    # To the whole second below, as orders' times are (_expiry_ns is cached
    # by the second): a configured 15:59:30.5 is 15:59:30.
    return min(ns_at(session.day, close.replace(microsecond=0)), session.close_ns)


@functools.lru_cache(maxsize=64)
def _expiry_ns(created_s: int, close: DayOrderClose) -> int:
    # Cached by the second: a submit does not pay for the time zone and the
    # calendar (a few microseconds) when orders come many a second.
    day = new_york(created_s).date()
    session = regular_session(day)
    if session is None or created_s * 1_000_000_000 >= _expiry_on(session, close):
        session = next_session(day)
    return _expiry_on(session, close)


@dataclass(slots=True)
class _Account:
    name: str
    orders: dict[str, PaperOrder] = field(default_factory=dict)  # by id, in creation order
    by_client_id: dict[str, str] = field(default_factory=dict)
    positions: dict[str, Position] = field(default_factory=dict)
    fills: list[FillActivity] = field(default_factory=list)
    #: Non-trade activities of option events (settlements), in the order they happened.
    activities: list[OptionActivity] = field(default_factory=list)


def average(old_avg: Decimal | None, old_qty: Decimal, price: Decimal, qty: Decimal) -> Decimal:
    if old_avg is None or old_qty == 0:
        return price
    with localcontext(WIDE):  # see fill_model.WIDE
        return ((old_avg * old_qty + price * qty) / (old_qty + qty)).quantize(AVG_QUANTUM)


def _created(order: PaperOrder) -> int:
    return order.created_at_ns


def signed(side: Side, qty: Decimal) -> Decimal:
    # copy_negate, not -qty: unary minus (as abs()) rounds to the default
    # context's 28 digits, and a sell of a longer quantity left a residue.
    return qty if side == "buy" else qty.copy_negate()


class Ledger:
    """Every account's orders, positions and activities, the working orders
    by symbol, and what is due when (see the module's docstring)."""

    def __init__(self, config: BookConfig) -> None:
        self.config = config
        self._accounts: dict[str, _Account] = {}
        # Working orders by symbol, (account, order id) in arrival order: a
        # market update looks at these only, not at every order ever placed.
        self._working_by_symbol: dict[str, dict[tuple[str, str], None]] = {}
        # (expiry ns, account, order id) of the day orders and the option
        # contracts' orders taken in open, the soonest first (see
        # expire_orders).
        self._expiries: list[tuple[int, str, str]] = []
        # (auction ns + AUCTION_WAIT_NS, account, order id) of the opg and cls
        # orders taken in open, the soonest first (see _auctions_past).
        self._auctions: list[tuple[int, str, str]] = []
        # (expiry ns, account, symbol) of the option positions taken in, the
        # soonest first (see settle_expired).
        self._settlements: list[tuple[int, str, str]] = []

    # ------------------------------------------------------------- queries

    def _account(self, account: str) -> _Account:
        acct = self._accounts.get(account)
        if acct is None:
            acct = self._accounts[account] = _Account(account)
        return acct

    def order(self, account: str, order_id: str) -> PaperOrder | None:
        return self._account(account).orders.get(order_id)

    def by_client_order_id(self, account: str, client_order_id: str) -> PaperOrder | None:
        acct = self._account(account)
        oid = acct.by_client_id.get(client_order_id)
        return acct.orders.get(oid) if oid is not None else None

    def orders(
        self, account: str, status: Literal["open", "closed", "all"] = "open"
    ) -> list[PaperOrder]:
        """Orders in creation order (``status=open`` the working ones)."""
        everything = self._account(account).orders.values()
        if status == "all":
            return list(everything)
        want_open = status == "open"
        return [o for o in everything if o.is_open == want_open]

    def positions(self, account: str) -> list[Position]:
        return sorted(self._account(account).positions.values(), key=lambda p: p.symbol)

    def qty_available(self, account: str, position: Position) -> Decimal:
        """What of ``position`` its open closing orders (sells of a long, buys
        of a short) do not hold, signed as the position: Alpaca's
        ``qty_available``, the count :meth:`close_all`'s refusal names."""
        side: Side = "sell" if position.qty > 0 else "buy"
        held = self._held_for_orders(account, position.symbol, side)
        free = max(WIDE.subtract(position.qty.copy_abs(), held), Decimal(0))
        return free.copy_negate() if position.qty < 0 and free else free

    def fills(self, account: str, order_id: str | None = None) -> Sequence[FillActivity]:
        """The account's fill activities in the order they happened (``order_id``'s
        only, if given). Without ``order_id`` the book's own list, not a copy
        (the server windows and pages it): read it before the book changes."""
        fills = self._account(account).fills
        if order_id is None:
            return fills
        return [f for f in fills if f.order_id == order_id]

    def activities(self, account: str) -> Sequence[OptionActivity]:
        """The account's non-trade activities of option events, in the order
        they happened: the book's own list (read it before the book changes)."""
        return self._account(account).activities

    def _held_for_orders(self, account: str, symbol: str, side: Side) -> Decimal:
        """What open orders on ``side`` of ``symbol`` hold of the account's position."""
        held = Decimal(0)
        for o in self._working_orders(symbol):
            if o.account == account and o.side == side:
                held = WIDE.add(held, o.remaining)  # sum() would round to 28 digits
        return held

    def _working_orders(self, symbol: str) -> list[PaperOrder]:
        """The working orders of ``symbol``, every account's, in the order they
        came (time priority). A list, not a view: filling one changes the index."""
        accounts = self._accounts
        return [accounts[a].orders[oid] for a, oid in self._working_by_symbol.get(symbol, ())]

    def _current(self, order: PaperOrder) -> PaperOrder:
        return self._account(order.account).orders[order.id]

    def count_orders(self) -> tuple[int, int]:
        """Orders held, and of them open (across accounts)."""
        held = sum(len(a.orders) for a in self._accounts.values())
        working = sum(len(w) for w in self._working_by_symbol.values())
        return held, working

    # ------------------------------------------------------------- changes

    def apply(self, update: TradeUpdate) -> None:
        """Take one update into the books (live, and when replaying the journal)."""
        order = update.order
        acct = self._put(order)
        if update.event not in ("fill", "partial_fill"):
            return
        assert update.qty is not None
        assert update.price is not None
        assert update.execution_id is not None
        self._book_position(acct, order, update.qty, update.price)
        acct.fills.append(
            FillActivity(
                id=update.execution_id,
                account=order.account,
                order_id=order.id,
                symbol=order.symbol,
                side=order.side,
                qty=update.qty,
                price=update.price,
                cum_qty=order.filled_qty,
                leaves_qty=order.remaining,
                ts_ns=update.ts_ns,
                order_status=order.status,
            )
        )

    def apply_settlement(self, settlement: Settlement) -> None:
        """Take a settlement into the books (live, and when replaying the
        journal): the contract's position goes, the underlying's takes the
        shares at the strike, and the activities are listed."""
        acct = self._account(settlement.account)
        for a in settlement.activities:
            if a.activity_type == "OPTRD":
                assert a.price is not None
                self._book(acct, a.symbol, "us_equity", a.qty, a.price)
            else:
                pos = acct.positions.get(a.symbol)
                if pos is not None:
                    self._book(acct, a.symbol, pos.asset_class, a.qty, pos.avg_entry_price)
            acct.activities.append(a)

    def take(self, entry: JournalEntry) -> None:
        """Take one journal entry in: a trade update, a settlement, or a piece
        of a snapshot."""
        if isinstance(entry, TradeUpdate):
            self.apply(entry)
        elif isinstance(entry, Settlement):
            self.apply_settlement(entry)
        else:
            self.restore(entry)

    def apply_all(self, entries: Iterable[JournalEntry]) -> int:
        """Take a journal's entries in (a snapshot's, then updates); their count."""
        count = 0
        for e in entries:
            self.take(e)
            count += 1
        return count

    # ------------------------------------------------------------ snapshot
    def state(self) -> Iterator[Restored]:
        """Everything a later start-up needs, as a journal's snapshot holds it:
        every account's positions as they stand (quantity and average entry
        price: not recomputed from fills, which may be forgotten; the book
        keeps no cash or realized P&L), then the orders (open ones with their
        fills so far and whether their stop was reached), then each account's
        fill activities in the order they happened, then their non-trade
        activities (settlements). :meth:`restore` of each, in this order, into an
        empty book gives this book back (its last prices aside: they are not
        journaled and come from the feed)."""
        for name, acct in self._accounts.items():
            for p in acct.positions.values():
                yield AccountPosition(name, p)
        # Orders of all accounts by creation, each account's in its own order:
        # the working orders of a symbol are then restored in the order they
        # came, which is the order they fill in (time priority). (Two
        # accounts' orders of the same nanosecond keep the accounts' order.)
        yield from heapq.merge(*(a.orders.values() for a in self._accounts.values()), key=_created)
        for acct in self._accounts.values():
            yield from acct.fills
        for acct in self._accounts.values():
            yield from acct.activities

    def restore(self, entry: Restored) -> None:
        """Take one piece of a snapshot (:meth:`state`) in, as it was.

        A fill activity whose order is not held is left out: the order was
        forgotten while the snapshot was being read (a replay forgets every
        so many entries, and the window has moved since the snapshot was
        written; its orders come before their fills), and
        :meth:`forget_finished`, which drops the fills of the orders it
        forgets, will not meet that order again."""
        if isinstance(entry, PaperOrder):
            self._put(entry)
        elif isinstance(entry, FillActivity):
            acct = self._account(entry.account)
            if entry.order_id in acct.orders:
                acct.fills.append(entry)
        elif isinstance(entry, OptionActivity):
            # Listed only: the positions it changed are restored as they stand.
            self._account(entry.account).activities.append(entry)
        else:
            p = entry.position
            self._account(entry.account).positions[p.symbol] = p
            self._await_expiry(entry.account, p.symbol)

    def forget_finished(self, before_ns: int) -> int:
        """Forget orders finished (filled, canceled, rejected) before
        ``before_ns`` (by their last change), with their fill activities;
        returns how many. Open orders, whatever their age, and positions are
        kept whole. A forgotten order is no longer listed or found, and its
        client order id may be used again. Non-trade activities (settlements)
        are kept, whatever their age: a gateway away longer than
        ``before_ns`` reads them from the day before the expiry of a contract
        it holds, and one forgotten was never booked (the position moved at
        the broker, not in tradebus). There is one per position held at an
        expiry, and Alpaca keeps them for good too."""
        forgotten = 0
        for acct in self._accounts.values():
            old = [o for o in acct.orders.values() if not o.is_open and o.updated_at_ns < before_ns]
            if not old:
                continue
            for o in old:
                del acct.orders[o.id]
                if acct.by_client_id.get(o.client_order_id) == o.id:
                    del acct.by_client_id[o.client_order_id]
            gone = {o.id for o in old}
            acct.fills = [f for f in acct.fills if f.order_id not in gone]
            forgotten += len(old)
        return forgotten

    # ------------------------------------------------------------- helpers

    def _put(self, order: PaperOrder) -> _Account:
        acct = self._account(order.account)
        if order.is_open and order.id not in acct.orders:
            expiry = self._expiry_ns(order)
            if expiry is not None:
                heapq.heappush(self._expiries, (expiry, order.account, order.id))
            if order.time_in_force in AUCTIONS:
                session = self._session(order)
                # No session (never for an order the book took): settle at once.
                due = 0 if session is None else session.auction_ns(order.time_in_force)
                heapq.heappush(self._auctions, (due + AUCTION_WAIT_NS, order.account, order.id))
        acct.orders[order.id] = order
        acct.by_client_id[order.client_order_id] = order.id
        working = self._working_by_symbol.setdefault(order.symbol, {})
        if order.is_open:
            working[(order.account, order.id)] = None
        else:
            working.pop((order.account, order.id), None)
        return acct

    def _expiry_ns(self, order: PaperOrder) -> int | None:
        """When ``order``, if still working, expires: a ``day`` order at its
        session's close, any order in an option contract at the contract's
        expiry (whichever comes first); None: never."""
        due: int | None = None
        close = self.config.day_orders_expire_at
        if close is not None and order.time_in_force == "day":
            due = day_order_expiry_ns(order.created_at_ns, close)
        if order.symbol.startswith(OPTION_PREFIX):
            try:
                contract = parse_option(order.symbol)
            except ValueError:
                # Taken before the contract refused such a symbol (an old
                # journal): no contract, so no expiry to keep.
                return due
            due = contract.expires_at_ns if due is None else min(due, contract.expires_at_ns)
        return due

    @staticmethod
    def _session(order: PaperOrder) -> AuctionSession | None:
        """The session whose auction an ``opg`` or ``cls`` order takes part in."""
        return session_for(order.created_at_ns, order.time_in_force)

    def _book_position(
        self, acct: _Account, order: PaperOrder, qty: Decimal, price: Decimal
    ) -> None:
        self._book(acct, order.symbol, order.asset_class, signed(order.side, qty), price)

    def _book(
        self, acct: _Account, symbol: str, asset_class: str, delta: Decimal, price: Decimal
    ) -> None:
        """Move ``symbol``'s position by ``delta`` (signed) at ``price``."""
        pos = acct.positions.get(symbol)
        old = pos.qty if pos else Decimal(0)
        new = WIDE.add(old, delta)
        if new == 0:
            acct.positions.pop(symbol, None)
            return
        if pos is None and symbol.startswith(OPTION_PREFIX):
            self._await_expiry(acct.name, symbol)
        if pos is None or old == 0 or (old > 0) == (delta > 0):
            avg = average(
                pos.avg_entry_price if pos else None, old.copy_abs(), price, delta.copy_abs()
            )
        elif (old > 0) != (new > 0):
            avg = price  # flipped through zero: the new side's entry is this fill
        else:
            avg = pos.avg_entry_price  # reduced: the entry price of what is left stays
        acct.positions[symbol] = Position(symbol, asset_class, new, avg)

    def _await_expiry(self, account: str, symbol: str) -> None:
        """Have a position just opened in ``symbol`` settled at its contract's
        expiry (an equity, or a symbol no contract names, never is)."""
        if not symbol.startswith(OPTION_PREFIX):
            return
        try:
            contract = parse_option(symbol)
        except ValueError:
            return  # taken before the contract refused such a symbol (an old journal)
        heapq.heappush(self._settlements, (contract.expires_at_ns, account, symbol))
