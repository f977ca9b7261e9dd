"""Where the recorder trims the stream (services/recorder/domain/trim.py), and
its settings: never above what the store holds, nor inside the keep window,
nor past what a consumer that takes acks still awaits."""

from __future__ import annotations

import os

import pytest

from libs.config import ConfigError, load_settings
from services.recorder.adapters.trim import rfc3339
from services.recorder.config import RecorderSettings
from services.recorder.domain.trim import (
    KEEP_WINDOW,
    STORE,
    ConsumerPlace,
    Floor,
    Hold,
    needed_from,
    trim_floor,
)


def place(
    name: str = "broker-gateway",
    *,
    acks: bool = True,
    ack_floor: int = 0,
    delivered: int = 0,
    ack_pending: int = 0,
    pending: int = 0,
) -> ConsumerPlace:
    return ConsumerPlace(name, acks, ack_floor, delivered, ack_pending, pending)


@pytest.mark.parametrize(
    ("consumer", "needed"),
    [
        # Delivered, not acknowledged: kept from right after the ack floor.
        (place(ack_floor=40, delivered=45, ack_pending=5), 41),
        # Nothing awaiting an ack, more to come: from after the last delivered.
        (place(ack_floor=40, delivered=40, pending=3), 41),
        # Never delivered anything, messages waiting (a gateway that never ran).
        (place(ack_floor=0, delivered=0, pending=1), 1),
        # Everything it wants delivered and acknowledged: holds nothing back,
        # even with an ack floor still at 0 (its filter never matched).
        (place(ack_floor=0, delivered=0), None),
        (place(ack_floor=90, delivered=90), None),
        # No acks: its place is kept elsewhere (the event store).
        (place("strategy-runner", acks=False, ack_floor=3, delivered=3, pending=9), None),
    ],
)
def test_what_a_consumer_still_needs(consumer: ConsumerPlace, needed: int | None) -> None:
    assert needed_from(consumer) == needed


@pytest.mark.parametrize(
    ("committed", "keep_from", "holds", "floor"),
    [
        # Everything recorded, all of it older than the keep window.
        (100, 101, [], Floor(101, STORE)),
        # The store trails the stream: never above its next sequence.
        (60, 101, [], Floor(61, STORE)),
        (0, 101, [], Floor(1, STORE)),
        # Recorded, but younger than the keep window.
        (100, 80, [], Floor(80, KEEP_WINDOW)),
        # A gateway that is down still finds its unacknowledged commands.
        (100, 80, [Hold("broker-gateway", 31)], Floor(31, "consumer broker-gateway")),
        # ... but a consumer never lifts the floor above the store or the window.
        (100, 80, [Hold("broker-gateway", 96)], Floor(80, KEEP_WINDOW)),
        (50, 101, [Hold("broker-gateway", 96)], Floor(51, STORE)),
        # The lowest of several.
        (100, 101, [Hold("a", 71), Hold("b", 21), Hold("c", 40)], Floor(21, "consumer b")),
    ],
)
def test_the_floor_is_the_lowest_limit(
    committed: int, keep_from: int, holds: list[Hold], floor: Floor
) -> None:
    assert trim_floor(committed=committed, keep_from=keep_from, holds=holds) == floor


def test_times_are_sent_as_rfc3339_with_nanoseconds() -> None:
    assert rfc3339(1_700_000_000_123_456_789) == "2023-11-14T22:13:20.123456789Z"
    assert rfc3339(5) == "1970-01-01T00:00:00.000000005Z"


# ------------------------------------------------------------------ settings


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("TRADEBUS_"):
            monkeypatch.delenv(name)


@pytest.mark.usefixtures("clean_env")
def test_trimming_is_on_by_default_keeping_two_days() -> None:
    settings = load_settings(RecorderSettings)
    assert settings.trim_every_s == 60
    assert settings.stream_keep_s == 2 * 86_400


@pytest.mark.usefixtures("clean_env")
@pytest.mark.parametrize("value", ["0", "-1"])
def test_a_trim_period_of_zero_or_less_turns_trimming_off(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("TRADEBUS_TRIM_EVERY_S", value)
    assert load_settings(RecorderSettings).trim_every_s <= 0


@pytest.mark.usefixtures("clean_env")
@pytest.mark.parametrize(
    "variable", ["TRADEBUS_TRIM_EVERY_S", "TRADEBUS_POSITION_SNAPSHOT_EVERY_S"]
)
@pytest.mark.parametrize("value", ["1e-12", "0.009"])
def test_a_period_too_short_to_be_one_is_refused_by_name(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    """A trim or snapshot period of 1e-12 s was taken: the writer then ran it
    without pause, a busy loop against NATS or PostgreSQL. 0 or less turns
    it off; a period is at least 0.01 s."""
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError, match=rf"{variable}: .*at least 0.01 s"):
        load_settings(RecorderSettings)


@pytest.mark.usefixtures("clean_env")
@pytest.mark.parametrize("value", ["119.9", "0", "-5"])
def test_a_keep_window_shorter_than_the_duplicate_window_is_refused(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("TRADEBUS_STREAM_KEEP_S", value)
    with pytest.raises(ConfigError, match=r"TRADEBUS_STREAM_KEEP_S: .*duplicate window, 120 s"):
        load_settings(RecorderSettings)


@pytest.mark.usefixtures("clean_env")
def test_the_keep_window_may_be_the_duplicate_window(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRADEBUS_STREAM_KEEP_S", "120")
    assert load_settings(RecorderSettings).stream_keep_s == 120
