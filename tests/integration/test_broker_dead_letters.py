"""The gateway's dead letters when the stream will not take them: real NATS,
the real command consumer, worker and paper adapter, and the real paper
broker server (the command path of ``command_path``).

A dead letter the stream does not take (here: no stream captures
``deadletter.>``) is given up after the gateway's dead-letter deadline; its
message is handed back and dead-lettered when it comes again, while the
commands after it are carried out. It used to wait out the bus's 30 s,
every command behind it waiting too, and then end the gateway for every
account (PublishFailed).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from libs.bus.client import Bus
from libs.contract.events import CancelOrder, CancelOrderPayload
from libs.contract.subjects import DEADLETTER_ALL, RECORDED_SUBJECTS, STREAM
from libs.testing.streams import delete_stream
from libs.testing.wait import eventually
from services.broker_gateway import metrics
from services.broker_gateway.adapters.commands import command_dead_letter
from services.broker_gateway.gateway import MAX_FAILURES, Timings
from services.paper_broker.domain.fill_model import MarketUpdate
from tests.integration.command_path import CLOCK, D, Venue, gateway, submit

DEADLINE_S = 0.2
RETRY_S = 0.5
NAK_DELAY_S = 0.2  # a failed command's hand-back (the service's: 2 s)
DEAD_SUBJECT = "deadletter.broker-gateway"
CONSUMER = "broker-gateway-test"  # the command path's (see gateway())


@pytest.fixture
async def venue() -> AsyncIterator[Venue]:
    v = Venue("acct-a")
    await v.up()
    v.book.on_market(MarketUpdate.trade("AAPL", D(100)))
    try:
        yield v
    finally:
        await v.down()


async def refuse_dead_letters(bus: Bus) -> None:
    """The stream made again without ``deadletter.>``: a dead letter's publish
    finds no stream (no responders) until :func:`take_dead_letters`."""
    await delete_stream(bus.js, STREAM)
    await bus.ensure_stream(subjects=[s for s in RECORDED_SUBJECTS if s != DEADLETTER_ALL])


async def take_dead_letters(bus: Bus) -> None:
    await bus.ensure_stream()  # adds the missing subjects


async def dead_letters(bus: Bus) -> int:
    """How many dead letters of the gateway the stream holds."""
    info = await bus.js.stream_info(STREAM, subjects_filter=">")
    return (info.state.subjects or {}).get(DEAD_SUBJECT, 0)


async def last_dead_letter(bus: Bus) -> dict[str, Any]:
    msg = await bus.js.get_last_msg(STREAM, DEAD_SUBJECT)
    record: dict[str, Any] = orjson.loads(msg.data or b"")
    return record


async def acked(bus: Bus) -> bool:
    """Whether the command consumer has nothing delivered and unacknowledged,
    nor anything left to deliver."""
    info = await bus.js.consumer_info(STREAM, CONSUMER)
    return (info.num_ack_pending, info.num_pending) == (0, 0)


async def dead_lettered_once(bus: Bus) -> bool:
    """Whether the stream holds one dead letter of the gateway and the command
    consumer has acknowledged everything (none is to come again)."""
    return await dead_letters(bus) == 1 and await acked(bus)


async def test_an_undecodable_command_whose_dead_letter_is_not_taken_is_handed_back(
    bus: Bus, venue: Venue, caplog: pytest.LogCaptureFixture
) -> None:
    """An order command that does not decode is dead-lettered by the consumer
    every account shares. Its dead letter not taken, the consumer waited the
    bus's 30 s (no command reached any account), then ended on PublishFailed
    and the gateway with it. Now it gives up after the dead-letter deadline,
    hands the message back (nak with a delay) and goes on: the submit after it
    is carried out, the message comes again and is tried again, and once the
    stream takes dead letters it is dead-lettered once and acknowledged."""
    await refuse_dead_letters(bus)
    not_taken = metrics.DEAD_LETTERS_NOT_TAKEN.labels(reason="malformed_json")
    before = not_taken._value.get()
    bad = await bus.js.publish(f"orders.cmd.{venue.account}", b"not an event")
    async with gateway(
        bus, [venue], dead_letter_deadline_s=DEADLINE_S, dead_letter_retry_s=RETRY_S
    ) as gw:
        assert await gw.workers[venue.account].port.wait_connected(timeout=10)
        await bus.publish(submit(venue.account, "AAPL", "3"))
        # Carried out well within the bus's 30 s, and the consumer goes on.
        await eventually(
            lambda: gw.ended() or [p.qty for p in venue.book.positions(venue.account)] == [D(3)],
            timeout=10,
        )
        assert not gw.ended()
        # Handed back and tried again (each try within the deadline, and a
        # publish's own ack timeout of 2 s, of the last).
        await eventually(lambda: gw.ended() or not_taken._value.get() >= before + 2, timeout=10)
        assert not gw.ended()
        assert "not taken" in caplog.text
        assert await dead_letters(bus) == 0

        await take_dead_letters(bus)
        await eventually(lambda: dead_lettered_once(bus), timeout=10)
        assert (await last_dead_letter(bus))["payload"]["stream_seq"] == bad.seq
        assert not gw.ended()


async def test_a_failed_command_whose_dead_letter_is_not_taken_is_handed_back(
    bus: Bus, venue: Venue, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A command that failed MAX_FAILURES times (here: a bug's error on a
    cancel) is dead-lettered by its account's worker. Its dead letter not
    taken, the PublishFailed came after the bus's 30 s and ended the
    worker's command task, so the gateway, for every account. Now, after
    the gateway's dead-letter deadline, the command is handed back (nak with
    a delay) and, when it comes again, dead-lettered again, not carried out
    again; the account's next command is carried out meanwhile. Once the
    stream takes dead letters the command is dead-lettered once and acked."""
    await refuse_dead_letters(bus)
    not_taken = metrics.DEAD_LETTERS_NOT_TAKEN.labels(reason="command_failed")
    before = not_taken._value.get()
    dead = command_dead_letter(
        bus,
        service="broker-gateway",
        clock=CLOCK,
        source="broker-gateway/test",
        deadline_s=DEADLINE_S,
    )
    timings = Timings(dead_letter_retry_s=RETRY_S, nak_delay_s=NAK_DELAY_S)
    async with gateway(bus, [venue], dead_letter=dead, timings=timings) as gw:
        w = gw.workers[venue.account]
        assert await w.port.wait_connected(timeout=10)
        tries: list[uuid.UUID] = []

        async def broken(command: CancelOrder) -> str:
            tries.append(command.id)
            raise KeyError("a bug")

        monkeypatch.setattr(w, "_cancel", broken)
        cancel = CancelOrder.create(
            CancelOrderPayload(order_id=uuid.uuid4(), account=venue.account),
            source="test/risk-gate",
            clock=CLOCK,
        )
        await bus.publish(cancel)
        # MAX_FAILURES tries NAK_DELAY_S apart, then the dead letter's,
        # each within the deadline and a publish's own ack timeout (2 s).
        await eventually(lambda: gw.ended() or not_taken._value.get() >= before + 2, timeout=20)
        assert not gw.ended()
        assert "not taken" in caplog.text
        assert tries == [cancel.id] * MAX_FAILURES  # not carried out again
        assert await dead_letters(bus) == 0

        await bus.publish(submit(venue.account, "AAPL", "3"))
        await eventually(
            lambda: gw.ended() or [p.qty for p in venue.book.positions(venue.account)] == [D(3)],
            timeout=10,
        )
        assert not gw.ended()

        await take_dead_letters(bus)
        await eventually(lambda: dead_lettered_once(bus), timeout=10)
        payload = (await last_dead_letter(bus))["payload"]
        assert payload["error"] == "KeyError: 'a bug'"
        assert tries == [cancel.id] * MAX_FAILURES
        assert not gw.ended()
