"""The paper broker's books: orders, fills and positions per account.

Pure and synchronous: time comes from an injected clock, ids from an injected
factory. Every change is a :class:`TradeUpdate` (the facts the broker streams
to its clients: ``new``, ``fill``, ``partial_fill``, ``canceled``, plus
``triggered``, which is journaled but never sent), and :meth:`PaperBook.apply`
is the only place that changes state. An update
carries the order as it is *after* the change, so the journal of updates
replays into exactly the same books (:meth:`PaperBook.apply` again), without
the fill model.

Invariants:

- a client order id names at most one order per account: submitting it again
  is refused as Alpaca refuses it (422, code 40010001, "client_order_id must
  be unique") and changes nothing; a client that resubmits (the gateway, after
  a lost answer or a restart) reads the order back by its client order id;
- an order's ``filled_qty`` only grows, up to ``qty``; each fill's execution
  id is new;
- a refused order (bad fields, untradable symbol, an option contract past
  the close of its expiry day, too large) is never created:
  :class:`Refused` says why, as the broker's HTTP status and error code;
- an order for a *halted* symbol is accepted (``new``) and then ``rejected``
  by the venue, as an exchange rejects at routing: the asynchronous rejection
  a real broker's stream can bring;
- a ``day`` order still working at the close of the session it was placed
  for (``BookConfig.day_orders_expire_at``, New York time; placed after the
  close or on a weekend, the next weekday's) is ``expired``, as Alpaca
  expires it, before any later price can fill it. Holidays and early closes
  are not known;
- an order in an option contract still working at the close of the
  contract's expiry day (16:00 New York), whatever its time in force, is
  ``expired`` then, as a broker ends it, before any later price can fill it;
- an ``opg`` or ``cls`` order fills only at its auction, at the print that
  stands for it (``auction.py``), whole or not at all, and is ``expired``
  if that does not fill it;
- a *position* in an option contract is settled at the close of its
  contract's expiry day (a
  :class:`Settlement`, :meth:`PaperBook.settle_expired`): exercised or
  assigned into 100 shares of the underlying per contract at the strike if
  at least $0.01 in the money against the underlying's newest price by the
  market's time (not a late print older than it), else
  expired worthless (``domain/settlement.py``), and the account's non-trade
  activities say so. Like a trade update, a settlement is the only thing
  that changes the books it touches (:meth:`PaperBook.apply_settlement`),
  and the journal replays it.
"""

from __future__ import annotations

import datetime as dt
import functools
import heapq
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal, localcontext
from typing import Literal

from libs.contract.envelope import Clock
from libs.contract.options import OPTION_PREFIX, parse_option
from services.paper_broker.domain.auction import (
    AUCTION_WAIT_NS,
    AUCTIONS,
    Session,
    cancel_refusal,
    closing_print,
    opening_print,
    refusal,
    session_for,
)
from services.paper_broker.domain.fill_model import (
    WIDE,
    FillModelConfig,
    MarketUpdate,
    Match,
    OrderType,
    Side,
    WorkingOrder,
    on_auction,
    on_market,
    on_submit,
)
from services.paper_broker.domain.new_york import is_weekday, new_york, next_weekday, ns_at
from services.paper_broker.domain.settlement import OptionActivity, settle

TimeInForce = Literal["day", "gtc", "ioc", "fok", "opg", "cls"]
OrderStatus = Literal["new", "partially_filled", "filled", "canceled", "expired", "rejected"]
#: ``triggered`` (a stop reached without a fill) is for the journal only:
#: Alpaca's stream has no such event, and clients are never sent it.
UpdateEvent = Literal["new", "fill", "partial_fill", "canceled", "expired", "rejected", "triggered"]
JOURNAL_ONLY: frozenset[str] = frozenset({"triggered"})

OPEN_STATUSES: frozenset[str] = frozenset({"new", "partially_filled"})
#: Alpaca's limit on a client order id.
MAX_CLIENT_ORDER_ID = 48
#: Decimal places kept in an average fill or entry price.
AVG_QUANTUM = Decimal("1e-12")
#: Quantities and prices must stay below this: the contract carries 38 digits,
#: 12 of them places. A larger quantity's fill could not be published, and one
#: past the decimal context's exponent (1e1000000) raised Overflow in the
#: middle of a submit, then again at every price of its symbol.
MAX_AMOUNT = Decimal("1e26")

# Alpaca's error codes (PROTOCOLS.md): 403 buying power and limits, 422 invalid.
CODE_FORBIDDEN = 40310000
CODE_UNPROCESSABLE = 42210000
CODE_NOT_FOUND = 40410000
#: Alpaca's answer to a client order id already used (HTTP 422).
CODE_DUPLICATE_CLIENT_ORDER_ID = 40010001
DUPLICATE_CLIENT_ORDER_ID = "client_order_id must be unique"


class Refused(Exception):
    """The broker says no: an HTTP status, Alpaca's error code, a message."""

    def __init__(self, status: int, code: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class OrderSpec:
    """What a client asks for (``POST /v2/orders``)."""

    symbol: str
    side: Side
    qty: Decimal
    order_type: OrderType = "market"
    time_in_force: TimeInForce = "day"
    limit_price: Decimal | None = None
    stop_price: Decimal | None = None
    client_order_id: str | None = None
    asset_class: str = "us_equity"


@dataclass(frozen=True, slots=True)
class PaperOrder:
    """An order as the broker holds it (Alpaca's order object, typed)."""

    id: str
    client_order_id: str
    account: str
    symbol: str
    asset_class: str
    side: Side
    qty: Decimal
    order_type: OrderType
    time_in_force: TimeInForce
    limit_price: Decimal | None
    stop_price: Decimal | None
    status: OrderStatus
    filled_qty: Decimal
    filled_avg_price: Decimal | None
    created_at_ns: int
    updated_at_ns: int
    filled_at_ns: int | None = None
    canceled_at_ns: int | None = None
    #: A stop or stop-limit order whose stop was reached. Journaled with the
    #: order (a fill's, or a ``triggered`` update when the trigger filled
    #: nothing), so a restart does not make it cross its stop again.
    triggered: bool = False
    #: The market's time when the order was placed: the latest trade time or
    #: bar end of its symbol the book had seen (the feed's clock, so a replay
    #: of old prices compares with its own times). 0: none seen.
    placed_at_market_ns: int = 0

    @property
    def is_open(self) -> bool:
        return self.status in OPEN_STATUSES

    @property
    def remaining(self) -> Decimal:
        # Quantities are added and subtracted in WIDE (fill_model.WIDE): in
        # the default 28 digits a quantity the contract carries (38) was
        # rounded, and its order filled short of it for ever.
        return WIDE.subtract(self.qty, self.filled_qty)


@dataclass(frozen=True, slots=True)
class TradeUpdate:
    """One event of the ``trade_updates`` stream; ``order`` is the order after it."""

    event: UpdateEvent
    order: PaperOrder
    ts_ns: int
    execution_id: str | None = None
    price: Decimal | None = None
    qty: Decimal | None = None
    position_qty: Decimal | None = None


@dataclass(frozen=True, slots=True)
class Position:
    """A net position: positive long, negative short."""

    symbol: str
    asset_class: str
    qty: Decimal
    avg_entry_price: Decimal


@dataclass(frozen=True, slots=True)
class FillActivity:
    """A fill as the account's activity list shows it (``activity_type: FILL``)."""

    id: str
    account: str
    order_id: str
    symbol: str
    side: Side
    qty: Decimal
    price: Decimal
    cum_qty: Decimal
    leaves_qty: Decimal
    ts_ns: int
    order_status: OrderStatus

    @property
    def type(self) -> str:
        return "fill" if self.leaves_qty == 0 else "partial_fill"


@dataclass(frozen=True, slots=True)
class AccountPosition:
    """A position and the account holding it: a line of a journal's snapshot."""

    account: str
    position: Position


@dataclass(frozen=True, slots=True)
class Settlement:
    """One position settled at its contract's expiry: its activities (an
    ``OPEXP``, or an ``OPEXC`` / ``OPASN`` and its ``OPTRD``), applied
    together. Journaled as a trade update is, and replayed the same way."""

    account: str
    symbol: str
    activities: tuple[OptionActivity, ...]


#: What a journal's snapshot holds (:meth:`PaperBook.state`), restored as is.
Restored = PaperOrder | FillActivity | AccountPosition | OptionActivity
#: One entry of a journal: a snapshot's piece or an update after it.
JournalEntry = TradeUpdate | Settlement | Restored
#: A position whose underlying has no price at all is settled (expired
#: worthless) only this long after its expiry, or after the broker started,
#: whichever is later: at start-up the feed brings each symbol's last price
#: a moment after the journal's positions are in.
NO_PRICE_WAIT_NS = 300 * 1_000_000_000


@dataclass(frozen=True, slots=True)
class Closing:
    """One position's entry in a close-all: its closing order, or why there is none."""

    symbol: str
    order: PaperOrder | None = None
    refused: Refused | None = None


@dataclass(frozen=True, slots=True)
class Canceling:
    """One working order's entry in a cancel-all: the order after its
    cancellation, or the order still working and why it was not canceled."""

    order: PaperOrder
    refused: Refused | None = None


@dataclass(frozen=True, slots=True)
class BookConfig:
    """Everything that decides what the broker accepts and how it fills."""

    fill_model: FillModelConfig = field(default_factory=FillModelConfig)
    #: Larger orders are refused (403), as a broker's per-order limit would.
    max_order_quantity: Decimal | None = None
    #: Symbols the broker refuses to trade (422 "not tradable").
    untradable_symbols: frozenset[str] = frozenset()
    #: Symbols the venue rejects after accepting the order (``new``, then ``rejected``).
    halted_symbols: frozenset[str] = frozenset()
    #: The close (New York time) at which working ``day`` orders expire;
    #: None: never (``paper.yaml`` defaults to 16:00).
    day_orders_expire_at: dt.time | None = None


def day_order_expiry_ns(created_ns: int, close: dt.time) -> int:
    """When a ``day`` order placed at ``created_ns`` expires: at ``close`` (New
    York time) on the day it was placed, or on the next weekday if it was
    placed at or after that close or on a weekend."""
    return _expiry_ns(created_ns // 1_000_000_000, close)


@functools.lru_cache(maxsize=64)
def _expiry_ns(created_s: int, close: dt.time) -> int:
    # Cached by the second: a submit does not pay for the time zone (a few
    # microseconds) when orders come many a second.
    placed = new_york(created_s)
    day = placed.date()
    if placed.time() >= close or not is_weekday(day):
        day = next_weekday(day)
    return ns_at(day, close)


@dataclass(slots=True)
class _Account:
    name: str
    orders: dict[str, PaperOrder] = field(default_factory=dict)  # by id, in creation order
    by_client_id: dict[str, str] = field(default_factory=dict)
    positions: dict[str, Position] = field(default_factory=dict)
    fills: list[FillActivity] = field(default_factory=list)
    #: Non-trade activities of option events (settlements), in the order they happened.
    activities: list[OptionActivity] = field(default_factory=list)


def _avg(old_avg: Decimal | None, old_qty: Decimal, price: Decimal, qty: Decimal) -> Decimal:
    if old_avg is None or old_qty == 0:
        return price
    with localcontext(WIDE):  # see fill_model.WIDE
        return ((old_avg * old_qty + price * qty) / (old_qty + qty)).quantize(AVG_QUANTUM)


def _created(order: PaperOrder) -> int:
    return order.created_at_ns


def _signed(side: Side, qty: Decimal) -> Decimal:
    return qty if side == "buy" else -qty


class PaperBook:
    """Every account's orders and positions, and the newest price of each symbol."""

    def __init__(self, config: BookConfig, *, clock: Clock, ids: Callable[[], str]) -> None:
        self.config = config
        self.clock = clock
        self.ids = ids
        self._accounts: dict[str, _Account] = {}
        # Each symbol's newest print by its own time (a trade's, a bar's end;
        # at the same time the later to arrive) and that time: the price a
        # market order fills at and a position is valued at, what stands for
        # a closing auction and prices an expired contract's underlying (see
        # _newest_print). Not the last to arrive: a print reported late,
        # older than one before it, is not the market's price. Its time is
        # the latest trade time or bar end seen of the symbol (an order's
        # placed_at_market_ns): _print keeps the greatest.
        self._newest: dict[str, tuple[Decimal, int]] = {}
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
        self._started_ns = clock.now_ns()

    # ------------------------------------------------------------- queries

    def _account(self, account: str) -> _Account:
        acct = self._accounts.get(account)
        if acct is None:
            acct = self._accounts[account] = _Account(account)
        return acct

    def last_price(self, symbol: str) -> Decimal | None:
        """``symbol``'s price now: its newest print by the market's time (not
        a trade reported late, older than one before it); None: none yet."""
        return self._newest_print(symbol)[0]

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
        free = max(WIDE.subtract(abs(position.qty), held), Decimal(0))
        return -free if position.qty < 0 and free else free

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

    # ------------------------------------------------------------ commands

    def submit(self, account: str, spec: OrderSpec) -> tuple[PaperOrder, list[TradeUpdate]]:
        """Accept an order (and fill what the market allows now), or refuse it.

        A client order id already used in ``account`` is refused (422,
        40010001) whatever the rest of the request, as Alpaca does; the books
        do not change.
        """
        cid = spec.client_order_id
        if cid and self.by_client_order_id(account, cid) is not None:
            raise Refused(422, CODE_DUPLICATE_CLIENT_ORDER_ID, DUPLICATE_CLIENT_ORDER_ID)
        now = self.clock.now_ns()
        self._validate(spec, now)
        order = PaperOrder(
            id=self.ids(),
            client_order_id=cid or self.ids(),
            account=account,
            symbol=spec.symbol,
            asset_class=spec.asset_class,
            side=spec.side,
            qty=spec.qty,
            order_type=spec.order_type,
            time_in_force=spec.time_in_force,
            limit_price=spec.limit_price,
            stop_price=spec.stop_price,
            status="new",
            filled_qty=Decimal(0),
            filled_avg_price=None,
            created_at_ns=now,
            updated_at_ns=now,
            placed_at_market_ns=self._newest_print(spec.symbol)[1],
        )
        updates = [self._emit(TradeUpdate("new", order, now))]
        if order.symbol in self.config.halted_symbols:
            rejected = replace(order, status="rejected", updated_at_ns=now)
            updates.append(self._emit(TradeUpdate("rejected", rejected, now)))
            return rejected, updates
        order = self._current(order)
        if order.time_in_force in AUCTIONS:
            return order, updates  # it waits for its auction (_at_auction)
        last = self.last_price(order.symbol)
        match = on_submit(self.config.fill_model, self._working(order), last)
        if order.time_in_force == "fok" and match.quantity < order.qty:
            match = Match(Decimal(0), None, match.triggered)
        if match.triggered:
            order = self._set_triggered(order, match, now, updates)
        if match.fills:
            assert match.price is not None
            updates.append(self._fill(order, match.quantity, match.price, now))
            order = self._current(order)
        if order.is_open and order.time_in_force in ("ioc", "fok"):
            updates.append(self._cancel(order, now))
        return self._current(order), updates

    def cancel(self, account: str, order_id: str) -> list[TradeUpdate]:
        """Cancel one working order (404 unknown, 422 no longer cancelable, or
        an ``opg`` order from 09:28 until the open: :func:`cancel_refusal`)."""
        order = self.order(account, order_id)
        if order is None:
            raise Refused(404, CODE_NOT_FOUND, f"order {order_id} not found")
        if not order.is_open:
            message = f"order is not cancelable (it is {order.status})"
            raise Refused(422, CODE_UNPROCESSABLE, message)
        now = self.clock.now_ns()
        locked = self._locked(order, now)
        if locked is not None:
            raise locked
        return [self._cancel(order, now)]

    def cancel_all(self, account: str) -> tuple[list[Canceling], list[TradeUpdate]]:
        """Cancel every working order (``DELETE /v2/orders``): an entry per
        order, in creation order, canceled or refused on its own as
        :meth:`cancel` would refuse it (an ``opg`` order from 09:28 until the
        open stays working), and the updates of those canceled."""
        return self._cancel_open(account)

    def _cancel_open(self, account: str) -> tuple[list[Canceling], list[TradeUpdate]]:
        now = self.clock.now_ns()
        entries: list[Canceling] = []
        updates: list[TradeUpdate] = []
        for order in self.orders(account, "open"):
            locked = self._locked(order, now)
            if locked is not None:
                entries.append(Canceling(order, refused=locked))
                continue
            update = self._cancel(order, now)
            entries.append(Canceling(update.order))
            updates.append(update)
        return entries, updates

    def _locked(self, order: PaperOrder, now: int) -> Refused | None:
        """Why the working ``order`` cannot be canceled at ``now`` (an ``opg``
        order from 09:28 until the open: :func:`cancel_refusal`); None: it can."""
        if order.time_in_force not in AUCTIONS or (session := self._session(order)) is None:
            return None
        message = cancel_refusal(order.time_in_force, session, now)
        return None if message is None else Refused(422, CODE_UNPROCESSABLE, message)

    def close_all(
        self, account: str, *, cancel_orders: bool = False
    ) -> tuple[list[Closing], list[TradeUpdate]]:
        """A market order closing each position (``DELETE /v2/positions``).

        As at Alpaca, a position is closed or refused on its own (the answer
        is a 207 of one entry per position): with ``cancel_orders`` the open
        orders are canceled first (those :meth:`cancel` would refuse to, as a
        locked ``opg`` order, stay); a position some of whose shares are held
        by open orders on its closing side is refused (403, as Alpaca's
        "insufficient qty available"). A position in a halted symbol
        is refused too (403): the venue takes no order for it; and one whose
        closing order is refused as any order would be (above
        ``max_order_quantity``: 403; untradable: 422).
        """
        updates: list[TradeUpdate] = []
        if cancel_orders:
            # An order its cancel leaves working (a locked opg order) keeps
            # holding its shares: the check below refuses their position.
            updates.extend(self._cancel_open(account)[1])
        out: list[Closing] = []
        for pos in self.positions(account):
            side: Side = "sell" if pos.qty > 0 else "buy"
            qty = abs(pos.qty)
            if pos.symbol in self.config.halted_symbols:
                message = f"asset {pos.symbol} is halted: the position cannot be closed now"
                out.append(Closing(pos.symbol, refused=Refused(403, CODE_FORBIDDEN, message)))
                continue
            held = self._held_for_orders(account, pos.symbol, side)
            if held > 0:
                message = (
                    f"insufficient qty available for order "
                    f"(requested: {qty}, available: {max(qty - held, Decimal(0))})"
                )
                out.append(Closing(pos.symbol, refused=Refused(403, CODE_FORBIDDEN, message)))
                continue
            spec = OrderSpec(symbol=pos.symbol, side=side, qty=qty, asset_class=pos.asset_class)
            try:
                order, more = self.submit(account, spec)
            except Refused as e:
                # Refused before anything changed (above max_order_quantity,
                # untradable): this position's entry, as Alpaca answers one.
                # Raised, it would lose the updates made so far (the
                # cancellations), applied to the books but never journaled.
                out.append(Closing(pos.symbol, refused=e))
                continue
            out.append(Closing(pos.symbol, order=order))
            updates.extend(more)
        return out, updates

    def _held_for_orders(self, account: str, symbol: str, side: Side) -> Decimal:
        """What open orders on ``side`` of ``symbol`` hold of the account's position."""
        return sum(
            (
                o.remaining
                for o in self._working_orders(symbol)
                if o.account == account and o.side == side
            ),
            Decimal(0),
        )

    def _working_orders(self, symbol: str) -> list[PaperOrder]:
        """The working orders of ``symbol``, every account's, in the order they
        came (time priority). A list, not a view: filling one changes the index."""
        accounts = self._accounts
        return [accounts[a].orders[oid] for a, oid in self._working_by_symbol.get(symbol, ())]

    def expire_orders(self) -> list[TradeUpdate]:
        """Expire the ``day`` orders whose session has closed (see
        ``BookConfig.day_orders_expire_at``) and the orders, of any time in
        force, in an option contract whose expiry day has closed, soonest first;
        first settle the ``opg`` and ``cls`` orders past their auction's wait
        (:meth:`_auctions_past`)."""
        now = self.clock.now_ns()
        due = self._expiries
        out = self._auctions_past(now)
        while due and due[0][0] <= now:
            _, account, order_id = heapq.heappop(due)
            order = self._account(account).orders.get(order_id)
            if order is not None and order.is_open:
                after = replace(order, status="expired", updated_at_ns=now)
                out.append(self._emit(TradeUpdate("expired", after, now)))
        return out

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
        out: list[Settlement] = []
        waiting: list[tuple[int, str, str]] = []
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
                if now < max(expiry, self._started_ns) + NO_PRICE_WAIT_NS:
                    waiting.append(item)
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
        for item in waiting:
            heapq.heappush(pending, item)
        return out

    def _activity_id(self) -> str:
        # Alpaca's activity ids: the time (UTC) to the millisecond, "::", a
        # uuid. In whole seconds and nanoseconds: seconds as a float rounded
        # a time a nanosecond before a millisecond (or midnight) up to it.
        seconds, rest = divmod(self.clock.now_ns(), 1_000_000_000)
        at = dt.datetime.fromtimestamp(seconds, dt.UTC)
        return f"{at:%Y%m%d%H%M%S}{rest // 1_000_000:03d}::{self.ids()}"

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

    def set_last(self, symbol: str, price: Decimal, ts_ns: int = 0) -> list[TradeUpdate]:
        """``price`` (of ``ts_ns``), from before the broker was there, becomes
        ``symbol``'s last price unless a newer print by the market's time came
        before it (:meth:`last_price`). A limit or stop order is not filled or
        triggered by it (the price may predate the order); a market order
        waiting for a price fills at it, as it would have had the price come a
        moment earlier (at the last price: an older price than one taken
        before it is not)."""
        self._print(symbol, price, ts_ns)
        last = self.last_price(symbol)
        out = self.expire_orders()  # never filled after its close
        for order in self._working_orders(symbol):
            if order.order_type != "market" or order.time_in_force in AUCTIONS:
                continue
            match = on_submit(self.config.fill_model, self._working(order), last)
            if match.fills:
                assert match.price is not None
                out.append(self._fill(order, match.quantity, match.price, self.clock.now_ns()))
        return out

    def on_market(self, update: MarketUpdate) -> list[TradeUpdate]:
        """A trade or bar: it becomes the last price (unless a print newer by
        the market's time came before it) and may fill working orders.

        A bar comes when it closes, so one that began before an order was
        placed holds prices the order never had (its open, high or low may be
        from before it): to that order it is only its close, the bar's last
        trade. Else a limit resting below the market filled at a low printed
        before it was placed (and a stop triggered by it): paper results
        better than the market allowed.

        A print older by the market's time than the newest (a trade reported
        late) fills what fills at the market (a market order, a triggered
        stop) at the newest print, the last price, not at its own."""
        symbol = update.symbol
        # The newest print before this update (by the market's time): a
        # closing auction's price, if this update is the first after the close.
        before = self._newest_print(symbol)
        # Expire (and settle the auctions past their wait) before this price
        # is the last: a cls order settled now closes at the print before it.
        out = self.expire_orders()  # never filled after its close
        self._print(symbol, update.last, update.ts_ns)
        newest, newest_ns = self._newest_print(symbol)
        current: MarketUpdate | None = None
        if newest is not None and update.ts_ns < newest_ns:
            current = MarketUpdate.trade(symbol, newest, newest_ns)
        close: MarketUpdate | None = None
        for order in self._working_orders(symbol):
            if order.time_in_force in AUCTIONS:
                out.extend(self._at_auction(order, update, *before))
                continue
            seen = update
            if current is not None and (
                order.order_type == "market" or (order.order_type == "stop" and order.triggered)
            ):
                seen = current
            elif update.kind == "bar" and update.start_ns < order.placed_at_market_ns:
                if close is None:
                    close = MarketUpdate.trade(symbol, update.last, update.ts_ns)
                seen = close
            match = on_market(self.config.fill_model, self._working(order), seen)
            if not (match.triggered or match.fills):
                continue
            now = self.clock.now_ns()
            if match.triggered:
                order = self._set_triggered(order, match, now, out)
            if match.fills:
                assert match.price is not None
                out.append(self._fill(order, match.quantity, match.price, now))
        return out

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

    def count_orders(self) -> tuple[int, int]:
        """Orders held, and of them open (across accounts)."""
        held = sum(len(a.orders) for a in self._accounts.values())
        working = sum(len(w) for w in self._working_by_symbol.values())
        return held, working

    # ------------------------------------------------------------- helpers

    def _validate(self, spec: OrderSpec, now: int) -> None:
        def refuse(message: str, status: int = 422, code: int = CODE_UNPROCESSABLE) -> Refused:
            return Refused(status, code, message)

        if spec.qty <= 0:
            raise refuse("qty must be > 0")
        if spec.order_type in ("limit", "stop_limit") and spec.limit_price is None:
            raise refuse(f"limit_price is required for {spec.order_type} orders")
        if spec.order_type in ("stop", "stop_limit") and spec.stop_price is None:
            raise refuse(f"stop_price is required for {spec.order_type} orders")
        for name, price in (("limit_price", spec.limit_price), ("stop_price", spec.stop_price)):
            if price is not None and price <= 0:
                raise refuse(f"{name} must be > 0")
        for name, amount in (
            ("qty", spec.qty),
            ("limit_price", spec.limit_price),
            ("stop_price", spec.stop_price),
        ):
            if amount is not None and amount >= MAX_AMOUNT:
                raise refuse(f"{name} must be less than 1e26")
        if spec.asset_class == "us_option" and spec.qty != spec.qty.to_integral_value():
            # Options trade in whole contracts; the real broker refuses part of one.
            raise refuse("qty must be a whole number of contracts for options")
        if spec.time_in_force in AUCTIONS:
            tif = spec.time_in_force
            if spec.order_type not in ("market", "limit"):
                raise refuse(f"time_in_force {tif} is for market and limit orders only")
            if spec.asset_class == "us_option" or spec.symbol.startswith(OPTION_PREFIX):
                # As at Alpaca, whose options trade day orders only.
                raise refuse(f"time_in_force {tif} is not supported for options")
            if session_for(now, tif) is None:
                raise refuse(refusal(tif))
        if spec.client_order_id is not None and len(spec.client_order_id) > MAX_CLIENT_ORDER_ID:
            raise refuse(f"client_order_id must be at most {MAX_CLIENT_ORDER_ID} characters")
        if spec.symbol in self.config.untradable_symbols:
            raise refuse(f"asset {spec.symbol} is not tradable")
        if spec.symbol.startswith(OPTION_PREFIX):
            try:
                contract = parse_option(spec.symbol)
            except ValueError as e:
                raise refuse(f"asset {spec.symbol} not found: {e}") from None
            if contract.expired_by(now):
                # As a broker does: an expired contract no longer trades,
                # closing orders included (its position is the broker's to settle).
                raise refuse(f"asset {spec.symbol} is not tradable: it {contract.expired_text}")
        limit = self.config.max_order_quantity
        if limit is not None and spec.qty > limit:
            raise refuse(
                f"qty {spec.qty} exceeds the account's maximum order quantity {limit}",
                status=403,
                code=CODE_FORBIDDEN,
            )

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

    def _print(self, symbol: str, price: Decimal, ts_ns: int) -> None:
        """``price`` of ``ts_ns`` is ``symbol``'s newest print unless one
        newer by the market's time came before it (a late-reported trade)."""
        newest = self._newest.get(symbol)
        if newest is None or ts_ns >= newest[1]:
            self._newest[symbol] = (price, ts_ns)

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

    @staticmethod
    def _session(order: PaperOrder) -> Session | None:
        """The session whose auction an ``opg`` or ``cls`` order takes part in."""
        return session_for(order.created_at_ns, order.time_in_force)

    def _auctions_past(self, now: int) -> list[TradeUpdate]:
        """Settle the ``opg`` and ``cls`` orders still working
        ``AUCTION_WAIT_NS`` after their auction: no print after the close has
        come, so a ``cls`` order closes at the symbol's last price if it is
        of the session's regular hours; an ``opg`` order had no print of the
        open in time. What the auction does not fill expires."""
        due = self._auctions
        out: list[TradeUpdate] = []
        while due and due[0][0] <= now:
            _, account, order_id = heapq.heappop(due)
            order = self._account(account).orders.get(order_id)
            if order is None or not order.is_open:
                continue
            session = self._session(order)
            price = None
            if session is not None and order.time_in_force == "cls":
                price = closing_print(session, *self._newest_print(order.symbol))
            out.append(self._settle_auction(order, price, now))
        return out

    def _at_auction(
        self, order: PaperOrder, update: MarketUpdate, last: Decimal | None, last_ns: int
    ) -> list[TradeUpdate]:
        """What ``update`` does to an ``opg`` or ``cls`` order: the first print
        of its session's regular hours settles an ``opg`` order at its price,
        the first print after its session's close a ``cls`` order at the last
        price before it (``last`` of ``last_ns``); any other leaves it working."""
        session = self._session(order)
        if session is None:
            return []
        if order.time_in_force == "opg":
            price = opening_print(session, update)
            if price is None:
                return []
        elif update.ts_ns > session.close_ns:
            price = closing_print(session, last, last_ns)
        else:
            return []
        return [self._settle_auction(order, price, self.clock.now_ns())]

    def _settle_auction(self, order: PaperOrder, price: Decimal | None, now: int) -> TradeUpdate:
        """An auction order at its auction's ``price`` (None: no print stood
        for it): filled whole, or expired."""
        match = on_auction(self._working(order), price) if price is not None else None
        if match is not None and match.fills:
            assert match.price is not None
            return self._fill(order, match.quantity, match.price, now)
        after = replace(order, status="expired", updated_at_ns=now)
        return self._emit(TradeUpdate("expired", after, now))

    def _current(self, order: PaperOrder) -> PaperOrder:
        return self._account(order.account).orders[order.id]

    def _emit(self, update: TradeUpdate) -> TradeUpdate:
        self.apply(update)
        return update

    def _working(self, order: PaperOrder) -> WorkingOrder:
        return WorkingOrder(
            side=order.side,
            order_type=order.order_type,
            remaining=order.remaining,
            limit_price=order.limit_price,
            stop_price=order.stop_price,
            triggered=order.triggered,
            whole=order.asset_class == "us_option",
        )

    def _set_triggered(
        self, order: PaperOrder, match: Match, now: int, out: list[TradeUpdate]
    ) -> PaperOrder:
        order = replace(order, triggered=True)
        if match.fills:
            # The fill that follows carries the triggered order into the journal.
            self._account(order.account).orders[order.id] = order
        else:
            out.append(self._emit(TradeUpdate("triggered", order, now)))
        return order

    def _fill(self, order: PaperOrder, qty: Decimal, price: Decimal, now: int) -> TradeUpdate:
        filled = WIDE.add(order.filled_qty, qty)
        done = filled == order.qty
        after = replace(
            order,
            filled_qty=filled,
            filled_avg_price=_avg(order.filled_avg_price, order.filled_qty, price, qty),
            status="filled" if done else "partially_filled",
            updated_at_ns=now,
            filled_at_ns=now if done else order.filled_at_ns,
        )
        pos = self._account(order.account).positions.get(order.symbol)
        position_qty = WIDE.add(pos.qty if pos else Decimal(0), _signed(order.side, qty))
        return self._emit(
            TradeUpdate(
                "fill" if done else "partial_fill",
                after,
                now,
                execution_id=self.ids(),
                price=price,
                qty=qty,
                position_qty=position_qty,
            )
        )

    def _cancel(self, order: PaperOrder, now: int) -> TradeUpdate:
        after = replace(order, status="canceled", updated_at_ns=now, canceled_at_ns=now)
        return self._emit(TradeUpdate("canceled", after, now))

    def _book_position(
        self, acct: _Account, order: PaperOrder, qty: Decimal, price: Decimal
    ) -> None:
        self._book(acct, order.symbol, order.asset_class, _signed(order.side, qty), price)

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
            avg = _avg(pos.avg_entry_price if pos else None, abs(old), price, abs(delta))
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
