"""The paper broker's journal: a snapshot of the books, then every trade update
and settlement.

The books are rebuilt on start-up by replaying the journal (``PaperBook.apply``),
so orders, fills and positions survive a restart or a ``kill -9`` the way a
real broker's would: a gateway that reconnects finds its orders where it left
them. Lines are flushed as they are written (the operating system keeps them
if the process dies) and fsynced too when ``fsync`` is on (they then survive
a machine crash, at the cost of latency). A torn last line, from a crash in
the middle of a write, is skipped with a warning, and cut off when the
journal is next opened for writing (appended after, it would read as
corruption at the next start-up).

Compaction (:meth:`Journal.compact`) keeps the journal to what is live. The
books first forget the orders finished before the window
(``keep_finished_s``), then the journal is written anew as a *snapshot* of
them, one JSON line each::

    {"snapshot": {"version": 1, "ns": ..., "kept_since": ...}}
    {"position": {...}}   every position, as it stands (qty, avg entry price)
    {"order": {...}}      every order kept: open ones, whatever their age, and
                          finished ones of the window
    {"fill": {...}}       the fill activities of those orders
    {"activity": {...}}   the non-trade activities (option settlements) of the window
    {"snapshot_end": {"position": n, "order": n, "fill": n, "activity": n}}

and the trade updates that follow are appended after it as before, with a
``{"settlement": {...}}`` line for each position settled at its contract's
expiry (its activities, applied together by ``PaperBook.apply_settlement``). A journal
without a snapshot (every journal written before compaction) is read as it
always was. The new journal is written beside the old one (``<name>.compacting``),
fsynced, renamed over it (atomic) and the directory fsynced: a crash at any
point leaves either the old journal or the new one, each the whole state. A
``.compacting`` file left by a crash is never read, and is removed when the
journal is next opened or compacted. A snapshot cut short, or lines of one
out of place, are refused as corruption (the file is renamed in only once
whole, so this means the disk lost it).
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import orjson

from services.paper_broker import metrics
from services.paper_broker.adapters import wire
from services.paper_broker.domain.book import (
    FillActivity,
    JournalEntry,
    PaperBook,
    PaperOrder,
    Restored,
    Settlement,
    TradeUpdate,
)
from services.paper_broker.domain.settlement import OptionActivity

log = logging.getLogger(__name__)

#: How far back from the end a torn last line is looked for (a record is a
#: few hundred bytes).
TAIL_BYTES = 1 << 20
#: The new journal is written under this name beside the old, then renamed.
COMPACTING_SUFFIX = ".compacting"
#: A replay forgets the finished orders past the window every so many entries,
#: so that replaying a journal never compacted holds no more than that window.
FORGET_EVERY = 20_000
NS = 1_000_000_000

_SNAPSHOT, _SNAPSHOT_END = wire.SNAPSHOT, wire.SNAPSHOT_END


def _record(line: bytes) -> dict[str, Any]:
    record = orjson.loads(line)
    if not isinstance(record, dict):
        raise TypeError("a journal line is a JSON object")
    return record


def _kind(entry: Restored) -> str:
    if isinstance(entry, PaperOrder):
        return "order"
    if isinstance(entry, FillActivity):
        return "fill"
    if isinstance(entry, OptionActivity):
        return "activity"
    return "position"


def _entry(record: dict[str, Any]) -> JournalEntry | None:
    """A line's entry (None for a snapshot's first and last lines)."""
    if _SNAPSHOT in record or _SNAPSHOT_END in record:
        return None
    if "update" in record:
        return wire.trade_update_from_record(record)
    if "settlement" in record:
        return wire.settlement_from_record(record)
    return wire.restored_from_record(record)


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True, slots=True)
class Compaction:
    """What one compaction did."""

    orders_forgotten: int
    orders_kept: int
    orders_open: int
    bytes_before: int
    bytes_after: int
    seconds: float


class Journal:
    """A snapshot of the books, then an append-only file of trade updates."""

    def __init__(
        self,
        path: Path,
        *,
        fsync: bool = False,
        keep_finished_s: float | None = None,
        compact_bytes: int | None = None,
    ) -> None:
        """``keep_finished_s``: finished orders are kept that long after their
        last change, then forgotten (None: never). ``compact_bytes``: the
        journal is compacted when it passes this size and twice its size
        after the last compaction (None: only when asked, as at start-up)."""
        self.path = path
        self.fsync = fsync
        self.keep_finished_s = keep_finished_s
        self.compact_bytes = compact_bytes
        self._file: IO[bytes] | None = None
        self._size = 0
        self._compacted_size = 0
        #: The file is one this journal wrote whole (a compaction's snapshot,
        #: then appends): opening it again needs no look for a torn last line.
        self._whole = False

    @property
    def compacting_path(self) -> Path:
        return self.path.with_name(self.path.name + COMPACTING_SUFFIX)

    def load(self) -> Iterator[JournalEntry]:
        """Every entry written so far, in order: a snapshot's, then updates;
        read line by line as the caller takes them (the journal is never held
        in memory whole)."""
        if not self.path.exists():
            return
        in_snapshot = False
        counts: Counter[str] = Counter()
        with self.path.open("rb") as f:
            number, line = 0, f.readline()
            while line:
                following = f.readline()
                number += 1
                parsed = self._parse(line, number, last=not following)
                line = following
                if parsed is None:
                    continue
                record, entry = parsed
                try:
                    if _SNAPSHOT in record:
                        if number != 1:
                            raise ValueError("a snapshot begins after the first line")
                        version = record[_SNAPSHOT]["version"]
                        if version != wire.SNAPSHOT_VERSION:
                            raise ValueError(f"snapshot version {version} is not known")
                        in_snapshot = True
                    elif _SNAPSHOT_END in record:
                        if not in_snapshot:
                            raise ValueError("a snapshot's end without its beginning")
                        if record[_SNAPSHOT_END] != dict(counts):
                            raise ValueError(
                                f"the snapshot says {record[_SNAPSHOT_END]}, has {dict(counts)}"
                            )
                        in_snapshot = False
                    elif isinstance(entry, TradeUpdate | Settlement) and in_snapshot:
                        raise ValueError("an update inside the snapshot")
                    elif entry is not None and not isinstance(entry, TradeUpdate | Settlement):
                        if not in_snapshot:
                            raise ValueError("a snapshot's line outside the snapshot")
                        counts[_kind(entry)] += 1
                except (ValueError, KeyError, TypeError) as e:
                    raise ValueError(f"journal {self.path} line {number} is corrupt: {e}") from e
                if entry is not None:
                    yield entry
        if in_snapshot:
            raise ValueError(f"journal {self.path}: its snapshot is cut short")

    def _parse(
        self, line: bytes, number: int, *, last: bool
    ) -> tuple[dict[str, Any], JournalEntry | None] | None:
        if not line.strip():
            return None
        try:
            record = _record(line)
            entry = _entry(record)
        except (ValueError, KeyError, TypeError) as e:
            if last:
                log.warning("journal %s: skipping a torn last line (%s)", self.path, e)
                return None
            raise ValueError(f"journal {self.path} line {number} is corrupt: {e}") from e
        return record, entry

    def replay(self, book: PaperBook) -> int:
        """Take the journal into ``book`` (an empty one); the entries' count.

        Finished orders past the window are forgotten as the replay goes
        (every ``FORGET_EVERY`` entries), so a journal never compacted (one
        from before compaction, or with it switched off) is replayed in the
        memory of what is kept, not of all it holds. What it forgets is
        counted (``tradebus_paper_orders_forgotten_total``) and logged: the
        compaction that follows at start-up finds nothing more to forget."""
        since = self.kept_since(book)
        count = forgotten = 0
        for entry in self.load():
            book.take(entry)
            count += 1
            if since is not None and count % FORGET_EVERY == 0:
                forgotten += book.forget_finished(since)
        if since is not None:
            forgotten += book.forget_finished(since)
        if forgotten:
            metrics.ORDERS_FORGOTTEN.inc(forgotten)
            log.info(
                "journal %s: %d finished orders past the window forgotten at the replay",
                self.path,
                forgotten,
            )
        return count

    def kept_since(self, book: PaperBook) -> int | None:
        """Finished orders whose last change is before this are forgotten."""
        if self.keep_finished_s is None:
            return None
        return book.clock.now_ns() - int(self.keep_finished_s * NS)

    def open(self) -> Journal:
        """Open for appending. A torn last line (a write cut short by a crash:
        its update was never sent, the journal being written first) is cut
        off, so that what is appended next does not follow it: met in the
        middle of the journal, it would be corruption. A ``.compacting`` file
        a crash left behind is removed (the journal is the old one, whole).
        After a compaction of this journal (start-up's, or the server's, which
        opens it again) the file is the snapshot it has just written: its tail
        is not read back."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._remove_leftover()
        self._file = self.path.open("ab")
        size = self._file.tell()
        if size and not self._whole:
            with self.path.open("rb") as f:
                f.seek(max(0, size - TAIL_BYTES))
                tail = f.read()
            start = tail.rstrip(b"\n").rfind(b"\n") + 1  # where the last line starts
            if start == 0 and size > TAIL_BYTES:
                raise ValueError(f"journal {self.path}: last line longer than {TAIL_BYTES} bytes")
            last = tail[start:]
            try:
                if last.strip():
                    _entry(_record(last))
            except (ValueError, KeyError, TypeError):
                keep = size - len(tail) + start
                log.warning(
                    "journal %s: cutting off a torn last line (%d bytes)", self.path, size - keep
                )
                self._file.truncate(keep)
                size = keep
            else:
                if not tail.endswith(b"\n"):
                    self._file.write(b"\n")  # a whole record, its newline lost
                    size += 1
        self._size = size
        metrics.JOURNAL_BYTES.set_function(lambda: self._size)  # read when scraped
        return self

    def _remove_leftover(self) -> None:
        leftover = self.compacting_path
        if leftover.exists():
            log.warning(
                "journal %s: removing %s, left by a compaction cut short (the journal is whole)",
                self.path,
                leftover.name,
            )
            leftover.unlink()

    def append(self, updates: Sequence[TradeUpdate], data: Sequence[wire.Json] = ()) -> None:
        """Write ``updates``; ``data``, if given, is each one's wire JSON
        (:func:`wire.trade_update_json`), already built for sending."""
        if not updates:
            return
        if not data:
            data = [wire.trade_update_json(u) for u in updates]
        pairs = zip(updates, data, strict=True)
        self._write(wire.journal_record(u, d) for u, d in pairs)

    def append_settlements(self, settlements: Sequence[Settlement]) -> None:
        """Write ``settlements`` (positions settled at their contracts' expiry)."""
        if settlements:
            self._write(wire.settlement_record(s) for s in settlements)

    def _write(self, records: Iterable[wire.Json]) -> None:
        """Append ``records``, a line each, flushed (and synced) at once."""
        if self._file is None:
            self.open()
        assert self._file is not None
        chunk = b"\n".join(orjson.dumps(r) for r in records) + b"\n"
        self._file.write(chunk)
        self._file.flush()
        if self.fsync:
            os.fsync(self._file.fileno())
        self._size += len(chunk)

    @property
    def due(self) -> bool:
        """The journal has passed ``compact_bytes`` and twice its size after
        the last compaction (so a book whose live part is larger than
        ``compact_bytes`` is not written anew at every update)."""
        limit = self.compact_bytes
        return limit is not None and self._size > max(limit, 2 * self._compacted_size)

    def compact(self, book: PaperBook) -> Compaction:
        """Forget ``book``'s finished orders past the window, then write the
        journal anew as a snapshot of it. ``book`` must hold exactly what the
        journal holds (every update appended, none pending).

        Crash-safe: the snapshot is written beside the journal, fsynced, and
        renamed over it; the directory is fsynced before anything is
        appended to the new file. On an error (disk full) the journal is left
        as it was and appended to; the books' forgetting then shows only
        until the next restart, which replays the old journal."""
        started = time.perf_counter()
        since = self.kept_since(book)
        forgotten = book.forget_finished(since) if since is not None else 0
        metrics.ORDERS_FORGOTTEN.inc(forgotten)
        before = self.path.stat().st_size if self.path.exists() else 0
        was_open = self._file is not None
        temporary = self.compacting_path
        try:
            after = self._write_snapshot(temporary, book, since)
            self.close()
            os.replace(temporary, self.path)
            self._whole = True
            _fsync_directory(self.path.parent)
        except OSError:
            metrics.JOURNAL_COMPACTION_FAILURES.inc()
            self._compacted_size = self._size  # next try when it has doubled
            temporary.unlink(missing_ok=True)
            raise
        finally:
            if was_open and self._file is None:
                self.open()
        self._size = self._compacted_size = after
        metrics.JOURNAL_COMPACTIONS.inc()
        held, working = book.count_orders()
        done = Compaction(forgotten, held, working, before, after, time.perf_counter() - started)
        log.info(
            "journal %s compacted in %.3fs: %d orders kept (%d open), %d finished forgotten, "
            "%d bytes to %d",
            self.path,
            done.seconds,
            held,
            working,
            forgotten,
            before,
            after,
        )
        return done

    def compact_or_keep(self, book: PaperBook) -> Compaction | None:
        """:meth:`compact`; on a failure (disk full) None, logged: the journal
        is left as it was and appended to."""
        try:
            return self.compact(book)
        except OSError:
            log.exception("journal %s: compaction failed, appending to it as it is", self.path)
            return None

    def _write_snapshot(self, path: Path, book: PaperBook, since: int | None) -> int:
        """Write ``book``'s snapshot to ``path``, fsynced; its size."""
        counts: Counter[str] = Counter()
        with path.open("wb") as f:
            header = wire.snapshot_header(book.clock.now_ns(), since)
            f.write(orjson.dumps(header) + b"\n")
            batch: list[bytes] = []
            for entry in book.state():
                counts[_kind(entry)] += 1
                batch.append(orjson.dumps(wire.restored_record(entry)))
                if len(batch) >= 1_000:
                    f.write(b"\n".join(batch) + b"\n")
                    batch.clear()
            if batch:
                f.write(b"\n".join(batch) + b"\n")
            f.write(orjson.dumps(wire.snapshot_end(dict(counts))) + b"\n")
            f.flush()
            os.fsync(f.fileno())
            return f.tell()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
