"""The events table: the gapless, strictly ordered audit timeline.

Revision ID: 0001
Revises:
Create Date: 2026-11-24
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "events",
        sa.Column("seq", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("subject", sa.Text(), nullable=False),
        sa.Column("type", sa.Text(), nullable=False),
        sa.Column(
            "ts_event", sa.BigInteger(), nullable=False, comment="ns since epoch, when it happened"
        ),
        sa.Column(
            "ts_init", sa.BigInteger(), nullable=False, comment="ns since epoch, when we created it"
        ),
        sa.Column(
            "recorded_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("correlation_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("causation_id", postgresql.UUID(as_uuid=True), nullable=True),
        sa.Column("strategy", sa.Text(), nullable=True),
        sa.Column("account", sa.Text(), nullable=True),
        sa.Column("symbol", sa.Text(), nullable=True),
        sa.Column("payload", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column(
            "raw",
            sa.LargeBinary(),
            nullable=True,
            comment="the message as received, when it did not decode",
        ),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_events")),
        sa.UniqueConstraint("id", name=op.f("uq_events_id")),
    )
    op.create_index(op.f("ix_events_correlation_id"), "events", ["correlation_id"])
    op.create_index(
        op.f("ix_events_causation_id"),
        "events",
        ["causation_id"],
        postgresql_where=sa.text("causation_id IS NOT NULL"),
    )
    op.create_index(op.f("ix_events_type"), "events", ["type"])
    op.create_index(
        op.f("ix_events_subject"),
        "events",
        ["subject"],
        postgresql_ops={"subject": "text_pattern_ops"},
    )
    op.create_index(op.f("ix_events_ts_event"), "events", ["ts_event"])
    for column in ("strategy", "account", "symbol"):
        op.create_index(
            op.f(f"ix_events_{column}"),
            "events",
            [column],
            postgresql_where=sa.text(f"{column} IS NOT NULL"),
        )
    # The timeline is append-only: refuse UPDATE and DELETE at the database.
    op.execute(
        """
        CREATE FUNCTION events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'events is append-only (% refused)', TG_OP;
        END $$;
        """
    )
    op.execute(
        "CREATE TRIGGER events_append_only BEFORE UPDATE OR DELETE ON events "
        "FOR EACH ROW EXECUTE FUNCTION events_append_only()"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS events_append_only ON events")
    op.execute("DROP FUNCTION IF EXISTS events_append_only()")
    op.drop_table("events")
