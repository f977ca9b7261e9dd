"""The read commands' own connection to the event store, without servers.

Their preamble (``libs.cli.reads_store``) checks the store first; the store
can still go away before the command connects (restarted in between). That
failure too must be one line naming the store, from ``libs.store.connect``.
"""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

import libs.cli
from services import cli as root

SECRET = "s3cr3t-pw"  # noqa: S105 - a fake password, to show it is never printed
#: Nobody listens on port 1.
UNREACHABLE = f"postgresql://postgres:{SECRET}@127.0.0.1:1/x"


@pytest.mark.parametrize(
    "args",
    [
        ("positions",),
        ("events",),
        ("audit", "00000000-0000-0000-0000-000000000000"),
        ("risk", "status"),
    ],
)
def test_a_store_gone_after_the_preamble_is_one_line_naming_it(
    monkeypatch: pytest.MonkeyPatch, args: tuple[str, ...]
) -> None:
    # The preamble passes, as if the store had answered it.
    monkeypatch.setattr(libs.cli, "announce_store", lambda: UNREACHABLE)
    result = CliRunner().invoke(root.app, list(args), env={"DATABASE_URL": UNREACHABLE})
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if "error" in line.lower()]
    assert len(errors) == 1, result.output
    assert errors[0].startswith(
        "error: cannot reach the event store at postgresql://postgres:***@127.0.0.1:1/x: "
    ), result.output
    assert errors[0].endswith("(is DATABASE_URL the one `tradebus up` printed?)"), result.output
    assert SECRET not in result.output


@pytest.mark.parametrize(
    "args",
    [
        ("positions",),
        ("events",),
        ("audit", "00000000-0000-0000-0000-000000000000"),
        ("risk", "status"),
        ("recorder", "replay", "--dry-run"),
    ],
)
def test_a_password_given_as_a_url_parameter_is_never_printed(args: tuple[str, ...]) -> None:
    """libpq and asyncpg take the password as a parameter of the URL too
    (``...?password=...``): masked as the one before the host is. It was
    printed in clear, twice: 'event store: ...' and the error naming the store."""
    url = f"postgresql://postgres@127.0.0.1:1/x?sslmode=disable&password={SECRET}"
    result = CliRunner().invoke(root.app, list(args), env={"DATABASE_URL": url})
    assert result.exit_code == 1, result.output
    assert "postgresql://postgres@127.0.0.1:1/x?sslmode=disable&password=***" in result.output
    assert SECRET not in result.output


def test_events_help_gives_the_default_limit() -> None:
    """`events --help` says how many events a plain `events` lists: written
    as "[default: 50]" in the help, typer read it as a rich tag and dropped it."""
    result = CliRunner().invoke(root.app, ["events", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    [limit] = [line for line in lines if line.lstrip("│ ").startswith("--limit")]
    assert "the first [default: 50]" in limit, limit


async def test_a_malformed_database_url_is_said_to_be_one_not_unreachable() -> None:
    """A bad option (sslmode=bogus) is asyncpg's ClientConfigurationError, an
    InterfaceError as well as a ValueError: it read 'cannot reach the event
    store ... is DATABASE_URL the one tradebus up printed?'."""
    from libs.store.connect import connect
    from libs.store.errors import StoreUnavailable

    with pytest.raises(StoreUnavailable) as e:
        await connect(UNREACHABLE + "?sslmode=bogus", timeout=2)
    assert str(e.value) == (
        "DATABASE_URL postgresql://postgres:***@127.0.0.1:1/x?sslmode=bogus "
        "is not a usable PostgreSQL URL"
    )


@pytest.mark.parametrize(
    ("given", "ns"),
    [
        # Times `tradebus events` prints (milliseconds), and finer ones.
        ("2026-03-10T14:30:00.123", 1_773_153_000_123_000_000),
        ("2026-03-10T14:30:00.999+00:00", 1_773_153_000_999_000_000),
        ("2026-03-10T10:30:00.000001-04:00", 1_773_153_000_000_001_000),
        ("2026-03-10T14:30:00", 1_773_153_000_000_000_000),
        ("1773153000123456789", 1_773_153_000_123_456_789),
    ],
)
def test_a_replay_time_is_the_exact_nanosecond_it_names(given: str, ns: int) -> None:
    # --since/--until bound ts_event exactly: an event stamped at the very
    # time given is in --since and not in --until.
    assert libs.cli.parse_time(given) == ns


@pytest.mark.parametrize(
    ("option", "value", "says"),
    [
        ("--since", "yesterday", "not an ISO 8601 time or nanoseconds: 'yesterday'"),
        ("--until", "2026-13-01", "not an ISO 8601 time or nanoseconds: '2026-13-01'"),
        ("--rate", "fast", "rate must look like 500/s or max, got 'fast'"),
        ("--rate", "-5/s", "rate must be positive"),
    ],
)
def test_a_bad_replay_time_or_rate_names_its_option(option: str, value: str, says: str) -> None:
    """`replay --since A --until B` with one of them wrong said only "Invalid
    value: not an ISO 8601 time ...", not which of the two."""
    args = ["recorder", "replay", "--dry-run", "--since", "0", "--until", "9", option, value]
    result = CliRunner().invoke(root.app, args, env={"DATABASE_URL": UNREACHABLE})
    assert result.exit_code == 2, result.output
    said = " ".join(result.output.replace("│", " ").split())
    assert f"Invalid value for '{option}': {says}" in said, result.output


def test_replay_dry_run_help_says_it_only_counts() -> None:
    """`replay --dry-run` counts what it would publish (its JSON line) and
    lists nothing; the help said "Count and list, publish nothing"."""
    result = CliRunner().invoke(root.app, ["recorder", "replay", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.replace("│", " ").split())
    assert "--dry-run" in said
    start = said.index("--dry-run")
    dry_run = said[start : said.index("--include-undecodable", start)]
    assert "Publish nothing: count" in dry_run, dry_run
    assert "tradebus events" in dry_run, dry_run  # what does list them
