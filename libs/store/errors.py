"""Event-store errors; asyncpg's are mapped to these where the store is used.

StoreError
├── StoreUnavailable   Postgres cannot be reached or the connection broke
├── LockLost           this writer no longer holds the single-writer lock
├── RowRefused         the store refuses one row for a value it holds
├── UnknownRevision    no migration has the revision asked for
└── MigrationFailed    alembic cannot migrate this store (a revision it does not know)
"""

from __future__ import annotations


class StoreError(Exception):
    """Base of every event-store error."""


class StoreUnavailable(StoreError):
    """PostgreSQL cannot be reached, or the connection was lost."""


class LockLost(StoreError):
    """The single-writer lock is gone (connection lost): stop writing."""


class RowRefused(StoreError):
    """The store refuses the row at ``seq`` on its own, for a value in it
    (``error``: PostgreSQL's data exception, SQLSTATE class 22, such as a
    number out of range or text an index cannot cast, or a program limit
    exceeded, class 54, such as a subject too long for its index); every row
    before it is committed. Writing the same row again fails the same way."""

    def __init__(self, seq: int, error: Exception) -> None:
        super().__init__(f"the store refuses the row at seq {seq}: {error}")
        self.seq = seq
        self.error = error


class UnknownRevision(StoreError):
    """``tradebus db upgrade REVISION``: no migration has that revision."""


class MigrationFailed(StoreError):
    """Alembic refused to migrate the store: it is at a revision no migration
    here has (a newer tradebus migrated it), or the target cannot be reached
    from there."""
