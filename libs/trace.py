"""Hop timestamps along the order path, for latency work; off unless asked for.

With ``TRADEBUS_TRACE`` set to a directory, each process keeps ``(wall
clock ns, label, key)`` for every :func:`mark` (up to :data:`MAX_MARKS`) and
writes them to ``<directory>/<pid>.trace`` when it exits (after SIGTERM too:
the services exit normally then). The key ties the marks of one order
together across processes: the order id (which is also the broker's client
order id). :func:`hop_table` turns the files into the time between
consecutive marks of each order, which is how ``bench/order_path.py
--trace`` shows where an order's milliseconds go inside the gateway and the
paper broker, not only between the events the store records.

Off, a call site costs one attribute test: call sites write
``if trace.ON: trace.mark(...)`` so that nothing is computed for the key.
"""

from __future__ import annotations

import atexit
import itertools
import os
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from libs.contract.codec import order_id_for
from libs.contract.envelope import Event

ENV = "TRADEBUS_TRACE"
#: A process keeps at most this many marks (about 100 bytes each).
MAX_MARKS = 2_000_000

#: The marks an order passes, in this order, from the strategy-runner's
#: intent to the gateway's ``OrderAccepted`` (with the paper broker).
ORDER_PATH = (
    "OrderIntentCreated written",  # strategy-runner (libs.bus)
    "risk-gate: intent in",
    "SubmitOrder written",  # risk-gate (libs.bus)
    "gateway: command in",
    "gateway: submit begins",
    "gateway: submit sent",
    "paper-broker: submit in",
    "paper-broker: answer queued",
    "paper-broker: written",
    "gateway: accepted read",
    "gateway: fill read",
    "gateway: accepted tracked",
    "gateway: outbox wakes",  # its task takes the events in to publish them
    "OrderAccepted written",  # broker-gateway (libs.bus)
)

_directory = os.environ.get(ENV, "")
ON = bool(_directory)
_marks: list[tuple[int, str, str]] = []


def mark(label: str, key: object, at_ns: int | None = None) -> None:
    """Note that ``key`` passed ``label`` now (or at ``at_ns``)."""
    if len(_marks) < MAX_MARKS:
        _marks.append((at_ns if at_ns is not None else time.time_ns(), label, str(key)))


def write(directory: str | Path) -> Path | None:
    """Write this process's marks to ``directory``; returns the file, if any."""
    if not _marks:
        return None
    path = Path(directory) / f"{os.getpid()}.trace"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for at, label, key in _marks:
            f.write(f"{at}\t{label}\t{key}\n")
    _marks.clear()
    return path


if ON:
    atexit.register(write, _directory)


def read(directory: str | Path) -> dict[str, list[tuple[int, str]]]:
    """Every process's marks under ``directory``: key -> [(ns, label)], by time."""
    by_key: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for path in sorted(Path(directory).glob("*.trace")):
        for line in path.read_text(encoding="utf-8").splitlines():
            at, label, key = line.split("\t", 2)
            by_key[key].append((int(at), label))
    for marks in by_key.values():
        marks.sort()
    return dict(by_key)


@dataclass(frozen=True)
class Hop:
    """From one mark to the next, over every order that passed both in turn."""

    start: str
    end: str
    count: int
    p50_ms: float
    p90_ms: float
    p99_ms: float


def hop_table(by_key: dict[str, list[tuple[int, str]]], path: Iterable[str]) -> list[Hop]:
    """The hops between consecutive labels of ``path``, over the keys that
    have every one of them (each label's first mark counts)."""
    labels = list(path)
    gaps: list[list[int]] = [[] for _ in labels[1:]]
    for marks in by_key.values():
        first: dict[str, int] = {}
        for at, label in marks:
            first.setdefault(label, at)
        if not all(label in first for label in labels):
            continue
        for i, (a, b) in enumerate(itertools.pairwise(labels)):
            gaps[i].append(first[b] - first[a])
    hops = []
    for (a, b), xs in zip(itertools.pairwise(labels), gaps, strict=True):
        if not xs:
            continue
        xs.sort()

        def q(p: float, xs: list[int] = xs) -> float:
            return round(xs[min(len(xs) - 1, int(p * len(xs)))] / 1e6, 3)

        hops.append(Hop(a, b, len(xs), q(0.5), q(0.9), q(0.99)))
    return hops


def order_key(event: Event) -> object | None:
    """The order an event is about, where it is about one (an intent: the
    order it becomes if accepted)."""
    order_id: object | None = getattr(event.payload, "order_id", None)
    if order_id is not None:
        return order_id
    if event.type == "OrderIntentCreated":
        return order_id_for(event.id)
    return None


def published(events: Iterable[Event]) -> None:
    """Mark ``<type> written`` for each event about an order."""
    for event in events:
        key = order_key(event)
        if key is not None:
            mark(f"{event.type} written", key)
