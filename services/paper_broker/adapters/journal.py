"""The paper broker's journal: every trade update, one JSON line each.

The books are rebuilt on start-up by replaying the journal (``PaperBook.apply``),
so orders, fills and positions survive a restart or a ``kill -9`` the way a
real broker's would: a gateway that reconnects finds its orders where it left
them. Lines are flushed as they are written (the operating system keeps them
if the process dies) and fsynced too when ``fsync`` is on (they then survive
a machine crash, at the cost of latency). A torn last line, from a crash in
the middle of a write, is skipped with a warning.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import IO

import orjson

from services.paper_broker.adapters import wire
from services.paper_broker.domain.book import TradeUpdate

log = logging.getLogger(__name__)


class Journal:
    """Append-only file of trade updates."""

    def __init__(self, path: Path, *, fsync: bool = False) -> None:
        self.path = path
        self.fsync = fsync
        self._file: IO[bytes] | None = None

    def load(self) -> list[TradeUpdate]:
        """Every update written so far, in order."""
        if not self.path.exists():
            return []
        out: list[TradeUpdate] = []
        lines = self.path.read_bytes().splitlines()
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                out.append(wire.trade_update_from_record(orjson.loads(line)))
            except (ValueError, KeyError, TypeError) as e:
                if number == len(lines):
                    log.warning("journal %s: skipping a torn last line (%s)", self.path, e)
                    continue
                raise ValueError(f"journal {self.path} line {number} is corrupt: {e}") from e
        return out

    def open(self) -> Journal:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # A torn last line must not glue itself to the next record.
        needs_newline = self.path.exists() and self.path.stat().st_size > 0
        if needs_newline:
            with self.path.open("rb") as f:
                f.seek(-1, os.SEEK_END)
                needs_newline = f.read(1) != b"\n"
        self._file = self.path.open("ab")
        if needs_newline:
            self._file.write(b"\n")
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
