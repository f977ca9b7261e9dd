"""The strategy-runner's consumer on real NATS: under its own NATS user, a
reset stream refused (at start and while running), a bar the server sent
elsewhere read again, a dead letter the stream will not take retried."""

from __future__ import annotations

import asyncio
import secrets
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from nats.aio.msg import Msg

from libs.bus.client import PUBLISH_ACK_TIMEOUT, PUBLISH_DEADLINE, Bus
from libs.contract.events import MarkPayload, MarkUpdated
from libs.contract.subjects import DEADLETTER_ALL, RECORDED_SUBJECTS, STREAM
from libs.local.servers import NatsServer
from libs.strategy.spec import validate_strategies
from libs.strategy.testing import MINUTE_NS, At, bar
from libs.testing.natsauth import config_users
from libs.testing.procs import ServiceProcess
from libs.testing.streams import delete_stream
from libs.testing.wait import eventually
from services.strategy_runner import metrics
from services.strategy_runner.config import RunnerSettings
from services.strategy_runner.runner import SERVICE, Runner
from tests.integration import strategy_runner_setup
from tests.integration.recording import record_stream, wipe_nats
from tests.integration.strategy_runner_setup import (
    ECHO_CONFIG,
    T0,
    Start,
    Timeline,
    consumer_subjects,
    metric,
    publish_bars,
    runner_args,
    service,
)

# The strategy-runner's fixture, registered in this module.
start = strategy_runner_setup.start

NATS_CONFIG = Path(__file__).resolve().parents[2] / "deploy" / "nats" / "nats-server.conf"
NATS_USERS = config_users()  # every user the config declares


async def test_runner_works_under_its_own_nats_user(tmp_path: Path, database_url: str) -> None:
    """With deploy/nats permissions on, the runner starts on a store that is not
    empty (its start-up reads the stream's message at the store's last
    sequence), creates its consumer and emits."""
    passwords = {u: f"pw{secrets.token_hex(12)}" for u in NATS_USERS}
    server = NatsServer(tmp_path / "nats", config_file=NATS_CONFIG)
    with pytest.MonkeyPatch.context() as mp:
        for user, password in passwords.items():
            mp.setenv(f"NATS_{user.upper().replace('-', '_')}_PASSWORD", password)
        server.start()
    runner: ServiceProcess | None = None
    try:
        async with await Bus.connect(
            server.url, name="test-admin", user="admin", password=passwords["admin"]
        ) as admin:
            await admin.ensure_stream()
            async with await Bus.connect(
                server.url, name="test-md", user="marketdata", password=passwords["marketdata"]
            ) as md:
                await md.publish(bar("NVDA", 99, T0))
            assert await record_stream(admin, database_url) == 1
        config = tmp_path / "strategies.yaml"
        # An option contract too: its consumer also reads SPY's prices (the
        # underlying's, which mark the shares an exercise would book to it).
        config.write_text(
            "strategies:\n"
            "  - {name: echo, kind: 'libs.strategy.testing:EchoStrategy',"
            " symbols: [NVDA, 'O:SPY261211C00600000'], account: paper}\n"
        )
        runner = ServiceProcess(
            ["strategy-runner", "run", "--config", str(config)],
            env={
                "NATS_URL": server.url,
                "TRADEBUS_NATS_USER": "strategy-runner",
                "TRADEBUS_NATS_PASSWORD": passwords["strategy-runner"],
                "DATABASE_URL": database_url,
            },
            log_path=tmp_path / "runner.log",
            name="runner-perm",
        ).start()
        await eventually(lambda: (runner.health() or {}).get("ready"), timeout=30)
        async with await Bus.connect(
            server.url, name="test-admin", user="admin", password=passwords["admin"]
        ) as admin:
            assert "md.trade.SPY" in await consumer_subjects(admin)
        async with await Bus.connect(
            server.url, name="test-md", user="marketdata", password=passwords["marketdata"]
        ) as md:
            await md.publish(bar("NVDA", 100, T0 + MINUTE_NS))
            # A mark (as marketdata makes of quotes) reaches it too: it marks its ledger.
            await md.publish(
                MarkUpdated.create(
                    MarkPayload(
                        symbol="NVDA",
                        price=Decimal(101),
                        bid_price=Decimal(100),
                        ask_price=Decimal(102),
                        feed="synthetic",
                    ),
                    source="test/marketdata",
                    clock=At(T0 + 2 * MINUTE_NS),
                )
            )
        emitted = (
            'tradebus_strategy_events_emitted_total{strategy="echo",type="OrderIntentCreated"}'
        )
        await eventually(lambda: metric(runner, emitted) == 1.0, timeout=20)
        marks_in = 'tradebus_strategy_events_in_total{strategy="echo",type="MarkUpdated"}'
        await eventually(lambda: metric(runner, marks_in) == 1.0, timeout=20)
        assert runner.terminate() == 0, runner.log_text()[-3000:]
    finally:
        if runner is not None:
            runner.kill()
        server.stop()


async def refuses_and_signals_nothing(runner: ServiceProcess, bus: Bus) -> dict[str, Any]:
    """The runner reports the reset stream it refuses, and nothing went out:
    the one bar published since waits alone in the stream. Returns /health."""
    health: dict[str, Any] = await eventually(
        lambda: (h := runner.health()) is not None and "problem" in h and h, timeout=30
    )
    assert not health["ok"]
    assert "the stream was reset; not trading" in health["problem"], health
    info = await bus.js.stream_info(STREAM)
    assert info.state.messages == 1, "no signal went out; the bar waits"
    return health


async def test_a_reset_stream_is_refused_not_read_past(
    tmp_path: Path, bus: Bus, nats_url: str, database_url: str
) -> None:
    """The NATS data wiped while the store is kept: a runner reading on from
    the store's next sequence would skip the new stream's first bars. It
    refuses: not ready, the reason under /health's problem, no signal made."""
    run_args = runner_args(tmp_path)
    recorder = service(["recorder", "run"], tmp_path, nats_url, database_url, "rec").start()
    runner = service(run_args, tmp_path, nats_url, database_url, "runner").start()
    try:
        await eventually(lambda: (runner.health() or {}).get("ready"), timeout=30)
        await publish_bars(bus, "MSFT", [10, 11], first_minute=0)  # the echo probe signals
        await eventually(lambda: Timeline(database_url).count("SignalGenerated", "boom", 2))
        runner.kill()
        recorder.kill()
        await delete_stream(bus.js, STREAM)
        await bus.ensure_stream()
        await publish_bars(bus, "MSFT", [12], first_minute=2)
        runner = service(run_args, tmp_path, nats_url, database_url, "runner-2").start()
        health = await refuses_and_signals_nothing(runner, bus)
        assert not health["ready"]
        assert runner.alive
        assert runner.terminate() == 0, runner.log_text()[-2000:]
    finally:
        runner.kill()
        recorder.kill()


async def test_a_stream_reset_under_a_running_runner_is_refused(
    tmp_path: Path, database_url: str
) -> None:
    """NATS restarted with its data wiped while the runner runs: its consumer
    is gone with the stream (the runner notices: its pull requests go
    unanswered), and recreating it at the next sequence would skip the new
    stream's first bars. It refuses: unhealthy with the reason, no signal.
    On its own nats-server (it is wiped)."""
    server = NatsServer(tmp_path / "own-nats").start()
    runner = service(runner_args(tmp_path), tmp_path, server.url, database_url, "runner").start()
    try:
        async with await Bus.connect(server.url, name="test-feed") as feed:
            await feed.ensure_stream()
            await eventually(lambda: (runner.health() or {}).get("ready"), timeout=30)
            await publish_bars(feed, "MSFT", [10, 11], first_minute=0)
            emitted = (
                'tradebus_strategy_events_emitted_total{strategy="boom",type="SignalGenerated"}'
            )
            await eventually(lambda: metric(runner, emitted) == 2.0, timeout=20)
            await wipe_nats(server, feed)
            await publish_bars(feed, "MSFT", [12], first_minute=2)
            await refuses_and_signals_nothing(runner, feed)
            assert metric(runner, emitted) == 2.0
        assert runner.terminate() == 0, runner.log_text()[-2000:]
    finally:
        runner.kill()
        server.stop()


async def test_a_bar_the_server_sent_elsewhere_is_read_again_not_lost(
    tmp_path: Path, bus: Bus, start: Start
) -> None:
    """The runner's consumer takes no acks, so the server never sends a message
    twice: one it sent and the runner never got (into a dropped connection,
    past the client's limits) was lost for good. Here another reader of the
    same durable takes a bar; the runner sees the hole in the consumer
    sequence and recreates the consumer where it left off."""
    config = tmp_path / "echo.yaml"
    config.write_text(ECHO_CONFIG)
    signals: list[str] = []

    async def on_signal(msg: Msg) -> None:
        signals.append(orjson.loads(msg.data)["payload"]["reason"])

    await bus.nc.subscribe("strategy.signal.echo", cb=on_signal)
    runner = start(["strategy-runner", "run", "--config", str(config)], "runner")
    await eventually(lambda: (runner.health() or {}).get("ready"), timeout=30)
    await publish_bars(bus, "MSFT", [1], 0)
    await eventually(lambda: signals == ["bar close 1"], timeout=20)

    async def waiting(n: int) -> bool:
        info = await bus.js.consumer_info(STREAM, "strategy-runner")
        return (info.num_waiting or 0) >= n

    # A pull of one message on the runner's durable, answered to an inbox of
    # its own (JetStream answers with the bar's own subject).
    theft: asyncio.Future[Msg] = asyncio.get_running_loop().create_future()

    async def on_stolen(msg: Msg) -> None:
        if not theft.done():
            theft.set_result(msg)

    inbox = bus.nc.new_inbox()
    await bus.nc.subscribe(inbox, cb=on_stolen)
    request = orjson.dumps({"batch": 1, "expires": 20_000_000_000})
    await bus.nc.publish(f"$JS.API.CONSUMER.MSG.NEXT.{STREAM}.strategy-runner", request, inbox)
    await eventually(lambda: waiting(2), timeout=10)  # the runner's pull and the thief's
    # The server shares new messages out among the waiting pulls: bars go out
    # one by one until the thief's pull has taken one.
    closes = [1]
    while not theft.done():
        close = closes[-1] + 1
        assert close < 5000, "the thief's pull was never served"
        closes.append(close)
        await publish_bars(bus, "MSFT", [close], close)
        await eventually(lambda: theft.done() or len(signals) == len(closes), timeout=20)
    stolen = theft.result()
    assert stolen.subject == "md.bar.1m.MSFT"
    await publish_bars(bus, "MSFT", [close + 1], close + 1)  # shows the hole
    want = [f"bar close {c}" for c in range(1, close + 2)]
    await eventually(lambda: sorted(signals) == sorted(want), timeout=20)
    assert len(signals) == len(want)  # and none twice
    assert (
        metric(runner, 'tradebus_strategy_runner_consumer_recreated_total{cause="DeliveryGap"}')
        or 0
    ) >= 1
    assert runner.terminate() == 0, runner.log_text()[-3000:]


async def test_a_dead_letter_that_cannot_be_published_is_retried_not_fatal(
    tmp_path: Path, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A message that does not decode is dead-lettered before the runner reads
    on. A dead letter the stream will not take (here: no stream captures
    deadletter.>) ends in PublishFailed once its deadline runs out, which
    escaped the consume loop and stopped the runner. The loop now logs it and
    recreates the consumer where it left off, as for a lost connection: once
    the stream takes dead letters the message is dead-lettered, once, and
    the bar after it is read. In-process, through the runner's own consumer
    (_serve), whose dead-letter deadline is its setting: it passed none, so
    each attempt waited the bus's 30 s before the consumer was recreated."""
    server = NatsServer(tmp_path / "nats").start()
    try:
        async with await Bus.connect(server.url, name="test-deadletter") as bus:
            await bus.ensure_stream(subjects=[s for s in RECORDED_SUBJECTS if s != DEADLETTER_ALL])
            await bus.js.publish("md.bar.1m.MSFT", b"not an event")
            await bus.publish(bar("MSFT", 1, T0))
            settings = RunnerSettings(
                nats_url=server.url,
                database_url=database_url,
                retry_backoff_s=0.05,
                dead_letter_deadline_s=0.2,
            )
            # One attempt at the longest: its dead-letter deadline, a publish
            # sent just before it waiting out its ack timeout, the bus's last
            # backoff sleep (capped at 2 s), then the runner's own backoff.
            # Slack on top for the consumer's recreation (a few JetStream API
            # round trips) on a slow host. Well under what one attempt took
            # when the setting was not passed (the bus's PUBLISH_DEADLINE).
            attempt_s = settings.dead_letter_deadline_s + PUBLISH_ACK_TIMEOUT + 2.0
            two_attempts_s = 2 * (attempt_s + settings.retry_backoff_s) + 10.0
            assert two_attempts_s < PUBLISH_DEADLINE
            runner = Runner(settings, validate_strategies(yaml.safe_load(ECHO_CONFIG)))
            runner.live = True
            recreated = metrics.CONSUMER_RECREATED.labels(cause="PublishFailed")
            before = recreated._value.get()
            consuming = asyncio.create_task(runner._serve(bus))
            try:
                await eventually(
                    lambda: consuming.done() or recreated._value.get() >= before + 2,
                    timeout=two_attempts_s,
                )
                assert not consuming.done(), consuming.exception()
                assert "consuming failed (PublishFailed" in caplog.text
                assert runner.next_seq == 1  # nothing read past the undecodable message

                await bus.ensure_stream()  # dead letters are taken now
                await eventually(lambda: runner.next_seq == 3, timeout=20)
                dead = await bus.js.get_last_msg(STREAM, f"deadletter.{SERVICE}")
                assert orjson.loads(dead.data or b"")["payload"]["stream_seq"] == 1
                # The two and one dead letter (and the echo strategy's answers to the bar).
                info = await bus.js.stream_info(STREAM, subjects_filter=">")
                counts = info.state.subjects or {}
                assert counts["md.bar.1m.MSFT"] == 2
                assert counts[f"deadletter.{SERVICE}"] == 1
            finally:
                runner.stop()
                await asyncio.wait_for(consuming, timeout=10)
    finally:
        server.stop()
