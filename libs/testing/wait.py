"""Wait on a condition with a timeout, never on a fixed sleep."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable
from typing import Any


class ConditionTimeout(AssertionError):
    """The condition did not hold before the timeout."""


async def eventually(
    condition: Callable[[], Any],
    *,
    timeout: float = 10.0,
    interval: float = 0.02,
    message: str | Callable[[], str] = "",
) -> Any:
    """Poll ``condition`` (sync or async) until it returns something truthy.

    Returns that value; raises :class:`ConditionTimeout` with the last value
    (or exception) seen when ``timeout`` runs out.
    """
    end = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            value = condition()
            if inspect.isawaitable(value):
                value = await value
            if value:
                return value
            last = value
        except (AssertionError, OSError, ConnectionError) as e:
            last = e
        if time.monotonic() >= end:
            what = message() if callable(message) else message
            raise ConditionTimeout(f"{what or 'condition'} not met in {timeout}s; last: {last!r}")
        await asyncio.sleep(interval)  # polling interval, not synchronisation
