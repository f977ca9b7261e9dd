"""The bus library against a real JetStream: dedup, pipelining, consumers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats
import nats.errors
import nats.js.errors
import pytest
import uvloop

from libs.bus.client import Bus, Outgoing
from libs.bus.consumer import EventConsumer, ensure_consumer
from libs.bus.errors import BusUnavailable
from libs.bus.pull import PullFetcher, consumer_seq, parse_ack_subject
from libs.contract.codec import decode
from libs.contract.events import AnyEvent, MessageDeadLettered
from libs.local.servers import NatsServer, free_port
from libs.testing.producer import make_trades
from libs.testing.wait import eventually


async def test_publish_is_deduplicated_by_event_id(bus: Bus) -> None:
    event = next(iter(make_trades(1, "dedup")))
    first = await bus.publish(event)
    again = await bus.publish(event)
    assert (first.seq, first.duplicate) == (1, None)
    assert again.duplicate is True
    assert (await bus.js.stream_info("TRADEBUS")).state.messages == 1


async def test_publish_many_acks_every_message_in_order(bus: Bus) -> None:
    events = list(make_trades(5000, "many"))
    assert await bus.publish_many(events, window=256) == 5000
    info = await bus.js.stream_info("TRADEBUS")
    assert (info.state.messages, info.state.last_seq) == (5000, 5000)
    last = await bus.js.get_msg("TRADEBUS", seq=5000)
    assert last.headers is not None
    assert last.headers["Nats-Msg-Id"] == str(events[-1].id)


async def test_ensure_stream_and_consumer_are_idempotent(bus: Bus) -> None:
    a = await bus.ensure_stream()
    b = await bus.ensure_stream()
    assert a.config.subjects == b.config.subjects
    c1 = await ensure_consumer(bus, "idem", filter_subject="md.>")
    c2 = await ensure_consumer(bus, "idem", filter_subject="md.>")
    assert c1.name == c2.name == "idem"


async def test_consumer_handles_good_events_and_dead_letters_bad_ones(bus: Bus) -> None:
    good = list(make_trades(3, "cons"))
    await bus.publish(good[0])
    await bus.publish_raw(Outgoing("md.trade.AAPL", b"not json at all", "bad-1"))
    await bus.publish_many(good[1:])
    seen: list[AnyEvent] = []
    letters: list[str] = []

    async def handler(event: AnyEvent, _msg: object) -> None:
        seen.append(event)

    consumer = EventConsumer(
        bus, service="test-svc", durable="test-svc", filter_subject="md.>",
        on_dead_letter=letters.append,
    )  # fmt: skip
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(handler, stop=stop))
    try:
        await eventually(lambda: len(seen) == 3, timeout=10)
        assert seen == good
        assert letters == ["malformed_json"]
        dead = await bus.js.get_msg("TRADEBUS", subject="deadletter.test-svc", direct=True)
        assert dead.data is not None
        letter = decode(dead.data)
        assert isinstance(letter, MessageDeadLettered)
        assert letter.payload.original_subject == "md.trade.AAPL"
        assert letter.payload.stream_seq == 2
        info = await bus.js.consumer_info("TRADEBUS", "test-svc")
        assert info.num_ack_pending == 0
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)


async def test_publish_together_stores_in_the_order_given(bus: Bus) -> None:
    events = list(make_trades(3, "together"))
    acks = await bus.publish_together(events)
    assert [a.seq for a in acks] == [1, 2, 3]
    again = await bus.publish_together(events)
    assert all(a.duplicate for a in again)
    for seq, event in zip((1, 2, 3), events, strict=True):
        stored = await bus.js.get_msg("TRADEBUS", seq=seq)
        assert stored.headers is not None
        assert stored.headers["Nats-Msg-Id"] == str(event.id)


async def test_publish_together_keeps_the_order_when_a_send_fails(bus: Bus) -> None:
    """The first event's send is refused at once (nats-py's publish slots
    stalled; its outgoing buffer full during an outage is the other case):
    it and the ones after it are published one by one, in order. The later
    ones used to be sent anyway, so the stream stored them before the first
    (the risk-gate's order before the decision that allowed it)."""
    events = list(make_trades(3, "refused"))
    js: Any = bus.js
    send = js.publish_async
    refused: list[str] = []

    async def refuse_the_first(subject: str, payload: bytes, **kw: Any) -> Any:
        if not refused:
            refused.append(subject)
            raise nats.js.errors.TooManyStalledMsgsError
        return await send(subject, payload, **kw)

    js.publish_async = refuse_the_first
    try:
        acks = await bus.publish_together(events)
    finally:
        del js.publish_async
    assert refused
    assert [a.seq for a in acks] == [1, 2, 3]
    for seq, event in zip((1, 2, 3), events, strict=True):
        stored = await bus.js.get_msg("TRADEBUS", seq=seq)
        assert stored.headers is not None
        assert stored.headers["Nats-Msg-Id"] == str(event.id)


async def test_write_pending_hands_publishes_to_the_socket_at_once(bus: Bus) -> None:
    """What publish_together and publish_many buffered is on the socket before
    they wait for acks, not a flusher iteration later; and it is stored once."""
    event = next(iter(make_trades(1, "written")))
    out = Outgoing.of(event)
    ack = await bus.js.publish_async(out.subject, out.data, headers={"Nats-Msg-Id": out.msg_id})
    nc: Any = bus.nc
    assert nc._pending_data_size > 0  # nats-py left it to its flusher
    bus.write_pending()  # no await in between: the flusher cannot have run
    assert nc._pending_data_size == 0
    assert not nc._pending
    assert (await asyncio.wait_for(ack, 5)).seq == 1
    await bus.nc.flush()
    info = await bus.js.stream_info("TRADEBUS")
    assert info.state.messages == 1


@pytest.fixture
async def own_bus(tmp_path: Path) -> AsyncIterator[Bus]:
    """A bus on a NATS server of its own: no other test's connection (one
    closing, a service process ending) can publish into its stream."""
    server = NatsServer(tmp_path / "nats").start()
    try:
        b = await Bus.connect(server.url, name="test-own")
        try:
            await b.ensure_stream()
            yield b
        finally:
            await b.close()
    finally:
        server.stop()


async def test_fetch_with_linger_takes_what_gathered_in_one_pull(own_bus: Bus) -> None:
    """The first message is long-polled for; what follows within the linger is
    taken together; a backlog comes in full batches, in stream order.

    On the shared server, one CI run in nine got a 101st message with the
    first 100: this test counts stream positions, so it has a server of its
    own (and checks the events by id, so a message delivered twice still
    fails it)."""
    bus = own_bus
    await ensure_consumer(bus, "gather", filter_subject="md.>")
    fetcher = PullFetcher(bus, "TRADEBUS", "gather")
    await fetcher.start()
    try:
        events = list(make_trades(350, "gather"))
        first = asyncio.create_task(fetcher.fetch(500, timeout=5, linger=0.5))
        await bus.publish(events[0])
        await bus.publish_many(events[1:100])
        got = await asyncio.wait_for(first, 10)
        # Once in a CI run a 101st message came with the first 100 (100 were
        # published): say what it was, should it come again.
        extra = [(m.subject, m.data[:300]) for m in got[100:]]
        assert [parse_ack_subject(m.reply)[0] for m in got] == list(range(1, 101)), extra
        assert [consumer_seq(m.reply) for m in got] == list(range(1, 101))
        assert [decode(m.data).id for m in got] == [e.id for e in events[:100]]

        await bus.publish_many(events[100:])  # a backlog of 250
        sizes: list[int] = []
        seqs: list[int] = []
        ids: list[object] = []
        while len(seqs) < 250:
            batch = await fetcher.fetch(100, timeout=5, linger=0.05)
            assert batch, "the backlog stopped coming"
            sizes.append(len(batch))
            seqs += [parse_ack_subject(m.reply)[0] for m in batch]
            ids += [decode(m.data).id for m in batch]
        assert sizes == [100, 100, 50]
        assert seqs == list(range(101, 351))
        assert ids == [e.id for e in events[100:]]
        assert await fetcher.fetch(100, timeout=0.2, linger=0.05) == []
    finally:
        await fetcher.close()


def test_close_while_nats_is_away_returns_cleanly(tmp_path: Path) -> None:
    """A service stopped (or a cycle ended) while NATS is down closes its bus
    without an error. Under uvloop, as the services run, nats-py's close
    wrote what it had buffered meanwhile to the dead connection, which raised
    (and made every service exit 1 on SIGTERM, and a risk-gate cycle end in
    a crash instead of a retry)."""
    server = NatsServer(tmp_path / "nats").start()

    async def scenario() -> None:
        bus = await Bus.connect(server.url, name="test-close-away")
        server.stop(kill=True)

        async def away() -> bool:
            return not bus.nc.is_connected

        await eventually(away, timeout=10, message="the client to see NATS gone")
        await bus.nc.publish("anything", b"buffered while away")
        await bus.close()
        assert bus.nc.is_closed

    try:
        uvloop.run(scenario())
    finally:
        server.stop()


async def test_a_fetcher_whose_consumer_vanished_says_so(bus: Bus) -> None:
    """A consumer deleted under a waiting fetcher answers no pull request; the
    fetcher does not wait on for ever but raises NotFoundError (after two
    unanswered requests), so its reader can recreate the consumer or refuse."""
    await ensure_consumer(bus, "vanishing")
    fetcher = PullFetcher(bus, "TRADEBUS", "vanishing")
    await fetcher.start()
    try:
        assert await fetcher.fetch(10, timeout=0.2) == []  # alive: the request ends with 408
        await bus.js.delete_consumer("TRADEBUS", "vanishing")
        fetches = 0

        async def fetch_until_it_raises() -> None:
            nonlocal fetches
            while fetches < 10:  # two unanswered requests of 0.2 s (+0.5 s grace) suffice
                fetches += 1
                await fetcher.fetch(10, timeout=0.2)

        with pytest.raises(nats.js.errors.NotFoundError):
            await fetch_until_it_raises()
        assert fetches <= 4, fetches
    finally:
        await fetcher.close()


async def test_a_prefetch_that_cannot_be_sent_loses_no_fetched_message(tmp_path: Path) -> None:
    """fetch takes its batch from what the open pull request brought, then
    asks for the next one. With NATS away and the client's outgoing buffer
    full, that request cannot be sent (OutboundBufferLimitError): the batch
    already taken is still returned, and the next fetch says the request
    failed. The batch used to be dropped with the error, so those messages
    reached no reader (an explicit-ack consumer redelivered them only after
    its ack wait, one that takes no acks never)."""
    server = NatsServer(tmp_path / "nats").start()
    try:
        setup = await Bus.connect(server.url, name="test-prefetch-setup")
        try:
            await setup.ensure_stream()
            await ensure_consumer(setup, "prefetch", filter_subject="md.>")
            await setup.publish_many(list(make_trades(10, "prefetch")))
        finally:
            await setup.close()
        # A small reconnect buffer, to fill it with little.
        nc = await nats.connect(
            server.url, pending_size=4096, reconnect_time_wait=0.2, max_reconnect_attempts=-1
        )
        bus = Bus(nc, nc.jetstream())
        fetcher = PullFetcher(bus, "TRADEBUS", "prefetch")
        await fetcher.start()
        try:
            first = await fetcher.fetch(5, timeout=5)
            assert [parse_ack_subject(m.reply)[0] for m in first] == [1, 2, 3, 4, 5]
            # The prefetch brings 6..10 into the fetcher's buffer.
            await eventually(lambda: len(fetcher._buffer) == 5, timeout=10)
            server.stop(kill=True)
            await eventually(lambda: not nc.is_connected, timeout=10)

            async def fill() -> None:  # the buffer nats-py keeps while reconnecting
                for _ in range(10_000):  # ~300 fill its 4 KiB
                    await nc.publish("filler", b"x")

            with pytest.raises(nats.errors.OutboundBufferLimitError):
                await fill()
            second = await fetcher.fetch(5, timeout=1)
            assert [parse_ack_subject(m.reply)[0] for m in second] == [6, 7, 8, 9, 10]
            with pytest.raises(nats.errors.OutboundBufferLimitError):
                await fetcher.fetch(5, timeout=1)
        finally:
            await fetcher.close()
            await bus.close()
    finally:
        server.stop()


async def test_a_command_s_first_connection_refused_says_so_at_once() -> None:
    """Nothing listens at the URL: a command's Bus.connect (with a deadline)
    fails at the first refusal, naming the URL and the cause. nats-py tried
    again until the deadline and the error said only "cannot reach NATS at
    URL within 10 s"."""
    url = f"nats://127.0.0.1:{free_port()}"
    started = time.monotonic()
    with pytest.raises(BusUnavailable) as info:
        await Bus.connect(url, name="test-refused", first_connect_deadline_s=10)
    assert time.monotonic() - started < 5
    assert str(info.value).startswith(f"cannot connect to NATS at {url}: connection refused")


AUTH_NATS = "authorization { users = [ { user: ana, password: right } ] }\n"


async def test_a_command_s_first_connection_with_a_wrong_password_says_so_at_once(
    tmp_path: Path,
) -> None:
    """The server refuses the user: the command is told so at once, not after
    its deadline without a cause; a service (no deadline) once connected
    still outlives a NATS restart."""
    config = tmp_path / "auth.conf"
    config.write_text(AUTH_NATS)
    server = NatsServer(tmp_path / "nats", config_file=config).start()
    try:
        started = time.monotonic()
        with pytest.raises(BusUnavailable) as info:
            await Bus.connect(
                server.url, name="test-auth", user="ana", password="wrong",  # noqa: S106
                first_connect_deadline_s=10,
            )  # fmt: skip
        assert time.monotonic() - started < 5
        assert "authorization violation" in str(info.value).lower(), info.value
        assert server.url in str(info.value)

        bus = await Bus.connect(
            server.url, name="test-auth", user="ana", password="right",  # noqa: S106
            first_connect_deadline_s=10,
        )  # fmt: skip
        async with bus:
            await bus.ensure_stream()
            server.stop()
            await eventually(lambda: not bus.nc.is_connected, timeout=10)
            server.start()
            ack = await bus.publish(next(iter(make_trades(1, "again"))), deadline_s=20)
            assert ack.seq == 1
    finally:
        server.stop()


async def test_a_closed_fetcher_gives_back_what_it_had_prefetched_at_once(bus: Bus) -> None:
    """Messages the prefetch brought and nobody fetched are nak'd on close,
    so the next reader of an explicit-ack consumer has them at once. They
    were dropped and came back only after the ack wait (30 s here; the
    gateway's commands: 10 s)."""
    await ensure_consumer(bus, "handover", filter_subject="md.>", ack_wait_s=30)
    await bus.publish_many(list(make_trades(10, "handover")))
    first = PullFetcher(bus, "TRADEBUS", "handover")
    await first.start()
    try:
        taken = await first.fetch(5, timeout=5)
        assert [parse_ack_subject(m.reply)[0] for m in taken] == [1, 2, 3, 4, 5]
        for m in taken:
            await m.ack()
        await eventually(lambda: len(first._buffer) == 5, timeout=10)  # 6..10, prefetched
    finally:
        await first.close()
    second = PullFetcher(bus, "TRADEBUS", "handover")
    await second.start()
    try:
        again = await second.fetch(10, timeout=5)
        assert [parse_ack_subject(m.reply)[0] for m in again] == [6, 7, 8, 9, 10]
    finally:
        await second.close()


async def test_settle_is_no_verdict_from_a_connection_that_dropped(tmp_path: Path) -> None:
    """settle() is the server's verdict on what was published since the last
    one. nats-py answers a flush at once while it reconnects, so with the
    server killed after the publishes settle returned [] as if the server had
    taken them all, and after a reconnect it judged only what reached the new
    connection. Both raise BusUnavailable; the next settle on the new
    connection is a verdict again."""
    server = NatsServer(tmp_path / "nats").start()
    try:
        bus = await Bus.connect(server.url, name="test-settle-lost")
        async with bus:
            await bus.publish_plain("replay.md.x", b"judged")
            assert await bus.settle() == []
            for _ in range(3):
                await bus.publish_plain("replay.md.x", b"never judged")
            server.stop(kill=True)
            await eventually(lambda: not bus.nc.is_connected, timeout=10)
            with pytest.raises(BusUnavailable, match="dropped before the server"):
                await bus.settle()

            server.start()
            await eventually(lambda: bus.nc.is_connected, timeout=10)
            await bus.publish_plain("replay.md.x", b"after the reconnect")
            with pytest.raises(BusUnavailable, match="dropped before the server"):
                await bus.settle()  # what went to the old connection may be lost
            await bus.publish_plain("replay.md.x", b"on the new connection")
            assert await bus.settle() == []
    finally:
        server.stop()
