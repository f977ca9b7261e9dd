"""DeferredAcks: acks held briefly, then sent together; flush sends at once."""

from __future__ import annotations

from typing import Any, cast

import nats.errors
from nats.aio.msg import Msg

from libs.bus.acks import DeferredAcks
from libs.testing.wait import eventually


class Acked:
    """Stands in for a delivered message: records when it is acked."""

    def __init__(self, log: list[str], name: str, *, fail: bool = False) -> None:
        self.log, self.name, self.fail = log, name, fail

    async def ack(self) -> None:
        if self.fail:
            raise nats.errors.ConnectionClosedError
        self.log.append(self.name)


def msg(x: Any) -> Msg:
    return cast(Msg, x)


async def test_acks_wait_for_the_delay_then_leave_together_in_order() -> None:
    sent: list[str] = []
    acks = DeferredAcks(delay=0.05)
    for name in ("a", "b", "c"):
        acks.add(msg(Acked(sent, name)))
    assert sent == []  # nothing leaves at once
    await eventually(lambda: sent == ["a", "b", "c"], timeout=2)


async def test_flush_sends_at_once_and_a_failed_ack_does_not_stop_the_rest() -> None:
    sent: list[str] = []
    acks = DeferredAcks(delay=60)
    acks.add(msg(Acked(sent, "a")))
    acks.add(msg(Acked(sent, "lost", fail=True)))
    acks.add(msg(Acked(sent, "b")))
    await acks.flush()
    assert sent == ["a", "b"]
    await acks.flush()  # nothing queued: a no-op
    assert sent == ["a", "b"]
