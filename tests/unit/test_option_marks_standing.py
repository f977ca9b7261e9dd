"""Standing quotes (``services/marketdata/domain/marks.py``): a quote that
stands is marked again every refresh until the longest standing, and what
ends it (a one-sided or crossed quote, a loss of the options feed)."""

from __future__ import annotations

from typing import Literal

import pytest

from libs.contract.codec import decode, derived_id, encode
from libs.contract.events import (
    FeedStatusChanged,
    FeedStatusPayload,
    MarkUpdated,
)
from services.marketdata.domain.marks import FEED_LOST, MarkPolicy, OptionMarks
from tests.unit.option_marks_inputs import (
    MS,
    OPTION,
    OTHER,
    STANDING,
    T0,
    At,
    D,
    S,
    due,
    quote,
)


def status(
    name: str,
    feed: Literal["polygon", "synthetic"] = "polygon",
    market: Literal["stocks", "options"] | None = None,
) -> FeedStatusChanged:
    return FeedStatusChanged.create(
        FeedStatusPayload.model_validate(
            {"feed": feed, "status": name, "message": "options: x", "market": market}
        ),
        source="marketdata/test",
        clock=At(T0),
    )


def test_a_standing_quote_is_re_marked_every_refresh_at_the_time_it_is_made() -> None:
    """Polygon sends nothing while the quote does not change: the quote still
    stands, so it is marked again once the refresh has passed since the last
    mark, at the time the re-mark is made, naming the same quote."""
    marks = OptionMarks(STANDING)
    q = quote(OPTION, "2.50", "2.55", T0)
    first = marks.on_quote(q)
    assert isinstance(first, MarkUpdated)
    assert marks.standing == 1
    assert due(marks, T0 + 29 * S) == []
    at = T0 + 30 * S + 7 * MS  # the flusher looks a little after it falls due
    [again] = due(marks, at)
    p = again.payload
    assert (p.symbol, p.price, p.bid_price, p.ask_price) == (
        OPTION,
        D("2.525"),
        D("2.50"),
        D("2.55"),
    )
    assert (again.causation_id, again.correlation_id) == (q.id, q.correlation_id)
    assert (again.ts_event, again.ts_init) == (at, at), "this quote stood at this time"
    assert again.id == derived_id("marketdata", "mark", q.id, "stood", 1)
    assert decode(encode(again)) == again
    # The next one a refresh after this one, not after the quote.
    assert due(marks, T0 + 60 * S) == []
    [third] = due(marks, at + 30 * S)
    assert third.id == derived_id("marketdata", "mark", q.id, "stood", 2)
    assert len({first.id, again.id, third.id}) == 3
    done = marks.due(at + 31 * S)
    assert (done.marks, done.remarks) == (0, 0)


def test_re_marks_stop_after_the_longest_standing_and_a_new_quote_starts_again() -> None:
    marks = OptionMarks(STANDING)  # 30 s refresh, 90 s at most
    marks.on_quote(quote(OPTION, "2.50", "2.55", T0))
    made = [m.ts_event for t in range(1, 200) for m in due(marks, T0 + t * S)]
    assert made == [T0 + 30 * S, T0 + 60 * S, T0 + 90 * S]
    assert marks.standing == 0
    ended = OptionMarks(STANDING)
    ended.on_quote(quote(OPTION, "2.50", "2.55", T0))
    assert dict(ended.due(T0 + 91 * S).ended) == {"max_standing": 1}
    # The market quotes it again: a mark, and it stands again.
    fresh = quote(OPTION, "2.60", "2.65", T0 + 200 * S)
    assert isinstance(marks.on_quote(fresh), MarkUpdated)
    [again] = due(marks, T0 + 230 * S)
    assert again.causation_id == fresh.id


def test_the_newest_quote_stands_even_when_it_made_no_mark() -> None:
    """A quote whose midpoint did not move (a new bid and ask around the same
    mid) is the market's quote now: it is the one re-marked, and the standing
    time runs from it."""
    marks = OptionMarks(STANDING)
    marks.on_quote(quote(OPTION, "10.00", "10.20", T0))
    due(marks, T0 + 30 * S)
    newer = quote(OPTION, "9.95", "10.25", T0 + 50 * S)
    assert marks.on_quote(newer) == "unchanged"
    [again] = due(marks, T0 + 60 * S)
    assert (again.causation_id, again.payload.bid_price, again.payload.ask_price) == (
        newer.id,
        D("9.95"),
        D("10.25"),
    )
    assert again.id == derived_id("marketdata", "mark", newer.id, "stood", 0)
    # Up to 90 s from the newer quote, not from the first one.
    made = [m.ts_event for t in range(61, 200) for m in due(marks, T0 + t * S)]
    assert made == [T0 + 90 * S, T0 + 120 * S]
    assert marks.standing == 0


@pytest.mark.parametrize(("bid", "ask"), [("0", "2.55"), ("2.60", "2.50")])
def test_a_one_sided_or_crossed_quote_ends_the_standing(bid: str, ask: str) -> None:
    marks = OptionMarks(STANDING)
    marks.on_quote(quote(OPTION, "2.50", "2.55", T0))
    assert isinstance(marks.on_quote(quote(OPTION, bid, ask, T0 + 5 * S)), str)
    assert (marks.standing, due(marks, T0 + 60 * S)) == (0, [])


@pytest.mark.parametrize(("bid", "ask"), [("0", "2.55"), ("2.60", "2.50")])
def test_a_late_one_sided_or_crossed_quote_ends_nothing(bid: str, ask: str) -> None:
    """A one-sided or crossed quote older than the last mark is out of order, as
    a late wide one is: the newer quotes held back and standing are still the
    market (it used to drop them, as a current one-sided quote does)."""
    marks = OptionMarks(STANDING)
    marks.on_quote(quote(OPTION, "2.50", "2.55", T0 + 3 * S))
    assert marks.on_quote(quote(OPTION, "2.70", "2.75", T0 + 3100 * MS)) == "throttled"
    assert marks.on_quote(quote(OPTION, bid, ask, T0 + 2 * S)) == "out_of_order"
    assert (marks.held, marks.standing) == (1, 1)
    [held] = due(marks, T0 + 5 * S)
    assert held.payload.price == D("2.725")


@pytest.mark.parametrize(("bid", "ask"), [("2.90", "2.95"), ("0", "2.95"), ("2.60", "2.50")])
def test_a_quote_older_than_the_held_or_standing_one_changes_nothing(bid: str, ask: str) -> None:
    """A quote newer than the last mark but older than the quote held back (or
    standing) is late too: it must neither replace the newer quote, whose mark
    would then be a price the market had already left, nor end it."""
    marks = OptionMarks(STANDING)
    marks.on_quote(quote(OPTION, "2.50", "2.55", T0))
    newer = quote(OPTION, "2.70", "2.75", T0 + 500 * MS)
    assert marks.on_quote(newer) == "throttled"
    assert marks.on_quote(quote(OPTION, bid, ask, T0 + 300 * MS)) == "out_of_order"
    assert (marks.held, marks.standing) == (1, 1)
    [held] = due(marks, T0 + S)
    assert (held.causation_id, held.payload.price) == (newer.id, D("2.725"))
    # A standing quote that made no mark (unchanged) is the market too.
    unchanged = quote(OPTION, "2.70", "2.75", T0 + 5 * S)
    assert marks.on_quote(unchanged) == "unchanged"
    assert marks.on_quote(quote(OPTION, bid, ask, T0 + 4 * S)) == "out_of_order"
    [remark] = due(marks, T0 + 31 * S)
    assert remark.causation_id == unchanged.id


@pytest.mark.parametrize("lost", sorted(FEED_LOST))
def test_a_disconnect_or_a_gap_of_the_feed_ends_the_standing(lost: str) -> None:
    marks = OptionMarks(STANDING)
    other = quote(OTHER, "1.00", "1.10", T0, feed="synthetic")
    marks.with_marks([quote(OPTION, "2.50", "2.55", T0), other])
    assert marks.standing == 2
    lost_status = status(lost)
    marked = marks.with_marks([lost_status])
    assert (list(marked.events), marked.marks) == ([lost_status], 0)
    assert dict(marked.ended) == {"feed_lost": 1}
    # The other feed's quote still stands; the lost feed's is not re-marked.
    assert [m.causation_id for m in due(marks, T0 + 30 * S)] == [other.id]


@pytest.mark.parametrize("lost", sorted(FEED_LOST))
def test_a_loss_of_the_stocks_connection_leaves_the_option_quotes_standing(lost: str) -> None:
    """Polygon's stocks and options are separate connections: what the stocks
    one lost is no option quote; the options one's loss ends them."""
    marks = OptionMarks(STANDING)
    marks.with_marks([quote(OPTION, "2.50", "2.55", T0)])
    stocks_lost = status(lost, market="stocks")
    marked = marks.with_marks([stocks_lost])
    assert (list(marked.events), dict(marked.ended)) == ([stocks_lost], {})
    assert marks.standing == 1
    assert marks.with_marks([status(lost, market="options")]).ended == {"feed_lost": 1}
    assert due(marks, T0 + 30 * S) == []


@pytest.mark.parametrize("kept", ["connected", "authenticated", "subscribed", "stale", "recovered"])
def test_a_status_that_loses_nothing_keeps_the_quote_standing(kept: str) -> None:
    """``stale`` too: the connection is up, and silence is what an unchanged
    quote looks like (a dead connection is a disconnect)."""
    marks = OptionMarks(STANDING)
    marks.with_marks([quote(OPTION, "2.50", "2.55", T0), status(kept)])
    assert len(due(marks, T0 + 30 * S)) == 1


def test_a_quote_from_before_a_re_mark_reaching_us_after_it_is_marked_at_its_time() -> None:
    """The re-mark said the old quote still stood at 30 s; a new quote made at
    29.995 s and received after it must not be ignored as older by the gate:
    its mark takes the re-mark's time (the later in the stream wins a tie)."""
    marks = OptionMarks(STANDING)
    marks.on_quote(quote(OPTION, "2.50", "2.55", T0))
    [remark] = due(marks, T0 + 30 * S)
    late = quote(OPTION, "2.70", "2.75", T0 + 30 * S - 5 * MS)
    assert marks.on_quote(late) == "throttled"  # the re-mark took the interval's slot
    [mark] = due(marks, T0 + 31 * S)
    assert (mark.causation_id, mark.payload.price) == (late.id, D("2.725"))
    assert mark.ts_event == remark.ts_event == T0 + 30 * S
    # Made at once (no interval) it is the same.
    at_once = OptionMarks(MarkPolicy(min_interval_ns=0, min_change=D("0.01"), refresh_ns=30 * S))
    at_once.on_quote(quote(OPTION, "2.50", "2.55", T0))
    due(at_once, T0 + 30 * S)
    m = at_once.on_quote(quote(OPTION, "2.70", "2.75", T0 + 30 * S - 5 * MS))
    assert isinstance(m, MarkUpdated)
    assert m.ts_event == T0 + 30 * S
    # A quote made after the re-mark keeps its own time.
    m = at_once.on_quote(quote(OPTION, "2.90", "2.95", T0 + 31 * S))
    assert isinstance(m, MarkUpdated)
    assert m.ts_event == T0 + 31 * S


def test_a_held_quote_is_marked_before_a_re_mark_and_not_re_marked_with_it() -> None:
    marks = OptionMarks(STANDING)
    marks.on_quote(quote(OPTION, "2.50", "2.55", T0))
    due(marks, T0 + 30 * S)  # a re-mark, slot 30 s
    held = quote(OPTION, "2.70", "2.75", T0 + 30 * S + 200 * MS)
    assert marks.on_quote(held) == "throttled"
    # A look as late as the held quote's slot (31 s) plus the refresh finds
    # both due: the held quote is marked, and not re-marked in the same look.
    [mark] = due(marks, T0 + 61 * S)
    assert (mark.causation_id, mark.id) == (held.id, derived_id("marketdata", "mark", held.id))
    [again] = due(marks, T0 + 62 * S)
    assert again.causation_id == held.id
    assert again.id == derived_id("marketdata", "mark", held.id, "stood", 1)


def test_re_mark_ids_are_the_same_after_a_restart_and_new_after_a_reconnect() -> None:
    """A restart (a new OptionMarks) that sees the same quote stand in the same
    refresh period makes the same re-mark, stored once; within one process a
    quote seen again after a disconnect gets re-marks with ids of their own."""
    q = quote(OPTION, "2.50", "2.55", T0)
    a, b = OptionMarks(STANDING), OptionMarks(STANDING)
    a.on_quote(q)
    b.on_quote(q)
    [ra] = due(a, T0 + 30 * S)
    [rb] = due(b, T0 + 31 * S)
    assert ra.id == rb.id
    assert ra.ts_event != rb.ts_event
    made = {ra.id}
    a.with_marks([status("disconnected")])
    assert due(a, T0 + 61 * S) == []
    a.on_quote(q)  # the same quote handed over again after the reconnect
    for t in (65, 80):
        made |= {m.id for m in due(a, T0 + t * S)}
    assert len(made) == 2, "the re-mark at 65 s is in period 2, new"


def test_without_re_marks_nothing_stands() -> None:
    marks = OptionMarks(MarkPolicy(refresh_ns=30 * S, max_standing_ns=0))
    marks.on_quote(quote(OPTION, "2.50", "2.55", T0))
    assert (marks.standing, due(marks, T0 + 30 * S)) == (0, [])
