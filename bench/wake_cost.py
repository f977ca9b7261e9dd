"""What this host charges a service for waking up: the same work, warm and
after idling.

Every service on the order path sleeps between messages (at 200 orders/s
about 5 ms) and handles each one on a CPU that ran something else, or
nothing, in between. This times two pieces of the order path's own work,
in process and on their own:

- **codec**: decode one recorded ``SubmitOrder`` and encode it again (what
  every hop does to an event);
- **risk-gate**: decode an intent, ``evolve`` the state with it, ``decide``,
  and encode the decision and the order (the gate's whole pure part, as
  ``bench/risk_decide.py`` sets it up);

each back to back (warm: the baseline, measured in the same run) and after
``--gaps`` of idling before every repetition, as ratios against warm. Where
the ratio grows with the gap, a service's per-message cost on the live path
is set by how long it slept, not by how much code it runs warm; which is why
trimming code barely moves the order path's latency on such a host (see the
README's benchmark section).

Progress goes to stderr; stdout gets a table and, as its last line, one JSON
object with the figures and their units.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

from harness import after_idle_us, say  # bench/harness.py
from risk_decide import T0, intents, state_with  # bench/risk_decide.py

from libs.contract.codec import decode, encode
from libs.contract.events import OrderIntentCreated
from libs.testing.producer import make_submit_order
from services.risk_gate.domain.decide import decide
from services.risk_gate.domain.evolve import evolve

GAPS_MS = (0.2, 1.0, 2.0, 5.0, 20.0)


def codec_work(rounds: int) -> tuple[Callable[[bytes], Any], list[bytes]]:
    frames = [encode(make_submit_order("wake-cost")) for _ in range(rounds)]

    def work(frame: bytes) -> Any:
        return encode(decode(frame))

    return work, frames


def gate_work(rounds: int) -> tuple[Callable[[bytes], Any], list[bytes]]:
    state = state_with(0)
    frames = [encode(intent) for intent in intents(rounds)]

    def work(frame: bytes) -> Any:
        intent = decode(frame)
        assert isinstance(intent, OrderIntentCreated)
        after = evolve(state, intent)
        d = decide(after, intent, T0)
        assert d.accepted, d.detail
        return [encode(e) for e in d.events]

    return work, frames


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=300, help="repetitions per figure")
    parser.add_argument(
        "--gaps", default=",".join(f"{g:g}" for g in GAPS_MS), help="idle gaps, ms, comma-separated"
    )
    opts = parser.parse_args()
    gaps = [float(g) for g in opts.gaps.split(",") if g]
    figures: dict[str, dict[str, float]] = {}
    for name, make in (("codec", codec_work), ("risk_gate", gate_work)):
        work, items = make(opts.rounds)
        after_idle_us(work, items, 0)  # first touch of the code paths
        row = {"warm": after_idle_us(work, items, 0)}
        say(f"{name}: warm {row['warm']} us")
        for gap in gaps:
            row[f"{gap:g}"] = after_idle_us(work, items, gap / 1000)
            say(f"{name}: after {gap:g} ms idle {row[f'{gap:g}']} us")
        figures[name] = row
    print(f"{'work':<10} {'warm us':>8}" + "".join(f" {f'{g:g} ms':>9}" for g in gaps))
    for name, row in figures.items():
        cells = "".join(f" {row[f'{g:g}'] / row['warm']:>8.1f}x" for g in gaps)
        print(f"{name:<10} {row['warm']:>8.1f}{cells}")
    print(
        json.dumps(
            {
                "units": {"time": "us", "gap": "ms"},
                **{
                    f"{name}_us": {
                        "warm": row["warm"],
                        "after_idle_ms": {k: v for k, v in row.items() if k != "warm"},
                    }
                    for name, row in figures.items()
                },
                **{
                    f"{name}_ratio_after_5ms_idle_vs_warm": round(row["5"] / row["warm"], 2)
                    for name, row in figures.items()
                    if "5" in row
                },
            }
        )
    )


if __name__ == "__main__":
    main()
