"""While the stream refuses the gateway's dead letters, only the first waits
out the dead-letter deadline: real NATS, the real command consumer, worker
and paper adapter (the command path of ``command_path``).

Each undecodable command that came back (every ``dead_letter_retry_s``)
held the consumer every account shares for the whole deadline: a few of
them kept every command waiting. Once the stream has refused one, later
ones get one attempt until one is taken; each is still handed back and
dead-lettered once the stream takes dead letters again."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from libs.bus.client import Bus
from libs.bus.errors import PublishFailed
from libs.contract.subjects import DEADLETTER_ALL, RECORDED_SUBJECTS, STREAM
from libs.testing.streams import delete_stream
from libs.testing.wait import eventually
from services.broker_gateway.adapters.commands import command_dead_letter
from services.paper_broker.domain.fill_model import MarketUpdate
from tests.integration.command_path import CLOCK, D, Venue, gateway, submit

DEADLINE_S = 3.0
RETRY_S = 0.5
BAD = 4
CONSUMER = "broker-gateway-test"  # the command path's (see gateway())
DEAD_SUBJECT = "deadletter.broker-gateway"


@pytest.fixture
async def venue() -> AsyncIterator[Venue]:
    v = Venue("acct-a")
    await v.up()
    v.book.on_market(MarketUpdate.trade("AAPL", D(100)))
    try:
        yield v
    finally:
        await v.down()


async def dead_letters(bus: Bus) -> int:
    info = await bus.js.stream_info(STREAM, subjects_filter=">")
    return (info.state.subjects or {}).get(DEAD_SUBJECT, 0)


async def all_dead_lettered(bus: Bus) -> bool:
    info = await bus.js.consumer_info(STREAM, CONSUMER)
    pending = (info.num_ack_pending, info.num_pending)
    return await dead_letters(bus) == BAD and pending == (0, 0)


async def test_only_the_first_refused_dead_letter_waits_out_the_deadline(
    bus: Bus, venue: Venue
) -> None:
    """Four undecodable commands, then a submit, with the stream refusing
    dead letters (no stream captures ``deadletter.>``) and a deadline of
    3 s. Each waited the 3 s: the submit was carried out after 12 s. Now
    the first waits, the other three get one attempt each: the submit is
    carried out within two deadlines. Once the stream takes dead letters
    each of the four is dead-lettered and every message acknowledged."""
    await delete_stream(bus.js, STREAM)
    await bus.ensure_stream(subjects=[s for s in RECORDED_SUBJECTS if s != DEADLETTER_ALL])
    for i in range(BAD):
        await bus.js.publish(f"orders.cmd.{venue.account}", f"not an event {i}".encode())
    async with gateway(
        bus, [venue], dead_letter_deadline_s=DEADLINE_S, dead_letter_retry_s=RETRY_S
    ) as gw:
        assert await gw.workers[venue.account].port.wait_connected(timeout=10)
        started = time.monotonic()
        await bus.publish(submit(venue.account, "AAPL", "3"))
        await eventually(
            lambda: gw.ended() or [p.qty for p in venue.book.positions(venue.account)] == [D(3)],
            timeout=BAD * DEADLINE_S + 10,
        )
        assert not gw.ended()
        took = time.monotonic() - started
        assert took < 2 * DEADLINE_S, f"the submit waited {took:.1f}s behind the dead letters"
        assert await dead_letters(bus) == 0

        await bus.ensure_stream()  # takes dead letters again
        await eventually(lambda: all_dead_lettered(bus), timeout=BAD * DEADLINE_S + 10)
        assert not gw.ended()


class RefusingBus:
    """A bus whose stream refuses dead letters until ``taking``; it records
    the deadline each publish was given."""

    def __init__(self) -> None:
        self.deadlines: list[float] = []
        self.taking = False

    async def publish(self, event: Any, *, deadline_s: float) -> None:
        self.deadlines.append(deadline_s)
        if not self.taking:
            raise PublishFailed("deadletter.broker-gateway: no ack")


class Msg:
    subject = "orders.cmd.acct"
    data = b"{}"
    headers = None
    reply = "$JS.ACK.TRADEBUS.broker-gateway.1.7.7.0.0"


async def test_a_failed_commands_dead_letters_get_one_attempt_while_refused() -> None:
    """The workers' dead letters (commands that failed too often): the
    first refused waits the deadline, the next ones get one attempt, and
    once one is taken the next waits the deadline again."""
    bus = RefusingBus()
    dead = command_dead_letter(
        bus,  # type: ignore[arg-type]
        service="broker-gateway",
        clock=CLOCK,
        source="broker-gateway/test",
        deadline_s=DEADLINE_S,
    )
    for _ in range(3):
        with pytest.raises(PublishFailed):
            await dead(Msg(), "KeyError: 'a bug'")  # type: ignore[arg-type]
    bus.taking = True
    await dead(Msg(), "KeyError: 'a bug'")  # type: ignore[arg-type]
    await dead(Msg(), "KeyError: 'a bug'")  # type: ignore[arg-type]
    assert bus.deadlines == [DEADLINE_S, 0.0, 0.0, 0.0, DEADLINE_S]
