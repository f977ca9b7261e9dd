"""What a DeliveryGap says, either way the consumer sequence jumps."""

from __future__ import annotations

from libs.bus.client import _describe
from libs.bus.errors import DeliveryGap


def test_a_delivery_gap_says_what_was_missed_or_delivered_again() -> None:
    # Ahead: messages the server sent never reached this reader.
    ahead = DeliveryGap.between("risk-gate", expected=295, delivered=298)
    assert str(ahead) == "consumer risk-gate delivered message 298 after 294: 3 never arrived here"
    # Behind (a server killed outright went back): it said "-16 never arrived".
    behind = DeliveryGap.between("risk-gate", expected=295, delivered=279)
    assert str(behind) == (
        "consumer risk-gate delivered message 279 after 294: "
        "its state went back: 16 delivered again"
    )


def test_a_connection_error_is_described_even_when_it_has_no_text() -> None:
    # TimeoutError is an OSError with no strerror and no text: the first
    # connection's "(last error: ...)" used to read "(last error: )".
    assert _describe(TimeoutError()) == "timed out"
    assert _describe(OSError()) == "OSError"
    assert _describe(ConnectionRefusedError()).startswith("connection refused")
    assert _describe(OSError(113, "No route to host")) == "No route to host"
