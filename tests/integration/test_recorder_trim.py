"""The recorder trims the stream it records, on real NATS and Postgres.

The stream has no limits of its own, so without trimming it fills the NATS
file store and every publish is refused. The recorder purges below the
lowest of: the store's next sequence, the keep window, and the first message
each consumer that takes acks still awaits.

The keep window is at least the duplicate window (two minutes), and the
stream's timestamps are the server's: a recorder run in-process, with a
clock of its own, sees messages as older than the window without anyone
waiting for them to age. A process recorder checks the restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

import asyncpg
import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js import api as js_api
from prometheus_client import REGISTRY

from libs.bus.client import Bus
from libs.contract.envelope import WallClock
from libs.contract.subjects import STREAM
from libs.store.urls import asyncpg_url
from libs.store.writer import RECORDER_LOCK_KEY
from libs.strategy.testing import MINUTE_NS, bar
from libs.testing.procs import ServiceProcess
from libs.testing.producer import make_submit_order, make_trades
from libs.testing.store import recorded_count, rows, timeline
from libs.testing.wait import eventually
from services.recorder.adapters.trim import StreamTrimmer, Trimmed
from services.recorder.config import RecorderSettings
from services.recorder.domain.trim import KEEP_WINDOW, STORE
from services.recorder.recorder import Recorder, Trimmer
from tests.integration.strategy_runner_setup import ECHO_CONFIG

DAY_NS = 86_400 * 1_000_000_000
KEEP_S = 120.0
T0 = 1_700_000_000 * 1_000_000_000


class AheadClock:
    """The wall clock, ``ahead_ns`` later: messages look that much older."""

    def __init__(self, ahead_ns: int = DAY_NS) -> None:
        self.ahead_ns = ahead_ns

    def now_ns(self) -> int:
        return time.time_ns() + self.ahead_ns


class AtClock:
    """A clock that says ``at_ns`` until told otherwise."""

    def __init__(self, at_ns: int) -> None:
        self.at_ns = at_ns

    def now_ns(self) -> int:
        return self.at_ns


@dataclass
class Trims:
    """Makes the recorder's real trimmers and keeps what each trim did; fails
    the first ``fail`` trims (as a lost purge permission or a timeout would)."""

    keep_s: float
    clock: AheadClock
    fail: int = 0
    done: list[Trimmed] = field(default_factory=list)
    made: int = 0

    def __call__(self, bus: Bus) -> Trimmer:
        self.made += 1
        return self.Counting(self, StreamTrimmer(bus, keep_s=self.keep_s, clock=self.clock))

    @dataclass
    class Counting:
        trims: Trims
        real: StreamTrimmer

        async def trim(self, committed: int) -> Trimmed:
            if self.trims.fail > 0:
                self.trims.fail -= 1
                raise nats.errors.TimeoutError
            trimmed = await self.real.trim(committed)
            self.trims.done.append(trimmed)
            return trimmed

    def since(self, n: int) -> list[Trimmed]:
        return self.done[n:]


def settings(nats_url: str, database_url: str, **overrides: object) -> RecorderSettings:
    values: dict[str, object] = {
        "nats_url": nats_url,
        "database_url": database_url,
        "instance": "trim-test",
        "batch_size": 200,
        "trim_every_s": 0.05,
        "stream_keep_s": KEEP_S,
        "retry_backoff_s": 0.1,
        **overrides,
    }
    return RecorderSettings.model_validate(values)


@contextlib.asynccontextmanager
async def running(recorder: Recorder) -> AsyncIterator[Recorder]:
    task = asyncio.create_task(recorder.run())
    try:
        yield recorder
    finally:
        recorder.stop()
        await asyncio.wait_for(task, timeout=20)


async def stream_state(bus: Bus) -> js_api.StreamState:
    return (await bus.js.stream_info(STREAM)).state


def sample(name: str, labels: dict[str, str] | None = None) -> float:
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


async def store_ids(database_url: str) -> list[str]:
    return [str(r["id"]) for r in await rows(database_url)]


async def test_the_stream_is_trimmed_below_what_the_store_holds_and_no_further(
    bus: Bus, nats_url: str, database_url: str
) -> None:
    trims = Trims(KEEP_S, AheadClock())
    first = list(make_trades(300, "trim-a"))
    await bus.publish_many(first)
    trimmed_before = sample("tradebus_recorder_stream_trimmed_total")
    async with running(Recorder(settings(nats_url, database_url), trimmer=trims)) as rec:

        async def never_above_the_store() -> bool:
            # Stream first, store second: the store only grows in between.
            state = await stream_state(bus)
            recorded = await recorded_count(database_url)
            assert state.first_seq <= recorded + 1, (state.first_seq, recorded)
            return state.first_seq == 301 and recorded == 300

        await eventually(never_above_the_store, timeout=30)
        assert (await stream_state(bus)).messages == 0
        assert sample("tradebus_recorder_stream_trimmed_total") - trimmed_before == 300
        assert sample("tradebus_recorder_stream_first_sequence") == 301
        assert any(t.purged and t.floor.held_by == STORE for t in trims.done)

        second = list(make_trades(200, "trim-b"))
        await bus.publish_many(second)

        async def all_recorded_then_trimmed() -> bool:
            state = await stream_state(bus)
            recorded = await recorded_count(database_url)
            assert state.first_seq <= recorded + 1, (state.first_seq, recorded)
            return state.first_seq == 501

        await eventually(all_recorded_then_trimmed, timeout=30)
        assert rec.last_seq == 500
        assert rec.problem is None

    # Every trimmed message is in the store, once, in the order published.
    tl = await timeline(database_url)
    assert tl.gapless
    assert tl.count == tl.distinct_ids == 500
    assert await store_ids(database_url) == [str(e.id) for e in first + second]


async def test_the_trimmer_never_purges_what_the_store_does_not_hold(bus: Bus) -> None:
    await bus.publish_many(list(make_trades(100, "trim-c")))
    trimmer = StreamTrimmer(bus, keep_s=KEEP_S, clock=AheadClock())

    # The store holds up to 60 of 100: the stream keeps 61 on.
    trimmed = await trimmer.trim(committed=60)
    assert (trimmed.purged, trimmed.floor.seq, trimmed.floor.held_by) == (60, 61, STORE)
    assert (trimmed.first_seq, trimmed.last_seq) == (61, 100)
    # Nothing more until the store moves; an empty store holds everything.
    assert (await trimmer.trim(committed=60)).purged == 0
    assert (await trimmer.trim(committed=0)).purged == 0
    state = await stream_state(bus)
    assert (state.first_seq, state.messages) == (61, 40)


async def test_the_keep_window_is_kept_even_when_recorded(bus: Bus) -> None:
    await bus.publish_many(list(make_trades(10, "old")))
    boundary = time.time_ns()
    await bus.publish_many(list(make_trades(10, "young")))

    # Now is one keep window after the boundary: the first ten are older.
    trimmer = StreamTrimmer(bus, keep_s=KEEP_S, clock=AtClock(boundary + int(KEEP_S * 1e9)))
    trimmed = await trimmer.trim(committed=20)
    assert (trimmed.purged, trimmed.floor.seq, trimmed.floor.held_by) == (10, 11, KEEP_WINDOW)
    # Read with the wall clock, all twenty are young: nothing goes.
    assert (await StreamTrimmer(bus, keep_s=KEEP_S, clock=WallClock()).trim(20)).purged == 0
    assert (await stream_state(bus)).first_seq == 11


async def test_a_consumer_with_acks_keeps_what_it_has_not_acknowledged(
    bus: Bus, nats_url: str, database_url: str
) -> None:
    # A broker-gateway took one command and went away before acking it; two
    # more came while it was gone. Market data flows on around them.
    durable = "broker-gateway"
    await bus.js.add_consumer(
        STREAM,
        js_api.ConsumerConfig(
            durable_name=durable,
            filter_subject="orders.cmd.>",
            ack_policy=js_api.AckPolicy.EXPLICIT,
            ack_wait=3600,
        ),
    )
    await bus.publish_many(list(make_trades(50, "before")))
    commands = [make_submit_order("acct-a") for _ in range(3)]
    seqs = [(await bus.publish(commands[0])).seq]
    sub = await bus.js.pull_subscribe_bind(durable, stream=STREAM)
    taken = await sub.fetch(1, timeout=5)
    assert [m.metadata.sequence.stream for m in taken] == seqs
    await bus.publish_many(list(make_trades(50, "between")))
    seqs += [(await bus.publish(c)).seq for c in commands[1:]]
    await bus.publish_many(list(make_trades(50, "after")))
    total = (await stream_state(bus)).last_seq

    trims = Trims(KEEP_S, AheadClock())
    async with running(Recorder(settings(nats_url, database_url), trimmer=trims)):
        await eventually(lambda: recorded_count_is(database_url, total), timeout=30)
        mark = len(trims.done)
        await eventually(lambda: any(t.first_seq == seqs[0] for t in trims.since(mark)), timeout=10)
        held = trims.since(mark)[-1]
        assert held.floor.held_by == f"consumer {durable}"
        assert sample("tradebus_recorder_stream_first_sequence") == seqs[0]

        # The gateway comes back: its unacknowledged command (handed back at
        # once) and the two it never saw are all there.
        await taken[0].nak()
        got = sorted(await fetch_all(sub, 3), key=lambda m: m.metadata.sequence.stream)
        assert [m.metadata.sequence.stream for m in got] == seqs
        assert [m.data for m in got] == [
            (await bus.js.get_msg(STREAM, s, direct=True)).data for s in seqs
        ]
        for m in got:
            await m.ack()

        # Acknowledged: now everything recorded goes.
        async def all_trimmed() -> bool:
            return (await stream_state(bus)).first_seq == total + 1

        await eventually(all_trimmed, timeout=10)
    await sub.unsubscribe()
    assert (await timeline(database_url)).gapless


async def fetch_all(sub: JetStreamContext.PullSubscription, n: int) -> list[Msg]:
    """``n`` messages from ``sub``, however many pulls that takes."""
    got: list[Msg] = []
    while len(got) < n:
        with contextlib.suppress(nats.errors.TimeoutError):
            got += await sub.fetch(n - len(got), timeout=1)
    return got


async def recorded_count_is(database_url: str, n: int) -> bool:
    return await recorded_count(database_url) >= n


async def test_a_disabled_trim_trims_nothing(bus: Bus, nats_url: str, database_url: str) -> None:
    await bus.publish_many(list(make_trades(100, "kept")))
    trims = Trims(KEEP_S, AheadClock())
    off = settings(nats_url, database_url, trim_every_s=0)
    async with running(Recorder(off, trimmer=trims)) as rec:
        await eventually(lambda: rec.last_seq == 100, timeout=30)
    assert trims.made == 0
    state = await stream_state(bus)
    assert (state.first_seq, state.messages) == (1, 100)

    # The same stream and store with trimming on: it would have gone.
    async with running(Recorder(settings(nats_url, database_url), trimmer=trims)):

        async def trimmed() -> bool:
            return (await stream_state(bus)).first_seq == 101

        await eventually(trimmed, timeout=10)
    assert trims.made == 1


async def test_a_failing_trim_is_counted_and_recording_goes_on(
    bus: Bus, nats_url: str, database_url: str
) -> None:
    failures_before = sample("tradebus_recorder_trim_failures_total", {"cause": "TimeoutError"})
    trims = Trims(KEEP_S, AheadClock(), fail=3)
    async with running(Recorder(settings(nats_url, database_url), trimmer=trims)) as rec:
        await bus.publish_many(list(make_trades(100, "during")))
        await eventually(lambda: rec.last_seq == 100, timeout=30)

        async def trimmed_after_the_failures() -> bool:
            return trims.fail == 0 and (await stream_state(bus)).first_seq == 101

        await eventually(trimmed_after_the_failures, timeout=10)
        assert rec.problem is None
        assert rec.failing is None
        assert trims.made == 1  # the cycle never restarted
    failures = sample("tradebus_recorder_trim_failures_total", {"cause": "TimeoutError"})
    assert failures - failures_before == 3
    assert (await timeline(database_url)).gapless


# ------------------------------------------------------- after a trim, restarts


async def trim_everything(bus: Bus, nats_url: str, database_url: str, n: int) -> None:
    """Record ``n`` more trades in-process and trim the stream down to nothing."""
    before = (await stream_state(bus)).last_seq
    await bus.publish_many(list(make_trades(n, f"trimmed-{uuid.uuid4().hex[:6]}")))
    trims = Trims(KEEP_S, AheadClock())
    async with running(Recorder(settings(nats_url, database_url), trimmer=trims)):

        async def gone() -> bool:
            return (await stream_state(bus)).first_seq == before + n + 1

        await eventually(gone, timeout=30)
    state = await stream_state(bus)
    assert state.messages == 0
    assert await recorded_count(database_url) == before + n


async def test_a_recorder_restarted_on_a_trimmed_stream_continues_the_store(
    tmp_path: Path, bus: Bus, nats_url: str, database_url: str
) -> None:
    # The stream starts past the store's last sequence (everything recorded
    # was trimmed): not a reset stream, whose end would be before the store's.
    await trim_everything(bus, nats_url, database_url, 200)
    rec = ServiceProcess(
        ["recorder", "run"],
        env={"NATS_URL": nats_url, "DATABASE_URL": database_url},
        log_path=tmp_path / "rec.log",
        name="rec",
    ).start()
    try:
        await bus.publish_many(list(make_trades(100, "after-trim")))
        await eventually(
            lambda: recorded_count_is(database_url, 300), timeout=30, message=rec.log_text
        )
        tl = await timeline(database_url)
        assert tl.gapless
        assert tl.count == tl.distinct_ids == 300
        assert rec.health() == {
            "ok": True,
            "service": "recorder",
            "role": "writer",
            "last_seq": 300,
        }
        assert "reset" not in rec.log_text()
    finally:
        assert rec.terminate() == 0, rec.log_text()[-2000:]


async def test_a_strategy_runner_starts_on_a_trimmed_stream(
    tmp_path: Path, bus: Bus, nats_url: str, database_url: str
) -> None:
    # Bars recorded and trimmed; the runner warms up from the store and reads
    # the stream from the store's next sequence, which is where it now starts.
    for i, close in enumerate([10, 11, 12]):
        await bus.publish(bar("MSFT", Decimal(close), T0 + i * MINUTE_NS))
    await trim_everything(bus, nats_url, database_url, 50)
    config = tmp_path / "echo.yaml"
    config.write_text(ECHO_CONFIG)
    runner = ServiceProcess(
        ["strategy-runner", "run", "--config", str(config)],
        env={"NATS_URL": nats_url, "DATABASE_URL": database_url},
        log_path=tmp_path / "runner.log",
        name="runner",
    ).start()
    try:
        await eventually(
            lambda: (runner.health() or {}).get("ready"), timeout=30, message=runner.log_text
        )
        await bus.publish(bar("MSFT", Decimal(13), T0 + 3 * MINUTE_NS))

        async def signalled() -> bool:
            with contextlib.suppress(nats.js.errors.NotFoundError):
                msg = await bus.js.get_last_msg(STREAM, "strategy.signal.echo")
                return b"bar close 13" in (msg.data or b"")
            return False

        await eventually(signalled, timeout=20, message=runner.log_text)
        assert "reset" not in runner.log_text()
        assert runner.terminate() == 0, runner.log_text()[-2000:]
    finally:
        runner.kill()


async def test_a_recorder_standing_by_drops_the_fault_of_its_own_turn(
    nats_url: str, database_url: str
) -> None:
    """A recorder whose batches kept failing reports it on /health; once it
    stands by while another recorder holds the timeline, that is no longer
    its problem (the writer reports its own): it must not stay unhealthy."""
    holder = await asyncpg.connect(asyncpg_url(database_url))
    try:
        await holder.execute("SELECT pg_advisory_lock($1)", RECORDER_LOCK_KEY)
        rec = Recorder(settings(nats_url, database_url))
        rec.failing = "recording after sequence 3 failed: ValueError: a poisoned batch"
        assert not rec.health()[0]
        async with running(rec):
            await eventually(lambda: rec.health()[0], timeout=10)
            ok, detail = rec.health()
            assert (ok, detail["role"], "problem" in detail) == (True, "standby", False)
    finally:
        await holder.close()
