"""The paper broker's journal: every trade update, one JSON line each.

The books are rebuilt on start-up by replaying the journal (``PaperBook.apply``),
so orders, fills and positions survive a restart or a ``kill -9`` the way a
real broker's would: a gateway that reconnects finds its orders where it left
them. Lines are flushed as they are written (the operating system keeps them
if the process dies) and fsynced too when ``fsync`` is on (they then survive
a machine crash, at the cost of latency). A torn last line, from a crash in
the middle of a write, is skipped with a warning, and cut off when the
journal is next opened for writing (appended after, it would read as
corruption at the next start-up).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO

import orjson

from services.paper_broker.adapters import wire
from services.paper_broker.domain.book import TradeUpdate

log = logging.getLogger(__name__)

#: How far back from the end a torn last line is looked for (a record is a
#: few hundred bytes).
TAIL_BYTES = 1 << 20


def _decode(line: bytes) -> TradeUpdate:
    return wire.trade_update_from_record(orjson.loads(line))


class Journal:
    """Append-only file of trade updates."""

    def __init__(self, path: Path, *, fsync: bool = False) -> None:
        self.path = path
        self.fsync = fsync
        self._file: IO[bytes] | None = None

    def load(self) -> Iterator[TradeUpdate]:
        """Every update written so far, in order, read line by line as the
        caller takes them (the journal is never held in memory whole)."""
        if not self.path.exists():
            return
        with self.path.open("rb") as f:
            number, line = 0, f.readline()
            while line:
                following = f.readline()
                number += 1
                update = self._parse(line, number, last=not following)
                if update is not None:
                    yield update
                line = following

    def _parse(self, line: bytes, number: int, *, last: bool) -> TradeUpdate | None:
        if not line.strip():
            return None
        try:
            return _decode(line)
        except (ValueError, KeyError, TypeError) as e:
            if last:
                log.warning("journal %s: skipping a torn last line (%s)", self.path, e)
                return None
            raise ValueError(f"journal {self.path} line {number} is corrupt: {e}") from e

    def open(self) -> Journal:
        """Open for appending. A torn last line (a write cut short by a crash:
        its update was never sent, the journal being written first) is cut
        off, so that what is appended next does not follow it: met in the
        middle of the journal, it would be corruption."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("ab")
        size = self._file.tell()
        if size:
            with self.path.open("rb") as f:
                f.seek(max(0, size - TAIL_BYTES))
                tail = f.read()
            start = tail.rstrip(b"\n").rfind(b"\n") + 1  # where the last line starts
            if start == 0 and size > TAIL_BYTES:
                raise ValueError(f"journal {self.path}: last line longer than {TAIL_BYTES} bytes")
            last = tail[start:]
            try:
                if last.strip():
                    _decode(last)
            except (ValueError, KeyError, TypeError):
                keep = size - len(tail) + start
                log.warning(
                    "journal %s: cutting off a torn last line (%d bytes)", self.path, size - keep
                )
                self._file.truncate(keep)
            else:
                if not tail.endswith(b"\n"):
                    self._file.write(b"\n")  # a whole record, its newline lost
        return self

    def append(self, updates: Sequence[TradeUpdate], data: Sequence[wire.Json] = ()) -> None:
        """Write ``updates``; ``data``, if given, is each one's wire JSON
        (:func:`wire.trade_update_json`), already built for sending."""
        if not updates:
            return
        if self._file is None:
            self.open()
        assert self._file is not None
        if not data:
            data = [wire.trade_update_json(u) for u in updates]
        pairs = zip(updates, data, strict=True)
        lines = (orjson.dumps(wire.journal_record(u, d)) for u, d in pairs)
        self._file.write(b"\n".join(lines) + b"\n")
        self._file.flush()
        if self.fsync:
            os.fsync(self._file.fileno())

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
