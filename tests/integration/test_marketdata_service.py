"""``tradebus marketdata run --source synthetic`` as a process, recorded by the recorder."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections import Counter
from decimal import Decimal
from itertools import pairwise
from pathlib import Path

import orjson

from libs.bus.client import Bus
from libs.contract.subjects import STREAM
from libs.testing.procs import ServiceProcess
from libs.testing.store import recorded_count, rows, stream_order
from libs.testing.wait import eventually
from services.marketdata.domain.synthetic import record_id

SEED = 11


def marketdata(tmp_path: Path, nats_url: str, name: str, *args: str, **env: str) -> ServiceProcess:
    return ServiceProcess(
        ["marketdata", "run", *args],
        env={"NATS_URL": nats_url, "TRADEBUS_CHANNELS": "trades,quotes,second_bars", **env},
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
    bad_ticks = subprocess.run(
        [*cmd, "--from", "2024-03-04"],
        env={**env, "TRADEBUS_MARK_MAX_SPREAD_TICKS": "1.5"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad_ticks.returncode == 2
    assert "TRADEBUS_MARK_MAX_SPREAD_TICKS" in bad_ticks.stderr


OPTION = "O:SPY241220P00720000"


async def test_option_quotes_make_throttled_marks_and_equity_quotes_none(
    tmp_path: Path, bus: Bus, nats_url: str, database_url: str
) -> None:
    """An option that only quotes (no trade, no bar) beside an equity: the
    service publishes marks on md.mark.<option> at the quotes' midpoints, no
    two closer than TRADEBUS_MARK_MIN_INTERVAL_S, each after its quote, and
    none for the equity; the recorder stores them like every md event."""
    rec = ServiceProcess(
        ["recorder", "run"],
        env={"NATS_URL": nats_url, "DATABASE_URL": database_url},
        log_path=tmp_path / "recorder.log",
        name="recorder",
    ).start()
    md = marketdata(
        tmp_path,
        nats_url,
        "md-marks",
        *("--source", "synthetic", "--symbols", f"AAPL,{OPTION}", "--rate", "200/s"),
        TRADEBUS_CHANNELS="quotes",
        TRADEBUS_MARK_MIN_INTERVAL_S="0.1",
        TRADEBUS_MARK_MIN_CHANGE="0",
    ).start()
    try:
        try:
            await eventually(
                lambda: _marks_out(md.metrics()) >= 8,
                timeout=30,
                message=lambda: md.log_text()[-2000:],
            )
        finally:
            stopping_ns = time.time_ns()
            assert md.terminate() == 0, md.log_text()[-2000:]
        published = published_at_exit(md)
        await eventually(
            lambda: _has(database_url, published), timeout=30, message=rec.log_text()[-2000:]
        )
    finally:
        assert rec.terminate() == 0, rec.log_text()[-2000:]

    recorded = await rows(database_url)
    types = Counter((r["type"], r["symbol"]) for r in recorded)
    assert set(types) == {
        ("QuoteUpdated", "AAPL"),
        ("QuoteUpdated", OPTION),
        ("MarkUpdated", OPTION),
    }, "marks for the option only"
    quotes = {r["id"]: r for r in recorded if r["type"] == "QuoteUpdated"}
    marks = [r for r in recorded if r["type"] == "MarkUpdated"]
    assert 8 <= len(marks) < types["QuoteUpdated", OPTION]
    for m in marks:
        payload = orjson.loads(m["payload"])
        q = quotes[m["causation_id"]]  # made from a recorded quote of the option
        quoted = orjson.loads(q["payload"])
        assert (m["subject"], q["symbol"]) == (f"md.mark.{OPTION}", OPTION)
        assert m["seq"] > q["seq"], "a mark follows its quote"
        assert m["ts_event"] == q["ts_event"]
        bid, ask = Decimal(quoted["bid_price"]), Decimal(quoted["ask_price"])
        assert (Decimal(payload["bid_price"]), Decimal(payload["ask_price"])) == (bid, ask)
        assert Decimal(payload["price"]) == (bid + ask) / 2
        assert (payload["basis"], payload["feed"]) == ("quote_mid", "synthetic")
    # Throttled to one mark per 0.1 s while it runs: each mark's slot (its
    # quote's time, or the end of the interval it was held for) lies between
    # its quote's time and when it was made, and slots are at least the
    # interval apart. At the stop, a quote still held back is marked at once,
    # due or not (the contract's newest market, not lost with the process):
    # one more mark at most, of the option's last quote.
    running = [m for m in marks if m["ts_init"] < stopping_ns]
    at_stop = marks[len(running) :]
    assert all(m["ts_init"] >= stopping_ns for m in at_stop), "marks in the order made"
    assert len(at_stop) <= 1
    if at_stop:
        last_quote = max(
            (r for r in recorded if (r["type"], r["symbol"]) == ("QuoteUpdated", OPTION)),
            key=lambda r: r["seq"],
        )
        assert at_stop[0]["causation_id"] == last_quote["id"]
    interval = 100_000_000
    assert all(b["ts_init"] - a["ts_event"] >= interval for a, b in pairwise(running))
    span = running[-1]["ts_init"] - running[0]["ts_event"]
    assert len(running) <= span // interval + 1


def _marks_out(metrics: str) -> float:
    m = re.search(r'tradebus_marketdata_events_out_total\{channel="marks"\} ([0-9.e+]+)', metrics)
    return float(m.group(1)) if m else 0.0
