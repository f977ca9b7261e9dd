"""Strategy kinds: short names for the shipped examples, or ``module:Class``.

A ``kind`` in ``strategies.yaml`` is either one of :data:`BUILTIN`
(``sma_crossover``) or an import path to your own class
(``my_desk.strategies.gap:GapFade``). Classes are imported when the file is
loaded, so a typo fails start-up, not the first bar; so does a module whose
top level raises anything else (a bad constant, a missing variable), as a
config error naming the entry's ``kind``, not a traceback.
"""

from __future__ import annotations

import importlib
from typing import Any

from libs.strategy.base import Strategy

BUILTIN: dict[str, str] = {
    "sma_crossover": "libs.strategy.examples.sma_crossover:SmaCrossover",
    "opening_range_breakout": "libs.strategy.examples.opening_range:OpeningRangeBreakout",
    "bollinger_reversion": "libs.strategy.examples.bollinger:BollingerReversion",
    "pairs_trade": "libs.strategy.examples.pairs:PairsTrade",
}


class UnknownStrategy(LookupError):
    """``kind`` names no strategy class."""


def resolve(kind: str) -> type[Strategy[Any]]:
    """The strategy class ``kind`` names."""
    path = BUILTIN.get(kind, kind)
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        known = ", ".join(sorted(BUILTIN))
        raise UnknownStrategy(f"unknown strategy {kind!r} (one of {known}, or 'module:Class')")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise UnknownStrategy(f"cannot import {module_name!r}: {e}") from e
    except Exception as e:
        # Any error of the module's own top-level code: it is the operator's
        # module, and the config error must name it and what it raised.
        reason = f"{type(e).__name__}: {e}"
        raise UnknownStrategy(f"cannot import {module_name!r}: {reason}") from e
    cls = getattr(module, attr, None)
    if not (isinstance(cls, type) and issubclass(cls, Strategy)):
        raise UnknownStrategy(f"{path!r} is not a Strategy subclass")
    return cls
