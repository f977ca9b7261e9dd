"""Risk-gate checkpoints: its state folded from the store up to a sequence.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-06

The risk-gate rebuilds its state by folding the recorded events through
``evolve``. A checkpoint is that fold up to ``seq``, so a start-up folds
only the events after it (``services/risk_gate/adapters/checkpoint.py``).
It is derived data, not part of the timeline: a checkpoint whose code or
limits digest does not match the running gate's is ignored, and old ones are
deleted as new ones are written (``events`` stays append-only).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "risk_checkpoints",
        sa.Column("seq", sa.BigInteger(), nullable=False, comment="the last store sequence in it"),
        sa.Column(
            "event_id",
            postgresql.UUID(as_uuid=True),
            nullable=False,
            comment="the id of the event at seq: the store it was folded from",
        ),
        sa.Column("code_digest", sa.Text(), nullable=False),
        sa.Column("limits_digest", sa.Text(), nullable=False),
        sa.Column("events", sa.BigInteger(), nullable=False, comment="events folded in, in all"),
        sa.Column("state", sa.LargeBinary(), nullable=False, comment="zlib-compressed JSON"),
        sa.Column(
            "written_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("seq", "code_digest", "limits_digest", name="pk_risk_checkpoints"),
    )


def downgrade() -> None:
    op.drop_table("risk_checkpoints")
