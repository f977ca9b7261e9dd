"""The settlement task keeps what it found unsettled between its ticks
(``Settlements._waiting``) until something it depends on changes: its
answer is always the one worked out afresh, through fills, reads and the
time passing the contracts' expiries, the give-up a week on, and going
back."""

from __future__ import annotations

from types import SimpleNamespace

from libs.contract.options import parse_option
from services.broker_gateway.domain.settlement import unsettled
from services.broker_gateway.settlement import GIVE_UP_NS, Settlements
from tests.unit.gateway_settlement_inputs import CALL, activity, opened, tracker

OTHER = "O:SPY261216C00600000"  # expires five days after CALL
EXPIRES = parse_option(CALL).expires_at_ns


def afresh(s: Settlements, now_ns: int) -> tuple[list[str], list[str]]:
    """What is waited for and what is given up at ``now_ns``, worked out anew."""
    found = unsettled(s.worker.tracker, s._owed, now_ns)
    waiting = [u.what for u in found if now_ns - u.expires_ns < GIVE_UP_NS]
    return waiting, [u.what for u in found if now_ns - u.expires_ns >= GIVE_UP_NS]


def test_what_is_kept_between_ticks_is_what_is_worked_out_afresh() -> None:
    fills = opened([("s1", CALL, "2"), ("s2", CALL, "-1"), ("s1", OTHER, "1"), ("s2", CALL, "1")])
    t = tracker(fills[:2])
    s = Settlements(SimpleNamespace(account="looked", tracker=t))
    seen: list[tuple[int, int]] = []

    def tick(now_ns: int) -> None:
        waiting = [u.what for u in s._waiting(now_ns)]
        assert (waiting, s.given_up) == afresh(s, now_ns), now_ns
        seen.append((len(waiting), len(s.given_up)))

    tick(EXPIRES - 1)
    tick(EXPIRES)  # CALL expires
    tick(EXPIRES + 1)
    t.evolve(fills[2])  # a fill: OTHER held too
    tick(EXPIRES + 2)
    t.evolve(fills[3])  # s2's part of CALL closed
    assert t.position(CALL, "s2") == 0
    tick(EXPIRES + 3)
    s._owed = [activity("a1", "OPEXC", CALL, "-1")]  # a read: shares owed
    tick(EXPIRES + 4)
    tick(parse_option(OTHER).expires_at_ns)  # OTHER expires
    tick(EXPIRES + GIVE_UP_NS)  # CALL's given up
    tick(EXPIRES + GIVE_UP_NS + 1)
    tick(EXPIRES + 5)  # the clock set back
    s._owed = []
    tick(EXPIRES + 6)
    assert seen == [
        (0, 0),
        (1, 0),
        (1, 0),
        (1, 0),
        (1, 0),
        (2, 0),
        (3, 0),
        (1, 2),
        (1, 2),
        (2, 0),
        (1, 0),
    ]
