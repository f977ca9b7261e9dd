"""What the services need of the event store's layout at run time, without
SQLAlchemy: the row types the recorder writes itself, the column order of
its COPY, and what text its columns can hold.

``schema.py`` (the SQLAlchemy models alembic migrates from) imports these
from here. Importing SQLAlchemy costs a service about 0.3 s of CPU at every
start (measured: ``python -X importtime``), for three strings and a tuple;
only migrations need the models.
"""

from __future__ import annotations

#: Row types the recorder writes itself, for positions that hold no event.
UNDECODABLE = "Undecodable"
DUPLICATE = "DuplicateSuppressed"
MISSING = "MessageMissing"

#: Column order used by the recorder's COPY (everything but recorded_at).
COPY_COLUMNS = (
    "seq",
    "id",
    "subject",
    "type",
    "ts_event",
    "ts_init",
    "source",
    "correlation_id",
    "causation_id",
    "strategy",
    "account",
    "symbol",
    "payload",
    "raw",
)

#: PostgreSQL's ``text`` and ``jsonb`` cannot hold U+0000, which JSON, the
#: contract's free-text fields and NATS subjects allow; a row stores it as
#: U+FFFD instead (and keeps the message's own bytes in ``raw``).
NUL = "\x00"
NUL_STORED = "\ufffd"

#: Most bytes (UTF-8) of a subject in a row the recorder makes itself for a
#: message (Undecodable): the ``events.subject`` btree index takes at most
#: 2704 bytes a row, and NATS takes subjects up to its 4 KiB control line.
#: Such a row keeps the whole subject in its payload (``subject``).
SUBJECT_MAX_BYTES = 1024


def storable(text: str) -> str:
    """``text`` as PostgreSQL can store it."""
    return text.replace(NUL, NUL_STORED) if NUL in text else text


def stored_subject(subject: str) -> str:
    """``subject`` as the recorder's own rows keep it: storable, and cut to
    at most :data:`SUBJECT_MAX_BYTES` (at a character's boundary)."""
    text = storable(subject)
    if len(text) * 4 <= SUBJECT_MAX_BYTES:  # short enough in any encoding
        return text
    data = text.encode()
    if len(data) <= SUBJECT_MAX_BYTES:
        return text
    return data[:SUBJECT_MAX_BYTES].decode(errors="ignore")
