"""The paper broker's books: orders, fills and positions per account.

Pure and synchronous: time comes from an injected clock, ids from an injected
factory. Every change is a :class:`TradeUpdate` (the facts the broker streams
to its clients: ``new``, ``fill``, ``partial_fill``, ``canceled``, plus
``triggered``, which is journaled but never sent), and :meth:`PaperBook.apply`
is the only place that changes state. An update
carries the order as it is *after* the change, so the journal of updates
replays into exactly the same books (:meth:`PaperBook.apply` again), without
the fill model.

The book is in five modules: its values (``model.py``), which orders it
takes (``acceptance.py``), what the journal rebuilds (``ledger.py``: the
accounts, the working orders, what is due when, and ``apply``, ``restore``
and ``state``), that ledger with each symbol's newest print and the option
positions settled against it (``priced.py``), and here :class:`PaperBook`,
a priced ledger that trades: orders, prices, auctions and expiries. Their
public names are imported from here.

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
  for (``BookConfig.day_orders_expire_at``: the session's close from the
  exchange calendar, 13:00 New York on a half day; placed after the close or
  on a weekend or a holiday, the next session's) is ``expired``, as Alpaca
  expires it, before any later price can fill it;
- an order in an option contract still working at the close of the
  contract's expiry day (16:00 New York, 13:00 on a half day), whatever its
  time in force, is
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

import heapq
from dataclasses import replace
from decimal import Decimal

from services.paper_broker.domain.acceptance import MAX_AMOUNT, MAX_CLIENT_ORDER_ID, validate
from services.paper_broker.domain.auction import (
    AUCTIONS,
    cancel_refusal,
    closing_print,
    opening_print,
)
from services.paper_broker.domain.fill_model import (
    WIDE,
    MarketUpdate,
    Match,
    Side,
    WorkingOrder,
    on_auction,
    on_market,
    on_submit,
)
from services.paper_broker.domain.ledger import (
    AVG_QUANTUM,
    average,
    day_order_expiry_ns,
    signed,
)
from services.paper_broker.domain.model import (
    CODE_DUPLICATE_CLIENT_ORDER_ID,
    CODE_FORBIDDEN,
    CODE_NOT_FOUND,
    CODE_UNPROCESSABLE,
    DUPLICATE_CLIENT_ORDER_ID,
    JOURNAL_ONLY,
    OPEN_STATUSES,
    AccountPosition,
    BookConfig,
    Canceling,
    Closing,
    FillActivity,
    JournalEntry,
    OrderSpec,
    OrderStatus,
    PaperOrder,
    Position,
    Refused,
    Restored,
    Settlement,
    TimeInForce,
    TradeUpdate,
    UpdateEvent,
)
from services.paper_broker.domain.priced import NO_PRICE_WAIT_NS, PricedLedger

# The book's public names, from the modules it was cut into (model,
# acceptance, ledger, priced): importers keep importing them from here.
__all__ = [
    "AVG_QUANTUM",
    "CODE_DUPLICATE_CLIENT_ORDER_ID",
    "CODE_FORBIDDEN",
    "CODE_NOT_FOUND",
    "CODE_UNPROCESSABLE",
    "DUPLICATE_CLIENT_ORDER_ID",
    "JOURNAL_ONLY",
    "MAX_AMOUNT",
    "MAX_CLIENT_ORDER_ID",
    "NO_PRICE_WAIT_NS",
    "OPEN_STATUSES",
    "AccountPosition",
    "BookConfig",
    "Canceling",
    "Closing",
    "FillActivity",
    "JournalEntry",
    "OrderSpec",
    "OrderStatus",
    "PaperBook",
    "PaperOrder",
    "Position",
    "Refused",
    "Restored",
    "Settlement",
    "TimeInForce",
    "TradeUpdate",
    "UpdateEvent",
    "day_order_expiry_ns",
]


class PaperBook(PricedLedger):
    """Every account's orders and positions (its :class:`Ledger`), and the
    newest price of each symbol (:class:`PricedLedger`): takes orders and
    prices, and makes the trade updates and settlements its ledger applies."""

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
        validate(self.config, spec, now)
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
        an ``opg`` or ``cls`` order from its cutoff until its auction settles
        it: :func:`cancel_refusal`)."""
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
        :meth:`cancel` would refuse it (an ``opg`` or ``cls`` order from its
        cutoff until its auction stays working), and the updates of those
        canceled."""
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
        or ``cls`` order from its cutoff until its auction settles it:
        :func:`cancel_refusal`); None: it can."""
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
        orders are canceled first (those :meth:`cancel` would refuse to, as
        a locked ``opg`` or ``cls`` order, stay); a position some of whose
        shares are held by open orders on its closing side is refused (403,
        as Alpaca's "insufficient qty available"). A position in a halted symbol
        is refused too (403): the venue takes no order for it; and one whose
        closing order is refused as any order would be (above
        ``max_order_quantity``: 403; untradable: 422).
        """
        updates: list[TradeUpdate] = []
        if cancel_orders:
            # An order its cancel leaves working (a locked auction order) keeps
            # holding its shares: the check below refuses their position.
            updates.extend(self._cancel_open(account)[1])
        out: list[Closing] = []
        for pos in self.positions(account):
            side: Side = "sell" if pos.qty > 0 else "buy"
            qty = pos.qty.copy_abs()  # abs() would round to 28 digits
            if pos.symbol in self.config.halted_symbols:
                message = f"asset {pos.symbol} is halted: the position cannot be closed now"
                out.append(Closing(pos.symbol, refused=Refused(403, CODE_FORBIDDEN, message)))
                continue
            held = self._held_for_orders(account, pos.symbol, side)
            if held > 0:
                message = (
                    f"insufficient qty available for order "
                    f"(requested: {qty}, available: {max(WIDE.subtract(qty, held), Decimal(0))})"
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

    def expire_orders(self, market_ns: int = 0) -> list[TradeUpdate]:
        """Expire the ``day`` orders whose session has closed (see
        ``BookConfig.day_orders_expire_at``) and the orders, of any time in
        force, in an option contract whose expiry day has closed, soonest first:
        by the broker's clock, or by the market's (``market_ns``, the time of
        a price about to be taken in: one stamped after the close, with the
        clock a little behind the feed's, fills no order that ended then);
        first settle the ``opg`` and ``cls`` orders past their auction's wait
        (:meth:`_auctions_past`)."""
        now = self.clock.now_ns()
        due = self._expiries
        out = self._auctions_past(now)
        # A print stamped at the close itself is still the session's (as for
        # the closing auction's print): only one stamped after it ends an order.
        while due and (due[0][0] <= now or due[0][0] < market_ns):
            _, account, order_id = heapq.heappop(due)
            order = self._account(account).orders.get(order_id)
            if order is not None and order.is_open:
                after = replace(order, status="expired", updated_at_ns=now)
                out.append(self._emit(TradeUpdate("expired", after, now)))
        return out

    def set_last(self, symbol: str, price: Decimal, *, ts_ns: int) -> list[TradeUpdate]:
        """``price`` (of ``ts_ns``, its market time: no default, as a price
        with none would be older than any print with one and silently never
        the last), from before the broker was there, becomes ``symbol``'s
        last price unless a newer print by the market's time came before it
        (:meth:`last_price`). A limit or stop order is not filled or
        triggered by it (the price may predate the order); a market order
        waiting for a price fills at it, as it would have had the price come a
        moment earlier (at the last price: an older price than one taken
        before it is not), and so does the rest of a triggered stop, a market
        order since its trigger (the fill model's rule, as in
        :meth:`on_market`; a triggered stop-limit is a limit order)."""
        self._print(symbol, price, ts_ns)
        last = self.last_price(symbol)
        out = self.expire_orders(ts_ns)  # never filled after its close
        for order in self._working_orders(symbol):
            at_market = order.order_type == "market" or (
                order.order_type == "stop" and order.triggered
            )
            if not at_market or order.time_in_force in AUCTIONS:
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
        late) fills what fills at the market (a market order, a stop
        triggered before or by it) at the newest print, the last price, not
        at its own. One
        stamped before a limit or stop order was placed, or at its market
        time (a bar that ended then or before), neither fills nor triggers
        it: as a bar's low from before the order, a price it never had; one
        stamped after was a price the order had."""
        symbol = update.symbol
        # The newest print before this update (by the market's time): a
        # closing auction's price, if this update is the first after the close.
        before = self._newest_print(symbol)
        # Expire (and settle the auctions past their wait) before this price
        # is the last: a cls order settled now closes at the print before it.
        out = self.expire_orders(update.ts_ns)  # never filled after its close
        self._print(symbol, update.last, update.ts_ns)
        newest, newest_ns = self._newest_print(symbol)
        current: MarketUpdate | None = None
        late = newest if newest is not None and update.ts_ns < newest_ns else None
        if late is not None:
            current = MarketUpdate.trade(symbol, late, newest_ns)
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
            elif order.placed_at_market_ns and update.ts_ns <= order.placed_at_market_ns:
                # Reported late, from before the order was placed: its
                # prices, as a bar's open, high and low from before the
                # order, are none the order ever had; it neither fills a
                # limit nor triggers a stop (which then filled at it). A
                # print stamped at the order's market time is from before
                # it too: the order came after the broker had a print of
                # that time, so this one, of the same instant, happened
                # before the order reached the market (as a bar that began
                # then is only its close to the order, below). A market time
                # of 0 is none: no print was known when it was placed.
                continue
            elif update.kind == "bar" and update.start_ns <= order.placed_at_market_ns:
                # Begun by the order's market time (the last print it was
                # placed after: with bars only, the end of the last bar,
                # which is this one's start), it was forming when the order
                # came: its open, high and low may be from before the order.
                if close is None:
                    close = MarketUpdate.trade(symbol, update.last, update.ts_ns)
                seen = close
            # A stop a late print triggers fills at the newest (``last``), as
            # its rest; a stop-limit's limit is checked against the newest.
            match = on_market(self.config.fill_model, self._working(order), seen, last=late)
            if not (match.triggered or match.fills):
                continue
            now = self.clock.now_ns()
            if match.triggered:
                order = self._set_triggered(order, match, now, out)
            if match.fills:
                assert match.price is not None
                out.append(self._fill(order, match.quantity, match.price, now))
        return out

    # ------------------------------------------------------------- helpers

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
            filled_avg_price=average(order.filled_avg_price, order.filled_qty, price, qty),
            status="filled" if done else "partially_filled",
            updated_at_ns=now,
            filled_at_ns=now if done else order.filled_at_ns,
        )
        pos = self._account(order.account).positions.get(order.symbol)
        position_qty = WIDE.add(pos.qty if pos else Decimal(0), signed(order.side, qty))
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
