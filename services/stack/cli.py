"""``tradebus up`` (the whole stack locally) and the demo event source."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add the stack commands to the root app (filled in by the stack work)."""
