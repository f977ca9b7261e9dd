"""The NATS server, not convention, decides who may publish what.

One nats-server runs ``deploy/nats/nats-server.conf`` for the whole module,
with random passwords handed to it through its environment (``NatsServer``
starts it with ``subprocess.Popen``, which inherits ``os.environ``).

How a refusal is observed: the server answers a forbidden publish with
``-ERR 'Permissions Violation ...'`` and drops the message; nats-py hands that
error to ``error_cb`` from its read loop. The server handles one connection's
messages in order, so once a PING sent after the publishes is answered, every
violation for them has reached ``error_cb`` (see :func:`settled`). Stream
contents are checked with ``eventually`` (polling with a deadline), never with
a sleep.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlsplit

import nats
import nats.errors
import nats.js.errors
import pytest
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js import api as js_api

from libs.bus.client import MSG_ID_HEADER, Bus, inbox_prefix
from libs.bus.consumer import ensure_consumer
from libs.contract.codec import encode
from libs.contract.envelope import Event, WallClock
from libs.contract.events import (
    BarClosed,
    BarPayload,
    KillSwitchEngaged,
    OperatorActionPayload,
)
from libs.contract.subjects import RECORDER_CONSUMER, STREAM, subject_for
from libs.local.servers import NatsServer
from libs.replay import ReplayRefused, ReplayRequest, replay
from libs.testing.producer import make_submit_order, make_trades
from services.marketdata.adapters.polygon.resume import newest_bars
from services.marketdata.config import MarketdataSettings
from tests.integration.recorded_chains import record

CONFIG = Path(__file__).resolve().parents[2] / "deploy" / "nats" / "nats-server.conf"
SERVICES = (
    "recorder",
    "marketdata",
    "strategy-runner",
    "risk-gate",
    "broker-gateway",
    "paper-broker",
)
USERS = ("admin", "operator", *SERVICES)

#: How long a request the server refuses is given before we call it refused.
DENIED_REQUEST_TIMEOUT = 0.5
CLOCK = WallClock()


def password_variable(user: str) -> str:
    """The environment variable nats-server.conf reads ``user``'s password from."""
    return f"NATS_{user.upper().replace('-', '_')}_PASSWORD"


async def eventually(
    check: Callable[[], Awaitable[bool]], *, within: float = 5.0, what: str = "condition"
) -> None:
    """Poll ``check`` until it is true; fail after ``within`` seconds."""
    deadline = time.monotonic() + within
    delay = 0.01
    while not await check():
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(delay)  # polling interval, not synchronisation
        delay = min(delay * 2, 0.2)


async def settled(nc: NatsClient) -> None:
    """Return once the server has judged everything ``nc`` published so far."""
    # nats-py 2.16's flush() writes its PING straight to the socket, ahead of
    # publishes still in the client's buffer, and only then kicks the flusher
    # task that writes them: one flush() is not an ordering barrier. The buffer
    # is on the wire before the first PONG is read, so a second PING follows it.
    await nc.flush()
    await nc.flush()


@dataclass
class Conn:
    """A raw nats-py connection that records what the server refused."""

    nc: NatsClient
    errors: list[str] = field(default_factory=list)

    @property
    def js(self) -> JetStreamContext:
        return self.nc.jetstream(timeout=DENIED_REQUEST_TIMEOUT)

    def refused(self, subject: str) -> bool:
        """Whether the server reported a publish to ``subject`` as forbidden."""
        wanted = f'permissions violation for publish to "{subject.lower()}"'
        return any(wanted in e for e in self.errors)

    def refusals(self) -> list[str]:
        return [e for e in self.errors if "permissions violation" in e]


@dataclass(frozen=True)
class Cluster:
    url: str
    passwords: dict[str, str]

    @contextlib.asynccontextmanager
    async def conn(self, user: str) -> AsyncIterator[Conn]:
        errors: list[str] = []

        async def on_error(e: Exception) -> None:
            errors.append(str(e).lower())

        nc = await nats.connect(
            self.url,
            user=user,
            password=self.passwords[user],
            inbox_prefix=inbox_prefix(user),
            name=f"test-{user}",
            error_cb=on_error,
            allow_reconnect=False,
            connect_timeout=2,
        )
        try:
            yield Conn(nc, errors)
        finally:
            await nc.close()

    @contextlib.asynccontextmanager
    async def bus(self, user: str) -> AsyncIterator[Bus]:
        bus = await Bus.connect(
            self.url, name=f"test-{user}", user=user, password=self.passwords[user]
        )
        async with bus:
            yield bus


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    # nats-server parses a variable's value as config: a letter first and hex
    # after it keeps a random password a plain string (not a date or number).
    passwords = {user: f"pw{secrets.token_hex(16)}" for user in USERS}
    server = NatsServer(tmp_path_factory.mktemp("nats"), config_file=CONFIG)
    try:
        # The passwords exist only in the child's inherited environment.
        with pytest.MonkeyPatch.context() as mp:
            for user, password in passwords.items():
                mp.setenv(password_variable(user), password)
            server.start()
        yield Cluster(server.url, passwords)
    finally:
        server.stop()  # also closes the log file when start() failed


@pytest.fixture(scope="module")
async def stream(cluster: Cluster) -> str:
    """The TRADEBUS stream, declared by the admin user."""
    async with cluster.bus("admin") as bus:
        await bus.ensure_stream()
    return STREAM


async def stored(cluster: Cluster, subject: str) -> int:
    """How many messages the stream holds on exactly ``subject`` (asked as admin)."""
    async with cluster.bus("admin") as bus:
        info = await bus.js.stream_info(STREAM, subjects_filter=subject)
    return int((info.state.subjects or {}).get(subject, 0))


def kill_switch() -> KillSwitchEngaged:
    return KillSwitchEngaged.create(
        OperatorActionPayload(operator="test", reason="drill"), source="test", clock=CLOCK
    )


def bar(symbol: str) -> BarClosed:
    now = CLOCK.now_ns()
    return BarClosed.create(
        BarPayload(
            symbol=symbol,
            interval="1m",
            open=Decimal("1.5"),
            high=Decimal("2.5"),
            low=Decimal("1.25"),
            close=Decimal(2),
            volume=Decimal(100),
            start_ns=now - 60_000_000_000,
            end_ns=now,
            feed="synthetic",
        ),
        source="test",
        clock=CLOCK,
    )


async def publish_core(conn: Conn, event: Event, subject: str | None = None) -> str:
    """Publish ``event`` with plain NATS and wait for the server to have judged it."""
    subject = subject or subject_for(event)
    await conn.nc.publish(subject, encode(event), headers={MSG_ID_HEADER: str(event.id)})
    await settled(conn.nc)
    return subject


# ------------------------------------------------------------ order commands


async def test_strategy_runner_cannot_publish_order_commands_but_risk_gate_can(
    cluster: Cluster, stream: str
) -> None:
    event = make_submit_order("acct-a")
    subject = subject_for(event)
    assert subject == "orders.cmd.acct-a"

    # (a) The strategy-runner's JetStream publish gets no ack: the server
    # refused it and says so through error_cb.
    async with cluster.conn("strategy-runner") as runner:
        with pytest.raises(nats.errors.TimeoutError):
            await runner.js.publish(subject, encode(event), headers={MSG_ID_HEADER: str(event.id)})
        await settled(runner.nc)
        assert runner.refused(subject), runner.errors

        # Same connection, own domain: accepted (the user itself works).
        intent_ack = await runner.nc.jetstream().publish("strategy.signal.s1", b"{}")
        assert intent_ack.stream == stream
        assert runner.refusals() == [f'nats: permissions violation for publish to "{subject}"']

    # (b) The risk-gate publishes the very same command and JetStream stores it.
    async with cluster.bus("risk-gate") as gate:
        ack = await gate.publish(event)
    assert ack.stream == stream
    assert not ack.duplicate  # the refused copy never reached the stream

    async def only_the_risk_gates_copy() -> bool:
        return await stored(cluster, subject) == 1

    await eventually(only_the_risk_gates_copy, what="one message on orders.cmd.acct-a")
    async with cluster.bus("admin") as admin:
        last = await admin.js.get_last_msg(STREAM, subject)
    assert last.seq == ack.seq
    assert last.headers is not None
    assert last.headers[MSG_ID_HEADER] == str(event.id)


async def test_no_user_but_risk_gate_may_publish_order_commands(
    cluster: Cluster, stream: str
) -> None:
    for user in (u for u in USERS if u != "risk-gate"):
        subject = f"orders.cmd.acct-{user}"
        async with cluster.conn(user) as conn:
            await publish_core(conn, make_submit_order(f"acct-{user}"), subject)
            assert conn.refused(subject), (user, conn.errors)
        assert await stored(cluster, subject) == 0, user


# --------------------------------------------------------------- control


async def test_only_operator_may_publish_kill_switch(cluster: Cluster, stream: str) -> None:
    subject = "control.killswitch"
    for user in (u for u in USERS if u != "operator"):
        async with cluster.conn(user) as conn:
            await publish_core(conn, kill_switch(), subject)
            assert conn.refused(subject), (user, conn.errors)
    assert await stored(cluster, subject) == 0

    async with cluster.bus("operator") as operator:
        ack = await operator.publish(kill_switch())
    assert ack.stream == stream

    async def stored_once() -> bool:
        return await stored(cluster, subject) == 1

    await eventually(stored_once, what="the operator's kill switch in the stream")


# ----------------------------------------------------------- domain ownership

ALL_SUBJECTS = (
    "md.bar.1m.AAPL",
    "md.mark.O:SPY241220P00720000",
    "strategy.intent.s1",
    "risk.decision.s1",
    "orders.cmd.acct-b",
    "broker.fill.acct-b",
    "broker.close.acct-b",
    "broker.positions.acct-b",
    "control.resume",
    "replay.md.bar.1m.AAPL",
    "deadletter.recorder",
    "deadletter.marketdata",
    "deadletter.strategy-runner",
    "deadletter.risk-gate",
    "deadletter.broker-gateway",
    "deadletter.paper-broker",
    "anything.else",
)

#: What each user may publish among ALL_SUBJECTS; everything else is refused.
MAY_PUBLISH = {
    "admin": set(),
    "operator": {"control.resume", "replay.md.bar.1m.AAPL"},
    "recorder": {"replay.md.bar.1m.AAPL", "deadletter.recorder"},
    "marketdata": {"md.bar.1m.AAPL", "md.mark.O:SPY241220P00720000", "deadletter.marketdata"},
    "strategy-runner": {"strategy.intent.s1", "deadletter.strategy-runner"},
    "risk-gate": {"risk.decision.s1", "orders.cmd.acct-b", "deadletter.risk-gate"},
    "broker-gateway": {
        "broker.fill.acct-b",
        "broker.close.acct-b",
        "broker.positions.acct-b",
        "deadletter.broker-gateway",
    },
    "paper-broker": {"deadletter.paper-broker"},
}


@pytest.mark.parametrize("user", USERS)
async def test_each_user_publishes_only_its_own_subjects(
    cluster: Cluster, stream: str, user: str
) -> None:
    async with cluster.conn(user) as conn:
        for subject in ALL_SUBJECTS:
            await conn.nc.publish(subject, b"{}")
        await settled(conn.nc)
        refused = {s for s in ALL_SUBJECTS if conn.refused(s)}
    assert refused == set(ALL_SUBJECTS) - MAY_PUBLISH[user]


@pytest.mark.parametrize("user", USERS)
async def test_no_user_may_subscribe_to_the_domain_subjects(cluster: Cluster, user: str) -> None:
    # Reading goes through each service's own durable consumer; a plain
    # subscription to live subjects (or another's JetStream acks) is refused.
    async with cluster.conn(user) as conn:
        for subject in ("md.>", "orders.cmd.>", "$JS.ACK.>", ">"):
            await conn.nc.subscribe(subject)
        await settled(conn.nc)
        denied = [e for e in conn.errors if "permissions violation for subscription" in e]
    assert len(denied) == 4, conn.errors


async def test_marketdata_may_read_back_its_newest_minute_bar(
    cluster: Cluster, stream: str
) -> None:
    # After a restart the Polygon feed gap-fills from the newest
    # md.bar.1m.<symbol> on the stream (services/marketdata/adapters/polygon/
    # resume.py: the last message, STREAM.MSG.GET; when that one was
    # backfilled, the bars stored since, one batched DIRECT.GET), as its own
    # NATS user. Here the live bar of the reconnect minute went out before
    # the gap-fill's older bars.
    newest = bar("RESUMED")
    minute = 60_000_000_000
    older = [
        BarClosed.create(
            newest.payload.model_copy(
                update={
                    "start_ns": newest.payload.start_ns - i * minute,
                    "end_ns": newest.payload.end_ns - i * minute,
                    "backfilled": True,
                }
            ),
            source="test",
            clock=CLOCK,
        )
        for i in (3, 2, 1)
    ]
    async with cluster.bus("marketdata") as feed:
        for event in (newest, *older):
            await feed.publish(event)

    def as_user(user: str) -> MarketdataSettings:
        return MarketdataSettings(
            nats_url=cluster.url,
            nats_user=user,
            nats_password=cluster.passwords[user],
            instance="permissions-test",
        )

    found = await newest_bars(as_user("marketdata"), ["RESUMED"])
    assert found == {"RESUMED": newest.payload.start_ns}
    # A user without that grant reads nothing back: the feed would start
    # without resuming (best effort, said in its log).
    assert await newest_bars(as_user("paper-broker"), ["RESUMED"]) == {}


@pytest.mark.parametrize("user", USERS)
async def test_each_user_reads_only_its_own_inbox(cluster: Cluster, user: str) -> None:
    # Replies, JetStream publish acks and pull batches arrive under the
    # user's own inbox prefix; another user's, or all of them, are refused.
    other = "broker-gateway" if user == "risk-gate" else "risk-gate"
    refused = ["_INBOX.>", f"{inbox_prefix(other)}.>", f"{inbox_prefix(other)}.abc"]
    async with cluster.conn(user) as conn:
        await conn.nc.subscribe(f"{inbox_prefix(user)}.>")
        for subject in refused:
            await conn.nc.subscribe(subject)
        await settled(conn.nc)
        denied = [e for e in conn.errors if "permissions violation for subscription" in e]
    assert sorted(denied) == sorted(
        f'nats: permissions violation for subscription to "{s.lower()}"' for s in refused
    ), conn.errors


async def test_a_user_given_in_the_url_gets_its_own_inbox(cluster: Cluster, stream: str) -> None:
    # NATS_URL may carry the credentials (nats://user:password@host): the
    # inbox prefix then follows the URL's user, so its acks still arrive.
    parts = urlsplit(cluster.url)
    url = f"{parts.scheme}://marketdata:{cluster.passwords['marketdata']}@{parts.netloc}"
    async with await Bus.connect(url, name="test-url-user") as feed:
        ack = await feed.publish(bar("URLUSER"))
    assert ack.stream == stream


# ------------------------------------------------------------------ replay


async def test_replay_counts_only_what_the_server_took(
    cluster: Cluster, tmp_path: Path, bus: Bus, nats_url: str, database_url: str
) -> None:
    # Replays are plain NATS publishes: a refusal comes back later, through
    # error_cb, and must not be counted as published.
    events = list(make_trades(30, "perm"))
    await record(tmp_path, bus, nats_url, database_url, events)
    async with cluster.bus("operator") as operator:
        done = await replay(database_url, operator, ReplayRequest())
    assert (done.published, done.refused, done.last_seq) == (30, 0, 30)

    async with cluster.bus("marketdata") as feed:
        with pytest.raises(ReplayRefused) as info:
            await replay(database_url, feed, ReplayRequest())
    refused = info.value
    assert (refused.result.published, refused.result.refused) == (0, 1)
    assert (refused.user, refused.seq) == ("marketdata", 1)
    assert refused.subject == f"replay.{subject_for(events[0])}"  # as sent, not lower-cased
    # Outside replay.> the operator is refused too (and --from-seq is kept).
    async with cluster.bus("operator") as operator:
        with pytest.raises(ReplayRefused) as info:
            await replay(database_url, operator, ReplayRequest(into="rerun", from_seq=2))
    assert (info.value.result.published, info.value.seq) == (0, 2)

    # The operator may watch a replay; a service may not read one.
    seen: list[str] = []

    async def on_replayed(msg: Msg) -> None:
        seen.append(msg.subject)

    async with cluster.conn("operator") as watcher, cluster.conn("risk-gate") as service:
        await watcher.nc.subscribe("replay.>", cb=on_replayed)
        await service.nc.subscribe("replay.>")
        await settled(watcher.nc)
        await settled(service.nc)
        async with cluster.bus("operator") as operator:
            done = await replay(database_url, operator, ReplayRequest(to_seq=3))
        assert done.published == 3

        async def all_seen() -> bool:
            return len(seen) == 3

        await eventually(all_seen, what="the three replayed messages")
        assert watcher.errors == []
        assert any("permissions violation for subscription" in e for e in service.errors)


def replay_cli(cluster: Cluster, user: str, database_url: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "NATS_URL": cluster.url,
        "TRADEBUS_NATS_USER": user,
        "TRADEBUS_NATS_PASSWORD": cluster.passwords[user],
    }
    return subprocess.run(
        [sys.executable, "-m", "services.cli", "recorder", "replay", "--subject", "md.>"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_replay_refused_by_the_server_fails_naming_subject_and_user(
    cluster: Cluster, tmp_path: Path, bus: Bus, nats_url: str, database_url: str
) -> None:
    events = list(make_trades(31, "cli"))
    await record(tmp_path, bus, nats_url, database_url, events)

    proc = await asyncio.to_thread(replay_cli, cluster, "paper-broker", database_url)
    assert proc.returncode == 1, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    # Nothing went out: no last row (it named the refused one).
    assert (summary["published"], summary["refused"], summary["last_seq"]) == (0, 1, None)
    [error] = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert f"NATS user 'paper-broker' publish to 'replay.{subject_for(events[0])}'" in error
    assert "Hint: " in error
    assert "operator" in error
    assert "Traceback" not in proc.stderr

    # The operator (who `tradebus up`'s env file signs in as) may replay.
    proc = await asyncio.to_thread(replay_cli, cluster, "operator", database_url)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert (summary["published"], summary["refused"]) == (31, 0)
    assert "as user operator" in proc.stderr


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
