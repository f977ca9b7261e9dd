"""The NATS server, not convention, decides who may read back what: the
marketdata feed its newest minute bar, the operator (and no service) a
replay of the store. The server and its users:
tests/integration/nats_permissions_cluster.py; who may publish what:
test_nats_permissions_publish.py; consumers and trimming:
test_nats_permissions_consumers.py."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from nats.aio.msg import Msg

import tests.integration.nats_permissions_cluster as nats_cluster
from libs.bus.client import Bus
from libs.contract.events import BarClosed
from libs.contract.subjects import subject_for
from libs.replay import ReplayRefused, ReplayRequest, replay
from libs.testing.producer import make_trades
from services.marketdata.adapters.polygon.resume import newest_bars
from services.marketdata.config import MarketdataSettings
from tests.integration.recorded_chains import record

# The module's nats-server and its users, registered in this module.
cluster = nats_cluster.cluster
stream = nats_cluster.stream


async def test_marketdata_may_read_back_its_newest_minute_bar(
    cluster: nats_cluster.Cluster, stream: str
) -> None:
    # After a restart the Polygon feed gap-fills from the newest
    # md.bar.1m.<symbol> on the stream (services/marketdata/adapters/polygon/
    # resume.py: the last message, STREAM.MSG.GET; when that one was
    # backfilled, the bars stored since, one batched DIRECT.GET), as its own
    # NATS user. Here the live bar of the reconnect minute went out before
    # the gap-fill's older bars.
    newest = nats_cluster.bar("RESUMED")
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
            clock=nats_cluster.CLOCK,
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


# ------------------------------------------------------------------ replay


async def test_replay_counts_only_what_the_server_took(
    cluster: nats_cluster.Cluster, tmp_path: Path, bus: Bus, nats_url: str, database_url: str
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
        await nats_cluster.settled(watcher.nc)
        await nats_cluster.settled(service.nc)
        async with cluster.bus("operator") as operator:
            done = await replay(database_url, operator, ReplayRequest(to_seq=3))
        assert done.published == 3

        async def all_seen() -> bool:
            return len(seen) == 3

        await nats_cluster.eventually(all_seen, what="the three replayed messages")
        assert watcher.errors == []
        assert any("permissions violation for subscription" in e for e in service.errors)


def replay_cli(
    cluster: nats_cluster.Cluster, user: str, database_url: str
) -> subprocess.CompletedProcess[str]:
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
    cluster: nats_cluster.Cluster, tmp_path: Path, bus: Bus, nats_url: str, database_url: str
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
