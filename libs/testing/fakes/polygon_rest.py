"""A fake Polygon REST server (aggregates) on 127.0.0.1, for tests.

It follows ``PROTOCOLS.md`` ("Polygon REST"):

- ``GET /v2/aggs/ticker/{ticker}/range/{multiplier}/{timespan}/{from}/{to}``
  with ``from``/``to`` as ``YYYY-MM-DD`` (whole days, America/New_York) or
  ms timestamps (inclusive, on the bar's window start), query ``adjusted``,
  ``sort=asc|desc``, ``limit`` (default 5000, at most 50000).
- Auth by ``Authorization: Bearer KEY`` (what the official client sends) or
  ``?apiKey=KEY``. No key: 401 ``{"status":"ERROR","error":"API Key was not
  provided"}``; a wrong key: 401 ``{"status":"ERROR","error":"Unknown API
  Key"}``; a ticker listed in ``not_authorized``: 403
  ``{"status":"NOT_AUTHORIZED","message":...}``.
- Response ``ticker adjusted queryCount resultsCount status:"OK" request_id``
  and ``results[]`` of ``o h l c v vw n t`` (``t`` = window start, ms). A page
  holds at most ``min(limit, page_size)`` bars; when more remain,
  ``next_url`` is ``<url>/v2/aggs/ticker/.../{from}/{to}?cursor=...`` and the
  cursor alone carries the rest of the query (the official client follows
  only the path and query of ``next_url``; it does not carry ``apiKey``, so a
  client using the query key must add it again). An empty range has no
  ``results`` key at all (the variant ``PROTOCOLS.md`` marks unconfirmed; a
  client that copes with it copes with ``results: []`` too).

Data: ``bars`` maps a ticker to its minute bars in that REST shape (see
:mod:`libs.testing.fakes.polygon_data`). ``timespan=minute`` with a
multiplier, ``hour`` and ``day`` (New York dates) are aggregated from them;
``second`` serves ``second_bars``. Trades (``/v3/trades``) are not served.

Scripting: :meth:`FakePolygonRest.fail_next` makes the next requests answer
an error status (a 500 tests the client's retries); :attr:`requests` records
every request (path, query, how it authenticated) for assertions.

Use it as ``async with FakePolygonRest(bars) as rest: rest.url`` inside a
test's event loop, or as ``with FakePolygonRest(bars) as rest:`` (its own
thread and loop) when the code under test blocks, e.g. the synchronous
official ``RESTClient`` called without a thread.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import json
import threading
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from types import TracebackType
from typing import Any, Self
from urllib.parse import parse_qs, unquote, urlsplit
from zoneinfo import ZoneInfo

from libs.testing.fakes.polygon_data import RestBar

NEW_YORK = ZoneInfo("America/New_York")
DEFAULT_LIMIT = 5000
MAX_LIMIT = 50_000
_UNIT_MS = {"second": 1_000, "minute": 60_000, "hour": 3_600_000}


@dataclass(frozen=True)
class FakeRequest:
    """One request the fake received."""

    method: str
    path: str
    query: dict[str, str]
    #: ``"bearer"``, ``"query"`` (``apiKey=``) or ``None``.
    auth: str | None
    status: int


@dataclass
class _Failure:
    status: int
    body: dict[str, Any]
    times: int


@dataclass
class _State:
    bars: dict[str, list[RestBar]] = field(default_factory=dict)
    second_bars: dict[str, list[RestBar]] = field(default_factory=dict)


def _json_default(value: object) -> object:
    if isinstance(value, Decimal):
        # Polygon sends JSON numbers; a float's repr gives back the decimal
        # text exactly for the up-to-15 significant digits prices have.
        return float(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _to_ms(value: str, *, end: bool) -> int:
    if value.isdigit():
        return int(value)
    day = dt.date.fromisoformat(value)
    if end:
        day += dt.timedelta(days=1)
    start = dt.datetime.combine(day, dt.time(), tzinfo=NEW_YORK)
    ms = int(start.timestamp() * 1000)
    return ms - 1 if end else ms


def _aggregate(bars: Sequence[RestBar], key: Any) -> list[RestBar]:
    """Merge consecutive bars sharing ``key(bar)`` into one (o of first, c of last)."""
    out: list[RestBar] = []
    for bar in bars:
        k = key(bar)
        if out and out[-1]["_k"] == k:
            agg = out[-1]
            agg["h"] = max(agg["h"], bar["h"])
            agg["l"] = min(agg["l"], bar["l"])
            agg["c"] = bar["c"]
            pv = agg["_pv"] + Decimal(str(bar["vw"])) * bar["v"]
            agg["_pv"] = pv
            agg["v"] += bar["v"]
            agg["n"] = (agg.get("n") or 0) + (bar.get("n") or 0)
        else:
            out.append({**bar, "t": k, "_k": k, "_pv": Decimal(str(bar["vw"])) * bar["v"]})
    for agg in out:
        pv = agg.pop("_pv")
        agg.pop("_k")
        agg["vw"] = (pv / agg["v"]).quantize(Decimal("0.0001")) if agg["v"] else agg["vw"]
    return out


class FakePolygonRest:
    """The aggregates endpoint of Polygon's REST API, in-process, on loopback."""

    def __init__(
        self,
        bars: Mapping[str, Sequence[RestBar]] | None = None,
        *,
        api_key: str = "test-key",
        page_size: int = MAX_LIMIT,
        second_bars: Mapping[str, Sequence[RestBar]] | None = None,
        not_authorized: Sequence[str] = (),
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.api_key = api_key
        self.page_size = page_size
        self.not_authorized = set(not_authorized)
        self.host = host
        self.port = port
        self.requests: list[FakeRequest] = []
        self._lock = threading.Lock()
        self._handlers: dict[asyncio.Task[None], asyncio.StreamWriter] = {}
        self._state = _State()
        for sym, rows in (bars or {}).items():
            self.set_bars(sym, rows)
        for sym, rows in (second_bars or {}).items():
            self._state.second_bars[sym] = sorted((dict(b) for b in rows), key=lambda b: b["t"])
        self._failures: list[_Failure] = []
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # ------------------------------------------------------------ data & script

    @property
    def url(self) -> str:
        """The base URL, e.g. ``http://127.0.0.1:40123`` (set once started)."""
        return f"http://{self.host}:{self.port}"

    def set_bars(self, symbol: str, bars: Sequence[RestBar]) -> None:
        """Replace ``symbol``'s minute bars (kept sorted by window start)."""
        with self._lock:
            self._state.bars[symbol] = sorted((dict(b) for b in bars), key=lambda b: b["t"])

    def fail_next(
        self, status: int = 500, *, times: int = 1, body: dict[str, Any] | None = None
    ) -> None:
        """Answer the next ``times`` requests with ``status`` (and an error body)."""
        with self._lock:
            self._failures.append(
                _Failure(
                    status,
                    body or {"status": "ERROR", "request_id": "", "error": f"status {status}"},
                    times,
                )
            )

    def agg_requests(self, ticker: str | None = None) -> list[FakeRequest]:
        """The aggregates requests received (for ``ticker`` only, if given)."""
        prefix = "/v2/aggs/ticker/" + (f"{ticker}/" if ticker else "")
        return [r for r in self.requests if r.path.startswith(prefix)]

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> Self:
        self._server = await asyncio.start_server(self._handle, self.host, self.port)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def close(self) -> None:
        """Stop serving; safe to call twice."""
        if self._server is not None:
            self._server.close()
            # Closing the transports ends each handler's read with EOF (cancelling
            # the handler tasks instead makes asyncio 3.11 log spurious errors).
            for writer in list(self._handlers.values()):
                writer.close()
            await asyncio.gather(*self._handlers, return_exceptions=True)
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def __enter__(self) -> Self:
        """Serve from a thread of its own (for blocking code under test)."""
        started = threading.Event()
        loop = asyncio.new_event_loop()
        self._loop = loop

        def serve() -> None:
            asyncio.set_event_loop(loop)
            loop.run_until_complete(self.start())
            started.set()
            loop.run_forever()
            loop.run_until_complete(self.close())
            loop.close()

        self._thread = threading.Thread(target=serve, name="fake-polygon-rest", daemon=True)
        self._thread.start()
        if not started.wait(10):
            raise RuntimeError("fake Polygon REST server did not start")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop = None
            self._thread = None

    # ------------------------------------------------------------ HTTP

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers[task] = writer
        try:
            while True:  # HTTP/1.1 keep-alive: the official client pools connections
                line = await reader.readline()
                if not line:
                    return
                parts = line.decode("latin-1").split()
                if len(parts) != 3:
                    return
                method, target, _version = parts
                headers: dict[str, str] = {}
                while (h := await reader.readline()) not in (b"\r\n", b"\n", b""):
                    name, _, value = h.decode("latin-1").partition(":")
                    headers[name.strip().lower()] = value.strip()
                length = int(headers.get("content-length", "0") or 0)
                if length:
                    await reader.readexactly(length)
                status, body = self._respond(method, target, headers)
                data = json.dumps(body, default=_json_default).encode()
                reason = {200: "OK", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found"}
                writer.write(
                    f"HTTP/1.1 {status} {reason.get(status, 'Error')}\r\n"
                    "Content-Type: application/json\r\n"
                    f"Content-Length: {len(data)}\r\n\r\n".encode()
                    + data
                )
                await writer.drain()
                if headers.get("connection", "").lower() == "close":
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            self._handlers.pop(task, None)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    def _respond(
        self, method: str, target: str, headers: Mapping[str, str]
    ) -> tuple[int, dict[str, Any]]:
        split = urlsplit(target)
        path = unquote(split.path)
        query = {k: v[-1] for k, v in parse_qs(split.query, keep_blank_values=True).items()}
        request_id = uuid.uuid4().hex
        auth: str | None = None
        key: str | None = None
        bearer = headers.get("authorization", "")
        if bearer.lower().startswith("bearer "):
            auth, key = "bearer", bearer[7:].strip()
        elif "apiKey" in query:
            auth, key = "query", query["apiKey"]

        def done(status: int, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
            with self._lock:
                self.requests.append(FakeRequest(method, path, query, auth, status))
            return status, body

        with self._lock:
            failure = self._failures[0] if self._failures else None
            if failure is not None:
                failure.times -= 1
                if failure.times <= 0:
                    self._failures.pop(0)
        if failure is not None:
            return done(failure.status, {**failure.body, "request_id": request_id})
        if key is None:
            return done(
                401,
                {"status": "ERROR", "request_id": request_id, "error": "API Key was not provided"},
            )
        if key != self.api_key:
            return done(
                401, {"status": "ERROR", "request_id": request_id, "error": "Unknown API Key"}
            )
        segments = path.strip("/").split("/")
        if (
            method != "GET"
            or len(segments) != 9
            or segments[:3] != ["v2", "aggs", "ticker"]
            or segments[4] != "range"
        ):
            return done(404, {"status": "NOT_FOUND", "request_id": request_id, "message": path})
        ticker, _range, multiplier, timespan, from_, to = segments[3:]
        if ticker in self.not_authorized:
            return done(
                403,
                {
                    "status": "NOT_AUTHORIZED",
                    "request_id": request_id,
                    "message": "You are not entitled to this data. Please upgrade your plan.",
                },
            )
        try:
            body = self._aggs(ticker, int(multiplier), timespan, from_, to, query, split.path)
        except ValueError as e:
            return done(400, {"status": "ERROR", "request_id": request_id, "error": str(e)})
        return done(200, {**body, "request_id": request_id})

    def _aggs(
        self,
        ticker: str,
        multiplier: int,
        timespan: str,
        from_: str,
        to: str,
        query: Mapping[str, str],
        raw_path: str,
    ) -> dict[str, Any]:
        if "cursor" in query:
            state = json.loads(base64.urlsafe_b64decode(query["cursor"].encode()))
            offset, sort, limit, adjusted = (
                int(state["offset"]),
                str(state["sort"]),
                int(state["limit"]),
                bool(state["adjusted"]),
            )
        else:
            offset = 0
            sort = query.get("sort", "asc")
            limit = int(query.get("limit", DEFAULT_LIMIT))
            adjusted = query.get("adjusted", "true") != "false"
        if sort not in ("asc", "desc"):
            raise ValueError(f"sort must be asc or desc, not {sort!r}")
        if not 1 <= limit <= MAX_LIMIT:
            raise ValueError(f"limit must be 1..{MAX_LIMIT}")
        if multiplier < 1:
            raise ValueError("multiplier must be at least 1")
        lo, hi = _to_ms(from_, end=False), _to_ms(to, end=True)
        with self._lock:
            if timespan == "second":
                source = list(self._state.second_bars.get(ticker, []))
            else:
                source = list(self._state.bars.get(ticker, []))
        if timespan in _UNIT_MS:
            width = _UNIT_MS[timespan] * multiplier
            rows = (
                source
                if (timespan, multiplier) in (("minute", 1), ("second", 1))
                else _aggregate(source, lambda b: b["t"] - b["t"] % width)
            )
        elif timespan == "day" and multiplier == 1:

            def day_start(b: RestBar) -> int:
                day = dt.datetime.fromtimestamp(b["t"] / 1000, tz=NEW_YORK).date()
                return int(dt.datetime.combine(day, dt.time(), tzinfo=NEW_YORK).timestamp() * 1000)

            rows = _aggregate(source, day_start)
        else:
            raise ValueError(f"timespan {timespan!r} x{multiplier} is not served by the fake")
        rows = [b for b in rows if lo <= b["t"] <= hi]
        if sort == "desc":
            rows.reverse()
        size = min(limit, self.page_size)
        page = rows[offset : offset + size]
        body: dict[str, Any] = {
            "ticker": ticker,
            "queryCount": len(page),
            "resultsCount": len(page),
            "adjusted": adjusted,
            "status": "OK",
        }
        if page:
            body["results"] = [{k: v for k, v in b.items() if k != "otc" or v} for b in page]
        if offset + size < len(rows):
            cursor = base64.urlsafe_b64encode(
                json.dumps(
                    {"offset": offset + size, "sort": sort, "limit": limit, "adjusted": adjusted}
                ).encode()
            ).decode()
            body["next_url"] = f"{self.url}{raw_path}?cursor={cursor}"
        return body
