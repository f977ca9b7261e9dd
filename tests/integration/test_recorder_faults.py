"""Faults: many producers, kill -9, NATS restart, Postgres outage, two recorders.

Each test checks the same end state: every published event recorded exactly
once, ``seq`` = 1..N with no gap, in the stream's own order.
"""

from __future__ import annotations

import asyncio
import functools
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from libs.bus.client import Bus
from libs.local.servers import NatsServer, PostgresServer
from libs.store.migrate import upgrade_async
from libs.testing.procs import ServiceProcess
from libs.testing.store import recorded_count, rows, stream_order, timeline
from libs.testing.wait import eventually

pytestmark = pytest.mark.slow


def recorder(tmp_path: Path, nats_url: str, database_url: str, name: str) -> ServiceProcess:
    return ServiceProcess(
        ["recorder", "run"],
        env={
            "NATS_URL": nats_url,
            "DATABASE_URL": database_url,
            "TRADEBUS_BATCH_SIZE": "1000",
            "TRADEBUS_RETRY_BACKOFF_S": "0.2",
        },
        log_path=tmp_path / f"{name}.log",
        name=name,
    )


class Producers:
    """Several producer processes publishing ``per`` events each."""

    def __init__(self, nats_url: str, count: int, per: int, tag: str) -> None:
        self.procs = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "libs.testing.producer",
                    "--nats",
                    nats_url,
                    "--count",
                    str(per),
                    "--source",
                    f"{tag}-{i}",
                    "--window",
                    "512",
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            for i in range(count)
        ]

    async def wait(self, timeout: float = 120) -> list[dict[str, float]]:
        results = []
        for p in self.procs:
            out, errs = await asyncio.wait_for(asyncio.to_thread(p.communicate), timeout)
            assert p.returncode == 0, errs.decode()[-3000:]
            results.append(json.loads(out.decode().strip().splitlines()[-1]))
        return results

    def status(self) -> str:
        return ", ".join(f"producer {i}: rc={p.poll()}" for i, p in enumerate(self.procs))

    def kill(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.communicate()  # reap, and close the pipes


async def assert_exactly_once_in_stream_order(bus: Bus, database_url: str, total: int) -> None:
    tl = await timeline(database_url)
    assert tl.count == total, tl
    assert tl.gapless, tl
    assert tl.distinct_ids == total, tl
    recorded = [(r["seq"], str(r["id"])) for r in await rows(database_url)]
    assert recorded == await stream_order(bus)
    assert {r["type"] for r in await rows(database_url, "WHERE type <> 'TradePrinted'")} == set()


async def reached(database_url: str, n: int) -> bool:
    return await recorded_count(database_url) >= n


def diagnose(rec: ServiceProcess, producers: Producers | None = None) -> Callable[[], str]:
    """What to print when a wait times out: producers' state, the recorder's log."""

    def text() -> str:
        head = producers.status() if producers is not None else ""
        try:
            lines = rec.metrics().splitlines()
            page = "\n".join(x for x in lines if x.startswith("tradebus_recorder_"))
        except OSError as e:
            page = f"(no metrics: {e})"
        tail = rec.log_text()[-3000:]
        return f"{head}\nrecorder alive={rec.alive}\n{page}\nlog tail:\n{tail}"

    return text


@pytest.fixture
def own_nats(tmp_path: Path) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path / "nats").start()
    yield server
    server.stop()


@pytest.fixture
async def own_pg(tmp_path: Path) -> AsyncIterator[tuple[PostgresServer, str]]:
    server = PostgresServer(tmp_path / "pg", fsync=False).start()
    url = server.url("tradebus")
    await upgrade_async(url)
    yield server, url
    server.stop()


async def test_concurrent_producers_recorded_exactly_once_in_order(
    tmp_path: Path, bus: Bus, database_url: str, nats_url: str
) -> None:
    rec = recorder(tmp_path, nats_url, database_url, "r1").start()
    producers = Producers(nats_url, count=4, per=10_000, tag="conc")
    try:
        results = await producers.wait()
        assert sum(r["count"] for r in results) == 40_000
        await eventually(
            lambda: reached(database_url, 40_000), timeout=90, message=diagnose(rec, producers)
        )
        await assert_exactly_once_in_stream_order(bus, database_url, 40_000)
    finally:
        producers.kill()
        rec.terminate()


async def test_kill_9_mid_batch_loses_and_duplicates_nothing(
    tmp_path: Path, bus: Bus, database_url: str, nats_url: str
) -> None:
    producers = Producers(nats_url, count=2, per=15_000, tag="kill")
    rec = recorder(tmp_path, nats_url, database_url, "r1").start()
    try:
        # Kill the recorder three times while it is busy writing batches.
        for target in (3_000, 9_000, 16_000):
            await eventually(functools.partial(reached, database_url, target), timeout=60)
            rec.kill()
            rec = recorder(tmp_path, nats_url, database_url, "r1").start()
        await producers.wait()
        await eventually(lambda: reached(database_url, 30_000), timeout=90)
        await assert_exactly_once_in_stream_order(bus, database_url, 30_000)
    finally:
        producers.kill()
        rec.terminate()


async def test_nats_restart_mid_stream(
    tmp_path: Path, own_nats: NatsServer, database_url: str
) -> None:
    rec = recorder(tmp_path, own_nats.url, database_url, "r1").start()
    producers = Producers(own_nats.url, count=2, per=10_000, tag="natsrestart")
    try:
        await eventually(
            lambda: reached(database_url, 4_000), timeout=60, message=diagnose(rec, producers)
        )
        own_nats.restart()  # same port, same JetStream store
        await producers.wait()
        await eventually(
            lambda: reached(database_url, 20_000), timeout=90, message=diagnose(rec, producers)
        )
        assert rec.alive
        async with await Bus.connect(own_nats.url, name="check") as check:
            await assert_exactly_once_in_stream_order(check, database_url, 20_000)
    finally:
        producers.kill()
        rec.terminate()


async def test_postgres_outage_mid_stream(
    tmp_path: Path, bus: Bus, nats_url: str, own_pg: tuple[PostgresServer, str]
) -> None:
    server, url = own_pg
    rec = recorder(tmp_path, nats_url, url, "r1").start()
    producers = Producers(nats_url, count=2, per=10_000, tag="pgdown")
    try:
        await eventually(lambda: reached(url, 4_000), timeout=60, message=diagnose(rec, producers))
        server.stop()
        down_at = time.monotonic()
        # Postgres stays down while the recorder retries (0.2 s backoff plus a
        # failed connect each time) at least 20 times: several seconds.
        await eventually(
            lambda: _restarts(rec.metrics()) >= 20, timeout=60, message=diagnose(rec, producers)
        )
        assert rec.alive
        outage_s = time.monotonic() - down_at
        assert outage_s >= 3.0, outage_s
        server.start()
        await producers.wait()
        await eventually(lambda: reached(url, 20_000), timeout=90, message=diagnose(rec, producers))
        await assert_exactly_once_in_stream_order(bus, url, 20_000)
    finally:
        producers.kill()
        rec.terminate()
        if server.proc is None:
            server.start()


async def test_idle_recorder_notices_postgres_going_away(
    tmp_path: Path, bus: Bus, nats_url: str, own_pg: tuple[PostgresServer, str]
) -> None:
    server, url = own_pg
    rec = recorder(tmp_path, nats_url, url, "r1").start()
    first = Producers(nats_url, count=1, per=5_000, tag="idle-a")
    second: Producers | None = None
    try:
        await first.wait()
        await eventually(lambda: reached(url, 5_000), timeout=60, message=diagnose(rec, first))
        await eventually(lambda: (rec.health() or {}).get("role") == "writer", timeout=10)
        # Nothing left to write: only the idle check can tell the store is gone.
        server.stop()
        await eventually(lambda: _restarts(rec.metrics()) >= 1, timeout=15, message=diagnose(rec))
        await eventually(lambda: (rec.health() or {}).get("role") == "standby", timeout=10)
        server.start()
        await eventually(lambda: (rec.health() or {}).get("role") == "writer", timeout=30)
        second = Producers(nats_url, count=1, per=5_000, tag="idle-b")
        await second.wait()
        await eventually(lambda: reached(url, 10_000), timeout=60, message=diagnose(rec, second))
        await assert_exactly_once_in_stream_order(bus, url, 10_000)
    finally:
        first.kill()
        if second is not None:
            second.kill()
        rec.terminate()
        if server.proc is None:
            server.start()


def _restarts(metrics: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("tradebus_recorder_restarts_total{")
    )


async def test_second_recorder_stands_by_then_takes_over(
    tmp_path: Path, bus: Bus, database_url: str, nats_url: str
) -> None:
    first = recorder(tmp_path, nats_url, database_url, "r1").start()
    second = None
    producers = None
    try:
        await eventually(lambda: (first.health() or {}).get("role") == "writer", timeout=30)
        second = recorder(tmp_path, nats_url, database_url, "r2").start()
        await eventually(lambda: (second.health() or {}).get("role") == "standby", timeout=30)
        producers = Producers(nats_url, count=2, per=10_000, tag="twins")
        await eventually(lambda: reached(database_url, 5_000), timeout=60)
        # The standby has written nothing while the first holds the lock.
        assert "tradebus_recorder_events_recorded_total 0.0" in second.metrics()
        assert (second.health() or {}).get("role") == "standby"
        first.kill()
        await eventually(lambda: (second.health() or {}).get("role") == "writer", timeout=30)
        await producers.wait()
        await eventually(lambda: reached(database_url, 20_000), timeout=90)
        await assert_exactly_once_in_stream_order(bus, database_url, 20_000)
        assert "tradebus_recorder_events_recorded_total 0.0" not in second.metrics()
    finally:
        if producers is not None:
            producers.kill()
        first.terminate()
        if second is not None:
            second.terminate()


def _lag(metrics: str) -> str | None:
    """The consumer-lag sample, None if there is none."""
    for line in metrics.splitlines():
        if line.startswith("tradebus_recorder_consumer_lag "):
            return line.rsplit(" ", 1)[1]
    return None


async def test_the_lag_is_not_shown_while_the_recorder_cannot_record(
    tmp_path: Path, bus: Bus, nats_url: str, own_pg: tuple[PostgresServer, str]
) -> None:
    """The lag was set at each commit only: with Postgres down it kept the
    last one (a few messages) while the stream grew unrecorded, and the
    recorder board showed a small lag. Not recording, it has no lag sample;
    recording again, the lag is back."""
    server, url = own_pg
    rec = recorder(tmp_path, nats_url, url, "r1").start()
    first = Producers(nats_url, count=1, per=500, tag="lag-a")
    second: Producers | None = None
    try:
        await first.wait()
        await eventually(lambda: reached(url, 500), timeout=60, message=diagnose(rec, first))
        await eventually(lambda: _lag(rec.metrics()) is not None, timeout=10)
        server.stop()
        await eventually(lambda: (rec.health() or {}).get("role") == "standby", timeout=15)
        assert _lag(rec.metrics()) is None, diagnose(rec)()
        server.start()
        await eventually(lambda: (rec.health() or {}).get("role") == "writer", timeout=30)
        # Writer again with nothing left to record: caught up, no commit.
        await eventually(lambda: _lag(rec.metrics()) == "0.0", timeout=10, message=diagnose(rec))
        second = Producers(nats_url, count=1, per=500, tag="lag-b")
        await second.wait()
        await eventually(lambda: reached(url, 1_000), timeout=60, message=diagnose(rec))
        await eventually(lambda: _lag(rec.metrics()) is not None, timeout=10)
    finally:
        first.kill()
        if second is not None:
            second.kill()
        rec.terminate()
        if server.proc is None:
            server.start()
