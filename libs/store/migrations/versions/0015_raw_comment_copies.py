"""The ``events.raw`` column's comment: it also keeps a differing copy's bytes.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-13

A message under a recorded event's id that says something else is written
as a ``DuplicateSuppressed`` pointer to the first that keeps the copy's
bytes as received in ``raw`` (``libs/store/writer.py``); 0005's comment
named only a message that did not decode or was stored altered. Only the
comment changes.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BEFORE = "the message as received, when it did not decode or was stored altered (U+0000)"
AFTER = (
    "the message as received, when it did not decode, was stored altered (U+0000), "
    "or is a copy under a recorded id that says otherwise (its DuplicateSuppressed pointer)"
)


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
