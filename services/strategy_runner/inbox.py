"""A strategy task's bounded inbox, with an explicit overflow policy.

The dispatcher (one JetStream consumer for all strategies) puts events in;
the strategy's task takes them out in order. When the inbox is full:

- ``drop_oldest``: the oldest *market-data* event waiting is dropped to make
  room (the strategy is behind; it sees the freshest data), counted as
  ``dropped``. Fills, order updates, decisions and the strategy's own
  read-back events are never dropped: if nothing droppable is waiting, the
  put waits, counted as ``waited``.
- ``block``: the put waits for room (``waited``). This back-pressures the
  dispatcher, and so every strategy, and JetStream itself: choose it for a
  strategy that must see every bar.

Either way nothing is lost silently: each overflow is counted (the runner
exports it as ``tradebus_strategy_inbox_overflow_total{strategy,action}``).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from libs.contract.envelope import Event
from libs.strategy.books import MARKET_DATA

OverflowAction = Literal["dropped", "waited"]


@dataclass(frozen=True, slots=True)
class Item:
    """One event for a strategy; ``quiet`` ones only update its books (catch-up);
    a ``mark`` is its price only (``mark_only``): another strategy's fill, or
    a price of an option's underlying the strategy does not trade. Marks are
    market data: dropped first, like the prints the strategy is shown."""

    event: Event
    quiet: bool = False
    mark: bool = False

    @property
    def droppable(self) -> bool:
        return self.mark or isinstance(self.event, MARKET_DATA)


class Inbox:
    """Single producer, single consumer; bounded; closed with :meth:`close`."""

    def __init__(
        self,
        capacity: int,
        policy: Literal["drop_oldest", "block"],
        on_overflow: Callable[[OverflowAction], None] = lambda _action: None,
    ) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self.capacity = capacity
        self.policy = policy
        self.on_overflow = on_overflow
        self._items: deque[Item] = deque()
        self._not_empty = asyncio.Event()
        self._not_full = asyncio.Event()
        self._not_full.set()
        self._closed = False

    def __len__(self) -> int:
        return len(self._items)

    @property
    def closed(self) -> bool:
        return self._closed

    def _drop_oldest_market_data(self) -> bool:
        for i, item in enumerate(self._items):
            if item.droppable:
                del self._items[i]
                return True
        return False

    async def put(self, item: Item) -> None:
        """Queue ``item``, applying the overflow policy when full."""
        if self._closed:
            raise RuntimeError("inbox is closed")
        waited = False
        while len(self._items) >= self.capacity:
            if self.policy == "drop_oldest" and self._drop_oldest_market_data():
                self.on_overflow("dropped")
                break
            if not waited:
                waited = True
                self.on_overflow("waited")
            self._not_full.clear()
            await self._not_full.wait()
        self._items.append(item)
        self._not_empty.set()

    async def get(self) -> Item | None:
        """The next item; None once the inbox is closed and empty."""
        while not self._items:
            if self._closed:
                return None
            self._not_empty.clear()
            await self._not_empty.wait()
        item = self._items.popleft()
        self._not_full.set()
        return item

    def close(self) -> None:
        """No more puts; :meth:`get` drains what is left, then returns None."""
        self._closed = True
        self._not_empty.set()
