"""Minute or second bars for an outage window from Polygon's REST aggregates endpoint.

Through the official client (``massive.RESTClient``): it sends the key as
``Authorization: Bearer`` (never in a URL, so never in a log line), follows
``next_url`` page by page (path and query only, which is what the cursor
needs) and retries 413/429/499/5xx three times with backoff. A response
without ``results`` is an empty range. The client is synchronous (urllib3),
so each fetch runs in a worker thread.

Numbers are parsed straight into ``Decimal`` (``custom_json``), and bars are
asked for **unadjusted**, like the live feed's, so a backfilled bar carries
the prices the live ``AM`` bar would have carried.
"""

from __future__ import annotations

import asyncio
import json
import logging
from decimal import Decimal
from typing import Any

from pydantic import ValidationError

from services.marketdata.adapters.polygon.parse import MS
from services.marketdata.adapters.polygon.schemas import RestAgg, RestError

log = logging.getLogger(__name__)

PAGE_LIMIT = 50_000


class GapFillFetchError(Exception):
    """The REST API did not give us the bars (unreachable, refused, or garbage)."""


class _DecimalJson:
    """The JSON the client parses with: numbers with a fraction become ``Decimal``."""

    @staticmethod
    def loads(text: str | bytes) -> Any:
        return json.loads(text, parse_float=Decimal)

    @staticmethod
    def dumps(value: Any) -> str:
        return json.dumps(value)


def _vendor_words(body: str) -> str:
    """``STATUS: message`` from an error body (``error`` or ``message``), else the text."""
    try:
        error = RestError.model_validate_json(body)
    except ValidationError:
        return body[:200]
    return f"{error.status}: {error.text}"


class PolygonRest:
    """Fetches aggregates; one instance per source, :meth:`close` when done."""

    def __init__(
        self, api_key: str, base_url: str, *, retries: int = 3, timeout_s: float = 10.0
    ) -> None:
        from massive import RESTClient  # type: ignore[import-untyped,unused-ignore]

        self._client = RESTClient(
            api_key,
            base=base_url.rstrip("/"),
            custom_json=_DecimalJson,
            retries=retries,
            connect_timeout=timeout_s,
            read_timeout=timeout_s,
        )

    def bars_sync(
        self, symbol: str, first_start_ms: int, last_start_ms: int, timespan: str = "minute"
    ) -> list[RestAgg]:
        """Bars of ``symbol`` whose window starts in ``[first, last]`` (ms), in time order."""
        from massive.exceptions import (  # type: ignore[import-untyped,unused-ignore]
            AuthError,
            BadResponse,
        )
        from urllib3.exceptions import HTTPError

        out: list[RestAgg] = []
        try:
            for agg in self._client.list_aggs(
                symbol,
                1,
                timespan,
                first_start_ms,
                last_start_ms,
                adjusted=False,
                sort="asc",
                limit=PAGE_LIMIT,
            ):
                out.append(
                    RestAgg(
                        o=agg.open,
                        h=agg.high,
                        l=agg.low,
                        c=agg.close,
                        v=agg.volume,
                        vw=agg.vwap,
                        n=agg.transactions,
                        t=agg.timestamp,
                        otc=bool(agg.otc),
                    )
                )
        except BadResponse as e:
            raise GapFillFetchError(f"REST refused {symbol}: {_vendor_words(str(e))}") from None
        except AuthError as e:
            raise GapFillFetchError(f"REST client: {e}") from None
        except HTTPError as e:
            raise GapFillFetchError(f"REST unreachable for {symbol}: {type(e).__name__}") from None
        except ValidationError as e:
            raise GapFillFetchError(f"REST sent a bad bar for {symbol}: {e}") from None
        return out

    async def bars(
        self, symbol: str, first_start_ns: int, last_start_ns: int, timespan: str = "minute"
    ) -> list[RestAgg]:
        """:meth:`bars_sync` (``minute`` or ``second`` bars), off the event loop.

        One request per window, at most ``PAGE_LIMIT`` bars a page: a day of
        second bars (57,600 in 16 hours of trading at most) is two pages.
        """
        return await asyncio.to_thread(
            self.bars_sync, symbol, first_start_ns // MS, last_start_ns // MS, timespan
        )

    def close(self) -> None:
        """Drop pooled connections; safe to call twice."""
        self._client.client.clear()
