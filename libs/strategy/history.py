"""A strategy's own recent orders and signals, kept after they finish.

:class:`OrderHistory` answers ``ctx.orders()`` and ``ctx.last_signal()``. The
host's books (:class:`~libs.strategy.books.HostBooks`) update it from the
events they already apply, one record update per event: the strategy's own
signals and intents (emitted, or read back from the store or the stream),
the risk-gate's denials, the broker's rejects, cancels and fills. The same
events give the same records whether they come live or through a rebuild
(``restore``), so a strategy sees the same history after a restart of the
strategy-runner as before it, for what the runner read back (its chains
still working, and those with an event within ``rebuild_finished_s``).

Memory is bounded: every working record is kept, and of the finished ones
the newest :attr:`OrderHistory.MAX_FINISHED` by creation (an older finished
one goes first); of the signals, the newest :attr:`OrderHistory.MAX_SIGNALS`.

How far back it is complete (:attr:`OrderHistory.complete_since_ns`,
``ctx.orders_complete_since_ns``): from the beginning (0) unless something
was left out, and then from the latest of: the runner's rebuild cut-off (the
chains it did not read back had every event before it, so every order of
them was created before it: a strategy's intent is stamped ``ts_event`` =
``ts_init`` by its clock) and just past the newest finished record the cap
dropped. It never moves back.

Not part of a ledger checkpoint: after a restart the history comes from the
chains the rebuild reads (a checkpoint holds positions only), so this module
is left out of the checkpoint's code digest on purpose: changing it does
not discard checkpoints.
"""

from __future__ import annotations

import itertools
import uuid
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import replace
from decimal import Decimal
from typing import ClassVar

from libs.contract.envelope import Event
from libs.contract.events import OrderIntentCreated, SignalGenerated
from libs.strategy.context import ZERO, OrderRecord, OrderStatus, SignalRecord


def signal_record(event: SignalGenerated) -> SignalRecord:
    """The record of one of the strategy's signals."""
    p = event.payload
    return SignalRecord(event.id, p.symbol, p.name, p.direction, event.ts_event)


def order_record(intent: OrderIntentCreated, cause: SignalRecord | None) -> OrderRecord:
    """The record of a new intent (working, nothing filled) caused by ``cause``."""
    p = intent.payload
    return OrderRecord(
        intent_id=intent.id,
        signal_id=intent.correlation_id,
        signal_name=cause.name if cause is not None else None,
        signal_direction=cause.direction if cause is not None else None,
        symbol=p.symbol,
        side=p.side,
        quantity=p.quantity,
        filled=ZERO,
        status="working",
        reason="",
        created_ns=intent.ts_event,
    )


class OrderHistory:
    """The strategy's intents (working and recently finished) and its signals."""

    #: Finished records kept (the newest by creation); working ones are all kept.
    MAX_FINISHED: ClassVar[int] = 10_000
    #: Signals kept (the newest).
    MAX_SIGNALS: ClassVar[int] = 10_000

    def __init__(self) -> None:
        # Both in creation order: what the strategy emitted first, first
        # (the store's order on a rebuild, the emission order live).
        self._orders: OrderedDict[uuid.UUID, OrderRecord] = OrderedDict()
        self._signals: OrderedDict[uuid.UUID, SignalRecord] = OrderedDict()
        self._finished = 0
        #: Every order created at or after this clock time (ns) is here (0: every order).
        self.complete_since_ns = 0

    def __len__(self) -> int:
        return len(self._orders)

    def missing_before(self, ns: int) -> None:
        """Orders created before ``ns`` may be missing (the runner's rebuild
        did not read them back); the reach never moves back."""
        self.complete_since_ns = max(self.complete_since_ns, ns)

    # ------------------------------------------------------------- updates
    # The books call these once per event they take; a replay is theirs to
    # drop (IntentBook.add, the host's own signal ids), never recorded twice.

    def signaled(self, event: SignalGenerated) -> None:
        """The strategy emitted ``event`` (or it was read back the first time)."""
        self._signals[event.id] = signal_record(event)
        if len(self._signals) > self.MAX_SIGNALS:
            self._signals.popitem(last=False)

    def opened(self, intent: OrderIntentCreated) -> None:
        """The strategy emitted ``intent`` (or it was read back the first time)."""
        self._orders[intent.id] = order_record(intent, self._signals.get(intent.correlation_id))

    def filled(self, intent_id: uuid.UUID, remaining: Decimal, *, done: bool) -> None:
        """A fill left ``remaining`` of the intent unfilled; ``done``: it finished it."""
        record = self._orders.get(intent_id)
        if record is None or not record.working:
            return
        filled = record.quantity - remaining
        if done:
            self._finish(replace(record, filled=filled, status="filled"))
        else:
            self._orders[intent_id] = replace(record, filled=filled)

    def ended(self, intent_id: uuid.UUID, status: OrderStatus, reason: str) -> None:
        """The intent was denied, rejected or canceled (``status``) for ``reason``."""
        record = self._orders.get(intent_id)
        if record is not None and record.working:
            self._finish(replace(record, status=status, reason=reason))

    def _finish(self, record: OrderRecord) -> None:
        self._orders[record.intent_id] = record
        self._finished += 1
        if self._finished > self.MAX_FINISHED:
            # The oldest finished goes; working ones ahead of it stay (few:
            # an order rests at the broker for a day or until canceled).
            oldest = next(i for i, r in self._orders.items() if not r.working)
            dropped = self._orders.pop(oldest)
            self._finished -= 1
            # Max, not the dropped one's time: creation order is insertion
            # order only as long as the clock never went back.
            self.missing_before(dropped.created_ns + 1)

    # ------------------------------------------------------------- queries

    def orders(
        self,
        symbol: str | None = None,
        *,
        since_ns: int | None = None,
        fresh: Iterable[Event] = (),
    ) -> tuple[OrderRecord, ...]:
        """The records (of ``symbol``; created at or after ``since_ns``),
        oldest first; then those of the intents among ``fresh`` (the current
        callback's emissions, not yet committed)."""
        kept = [
            r
            for r in self._orders.values()
            if (symbol is None or r.symbol == symbol)
            and (since_ns is None or r.created_ns >= since_ns)
        ]
        signals: dict[uuid.UUID, SignalRecord] = {}
        for event in fresh:
            if isinstance(event, SignalGenerated):
                signals[event.id] = signal_record(event)
            elif (
                isinstance(event, OrderIntentCreated)
                and (symbol is None or event.payload.symbol == symbol)
                and (since_ns is None or event.ts_event >= since_ns)
            ):
                cause = signals.get(event.correlation_id) or self._signals.get(event.correlation_id)
                kept.append(order_record(event, cause))
        return tuple(kept)

    def last_signal(
        self,
        name: str | None = None,
        *,
        symbol: str | None = None,
        fresh: Iterable[Event] = (),
    ) -> SignalRecord | None:
        """The newest signal (of ``name``, in ``symbol``), the newest of
        ``fresh`` (the current callback's emissions) first."""
        news = [signal_record(e) for e in fresh if isinstance(e, SignalGenerated)]
        for record in itertools.chain(reversed(news), reversed(self._signals.values())):
            if name in (None, record.name) and symbol in (None, record.symbol):
                return record
        return None
