"""Import Polygon flat files (``us_stocks_sip/minute_aggs_v1``) into the cache.

A flat file is a CSV (usually gzipped) of one day's aggregates for every
ticker, with a header row: ``ticker,volume,open,close,high,low,window_start,
transactions`` (``window_start`` in **nanoseconds**). Columns are read by
header name, so a reordered or extended file imports the same. Rows are
grouped by ticker and New York day and each group becomes one cache file,
written atomically like a REST download; a day already cached is left alone
unless ``replace`` is set (or it was cached split-adjusted by an older
fetch: :meth:`~services.marketdata.adapters.cache.ParquetCache.stale`; flat
files are unadjusted, and so is the cache).
"""

from __future__ import annotations

import csv
import datetime as dt
import gzip
import logging
from collections import defaultdict
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from services.marketdata.adapters.cache import ParquetCache
from services.marketdata.domain.cache import (
    FLATFILE_COLUMNS,
    CachedBar,
    CacheError,
    CacheFormatError,
    Timespan,
    from_flatfile_row,
    new_york_day,
)

log = logging.getLogger(__name__)


@dataclass
class ImportResult:
    files: int = 0
    rows: int = 0
    written_days: int = 0
    skipped_days: int = 0
    #: Rows of tickers not asked for.
    ignored_rows: int = 0


def _open_text(path: Path) -> TextIO:
    """The file as text, gunzipped when it is gzip (by its magic bytes, not its name)."""
    with path.open("rb") as f:
        gzipped = f.read(2) == b"\x1f\x8b"
    if gzipped:
        return gzip.open(path, "rt", encoding="utf-8", newline="")
    return path.open(encoding="utf-8", newline="")


def read_flatfile(
    path: Path, symbols: Collection[str] | None = None
) -> tuple[dict[tuple[str, dt.date], list[CachedBar]], int, int]:
    """``{(ticker, day): bars}`` from one file, plus rows read and rows ignored."""
    groups: dict[tuple[str, dt.date], list[CachedBar]] = defaultdict(list)
    rows = ignored = 0
    with _open_text(path) as f:
        reader = csv.DictReader(f)
        header = [h.strip() for h in reader.fieldnames or ()]
        missing = [c for c in FLATFILE_COLUMNS if c not in header]
        if missing:
            raise CacheError(
                f"{path}: not a Polygon aggregates flat file (no column {', '.join(missing)}; "
                f"header: {','.join(header) or 'none'})"
            )
        reader.fieldnames = header
        for line_no, row in enumerate(reader, start=2):
            rows += 1
            ticker = (row.get("ticker") or "").strip()
            if symbols is not None and ticker not in symbols:
                ignored += 1
                continue
            try:
                ticker, bar = from_flatfile_row(row)
            except CacheFormatError as e:
                raise CacheError(f"{path}:{line_no}: {e}") from None
            groups[(ticker, new_york_day(bar.t))].append(bar)
    return groups, rows, ignored


def import_flatfiles(
    cache: ParquetCache,
    paths: list[Path],
    *,
    timespan: Timespan = "minute",
    symbols: Collection[str] | None = None,
    replace: bool = False,
    progress: Callable[[Path, ImportResult], None] | None = None,
) -> ImportResult:
    """Import each file's rows into the cache (``symbols`` only, if given)."""
    result = ImportResult()
    for path in paths:
        groups, rows, ignored = read_flatfile(path, symbols)
        result.files += 1
        result.rows += rows
        result.ignored_rows += ignored
        for (ticker, day), bars in sorted(groups.items()):
            if (
                not replace
                and cache.has(timespan, ticker, day)
                and not cache.stale(timespan, ticker, day)
            ):
                result.skipped_days += 1
                continue
            try:
                cache.write(timespan, ticker, day, bars, origin=f"flatfile:{path.name}")
            except CacheFormatError as e:
                raise CacheError(f"{path}: {e}") from None
            result.written_days += 1
        log.info("%s: %d rows, %d symbol-days", path, rows, len(groups))
        if progress is not None:
            progress(path, result)
    return result
