"""What the services need of the event store's layout at run time, without
SQLAlchemy: the row types the recorder writes itself and the column order of
its COPY.

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
