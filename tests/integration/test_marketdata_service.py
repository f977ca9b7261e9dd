"""``tradebus marketdata run --source synthetic`` as a process, recorded by the recorder."""

from __future__ import annotations

import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import orjson

from libs.bus.client import Bus
from libs.contract.subjects import STREAM
from libs.testing.procs import ServiceProcess
from libs.testing.store import recorded_count, rows, stream_order
from libs.testing.wait import eventually
from services.marketdata.domain.synthetic import record_id

SEED = 11


def marketdata(tmp_path: Path, nats_url: str, name: str, *args: str) -> ServiceProcess:
    return ServiceProcess(
        ["marketdata", "run", *args],
        env={"NATS_URL": nats_url, "TRADEBUS_CHANNELS": "trades,quotes,second_bars"},
        log_path=tmp_path / f"{name}.log",
        name=name,
    )


def published_at_exit(proc: ServiceProcess) -> int:
    m = re.search(r"marketdata stopped after (\d+) events", proc.log_text())
    assert m, proc.log_text()[-2000:]
    return int(m.group(1))


async def test_synthetic_feed_is_recorded_and_a_rerun_publishes_the_same_ids(
    tmp_path: Path, bus: Bus, nats_url: str, database_url: str
) -> None:
    rec = ServiceProcess(
        ["recorder", "run"],
        env={"NATS_URL": nats_url, "DATABASE_URL": database_url},
        log_path=tmp_path / "recorder.log",
        name="recorder",
    ).start()
    try:
        await _synthetic_then_rerun(tmp_path, bus, nats_url, database_url, rec)
    finally:
        assert rec.terminate() == 0, rec.log_text()[-2000:]
    assert not [r for r in await rows(database_url) if r["type"] == "DuplicateSuppressed"]


async def _synthetic_then_rerun(
    tmp_path: Path, bus: Bus, nats_url: str, database_url: str, rec: ServiceProcess
) -> None:
    args = ("--source", "synthetic", "--symbols", "AAPL,MSFT", "--rate", "200/s")
    md = marketdata(tmp_path, nats_url, "md1", *args, "--seed", str(SEED)).start()
    try:
        health = await eventually(
            lambda: (h := md.health()) is not None and h["published"] >= 600 and h,
            timeout=30,
            message=md.log_text()[-2000:],
        )
        assert health["ok"] is True
        assert health["source"] == "synthetic"
        assert health["connected"] is True
        assert health["last_event_time"].startswith("20")
        metrics = md.metrics()
        for channel in ("trades", "quotes", "second_bars"):
            assert f'tradebus_marketdata_events_out_total{{channel="{channel}"}}' in metrics
            assert f'tradebus_marketdata_messages_in_total{{channel="{channel}"}}' in metrics
    finally:
        assert md.terminate() == 0, md.log_text()[-2000:]
    first_run = published_at_exit(md)
    await eventually(
        lambda: _has(database_url, first_run), timeout=30, message=rec.log_text()[-2000:]
    )

    recorded = await rows(database_url)
    assert len(recorded) == first_run
    types = Counter(r["type"] for r in recorded)
    assert set(types) == {"TradePrinted", "QuoteUpdated", "BarClosed"}
    assert types["TradePrinted"] == types["QuoteUpdated"] >= 250
    subjects = set()
    for r in recorded:
        payload = orjson.loads(r["payload"])
        assert r["source"] == "marketdata/synthetic"
        assert payload["feed"] == "synthetic"
        assert r["symbol"] == payload["symbol"]
        if r["type"] == "TradePrinted":
            assert r["subject"] == f"md.trade.{r['symbol']}"
            assert r["id"] == record_id(SEED, "", r["symbol"], "trade", payload["sequence"])
        elif r["type"] == "QuoteUpdated":
            assert r["subject"] == f"md.quote.{r['symbol']}"
            assert r["id"] == record_id(SEED, "", r["symbol"], "quote", payload["sequence"])
        else:
            assert r["subject"] == f"md.bar.1s.{r['symbol']}"
            assert payload["end_ns"] - payload["start_ns"] == 1_000_000_000
        subjects.add(r["subject"])
    assert {"md.trade.AAPL", "md.quote.MSFT", "md.bar.1s.AAPL", "md.bar.1s.MSFT"} <= subjects

    # The same seed again: what the first run published is deduplicated by
    # JetStream (same ids), only the rest is new.
    again = marketdata(tmp_path, nats_url, "md2", *args, "--seed", str(SEED)).start()
    try:
        await eventually(
            lambda: (h := again.health()) is not None and h["published"] >= 2 * first_run,
            timeout=30,
            message=again.log_text()[-2000:],
        )
    finally:
        assert again.terminate() == 0, again.log_text()[-2000:]
    second_run = published_at_exit(again)
    ids = [msg_id for _, msg_id in await stream_order(bus)]
    assert len(ids) == len(set(ids)) == second_run
    await eventually(lambda: _has(database_url, second_run), timeout=30)
    assert (await bus.js.stream_info(STREAM)).state.messages == second_run


async def _has(database_url: str, n: int) -> bool:
    return await recorded_count(database_url) >= n


def test_bad_settings_stop_start_up_with_the_variable_named(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "services.cli", "marketdata", "run", "--source", "cache"]
    env = {"PATH": "/usr/bin:/bin", "NATS_URL": "nats://127.0.0.1:1", "HOME": str(tmp_path)}
    no_dates = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    assert no_dates.returncode == 2
    assert "TRADEBUS_CACHE_FROM" in no_dates.stderr
    bad_speed = subprocess.run(
        [*cmd, "--from", "2024-03-04", "--speed", "fast"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad_speed.returncode == 2
    assert "TRADEBUS_CACHE_SPEED" in bad_speed.stderr
