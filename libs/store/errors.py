"""Event-store errors; asyncpg's are mapped to these where the store is used.

StoreError
├── StoreUnavailable   Postgres cannot be reached or the connection broke
├── LockLost           this writer no longer holds the single-writer lock
├── RowRefused         the store refuses one row for a value it holds
├── IdReused           rows reuse the id of another event the store holds
├── UnknownRevision    no migration has the revision asked for
└── MigrationFailed    alembic cannot migrate this store (a revision it does not know)
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass


class StoreError(Exception):
    """Base of every event-store error."""


class StoreUnavailable(StoreError):
    """PostgreSQL cannot be reached, or the connection was lost."""


class LockLost(StoreError):
    """The single-writer lock is gone (connection lost): stop writing."""


class RowRefused(StoreError):
    """The store refuses the row at ``seq`` on its own, for a value in it
    (``error``: PostgreSQL's data exception, SQLSTATE class 22, such as a
    number out of range or text an index cannot cast); every row before it
    is committed. Writing the same row again fails the same way."""

    def __init__(self, seq: int, error: Exception) -> None:
        super().__init__(f"the store refuses the row at seq {seq}: {error}")
        self.seq = seq
        self.error = error


@dataclass(frozen=True, slots=True)
class Reuse:
    """The row at ``seq`` carries event id ``id``, which the event at
    ``first_seq`` carries too, and is another event: its ``differs`` differ."""

    seq: int
    id: uuid.UUID
    first_seq: int
    differs: tuple[str, ...]

    def __str__(self) -> str:
        return (
            f"event {self.id} at seq {self.seq} reuses the id of seq {self.first_seq} "
            f"for another event (differing in {', '.join(self.differs)})"
        )


class IdReused(StoreError):
    """Rows of a batch carry the id of an event the store already holds (or
    of an earlier row of the batch) and are not that event sent again:
    ``reused`` says which. Rows up to the writer's ``last_seq`` are committed,
    none of the ones named. Writing the same rows again fails the same way."""

    def __init__(self, reused: Sequence[Reuse]) -> None:
        super().__init__("; ".join(str(r) for r in reused))
        self.reused = tuple(reused)


class UnknownRevision(StoreError):
    """``tradebus db upgrade REVISION``: no migration has that revision."""


class MigrationFailed(StoreError):
    """Alembic refused to migrate the store: it is at a revision no migration
    here has (a newer tradebus migrated it), or the target cannot be reached
    from there."""
