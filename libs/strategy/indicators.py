"""Small Decimal indicators the example strategies share (no floats anywhere)."""

from __future__ import annotations

from collections import deque
from decimal import Context, Decimal

ZERO = Decimal(0)


class Rolling:
    """The last ``size`` values, with their mean and population standard deviation."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError("size must be >= 1")
        self.size = size
        self._values: deque[Decimal] = deque(maxlen=size)
        self._sum = ZERO

    def __len__(self) -> int:
        return len(self._values)

    @property
    def full(self) -> bool:
        return len(self._values) == self.size

    @property
    def values(self) -> tuple[Decimal, ...]:
        return tuple(self._values)

    def push(self, value: Decimal) -> None:
        if self.full:
            self._sum -= self._values[0]
        self._values.append(value)
        self._sum += value

    def mean(self) -> Decimal:
        if not self._values:
            raise ValueError("no values yet")
        return self._sum / len(self._values)

    def mean_of_last(self, n: int) -> Decimal:
        """Mean of the ``n`` most recent values."""
        if not 1 <= n <= len(self._values):
            raise ValueError(f"need 1 <= n <= {len(self._values)}, got {n}")
        values = list(self._values)[-n:]
        return sum(values, ZERO) / n

    def stdev(self) -> Decimal:
        """Population standard deviation (Bollinger's convention)."""
        mean = self.mean()
        variance = sum(((v - mean) ** 2 for v in self._values), ZERO) / len(self._values)
        return variance.sqrt()


#: Room for any value a strategy may round: the default context's 28 digits
#: made quantize fail (InvalidOperation) on a value of more than 28 - places
#: digits, such as a z-score over a deviation that is rounding noise.
_ROUNDING = Context(prec=100)


def rounded(value: Decimal, places: int = 4) -> Decimal:
    """``value`` to ``places`` decimals, for reasons and signal strengths."""
    return value.quantize(Decimal(1).scaleb(-places), context=_ROUNDING)
