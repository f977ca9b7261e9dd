"""The ``events.raw`` column's comment: it also keeps a message stored altered.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06

PostgreSQL's ``text`` and ``jsonb`` cannot hold U+0000. The recorder stores
it as U+FFFD, and keeps the message's own bytes in ``raw``
(``services/recorder/domain/rows.py``). Only the comment changes.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BEFORE = "the message as received, when it did not decode"
AFTER = "the message as received, when it did not decode or was stored altered (U+0000)"


def _comment(new: str, old: str) -> None:
    op.alter_column(
        "events",
        "raw",
        existing_type=sa.LargeBinary(),
        existing_nullable=True,
        comment=new,
        existing_comment=old,
    )


def upgrade() -> None:
    _comment(AFTER, BEFORE)


def downgrade() -> None:
    _comment(BEFORE, AFTER)
