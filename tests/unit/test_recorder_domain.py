"""The recorder's pure logic: batch planning, rows, subject filters."""

from __future__ import annotations

import re

import orjson
import pytest

from libs.contract.codec import encode
from libs.contract.subjects import SubjectPatternError, check_prefix
from libs.store.queries import subject_filter
from libs.testing.producer import make_trades
from services.recorder.domain.rows import StreamMessage, merge, missing_row, plan, to_row


def msg(seq: int, data: bytes = b"{}") -> StreamMessage:
    return StreamMessage(seq=seq, subject="md.trade.AAPL", data=data)


@pytest.mark.parametrize(
    ("next_seq", "batch", "fresh", "already", "holes"),
    [
        (1, [1, 2, 3], [1, 2, 3], [], []),
        (1, [3, 1, 2], [1, 2, 3], [], []),  # out of order: sorted
        (5, [3, 4, 5, 6], [5, 6], [3, 4], []),  # redelivered, already recorded
        (1, [2, 3], [2, 3], [], [1]),  # a hole before the batch
        (1, [1, 4, 6], [1, 4, 6], [], [2, 3, 5]),
        (1, [2, 2, 3], [2, 3], [], [1]),  # duplicates in one batch collapse
        (10, [], [], [], []),
    ],
)
def test_plan(
    next_seq: int, batch: list[int], fresh: list[int], already: list[int], holes: list[int]
) -> None:
    p = plan(next_seq, [msg(s) for s in batch])
    assert [m.seq for m in p.fresh] == fresh
    assert [m.seq for m in p.already] == already
    assert p.holes == holes


def test_merge_orders_fetched_and_filled() -> None:
    assert [m.seq for m in merge([msg(1), msg(3)], [msg(2)])] == [1, 2, 3]


def test_to_row_keeps_envelope_and_exact_payload() -> None:
    event = next(iter(make_trades(1, "u")))
    data = encode(event)
    converted = to_row(StreamMessage(7, "md.trade.AAPL", data), max_bytes=10_000)
    row = converted.row
    assert converted.error is None
    assert (row.seq, row.id, row.type, row.symbol) == (7, event.id, "TradePrinted", "AAPL")
    assert (row.correlation_id, row.causation_id) == (event.id, None)
    assert orjson.loads(row.payload) == orjson.loads(data)["payload"]
    assert row.raw is None


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"{nope", "malformed_json"),
        (b'{"type": "TradePrinted"}', "invalid_event"),
        (b"x" * 2000, "oversized"),
    ],
)
def test_to_row_undecodable_keeps_raw_bytes(data: bytes, reason: str) -> None:
    converted = to_row(StreamMessage(3, "md.trade.X", data), max_bytes=1024)
    assert converted.error is not None
    assert converted.error.reason == reason
    assert converted.row.type == "Undecodable"
    assert converted.row.raw == data
    assert orjson.loads(converted.row.payload)["reason"] == reason
    # The same position always gets the same id: re-recording is a no-op.
    assert to_row(StreamMessage(3, "md.trade.X", data), max_bytes=1024).row.id == converted.row.id


def test_missing_row_is_deterministic() -> None:
    assert missing_row(9, 1).id == missing_row(9, 2).id != missing_row(10, 1).id


@pytest.mark.parametrize(
    ("pattern", "matches", "rejects"),
    [
        ("md.trade.AAPL", ["md.trade.AAPL"], ["md.trade.AAPLX", "md.trade"]),
        ("md.*.AAPL", ["md.trade.AAPL", "md.quote.AAPL"], ["md.bar.1m.AAPL"]),
        ("md.>", ["md.trade.AAPL", "md.bar.1m.X"], ["md", "mdx.trade.A", "orders.cmd.a"]),
        ("orders.cmd.*", ["orders.cmd.acct-a"], ["orders.cmd.a.b"]),
        ("a_b.%", ["a_b.%"], ["aXb.%", "a_b.zz"]),
        # No literal start: the LIKE prefix was "." and nothing matched.
        ("*.*.acct-a", ["orders.cmd.acct-a", "broker.fill.acct-a"], ["broker.fill.acct-b"]),
        ("*", ["md"], ["md.trade"]),
    ],
)
def test_subject_filter_matches_nats_semantics(
    pattern: str, matches: list[str], rejects: list[str]
) -> None:
    cond, params = subject_filter(pattern, 1)
    assert cond.startswith("(subject LIKE $1")
    like, regex = params

    def sql_like(subject: str) -> bool:
        body = like.replace("\\%", "\0").replace("\\_", "\1")
        rx = (
            "^"
            + "".join(
                ".*"
                if c == "%"
                else "."
                if c == "_"
                else re.escape({"\0": "%", "\1": "_"}.get(c, c))
                for c in body
            )
            + "$"
        )
        return re.match(rx, subject, re.S) is not None

    for s in matches:
        assert sql_like(s), s
        assert re.search(regex, s), s
    for s in rejects:
        assert not (sql_like(s) and re.search(regex, s)), s


def test_subject_filter_everything_and_bad_wildcard() -> None:
    assert subject_filter(">", 1) == ("TRUE", [])
    with pytest.raises(ValueError, match="last token"):
        subject_filter("md.>.x", 1)


@pytest.mark.parametrize(
    ("pattern", "problem"),
    [
        ("md.>.AAPL", "last token"),
        ("md trade", "no spaces"),
        ("md.trade.AAPL ", "no spaces"),
        ("md\ttrade", "no spaces"),
        ("md..trade", "empty token"),
        (".md", "empty token"),
        ("md.", "empty token"),
        ("md.tr*", "whole tokens"),
        ("md.>x", "whole tokens"),
    ],
)
def test_patterns_nats_would_refuse_are_refused_not_matched_against_nothing(
    pattern: str, problem: str
) -> None:
    with pytest.raises(SubjectPatternError, match=problem):
        subject_filter(pattern, 1)


def test_a_wildcard_is_no_prefix_to_publish_under() -> None:
    assert check_prefix("replay.run7") == "replay.run7"
    for bad in (">", "replay.*", "replay.>", "re play", ""):
        with pytest.raises(SubjectPatternError):
            check_prefix(bad)


def test_to_row_stores_nul_as_replacement_and_keeps_the_bytes() -> None:
    """PostgreSQL's text and jsonb cannot hold U+0000."""
    event = next(iter(make_trades(1, "u")))
    as_sent = orjson.loads(encode(event))
    as_sent["source"] = "feed\x00"
    as_sent["payload"]["trade_id"] = "a\x00b"
    data = orjson.dumps(as_sent)
    converted = to_row(StreamMessage(7, "md.trade.AAPL", data), max_bytes=10_000)
    assert converted.error is None
    row = converted.row
    assert orjson.loads(row.payload)["trade_id"] == "a\ufffdb"
    assert row.source == "feed\ufffd"
    assert row.raw == data


def test_to_row_leaves_an_escaped_backslash_alone() -> None:
    r"""``\\u0000`` in JSON is a backslash and ``u0000``, not U+0000."""
    event = next(iter(make_trades(1, "u")))
    as_sent = orjson.loads(encode(event))
    as_sent["payload"]["trade_id"] = "\\u0000"
    data = orjson.dumps(as_sent)
    assert b"\\\\u0000" in data
    row = to_row(StreamMessage(7, "md.trade.AAPL", data), max_bytes=10_000).row
    assert orjson.loads(row.payload)["trade_id"] == "\\u0000"
    assert row.raw is None


def test_to_row_undecodable_error_quoting_nul_is_storable() -> None:
    event = next(iter(make_trades(1, "u")))
    data = orjson.dumps({**orjson.loads(encode(event)), "type": "\x00"})
    converted = to_row(StreamMessage(3, "md.trade.X", data), max_bytes=10_000)
    assert converted.error is not None
    assert "\x00" in converted.error.detail  # pydantic quotes the bad tag
    assert "\\u0000" not in converted.row.payload
    assert "\ufffd" in orjson.loads(converted.row.payload)["error"]
    assert converted.row.raw == data


def test_plan_makes_headway_into_a_hole_bigger_than_max_hole() -> None:
    # Messages 1-49,999 left the stream before they were recorded: the first
    # one fetched is 50,000. Leaving the whole hole "for the next batch" left
    # it for ever (every batch begins past it): the recorder recorded nothing
    # more. The first max_hole positions of it are read now.
    p = plan(1, [msg(50_000), msg(50_001)], max_hole=100)
    assert p.holes == list(range(1, 101))
    assert p.fresh == []
    p = plan(1, [msg(5), msg(50_000)], max_hole=100)
    assert [m.seq for m in p.fresh] == [5]
    assert p.holes == [1, 2, 3, 4, *range(6, 102)]
