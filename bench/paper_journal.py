"""What the paper broker's start-up costs after a long history: its journal, full or compacted.

The paper broker journals every trade update and rebuilds its books from the
journal at start-up. Until the journal was compacted (see
``services/paper_broker/adapters/journal.py``) every update ever written was
replayed and every order ever placed kept in memory, so every start-up of a
shadow strategy running for months was slower and bigger than the last.

This writes the journal of ``--orders`` orders placed over ``--days`` days
(through the broker's own books: market orders filled, some in two parts,
limits filled or canceled, stops triggered and filled, and every
``--open-every``-th order a limit that stays open), then starts, each in a
fresh process (so that its peak memory is its own):

- ``full_replay``: the start-up as it was: every update applied, nothing
  forgotten, no compaction (the baseline);
- ``first_start_up``: the start-up as it is now, on that journal (the first
  one after the upgrade): the replay forgets finished orders past the window
  as it goes, then the journal is compacted;
- ``compacted``: the next start-up, from the compacted journal.

All must hold the same positions, open orders and fills of open orders, and
the compacted ones the same finished orders of the window (checked). Peak
memory is given whole and above the process's before the replay (its
interpreter and imports: what the books and the replay take). Progress
goes to stderr; stdout gets a table and, last, one JSON line with the figures
and their units.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

from harness import say  # bench/harness.py

from libs.contract.envelope import WallClock
from services.paper_broker.adapters.journal import Journal
from services.paper_broker.config import PaperConfig
from services.paper_broker.domain.book import BookConfig, OrderSpec, PaperBook
from services.paper_broker.domain.fill_model import FillModelConfig, MarketUpdate, Side

DAY_NS = 86_400 * 10**9
ACCOUNTS = ("paper-a", "paper-b")
SYMBOLS = ("AAPL", "MSFT", "NVDA", "SPY")
MODES = ("full_replay", "first_start_up", "compacted")
LABELS = {
    "full_replay": "every update (as before)",
    "first_start_up": "first, then compacted",
    "compacted": "from the compacted",
}
#: The fill model of the run: larger orders fill in two parts.
BOOK = BookConfig(fill_model=FillModelConfig(max_fill_quantity=Decimal(60)))


class Clock:
    def __init__(self, t: int) -> None:
        self.t = t

    def now_ns(self) -> int:
        return self.t


def write_journal(path: Path, orders: int, days: int, open_every: int) -> None:
    """``orders`` orders over ``days`` days ending now, journaled as the server does."""
    now = time.time_ns()
    clock = Clock(now - days * DAY_NS)
    step = days * DAY_NS // orders
    ids = itertools.count()
    book = PaperBook(BOOK, clock=clock, ids=lambda: f"{next(ids):x}-{uuid.uuid4()}")
    journal = Journal(path).open()
    price = dict.fromkeys(SYMBOLS, Decimal(100))
    for i in range(orders):
        clock.t += step
        account, symbol = ACCOUNTS[i % 2], SYMBOLS[i // 2 % len(SYMBOLS)]
        side: Side = "buy" if i // 8 % 2 else "sell"
        qty = Decimal(10 + i % 100)  # above 60: two fills
        p = price[symbol]
        kind = i % 10
        cid = f"c{i}"
        if i % open_every == 0:  # far from the market: open for good
            limit = p - 50 if side == "buy" else p + 50
            spec = OrderSpec(symbol, side, qty, "limit", "gtc", limit, client_order_id=cid)
        elif kind < 6:
            spec = OrderSpec(symbol, side, qty, client_order_id=cid)
        elif kind < 8:  # kind 6 filled when reached, kind 7 canceled before
            away = Decimal(1 if kind == 6 else 10)
            limit = p - away if side == "buy" else p + away
            spec = OrderSpec(symbol, side, qty, "limit", limit_price=limit, client_order_id=cid)
        else:
            stop = p + 1 if side == "buy" else p - 1
            spec = OrderSpec(symbol, side, qty, "stop", stop_price=stop, client_order_id=cid)
        order, updates = book.submit(account, spec)
        journal.append(updates)
        # The market goes down and up twice: limits and stops are reached,
        # orders in two parts finish.
        for move in (-2, 2, -2, 2, 0):
            journal.append(book.on_market(MarketUpdate.trade(symbol, p + move, clock.t)))
        current = book.order(account, order.id)
        if kind == 7 and current is not None and current.is_open and i % open_every:
            journal.append(book.cancel(account, order.id))
        if i % 20_000 == 19_999:
            book.forget_finished(clock.t - DAY_NS)  # the writer needs no history
            say(f"  {i + 1:,} orders journaled")
    journal.close()


def digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def _status_kb(name: str) -> int:
    return next(
        int(line.split()[1])
        for line in Path("/proc/self/status").read_text().splitlines()
        if line.startswith(f"{name}:")
    )


def child(mode: str, path: str, keep_days: float) -> None:
    """One start-up, in this process: its figures as one JSON line on stdout."""
    config = PaperConfig(journal=Path(path), journal_keep_finished_days=keep_days)
    base_kb = _status_kb("VmRSS")  # the interpreter and its imports, before the books
    started = time.perf_counter()
    book = PaperBook(BOOK, clock=WallClock(), ids=lambda: str(uuid.uuid4()))
    compact_s = 0.0
    if mode == "full_replay":
        entries = book.apply_all(Journal(Path(path)).load())
    else:
        journal = config.journal_file()
        assert journal is not None
        entries = journal.replay(book)
        compacting = time.perf_counter()
        journal.compact(book)
        compact_s = time.perf_counter() - compacting
    seconds = time.perf_counter() - started
    peak_kb = _status_kb("VmHWM")
    since = time.time_ns() - int(keep_days * DAY_NS) + 60 * 10**9  # a minute's margin
    live, recent = {}, {}
    for a in ACCOUNTS:
        open_orders = book.orders(a, "open")
        open_ids = {o.id for o in open_orders}
        live[a] = [
            book.positions(a),
            open_orders,
            [f for f in book.fills(a) if f.order_id in open_ids],
        ]
        closed = [o for o in book.orders(a, "closed") if o.updated_at_ns >= since]
        closed_ids = {o.id for o in closed}
        recent[a] = [closed, [f for f in book.fills(a) if f.order_id in closed_ids]]
    held, working = book.count_orders()
    result = {
        "seconds": seconds,
        "compact_seconds": compact_s,
        "peak_rss_mb": peak_kb / 1024,
        "base_rss_mb": base_kb / 1024,
        "entries_read": entries,
        "orders_held": held,
        "orders_open": working,
        "live": digest(live),
        "recent": digest(recent),
    }
    print(json.dumps(result))


def start_up(mode: str, path: Path, keep_days: float) -> dict[str, Any]:
    read_mb = path.stat().st_size / 2**20
    args = [sys.executable, __file__, "--child", mode, str(path), str(keep_days)]
    out = subprocess.run(args, check=True, capture_output=True, text=True, timeout=3600)
    figures: dict[str, Any] = json.loads(out.stdout.splitlines()[-1])
    figures["journal_mb"] = read_mb
    return figures


def run(opts: argparse.Namespace) -> dict[str, dict[str, Any]]:
    work = Path(tempfile.mkdtemp(prefix="tradebus-paper-journal-"))
    say(f"work directory {work}")
    try:
        full = work / "full.jsonl"
        say(f"journaling {opts.orders:,} orders over {opts.days} days")
        write_journal(full, opts.orders, opts.days, opts.open_every)
        say(f"journal: {full.stat().st_size / 2**20:.0f} MB")
        out: dict[str, dict[str, Any]] = {}
        say("start-up replaying every update (as before)")
        out["full_replay"] = start_up("full_replay", full, opts.keep_days)
        say("first start-up now: replay forgetting old finished orders, then compaction")
        out["first_start_up"] = start_up("first_start_up", full, opts.keep_days)
        say("next start-up, from the compacted journal")
        out["compacted"] = start_up("compacted", full, opts.keep_days)
        base = out["full_replay"]
        for mode in MODES[1:]:
            assert out[mode]["live"] == base["live"], f"{mode}: the same live books"
            assert out[mode]["orders_held"] < base["orders_held"], f"{mode}: old ones forgotten"
        assert out["compacted"]["recent"] == out["first_start_up"]["recent"] == base["recent"]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=100_000, help="orders in the journal")
    parser.add_argument("--days", type=int, default=100, help="days they span")
    parser.add_argument("--open-every", type=int, default=500, help="every n-th order stays open")
    parser.add_argument(
        "--keep-days",
        type=float,
        default=PaperConfig().journal_keep_finished_days,
        help="days finished orders are kept (journal_keep_finished_days)",
    )
    parser.add_argument(
        "--child", nargs=3, metavar=("MODE", "PATH", "DAYS"), help=argparse.SUPPRESS
    )
    opts = parser.parse_args()
    if opts.child:
        mode, path, keep = opts.child
        child(mode, path, float(keep))
        return
    results = run(opts)
    header = ("seconds", "entries", "orders held", "peak MB", "books MB", "journal MB")
    print(f"{'start-up':<28}" + "".join(f"{h:>13}" for h in header))
    result: dict[str, object] = {
        "orders": opts.orders,
        "days": opts.days,
        "open_every": opts.open_every,
        "keep_finished_days": opts.keep_days,
        "units": {"time": "s", "memory": "MB", "journal": "MB"},
    }
    base = results["full_replay"]
    for mode, r in results.items():
        row = (
            f"{r['seconds']:.2f}",
            f"{r['entries_read']:,}",
            f"{r['orders_held']:,}",
            f"{r['peak_rss_mb']:.0f}",
            f"{r['peak_rss_mb'] - r['base_rss_mb']:.0f}",
            f"{r['journal_mb']:.1f}",
        )
        print(f"{LABELS[mode]:<28}" + "".join(f"{v:>13}" for v in row))
        figures: dict[str, object] = {
            "start_up_s": round(r["seconds"], 3),
            "compaction_s": round(r["compact_seconds"], 3),
            "peak_rss_mb": round(r["peak_rss_mb"], 1),
            "peak_rss_above_base_mb": round(r["peak_rss_mb"] - r["base_rss_mb"], 1),
            "journal_read_mb": round(r["journal_mb"], 1),
            "entries_read": r["entries_read"],
            "orders_held": r["orders_held"],
            "orders_open": r["orders_open"],
        }
        if mode != "full_replay":
            figures["start_up_time_ratio_vs_full_replay"] = round(r["seconds"] / base["seconds"], 4)
            figures["peak_rss_ratio_vs_full_replay"] = round(
                r["peak_rss_mb"] / base["peak_rss_mb"], 3
            )
            figures["peak_rss_above_base_ratio_vs_full_replay"] = round(
                (r["peak_rss_mb"] - r["base_rss_mb"]) / (base["peak_rss_mb"] - base["base_rss_mb"]),
                3,
            )
        result[mode] = figures
    print(json.dumps(result))


if __name__ == "__main__":
    main()
