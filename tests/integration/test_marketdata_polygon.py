"""The Polygon live source against the fake Polygon WebSocket and REST servers.

Real NATS JetStream (the service's own ``JetStreamSink``); the fakes follow
``PROTOCOLS.md`` (``libs/testing/fakes``). Here: the session's handshake and
events, refusals and disconnects Polygon sends, bad input, a stale feed, and
the REST fake itself. Option marks: test_marketdata_polygon_marks; gap-fills
after an outage: test_marketdata_polygon_gapfill, after a restart:
test_marketdata_polygon_restart, of bars not final yet:
test_marketdata_polygon_settle; the whole day as processes:
test_marketdata_polygon_day.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from decimal import Decimal

import orjson
import pytest
from websockets.asyncio.client import connect

from libs.bus.client import Bus
from libs.contract.events import FeedStatusChanged, MessageDeadLettered, TradePrinted
from libs.testing.fakes.polygon_data import (
    MINUTE_MS,
    make_minute_bars,
    quote,
    rest_bar_to_am,
    trade,
)
from libs.testing.fakes.polygon_rest import FakePolygonRest
from libs.testing.fakes.polygon_ws import FakePolygonWs
from libs.testing.wait import eventually
from services.marketdata import metrics
from services.marketdata.adapters.polygon.client import PolygonSource
from services.marketdata.adapters.polygon.parse import bar_id
from services.marketdata.domain.staleness import AlwaysOpen
from tests.integration.polygon_feed import (
    KEY,
    MS,
    T0,
    CountingSink,
    FakeClock,
    has_status,
    make_settings,
    running,
    stream_events,
)


async def test_normal_flow_handshake_subscribe_and_events_on_the_stream(bus: Bus) -> None:
    async with FakePolygonWs(api_key=KEY) as ws:
        settings = make_settings(ws, None, channels="trades,quotes,minute_bars,second_bars")
        sink = CountingSink(bus)
        clock = FakeClock(T0)
        source = PolygonSource(settings, clock=clock, hours=AlwaysOpen())
        bars = make_minute_bars("AAPL", T0, 2)
        before = metrics.MESSAGES_IN.labels(channel="trades")._value.get()
        async with running(source, sink):
            conn = await ws.wait_subscribed("T.AAPL", "Q.AAPL", "AM.MSFT", "A.MSFT")
            await ws.publish(
                [
                    trade("AAPL", 7, T0 + 1, "190.16", conditions=(12,)),
                    quote("AAPL", 8, T0 + 2, "190.15", "190.17"),
                    trade("MSFT", 3, T0 + 3, "410.5"),
                    trade("NVDA", 1, T0 + 4, "1"),  # not subscribed: the fake filters it
                    rest_bar_to_am("AAPL", bars[0]),
                ]
            )
            await eventually(lambda: len(sink.events) >= 7, timeout=10)

        # One auth action then one subscribe with every channel, comma-separated.
        assert [a["action"] for a in conn.actions] == ["auth", "subscribe"]
        assert conn.actions[0]["params"] == KEY
        assert set(conn.actions[1]["params"].split(",")) == {
            f"{p}.{s}" for p in ("T", "Q", "AM", "A") for s in ("AAPL", "MSFT")
        }
        on_stream = await stream_events(bus)
        data = [e for e in on_stream if not isinstance(e, FeedStatusChanged)]
        assert [e.type for e in data] == [
            "TradePrinted",
            "QuoteUpdated",
            "TradePrinted",
            "BarClosed",
        ]
        assert data[0].payload.price == Decimal("190.16")
        assert data[0].payload.conditions == (12,)
        assert data[0].ts_event == (T0 + 1) * MS
        assert data[3].id == bar_id("AAPL", "1m", T0)
        statuses = [e.payload.status for e in on_stream if isinstance(e, FeedStatusChanged)]
        assert statuses[:3] == ["connected", "authenticated", "subscribed"]
        assert statuses[-1] == "disconnected"  # "stopped", on the way out
        assert metrics.MESSAGES_IN.labels(channel="trades")._value.get() - before == 2


async def test_auth_failure_is_reported_retried_slowly_and_the_key_never_logged(
    bus: Bus, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    secret = "wrong-key-SECRET-71c2"  # noqa: S105 - a made-up key, to look for in logs
    async with FakePolygonWs(api_key=KEY) as ws:
        settings = make_settings(ws, None, polygon_api_key=secret, polygon_auth_retry_s=0.4)
        sink = CountingSink(bus)
        source = PolygonSource(settings, clock=FakeClock(T0), hours=AlwaysOpen())
        async with running(source, sink):
            await eventually(lambda: ws.auth_failures >= 2, timeout=10)
            first, second = ws.connections[0], ws.connections[1]
        assert not first.subscriptions
        assert not second.subscriptions
        [message, *_] = sink.status_messages("auth_failed")
        assert "auth_failed: authentication failed" in message
        assert "retrying in 0.4s" in message
        assert any("after auth_failed" in m for m in sink.status_messages("reconnecting"))
        assert "subscribed" not in sink.statuses()
    ours = [r for r in caplog.records if not r.name.startswith("websockets.server")]
    assert ours
    assert all(secret not in r.getMessage() for r in ours)
    assert all(secret.encode() not in orjson.dumps(e.model_dump(mode="json")) for e in sink.events)


async def test_auth_retry_waits_polygon_auth_retry_s(bus: Bus) -> None:
    async with FakePolygonWs(api_key=KEY) as ws:
        settings = make_settings(ws, None, polygon_api_key="nope", polygon_auth_retry_s=0.6)
        source = PolygonSource(settings, clock=FakeClock(T0), hours=AlwaysOpen())
        async with running(source, CountingSink(bus)):
            await ws.wait_connections(1)
            started = time.monotonic()
            await ws.wait_connections(2, timeout=10)
            waited = time.monotonic() - started
        assert waited >= 0.5


async def test_max_connections_is_reported_and_retried_slowly(bus: Bus) -> None:
    async with FakePolygonWs(api_key=KEY) as ws:
        settings = make_settings(ws, None, polygon_auth_retry_s=0.6)
        sink = CountingSink(bus)
        source = PolygonSource(settings, clock=FakeClock(T0), hours=AlwaysOpen())
        before = metrics.RECONNECTS.labels(feed="polygon", reason="max_connections")._value.get()
        async with running(source, sink):
            await ws.wait_subscribed("T.AAPL")
            # Another client with our key: the newest connection kicks the oldest (ours).
            async with connect(ws.url) as other:
                await other.recv()
                await other.send(json.dumps({"action": "auth", "params": KEY}))
                assert json.loads(await other.recv())[0]["status"] == "auth_success"
                kicked = time.monotonic()
                await eventually(lambda: has_status(sink, "max_connections"))
                await ws.wait_connections(3, timeout=10)
                assert time.monotonic() - kicked >= 0.5
            await ws.wait_subscribed("T.AAPL")
        [message] = sink.status_messages("max_connections")
        assert "Maximum number of websocket connections exceeded" in message
        assert any("after max_connections" in m for m in sink.status_messages("reconnecting"))
        after = metrics.RECONNECTS.labels(feed="polygon", reason="max_connections")._value.get()
        assert after - before == 1


async def test_max_connections_in_the_auth_reply_is_reported_and_retried_slowly(
    bus: Bus,
) -> None:
    async with FakePolygonWs(api_key=KEY, refuse_newest=True) as ws:
        # Another client holds the one connection our key is allowed.
        async with connect(ws.url) as other:
            await other.recv()
            await other.send(json.dumps({"action": "auth", "params": KEY}))
            assert json.loads(await other.recv())[0]["status"] == "auth_success"
            settings = make_settings(ws, None, polygon_auth_retry_s=0.3)
            sink = CountingSink(bus)
            source = PolygonSource(settings, clock=FakeClock(T0), hours=AlwaysOpen())
            async with running(source, sink):
                await eventually(lambda: has_status(sink, "max_connections", 2), timeout=10)
        assert len(ws.connections) >= 3  # the other client, then ours at least twice
        assert "auth_failed" not in sink.statuses()
        assert any("after max_connections" in m for m in sink.status_messages("reconnecting"))


async def test_force_disconnect_is_reported_and_reconnected(bus: Bus) -> None:
    async with FakePolygonWs(api_key=KEY) as ws:
        sink = CountingSink(bus)
        source = PolygonSource(make_settings(ws, None), clock=FakeClock(T0), hours=AlwaysOpen())
        async with running(source, sink):
            await ws.wait_subscribed("T.AAPL")
            await ws.kick("force_disconnect", "Server requested disconnect")
            await eventually(lambda: has_status(sink, "subscribed", 2), timeout=10)
            await ws.publish([trade("AAPL", 1, T0, "10")])
            await eventually(lambda: any(isinstance(e, TradePrinted) for e in sink.events))
        assert sink.status_messages("force_disconnect") == ["stocks: Server requested disconnect"]
        assert any("after force_disconnect" in m for m in sink.status_messages("reconnecting"))


async def test_a_channel_never_acknowledged_ends_the_session_it_is_not_subscribed(
    bus: Bus,
) -> None:
    # Polygon acks every channel it serves (PROTOCOLS.md); one without an ack
    # within the handshake timeout is not streaming, whatever else came.
    async with FakePolygonWs(api_key=KEY, unacked={"Q.MSFT"}) as ws:
        settings = make_settings(ws, None, polygon_connect_timeout_s=0.3)
        sink = CountingSink(bus)
        source = PolygonSource(settings, clock=FakeClock(T0), hours=AlwaysOpen())
        async with running(source, sink):
            await ws.wait_connections(2, timeout=10)
            await eventually(lambda: has_status(sink, "reconnecting"), timeout=10)
        assert "subscribed" not in sink.statuses()
        assert any("Q.MSFT" in m for m in sink.status_messages("disconnected"))
        assert any("after timeout" in m for m in sink.status_messages("reconnecting"))


async def test_auth_failed_mid_stream_is_reported_and_retried_slowly(bus: Bus) -> None:
    async with FakePolygonWs(api_key=KEY) as ws:
        settings = make_settings(ws, None, polygon_auth_retry_s=0.6)
        sink = CountingSink(bus)
        source = PolygonSource(settings, clock=FakeClock(T0), hours=AlwaysOpen())
        async with running(source, sink):
            await ws.wait_subscribed("T.AAPL")
            await ws.kick("auth_failed", "authentication failed")
            kicked = time.monotonic()
            await ws.wait_connections(2, timeout=10)
            waited = time.monotonic() - kicked
            await ws.wait_subscribed("T.AAPL")
        assert waited >= 0.5
        assert sink.status_messages("auth_failed") == ["stocks: authentication failed"]
        assert any("after auth_failed" in m for m in sink.status_messages("reconnecting"))


async def test_malformed_frame_is_dead_lettered_and_the_feed_goes_on(bus: Bus) -> None:
    async with FakePolygonWs(api_key=KEY) as ws:
        sink = CountingSink(bus)
        source = PolygonSource(make_settings(ws, None), clock=FakeClock(T0), hours=AlwaysOpen())
        async with running(source, sink):
            await ws.wait_subscribed("T.AAPL")
            await ws.send_raw('[{"ev":"T","sym":"AAPL",')
            await ws.send_raw(
                '[{"ev":"T","sym":"AAPL","p":1,"s":1,"t":1,"q":1},{"ev":"T","sym":"AAPL"}]'
            )
            await ws.publish([trade("AAPL", 2, T0, "10.25")])
            await eventually(
                lambda: sum(isinstance(e, TradePrinted) for e in sink.events) == 2, timeout=10
            )
        assert len(ws.connections) == 1  # never reconnected
        on_stream = await stream_events(bus)
        letters = [e for e in on_stream if isinstance(e, MessageDeadLettered)]
        assert [e.payload.error.split(":")[0] for e in letters] == [
            "malformed_json",
            "invalid_event",
        ]
        assert all(e.payload.service == "marketdata" for e in letters)
        assert base64.b64decode(letters[0].payload.raw_b64) == b'[{"ev":"T","sym":"AAPL",'
        assert json.loads(base64.b64decode(letters[1].payload.raw_b64)) == {
            "ev": "T",
            "sym": "AAPL",
        }
        trades = [e for e in on_stream if isinstance(e, TradePrinted)]
        assert [t.payload.sequence for t in trades] == [1, 2]


async def test_stale_feed_is_reported_then_recovered(bus: Bus) -> None:
    async with FakePolygonWs(api_key=KEY) as ws:
        sink = CountingSink(bus)
        clock = FakeClock(T0)
        settings = make_settings(ws, None, stale_after_s=0.4)
        source = PolygonSource(settings, clock=clock, hours=AlwaysOpen())
        async with running(source, sink):
            await ws.wait_subscribed("T.AAPL")
            clock.set_ms(T0 + 1_000)  # a second of silence on the source's clock
            await eventually(lambda: has_status(sink, "stale"), timeout=10)
            assert metrics.STALE._value.get() == 1
            # Stale in market hours fails the service's /health (503); it
            # only said so in the body, under a 200.
            assert source.health()[0] is False
            assert source.health()[1]["stale"] is True
            await ws.publish([trade("AAPL", 1, T0 + 1_000, "10")])
            await eventually(lambda: has_status(sink, "recovered"), timeout=10)
            assert metrics.STALE._value.get() == 0
            assert source.health()[0] is True
        [stale] = sink.status_messages("stale")
        assert "no data for 1.0s during market hours" in stale
        on_stream = [
            e.payload.status for e in await stream_events(bus) if isinstance(e, FeedStatusChanged)
        ]
        assert on_stream.index("stale") < on_stream.index("recovered")


def test_rest_fake_speaks_polygon_to_the_official_client() -> None:
    """Threaded mode, for blocking code: paging, both auth styles, error shapes."""
    import urllib.request

    from massive import RESTClient  # type: ignore[import-untyped,unused-ignore]
    from massive.exceptions import BadResponse  # type: ignore[import-untyped,unused-ignore]

    start = T0 - T0 % (5 * MINUTE_MS)  # a five-minute boundary
    bars = make_minute_bars("AAPL", start, 12, skip=frozenset({5}))
    with FakePolygonRest({"AAPL": bars}, api_key=KEY, page_size=4, not_authorized=["TSLA"]) as rest:
        client = RESTClient(KEY, base=rest.url, retries=0)
        got = list(client.list_aggs("AAPL", 1, "minute", start, start + 11 * MINUTE_MS))
        assert [a.timestamp for a in got] == [b["t"] for b in bars]
        assert len(rest.agg_requests("AAPL")) == 3  # 11 bars, 4 a page
        assert {r.auth for r in rest.requests} == {"bearer"}
        # Five-minute bars are aggregated from the minutes.
        fives = list(client.list_aggs("AAPL", 5, "minute", start, start + 11 * MINUTE_MS))
        assert [a.timestamp for a in fives] == [start + i * 5 * MINUTE_MS for i in range(3)]
        assert fives[0].volume == sum(b["v"] for b in bars[:5])
        assert Decimal(repr(fives[1].open)) == bars[5]["o"]  # minute 5: no bar; opens at 6
        # An empty range has no results key at all; the client copes.
        url = f"{rest.url}/v2/aggs/ticker/MSFT/range/1/minute/{T0}/{T0}?apiKey={KEY}"
        with urllib.request.urlopen(url) as r:  # noqa: S310 - our own http:// fake
            body = json.loads(r.read())
        assert body["status"] == "OK"
        assert "results" not in body
        assert rest.requests[-1].auth == "query"
        # Documented error bodies.
        with pytest.raises(BadResponse, match="Unknown API Key"):
            list(RESTClient("nope", base=rest.url, retries=0).list_aggs("AAPL", 1, "minute", 0, 1))
        with pytest.raises(BadResponse, match="NOT_AUTHORIZED"):
            list(client.list_aggs("TSLA", 1, "minute", T0, T0))
