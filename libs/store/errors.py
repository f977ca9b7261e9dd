"""Event-store errors; asyncpg's are mapped to these where the store is used.

StoreError
├── StoreUnavailable   Postgres cannot be reached or the connection broke
├── LockLost           this writer no longer holds the single-writer lock
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


class UnknownRevision(StoreError):
    """``tradebus db upgrade REVISION``: no migration has that revision."""


class MigrationFailed(StoreError):
    """Alembic refused to migrate the store: it is at a revision no migration
    here has (a newer tradebus migrated it), or the target cannot be reached
    from there."""
