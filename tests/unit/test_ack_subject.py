"""Reading a JetStream ack subject: both forms the server sends."""

from __future__ import annotations

import pytest

from libs.bus.pull import consumer_seq, parse_ack_subject, stream_seq


@pytest.mark.parametrize(
    "reply",
    [
        "$JS.ACK.TRADEBUS.runner.1.42.7.1700000000000000000.3",
        "$JS.ACK.hub.ACCHASH.TRADEBUS.runner.1.42.7.1700000000000000000.3.tok",
    ],
)
def test_stream_and_consumer_sequences(reply: str) -> None:
    assert parse_ack_subject(reply) == (42, 1_700_000_000_000_000_000, 3)
    assert consumer_seq(reply) == 7


def test_stream_seq_of_a_message_and_of_one_without_an_ack_subject() -> None:
    from nats.aio.msg import Msg

    delivered = Msg(None, subject="md.trade.AAPL", reply=SUBJECT_V1, data=b"")  # type: ignore[arg-type]
    plain = Msg(None, subject="md.trade.AAPL", reply="", data=b"")  # type: ignore[arg-type]
    assert stream_seq(delivered) == 42
    assert stream_seq(plain) == 0


SUBJECT_V1 = "$JS.ACK.TRADEBUS.runner.1.42.7.1700000000000000000.3"
