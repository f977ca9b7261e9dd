"""Is the feed stale? No data for ``stale_after`` while the market is open.

Pure and synchronous: the caller passes the time in, and market hours come
through the small :class:`MarketHours` port (the exchange calendar in
production, a fixed schedule in tests), so the decision is deterministic.

:class:`StaleMonitor` reports *transitions* only: ``"stale"`` once when the
feed goes quiet during market hours, ``"recovered"`` once when data flows
again (or the market closes: out of hours, silence is normal). Silence is
counted from the open at the earliest (as seen by :meth:`StaleMonitor.check`),
so the quiet night before does not make the feed stale at 9:30. A
disconnected feed is silent too, so a long outage is reported stale as well.
"""

from __future__ import annotations

from typing import Literal, Protocol

Transition = Literal["stale", "recovered"]


class MarketHours(Protocol):
    """Whether the market is open at a given time (ns since the epoch)."""

    def is_open(self, ts_ns: int) -> bool: ...


class AlwaysOpen:
    """Market hours for round-the-clock data (and tests)."""

    def is_open(self, ts_ns: int) -> bool:
        return True


class StaleMonitor:
    """Tracks the last data time and says when the feed turns stale or recovers."""

    def __init__(self, stale_after_ns: int, hours: MarketHours, *, now_ns: int) -> None:
        if stale_after_ns <= 0:
            raise ValueError("stale_after_ns must be positive")
        self.stale_after_ns = stale_after_ns
        self.hours = hours
        #: When data last arrived (or when we started watching).
        self.last_data_ns = now_ns
        self.stale = False
        #: Why we last turned stale or recovered (for the status message).
        self.reason = ""
        self._was_open: bool | None = None

    def on_data(self, now_ns: int) -> Transition | None:
        """Data arrived at ``now_ns``; ``"recovered"`` if the feed was stale."""
        self.last_data_ns = max(self.last_data_ns, now_ns)
        if self.stale:
            self.stale = False
            self.reason = "data is flowing again"
            return "recovered"
        return None

    def silent_for_ns(self, now_ns: int) -> int:
        return max(0, now_ns - self.last_data_ns)

    def check(self, now_ns: int) -> Transition | None:
        """Evaluate at ``now_ns``; the transition, if the state changed."""
        is_open = self.hours.is_open(now_ns)
        if is_open and self._was_open is False:
            # The market just opened: silence before the open does not count.
            self.last_data_ns = max(self.last_data_ns, now_ns)
        self._was_open = is_open
        quiet = self.silent_for_ns(now_ns)
        should_be_stale = is_open and quiet >= self.stale_after_ns
        if should_be_stale and not self.stale:
            self.stale = True
            self.reason = f"no data for {quiet / 1e9:.1f}s during market hours"
            return "stale"
        if self.stale and not should_be_stale:
            self.stale = False
            self.reason = "market closed"
            return "recovered"
        return None
