"""The NATS server, not convention, decides who may read through which
consumer and who may trim the stream: the recorder and the paper broker
through their own durable consumers only, only the recorder purges. The
server and its users: tests/integration/nats_permissions_cluster.py."""

from __future__ import annotations

import asyncio
import contextlib

import nats
import nats.errors
import nats.js.errors
import pytest
from nats.js import api as js_api

from libs.bus.consumer import ensure_consumer
from libs.contract.subjects import RECORDER_CONSUMER, STREAM
from tests.integration import nats_permissions_cluster
from tests.integration.nats_permissions_cluster import (
    CLOCK,
    DENIED_REQUEST_TIMEOUT,
    USERS,
    Cluster,
    bar,
    eventually,
    settled,
)

# The module's nats-server and its users, registered in this module.
cluster = nats_permissions_cluster.cluster
stream = nats_permissions_cluster.stream

# -------------------------------------------------------- durable consumers


async def test_recorder_uses_its_own_durable_consumer(cluster: Cluster, stream: str) -> None:
    async with cluster.bus("marketdata") as feed:
        acks = [await feed.publish(bar(f"REC{i}")) for i in range(3)]

    async with cluster.bus("recorder") as bus:
        await bus.ensure_stream()  # the stream exists: only STREAM.INFO is sent
        # Legacy durable create ($JS.API.CONSUMER.DURABLE.CREATE...), as
        # libs.bus.consumer.ensure_consumer does it, and consumer info.
        created = await ensure_consumer(bus, RECORDER_CONSUMER, filter_subject="md.bar.>")
        assert created.name == RECORDER_CONSUMER
        again = await ensure_consumer(bus, RECORDER_CONSUMER, filter_subject="md.bar.>")
        assert again.name == RECORDER_CONSUMER

        sub = await bus.js.pull_subscribe_bind(RECORDER_CONSUMER, stream=STREAM)
        try:
            seen: list[int] = []

            async def fetched_ours() -> bool:
                with contextlib.suppress(nats.errors.TimeoutError):
                    for msg in await sub.fetch(10, timeout=0.5):
                        seen.append(msg.metadata.sequence.stream)
                        await msg.ack()
                return {a.seq for a in acks} <= set(seen)

            await eventually(fetched_ours, what="the recorder to fetch the bars")
        finally:
            await sub.unsubscribe()

        async def all_acked() -> bool:
            info = await bus.js.consumer_info(STREAM, RECORDER_CONSUMER)
            return bool(info.num_ack_pending == 0 and info.ack_floor.stream_seq >= max(seen))

        await eventually(all_acked, what="the recorder's acks to be applied")

        # Delete, then create with a name and filter
        # ($JS.API.CONSUMER.CREATE.TRADEBUS.event-recorder.<filter>).
        assert await bus.js.delete_consumer(STREAM, RECORDER_CONSUMER)
        config = js_api.ConsumerConfig(
            name=RECORDER_CONSUMER,
            durable_name=RECORDER_CONSUMER,
            filter_subject="md.>",
            ack_policy=js_api.AckPolicy.EXPLICIT,
        )
        info = await bus.js.add_consumer(STREAM, config)
        assert info.config.filter_subject == "md.>"
        assert await bus.js.delete_consumer(STREAM, RECORDER_CONSUMER)

        # Direct get of a stored message.
        direct = await bus.js.get_msg(STREAM, acks[0].seq, direct=True)
        assert direct.seq == acks[0].seq


async def test_recorder_cannot_create_or_use_another_consumer(
    cluster: Cluster, stream: str
) -> None:
    async with cluster.bus("admin") as admin:
        await ensure_consumer(admin, "broker-gateway", filter_subject="orders.cmd.>")

    async with cluster.conn("recorder") as rec:
        js = rec.js
        with pytest.raises(nats.errors.TimeoutError):
            await js.add_consumer(STREAM, durable_name="sneaky")
        with pytest.raises(nats.errors.TimeoutError):
            await js.add_consumer(STREAM, name="sneaky", durable_name="sneaky")
        with pytest.raises(nats.errors.TimeoutError):
            await js.consumer_info(STREAM, "broker-gateway")
        sub = await js.pull_subscribe_bind("broker-gateway", stream=STREAM)
        with pytest.raises(nats.errors.TimeoutError):
            await sub.fetch(1, timeout=DENIED_REQUEST_TIMEOUT)
        await sub.unsubscribe()
        with pytest.raises(nats.errors.TimeoutError):
            await js.delete_consumer(STREAM, "broker-gateway")
        with pytest.raises(nats.errors.TimeoutError):
            await js.delete_stream(STREAM)
        await settled(rec.nc)
        for refused in (
            f"$JS.API.CONSUMER.DURABLE.CREATE.{STREAM}.sneaky",
            f"$JS.API.CONSUMER.CREATE.{STREAM}.sneaky",
            f"$JS.API.CONSUMER.INFO.{STREAM}.broker-gateway",
            f"$JS.API.CONSUMER.MSG.NEXT.{STREAM}.broker-gateway",
            f"$JS.API.CONSUMER.DELETE.{STREAM}.broker-gateway",
            f"$JS.API.STREAM.DELETE.{STREAM}",
        ):
            assert rec.refused(refused), (refused, rec.errors)

    async with cluster.bus("admin") as admin:
        with pytest.raises(nats.js.errors.NotFoundError):
            await admin.js.consumer_info(STREAM, "sneaky")
        info = await admin.js.consumer_info(STREAM, "broker-gateway")
        assert info.delivered.stream_seq == 0  # nothing was handed to the recorder
        await admin.js.stream_info(STREAM)  # the stream is still there


async def test_paper_broker_reads_prices_through_its_own_consumer(
    cluster: Cluster, stream: str
) -> None:
    # The paper broker's own feed, as `tradebus paper-broker run` starts it:
    # it (re)creates durable "paper-broker" and pulls md.trade.> / md.bar.>.
    from services.paper_broker.adapters.market import NatsPriceFeed
    from services.paper_broker.domain.fill_model import MarketUpdate

    async with cluster.bus("marketdata") as feed:
        await feed.publish(bar("PAPERPX"))
    updates: list[MarketUpdate] = []
    stop = asyncio.Event()
    price_feed = NatsPriceFeed(
        url=cluster.url,
        name="test-paper-broker",
        user="paper-broker",
        password=cluster.passwords["paper-broker"],
        subjects=["md.trade.>", "md.bar.>"],
        consumer="paper-broker",
    )
    running = asyncio.create_task(price_feed.run(updates.append, stop))
    try:

        async def priced() -> bool:
            return any(u.symbol == "PAPERPX" for u in updates)

        await eventually(priced, within=10, what="the paper broker to see the bar")
    finally:
        stop.set()
        await asyncio.wait_for(running, timeout=10)

    async with cluster.conn("paper-broker") as conn:
        with pytest.raises(nats.errors.TimeoutError):
            await conn.js.consumer_info(STREAM, "broker-gateway")
        await settled(conn.nc)
        assert conn.refused(f"$JS.API.CONSUMER.INFO.{STREAM}.broker-gateway"), conn.errors


# ------------------------------------------------------------------ trimming


async def test_only_the_recorder_may_trim_the_stream(cluster: Cluster, stream: str) -> None:
    # The recorder purges what it recorded (services/recorder/adapters/trim.py):
    # it reads every consumer's place, finds messages by time and by subject
    # with direct gets, and purges. A consumer that awaits a bar holds it.
    from services.recorder.adapters.trim import StreamTrimmer

    async with cluster.bus("admin") as admin:
        await ensure_consumer(admin, "trim-probe", filter_subject="md.bar.1m.TRIMPROBE")
    try:
        async with cluster.bus("marketdata") as feed:
            held = (await feed.publish(bar("TRIMPROBE"))).seq
            last = (await feed.publish(bar("AFTERPROBE"))).seq
        async with cluster.bus("recorder") as bus:
            trimmer = StreamTrimmer(bus, keep_s=120, clock=CLOCK)
            # As if all was recorded: the probe and the keep window hold it all.
            trimmed = await trimmer.trim(committed=last)
            assert trimmed.purged == 0
            assert trimmed.floor.seq <= held
            assert await trimmer.first_matching("md.bar.1m.TRIMPROBE", 1) == held
            # A purge below the first sequence: allowed, and removes nothing.
            assert await trimmer.purge_below(trimmed.first_seq) == 0
    finally:
        async with cluster.bus("admin") as admin:
            await admin.js.delete_consumer(STREAM, "trim-probe")

    for user in (u for u in USERS if u not in ("admin", "recorder")):
        async with cluster.conn(user) as conn:
            with pytest.raises(nats.errors.TimeoutError):
                await conn.js.purge_stream(STREAM, seq=1)
            with pytest.raises(nats.errors.TimeoutError):
                await conn.js.consumers_info(STREAM)
            await settled(conn.nc)
            for refused in (f"$JS.API.STREAM.PURGE.{STREAM}", f"$JS.API.CONSUMER.LIST.{STREAM}"):
                assert conn.refused(refused), (user, refused, conn.errors)
