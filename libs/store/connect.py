"""Opening the event store for a one-shot reader (the operator commands,
replay), with errors an operator can act on.

Every error is a :class:`~libs.store.errors.StoreUnavailable` whose message
names the URL tried, its password masked, and what to do about it. A
service's own connection handling (the recorder's writer, the start-up
rebuilds) stays where it is: a service retries, a command answers once.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import asyncpg

from libs.config import masked_url
from libs.store import queries
from libs.store.errors import StoreUnavailable
from libs.store.urls import asyncpg_url

#: How long a command waits for PostgreSQL before it gives up.
CONNECT_TIMEOUT = 10.0

#: What a store that cannot be reached or read raises, which a reader turns
#: into :class:`StoreUnavailable` (the one list: connect, summary, replay and
#: the risk-gate's rebuild use it). The socket's errors (TimeoutError among
#: them: an OSError, as asyncio.TimeoutError is since 3.11), the server's and
#: the client's (a connection closed under it). Here rather than in errors.py,
#: which stays free of asyncpg. The recorder's writer has its own list
#: (writer.CONNECTION_ERRORS: a lost connection alone, after which it
#: reconnects; other server errors go through it as they are).
STORE_ERRORS: tuple[type[Exception], ...] = (
    OSError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
)

#: Where the stack's own servers are told apart from others: what
#: ``tradebus up`` printed (and wrote into its env file).
WHICH_URL = "is DATABASE_URL the one `tradebus up` printed?"


async def connect(database_url: str, *, timeout: float = CONNECT_TIMEOUT) -> asyncpg.Connection:
    """A connection to the event store, or :class:`StoreUnavailable` naming the URL."""
    shown = masked_url(database_url)
    try:
        return await asyncpg.connect(asyncpg_url(database_url), timeout=timeout)
    except asyncpg.InvalidCatalogNameError as e:
        raise StoreUnavailable(
            f"no database at {shown} ({e}): {WHICH_URL} (`tradebus db upgrade` creates a new one)"
        ) from e
    except (asyncpg.InvalidPasswordError, asyncpg.InvalidAuthorizationSpecificationError) as e:
        raise StoreUnavailable(f"the event store at {shown} refused the login: {e}") from e
    except ValueError as e:
        # Before the unreachable: a bad option (asyncpg's ClientConfigurationError)
        # is an InterfaceError too. asyncpg's own message may quote the URL,
        # password included: it is not shown.
        raise StoreUnavailable(f"DATABASE_URL {shown} is not a usable PostgreSQL URL") from e
    except STORE_ERRORS as e:
        reason = str(e) or type(e).__name__
        raise StoreUnavailable(
            f"cannot reach the event store at {shown}: {reason} ({WHICH_URL})"
        ) from e


@dataclass(frozen=True, slots=True)
class StoreSummary:
    """What a reader should know before trusting an answer: where, and how much."""

    url: str  # masked
    last_seq: int  # 0: the store holds no events

    @property
    def empty(self) -> bool:
        return self.last_seq == 0


async def summary(database_url: str, *, timeout: float = CONNECT_TIMEOUT) -> StoreSummary:
    """Reach the store and read its last sequence (0 when it holds no events)."""
    shown = masked_url(database_url)
    conn = await connect(database_url, timeout=timeout)
    try:
        async with asyncio.timeout(timeout):
            tail = await queries.tail(conn)
    except asyncpg.UndefinedTableError as e:
        raise StoreUnavailable(
            f"the database at {shown} holds no event store (no events table): {WHICH_URL} "
            "(`tradebus db upgrade` creates the schema)"
        ) from e
    except STORE_ERRORS as e:
        raise StoreUnavailable(f"reading the event store at {shown} failed: {e}") from e
    finally:
        await conn.close()
    return StoreSummary(shown, queries.last_seq_of(tail))
