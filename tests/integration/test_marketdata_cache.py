"""The history cache end to end: ``fetch`` against the fake Polygon REST server,
``run --source cache`` onto real JetStream."""

from __future__ import annotations

import datetime as dt
import itertools
import json
import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import nats.errors
from nats.js import api as js_api

from libs.bus.client import Bus
from libs.contract.codec import decode
from libs.contract.events import BarClosed
from libs.contract.subjects import STREAM
from libs.testing.fakes.polygon_data import make_minute_bars
from libs.testing.fakes.polygon_rest import FakePolygonRest
from libs.testing.procs import ServiceProcess
from services.marketdata.adapters.cache import ParquetCache
from services.marketdata.domain.cache import CachedBar, bar_event_id, make_bar

MON = dt.date(2024, 3, 4)
TUE = dt.date(2024, 3, 5)
OPEN_MON_MS = 1_709_562_600_000  # 2024-03-04 09:30 New York
OPEN_TUE_MS = OPEN_MON_MS + 86_400_000
KEY = "test-key-4f1c"


def tradebus(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.cli", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def cached(bars: list[dict[str, Any]]) -> list[CachedBar]:
    return [
        make_bar(t=b["t"], o=b["o"], h=b["h"], l=b["l"], c=b["c"], v=b["v"], vw=b["vw"], n=b["n"])
        for b in bars
    ]


def test_fetch_follows_pages_resumes_and_names_a_bad_key(tmp_path: Path) -> None:
    aapl = make_minute_bars("AAPL", OPEN_MON_MS, 130, seed=1) + make_minute_bars(
        "AAPL", OPEN_TUE_MS, 90, seed=2
    )
    msft = make_minute_bars("MSFT", OPEN_MON_MS, 120, seed=3, skip=frozenset({5, 6, 70}))
    cache = ParquetCache(tmp_path / "cache")
    with FakePolygonRest({"AAPL": aapl, "MSFT": msft}, api_key=KEY, page_size=50) as rest:
        env = {
            "POLYGON_API_KEY": KEY,
            "TRADEBUS_POLYGON_REST_URL": rest.url,
            "TRADEBUS_CACHE_DIR": str(cache.root),
        }
        # Monday only: 130 AAPL bars come in three pages (next_url with a cursor).
        first = tradebus(
            "marketdata", "fetch", "--symbols", "AAPL,MSFT", "--from", "2024-03-04", env=env
        )
        assert first.returncode == 0, first.stderr
        assert json.loads(first.stdout.splitlines()[-1])["fetched_days"] == 2
        aapl_pages = rest.agg_requests("AAPL")
        assert len(aapl_pages) == 3
        assert [("cursor" in r.query) for r in aapl_pages] == [False, True, True]
        assert {r.auth for r in rest.requests} == {"bearer"}
        assert cache.read("minute", "AAPL", MON) == cached(aapl[:130])
        assert cache.read("minute", "MSFT", MON) == cached(msft)
        assert len(cache.read("minute", "MSFT", MON)) == 117
        # Every digit as the vendor sent it, e.g. VWAP to four places.
        assert cache.read("minute", "AAPL", MON)[0].vw == Decimal(str(aapl[0]["vw"]))

        # Monday to Tuesday, after one server error (the client retries it):
        # only Tuesday is fetched.
        rest.fail_next(500)
        before = len(rest.agg_requests())
        second = tradebus(
            "marketdata",
            "fetch",
            "--symbols",
            "AAPL,MSFT",
            "--from",
            "2024-03-04",
            "--to",
            "2024-03-05",
            env=env,
        )
        assert second.returncode == 0, second.stderr
        summary = json.loads(second.stdout.splitlines()[-1])
        assert (summary["fetched_days"], summary["skipped_days"]) == (2, 2)
        new = rest.agg_requests()[before:]
        assert {r.path.rsplit("/", 1)[-1] for r in new} == {"2024-03-05"}
        assert [r.status for r in new].count(500) == 1
        assert cache.read("minute", "AAPL", TUE) == cached(aapl[130:])
        assert cache.read("minute", "MSFT", TUE) == []

        # Everything is cached: a third run asks the server for nothing.
        before = len(rest.requests)
        third = tradebus(
            "marketdata",
            "fetch",
            "--symbols",
            "AAPL,MSFT",
            "--from",
            "2024-03-04",
            "--to",
            "2024-03-05",
            env=env,
        )
        assert third.returncode == 0, third.stderr
        assert json.loads(third.stdout.splitlines()[-1])["fetched_days"] == 0
        assert len(rest.requests) == before

        # A wrong key: a clear error naming the variable, never the key itself.
        bad = tradebus(
            "marketdata",
            "fetch",
            "--symbols",
            "NVDA",
            "--from",
            "2024-03-04",
            env={**env, "POLYGON_API_KEY": "wrong-key-9d2e"},
        )
        assert bad.returncode == 1
        assert "Unknown API Key" in bad.stderr
        assert "POLYGON_API_KEY" in bad.stderr
        assert "wrong-key-9d2e" not in bad.stderr + bad.stdout
        assert not (cache.root / "minute" / "NVDA").exists()

        unset = tradebus(
            "marketdata",
            "fetch",
            "--symbols",
            "NVDA",
            "--from",
            "2024-03-04",
            env={**env, "POLYGON_API_KEY": ""},
        )
        assert unset.returncode == 2
        assert "POLYGON_API_KEY is not set" in unset.stderr


async def stream_bars(bus: Bus) -> list[tuple[str, BarClosed, float]]:
    """(subject, event, server receive time) of every message in the stream, in order."""
    info = await bus.js.stream_info(STREAM)
    last = info.state.last_seq
    out: list[tuple[str, BarClosed, float]] = []
    if last == 0:
        return out
    sub = await bus.js.subscribe(
        ">", stream=STREAM, ordered_consumer=True, deliver_policy=js_api.DeliverPolicy.ALL
    )
    try:
        while True:
            try:
                msg = await sub.next_msg(timeout=5)
            except (TimeoutError, nats.errors.TimeoutError):
                break
            event = decode(msg.data)
            assert isinstance(event, BarClosed)
            out.append((msg.subject, event, msg.metadata.timestamp.timestamp()))
            if msg.metadata.sequence.stream >= last:
                break
    finally:
        await sub.unsubscribe()
    return out


def replay(tmp_path: Path, nats_url: str, cache: ParquetCache, *args: str, **env: str) -> None:
    proc = ServiceProcess(
        ["marketdata", "run", "--source", "cache", *args],
        env={"NATS_URL": nats_url, "TRADEBUS_CACHE_DIR": str(cache.root), **env},
        log_path=tmp_path / "replay.log",
        name="replay",
    ).start()
    assert proc.proc is not None
    try:
        # The cache source ends by itself once everything is acknowledged.
        assert proc.proc.wait(timeout=60) == 0, proc.log_text()[-2000:]
    finally:
        proc.kill()


async def test_cache_replay_at_max_publishes_exactly_the_cached_bars_in_time_order(
    tmp_path: Path, bus: Bus, nats_url: str
) -> None:
    cache = ParquetCache(tmp_path / "cache")
    data = {
        ("AAPL", MON): make_minute_bars("AAPL", OPEN_MON_MS, 60, seed=1, skip=frozenset({7})),
        ("AAPL", TUE): make_minute_bars("AAPL", OPEN_TUE_MS, 40, seed=2),
        ("MSFT", MON): make_minute_bars("MSFT", OPEN_MON_MS + 30 * 60_000, 45, seed=3),
        ("NVDA", TUE): make_minute_bars("NVDA", OPEN_TUE_MS - 10 * 60_000, 20, seed=4),
        ("SPY", MON): make_minute_bars("SPY", OPEN_MON_MS, 10, seed=5),  # not asked for
    }
    for (symbol, day), bars in data.items():
        cache.write("minute", symbol, day, cached(bars), origin="test")
    expected = sorted(
        (
            (b.t, symbol, b)
            for (symbol, _day), bars in data.items()
            if symbol != "SPY"
            for b in cached(bars)
        ),
        key=lambda x: (x[0], x[1]),
    )
    replay(
        tmp_path,
        nats_url,
        cache,
        "--symbols",
        "AAPL,MSFT,NVDA",
        "--from",
        "2024-03-04",
        "--to",
        "2024-03-05",
        "--speed",
        "max",
    )
    got = await stream_bars(bus)
    assert len(got) == len(expected) == 164
    for (subject, event, _), (t, symbol, bar) in zip(got, expected, strict=True):
        p = event.payload
        assert subject == f"md.bar.1m.{symbol}"
        assert (p.symbol, p.start_ns) == (symbol, t * 1_000_000)
        assert event.id == bar_event_id(symbol, "1m", t)
        assert (p.open, p.high, p.low, p.close, p.volume, p.vwap, p.trades) == (
            bar.o,
            bar.h,
            bar.l,
            bar.c,
            bar.v,
            bar.vw,
            bar.n,
        )
        assert p.feed == "cache"
        assert event.source == "marketdata/cache"

    # Replayed again, every bar is a duplicate of one already in the stream.
    replay(tmp_path, nats_url, cache, "--symbols", "AAPL,MSFT,NVDA", "--from", "2024-03-04")
    assert (await bus.js.stream_info(STREAM)).state.messages == 164


async def test_cache_replay_at_10x_keeps_the_pace(tmp_path: Path, bus: Bus, nats_url: str) -> None:
    cache = ParquetCache(tmp_path / "cache")
    start = OPEN_MON_MS
    seconds = [make_bar(t=start + i * 1000, o=10, h=11, l=9, c=10, v=5) for i in range(5)]
    cache.write("second", "AAPL", MON, seconds, origin="test")
    replay(
        tmp_path,
        nats_url,
        cache,
        "--symbols",
        "AAPL",
        "--from",
        "2024-03-04",
        "--speed",
        "10x",
        TRADEBUS_CACHE_TIMESPAN="second",
    )
    got = await stream_bars(bus)
    assert [s for s, _, _ in got] == ["md.bar.1s.AAPL"] * 5
    received = [at for _, _, at in got]
    gaps = [b - a for a, b in itertools.pairwise(received)]
    # One second of market time at 10x is 100 ms on the wall clock.
    assert all(g >= 0.09 for g in gaps), gaps
    assert received[-1] - received[0] >= 0.39
