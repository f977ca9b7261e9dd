"""Strategy-runner checkpoints: each strategy's positions folded from its fills.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06

The strategy-runner rebuilds each strategy's books from the store at
start-up, and a strategy's positions and P&L come from every fill it ever
had. A checkpoint is that fold up to ``seq``, so a start-up folds only the
fills after it (``services/strategy_runner/adapters/checkpoint.py``). Derived
data, not part of the timeline: one whose code digest does not match the
running runner's, or whose event at ``seq`` is not the store's, is ignored,
and old ones are deleted as new ones are written.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "strategy_checkpoints",
        sa.Column("strategy", sa.Text(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False, comment="the last store sequence in it"),
        sa.Column(
            "event_id",
            postgresql.UUID(as_uuid=True),
            nullable=False,
            comment="the id of the event at seq: the store it was folded from",
        ),
        sa.Column("code_digest", sa.Text(), nullable=False),
        sa.Column("fills", sa.BigInteger(), nullable=False, comment="fills folded in, in all"),
        sa.Column("positions", postgresql.JSONB(), nullable=False),
        sa.Column(
            "written_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("strategy", "seq", "code_digest", name="pk_strategy_checkpoints"),
    )


def downgrade() -> None:
    op.drop_table("strategy_checkpoints")
