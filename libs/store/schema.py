"""The event store's schema, as SQLAlchemy 2 models (alembic migrates it).

``events`` is the audit timeline: one row per message of the recorded
JetStream stream, keyed by its stream sequence. The sequence is gapless and
strictly increasing because the recorder writes rows only in stream order and
writes a row for every position, including the ones it could not decode
(``type = 'Undecodable'``, raw bytes kept), a message under an already
recorded event's id (``DuplicateSuppressed``, a pointer to the first,
keeping the copy's bytes when it says something else) and positions missing
from the stream (``MessageMissing``).
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from sqlalchemy import BigInteger, DateTime, Index, LargeBinary, MetaData, Text, func, text
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from libs.store.layout import COPY_COLUMNS, DUPLICATE, MISSING, UNDECODABLE

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "pk": "pk_%(table_name)s",
}

# Row types the recorder writes itself, and its COPY's columns: in layout.py,
# which the services import without SQLAlchemy.
__all__ = ["COPY_COLUMNS", "DUPLICATE", "MISSING", "UNDECODABLE", "Base"]


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class EventRow(Base):
    """One recorded message: its place in the global order and the event."""

    __tablename__ = "events"

    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), unique=True)
    subject: Mapped[str] = mapped_column(Text)
    type: Mapped[str] = mapped_column(Text)
    ts_event: Mapped[int] = mapped_column(BigInteger, comment="ns since epoch, when it happened")
    ts_init: Mapped[int] = mapped_column(BigInteger, comment="ns since epoch, when we created it")
    recorded_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
    source: Mapped[str] = mapped_column(Text)
    correlation_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True))
    causation_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True), nullable=True)
    strategy: Mapped[str | None] = mapped_column(Text, nullable=True)
    account: Mapped[str | None] = mapped_column(Text, nullable=True)
    symbol: Mapped[str | None] = mapped_column(Text, nullable=True)
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB)
    raw: Mapped[bytes | None] = mapped_column(
        LargeBinary,
        nullable=True,
        comment=(
            "the message as received, when it did not decode, was stored altered (U+0000), "
            "or is a copy under a recorded id that says otherwise (its DuplicateSuppressed "
            "pointer)"
        ),
    )

    __table_args__ = (
        Index(None, "correlation_id"),
        Index(None, "causation_id", postgresql_where=text("causation_id IS NOT NULL")),
        Index(None, "type"),
        Index(None, "subject", postgresql_ops={"subject": "text_pattern_ops"}),
        Index(None, "ts_event"),
        Index(None, "strategy", postgresql_where=text("strategy IS NOT NULL")),
        Index(None, "account", postgresql_where=text("account IS NOT NULL")),
        Index(None, "symbol", postgresql_where=text("symbol IS NOT NULL")),
    )


class RiskCheckpointRow(Base):
    """The risk-gate's state folded from ``events`` up to ``seq`` (derived data:
    see ``services/risk_gate/adapters/checkpoint.py``)."""

    __tablename__ = "risk_checkpoints"

    seq: Mapped[int] = mapped_column(
        BigInteger, primary_key=True, comment="the last store sequence in it"
    )
    event_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), comment="the id of the event at seq: the store it was folded from"
    )
    code_digest: Mapped[str] = mapped_column(Text, primary_key=True)
    limits_digest: Mapped[str] = mapped_column(Text, primary_key=True)
    events: Mapped[int] = mapped_column(BigInteger, comment="events folded in, in all")
    state: Mapped[bytes] = mapped_column(LargeBinary, comment="zlib-compressed JSON")
    written_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )


class StrategyCheckpointRow(Base):
    """A strategy's positions folded from its fills in ``events`` up to ``seq``
    (derived data: see ``services/strategy_runner/adapters/checkpoint.py``)."""

    __tablename__ = "strategy_checkpoints"

    strategy: Mapped[str] = mapped_column(Text, primary_key=True)
    seq: Mapped[int] = mapped_column(
        BigInteger, primary_key=True, comment="the last store sequence in it"
    )
    event_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), comment="the id of the event at seq: the store it was folded from"
    )
    code_digest: Mapped[str] = mapped_column(Text, primary_key=True)
    fills: Mapped[int] = mapped_column(BigInteger, comment="fills folded in, in all")
    positions: Mapped[dict[str, Any]] = mapped_column(JSONB)
    written_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
