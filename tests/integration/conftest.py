"""Fixtures of the integration tests besides the servers (tests/conftest.py):
``venues``, two accounts' paper brokers for the command-path tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.integration.command_path import Venue


@pytest.fixture
async def venues() -> AsyncIterator[list[Venue]]:
    made = [Venue("acct-a"), Venue("acct-b")]
    for v in made:
        await v.up()
    try:
        yield made
    finally:
        for v in made:
            await v.down()
