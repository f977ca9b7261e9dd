"""Where the recorder may trim the stream: the floor below which it purges.

The stream is the only copy of a message until the event store holds it, and
the place readers other than the recorder find it. A purge with floor ``F``
removes every message below ``F``; ``F`` is the lowest of:

- one past the last sequence the store has committed: nothing unrecorded
  goes (the store is gapless, so everything below is in it);
- the first sequence of the keep window (the stream's own timestamps): late
  consumers, the risk-gate and strategy-runner starting from the store's
  tail, the duplicate window all still find their messages;
- for each durable consumer that takes acks, the first message it may still
  need (a :class:`Hold`): a broker-gateway that is down finds its pending
  commands when it comes back. A consumer with ack policy none keeps its
  place elsewhere (the store) and holds nothing back.

Pure and synchronous: the NATS side is ``services/recorder/adapters/trim.py``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

#: What holds the floor when it is the store's next sequence or the keep window.
STORE = "the event store"
KEEP_WINDOW = "the keep window"


@dataclass(frozen=True, slots=True)
class ConsumerPlace:
    """Where a durable consumer is in the stream (from its consumer info)."""

    name: str
    takes_acks: bool
    #: Stream sequence up to which everything is acknowledged.
    ack_floor: int
    #: Stream sequence of the last message delivered.
    delivered: int
    #: Delivered, not acknowledged yet.
    ack_pending: int
    #: Matching messages not delivered yet.
    pending: int


def needed_from(place: ConsumerPlace) -> int | None:
    """The stream sequence from which ``place`` may still need messages, or
    None for none. (Only the ones its filter matches: the adapter looks up the
    first of them, since a filtered consumer's ack floor stays at the last
    message it matched.)

    Delivered but unacknowledged messages start right after the ack floor;
    with nothing awaiting an ack, what is left starts after the last delivered
    one. A consumer with neither pending has everything it wants: its next
    message is one not published yet. (Its ack floor does not say so: a
    consumer whose filter matched nothing stays at 0.)
    """
    if not place.takes_acks:
        return None
    if place.ack_pending > 0:
        return place.ack_floor + 1
    if place.pending > 0:
        return min(place.ack_floor, place.delivered) + 1
    return None


@dataclass(frozen=True, slots=True)
class Hold:
    """Consumer ``consumer`` still needs the message at ``seq``."""

    consumer: str
    seq: int


@dataclass(frozen=True, slots=True)
class Floor:
    """Keep the messages at or above ``seq``; ``held_by`` says what set it."""

    seq: int
    held_by: str


def trim_floor(*, committed: int, keep_from: int, holds: Iterable[Hold]) -> Floor:
    """The lowest of the three limits (see the module docstring).

    ``committed`` is the store's last committed sequence, ``keep_from`` the
    first stream sequence inside the keep window (one past the stream's last
    when none is). The result is never above ``committed + 1``.
    """
    floor = Floor(committed + 1, STORE)
    if keep_from < floor.seq:
        floor = Floor(keep_from, KEEP_WINDOW)
    for hold in holds:
        if hold.seq < floor.seq:
            floor = Floor(hold.seq, f"consumer {hold.consumer}")
    return floor
