"""``tradebus risk-gate …`` and the risk operator commands.

- ``tradebus risk-gate run --config risk.yaml``: the gate itself;
  ``risk-gate check --config risk.yaml`` validates a limits file.
- ``tradebus kill-switch on|off --reason TEXT``: publishes
  ``KillSwitchEngaged`` / ``KillSwitchReleased`` on ``control.killswitch``
  (the operator NATS user may; nobody else can).
- ``tradebus risk resume ACCOUNT|global --reason TEXT``: asks the gate to
  return a halted (or reducing) scope to active.
- ``tradebus risk status [--config risk.yaml] [--json]``: trading states,
  kill switch, caps and their use, rebuilt from the event store, and the
  positions whose day P&L rests on a price older than ``max_mark_age_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import json
import logging
import os
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from libs.cli import add_replay_command, err, fail, reads_store, settings_or_exit
from libs.config import ServiceSettings
from libs.contract.envelope import Event, WallClock
from libs.tables import money, out, table

app = typer.Typer(help="The risk-gate: the only publisher of order commands.")
kill_switch_app = typer.Typer(help="The global kill switch: no new order passes while it is on.")
risk_app = typer.Typer(help="Risk operator commands: resume trading, show risk status.")

add_replay_command(app, "risk-gate", default_subject="risk.>")

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        help="Risk limits file (default: $TRADEBUS_RISK_CONFIG)",
        dir_okay=False,
    ),
]


def _reason(text: str) -> str:
    if not text.strip():
        raise typer.BadParameter("give the reason in words; it is recorded with the event")
    return text.strip()


ReasonOption = Annotated[
    str, typer.Option("--reason", help="Why (recorded with the event)", callback=_reason)
]
OperatorOption = Annotated[
    str | None, typer.Option("--operator", help="Who (default: $USER)", show_default=False)
]


def _limits_path(config: Path | None, required: bool) -> Path | None:
    from services.risk_gate.config import RiskGateSettings

    path = config or settings_or_exit(RiskGateSettings).risk_config
    if path is None and required:
        err.print("[red]error:[/red] no risk limits file: give --config or TRADEBUS_RISK_CONFIG")
        raise typer.Exit(2)
    return path


def _load(path: Path) -> Any:
    from services.risk_gate.config import RiskConfigError, load_limits

    try:
        return load_limits(path)
    except RiskConfigError as e:
        err.print("[red]error:[/red] invalid risk limits:")
        err.print(str(e), markup=False, highlight=False)
        raise typer.Exit(2) from e


@app.command("run")
def run(config: ConfigOption = None) -> None:
    """Gate every order intent until stopped (SIGTERM)."""
    from services.risk_gate.config import RiskGateSettings
    from services.risk_gate.main import main

    settings = settings_or_exit(RiskGateSettings)
    path = _limits_path(config, required=True)
    assert path is not None
    _load(path)  # refuse a bad file before anything starts
    raise typer.Exit(main(settings, path))


@app.command("checkpoint")
def checkpoint(
    config: ConfigOption = None,
    min_events: Annotated[
        int, typer.Option("--min-events", min=1, help="Write only if this many events are new")
    ] = 1,
) -> None:
    """Fold the event store into a new risk-state checkpoint (a restarted gate
    then folds only the events after it). The gate runs this itself every
    TRADEBUS_CHECKPOINT_EVERY_S; it runs at low priority."""
    from libs.store.errors import StoreUnavailable
    from services.risk_gate.adapters.store import rebuild
    from services.risk_gate.config import RiskGateSettings
    from services.risk_gate.domain.state import RiskState

    with contextlib.suppress(OSError):
        os.nice(10)  # behind the order path
    settings = settings_or_exit(RiskGateSettings)
    path = _limits_path(config, required=True)
    assert path is not None
    limits = _load(path)

    def progress(folded: int, seq: int, last: int) -> None:
        err.print(f"folded {folded:,} events, at sequence {seq:,} of {last:,}")

    started = time.perf_counter()
    try:
        rebuilt = asyncio.run(
            rebuild(
                settings.database_url.get_secret_value(),
                RiskState.initial(limits),
                write_checkpoint=True,
                checkpoint_after=min_events,
                progress=progress,
            )
        )
    except StoreUnavailable as e:
        fail(e, 1)
    origin = (
        f"the checkpoint at {rebuilt.from_checkpoint:,}"
        if rebuilt.from_checkpoint is not None
        else "the start"
    )
    took = time.perf_counter() - started
    if rebuilt.wrote_checkpoint:
        print(
            f"checkpoint at sequence {rebuilt.last_seq:,}: {rebuilt.folded:,} events folded "
            f"from {origin} in {took:.1f}s ({rebuilt.events:,} in all)"
        )
    else:
        print(
            f"no new checkpoint: {rebuilt.folded:,} events after {origin}, "
            f"fewer than --min-events {min_events:,} (store at {rebuilt.last_seq:,})"
        )


@app.command("check")
def check(config: ConfigOption = None) -> None:
    """Validate a risk limits file and summarise it."""
    path = _limits_path(config, required=True)
    assert path is not None
    limits = _load(path)
    print(
        f"{path}: ok, {len(limits.accounts)} accounts, {len(limits.strategies)} strategies "
        f"({', '.join(sorted(limits.strategies)) or 'none'})"
    )


# ---------------------------------------------------------------- operator


def _operator(name: str | None) -> str:
    who = name or os.environ.get("USER") or getpass.getuser()
    if not who:
        err.print("[red]error:[/red] no operator name: give --operator")
        raise typer.Exit(2)
    return who


#: How long an operator command waits for JetStream to store its event.
PUBLISH_TIMEOUT_S = 10.0


def _publish(event: Event) -> None:
    """Publish ``event`` and wait for JetStream to store it, or exit 1 saying
    why, naming the server."""
    from libs.bus.client import Bus
    from libs.bus.errors import BusError, BusUnavailable, NoStream
    from libs.config import masked_url
    from libs.contract.subjects import subject_for

    settings = settings_or_exit(ServiceSettings)
    shown = masked_url(settings.nats_url)
    # The bus logs every failed connection attempt; the command reports once.
    logging.getLogger("libs.bus.client").setLevel(logging.CRITICAL)

    async def go() -> None:
        bus = await Bus.connect(
            settings.nats_url,
            name=f"operator/{settings.instance}",
            user=settings.nats_user,
            password=settings.nats_password.get_secret_value() if settings.nats_password else None,
            first_connect_deadline_s=settings.command_connect_timeout_s,
        )
        async with bus:
            # No stream there is the server's answer, not its silence: say so.
            await bus.publish(event, deadline_s=PUBLISH_TIMEOUT_S, wait_for_stream=False)
            stored.append(event)

    # Each phase has its deadline; this bounds what is left (the close's drain).
    bound_s = settings.command_connect_timeout_s + PUBLISH_TIMEOUT_S + 2
    stored: list[Event] = []

    async def bounded() -> None:
        async with asyncio.timeout(bound_s):
            await go()

    try:
        asyncio.run(bounded())
    except NoStream:
        fail(
            f"{event.type} NOT published: no JetStream stream at NATS {shown} stores "
            f"{subject_for(event)} (is NATS_URL the one `tradebus up` printed?)",
            1,
        )
    except BusUnavailable as e:
        hint = (
            " (is NATS_URL the one `tradebus up` printed?)"
            if isinstance(e.__cause__, ConnectionRefusedError)
            else ""
        )
        fail(f"{event.type} NOT published: {e}{hint}", 1)
    except TimeoutError:
        if not stored:  # else only the close was slow: the event is in the stream
            fail(
                f"{event.type} NOT published: NATS at {shown} did not answer within {bound_s:g}s", 1
            )
    except BusError as e:
        fail(
            f"{event.type} NOT published: NATS at {shown} did not store it within "
            f"{PUBLISH_TIMEOUT_S:g}s ({type(e).__name__}: {e})",
            1,
        )


@kill_switch_app.command("on")
def kill_switch_on(reason: ReasonOption, operator: OperatorOption = None) -> None:
    """Engage the kill switch: every account's orders are canceled and positions
    flattened, trading halts, and no new order passes until it is off and
    trading is resumed (``tradebus risk resume global``)."""
    from libs.contract.events import KillSwitchEngaged, OperatorActionPayload

    who = _operator(operator)
    event = KillSwitchEngaged.create(
        OperatorActionPayload(operator=who, reason=reason),
        source=f"operator/{who}",
        clock=WallClock(),
    )
    _publish(event)
    print(f"kill switch ENGAGED by {who}: {reason} (event {event.id})")


@kill_switch_app.command("off")
def kill_switch_off(reason: ReasonOption, operator: OperatorOption = None) -> None:
    """Release the kill switch. Trading stays halted until ``risk resume global``."""
    from libs.contract.events import KillSwitchReleased, OperatorActionPayload

    who = _operator(operator)
    event = KillSwitchReleased.create(
        OperatorActionPayload(operator=who, reason=reason),
        source=f"operator/{who}",
        clock=WallClock(),
    )
    _publish(event)
    print(f"kill switch released by {who}: {reason} (event {event.id})")
    print("trading stays halted until: tradebus risk resume global --reason ...")


def _scope_token(scope: str) -> str:
    """A scope is a subject token; a bad one is a usage error naming ACCOUNT
    (click's "Invalid value for 'ACCOUNT'"), as the options' errors name them."""
    from libs.contract.subjects import SubjectError, token

    try:
        token(scope)
    except SubjectError as e:
        raise typer.BadParameter(str(e)) from e
    return scope


@risk_app.command("resume")
def resume(
    scope: Annotated[
        str,
        typer.Argument(
            help="An account name, or 'global'", metavar="ACCOUNT", callback=_scope_token
        ),
    ],
    reason: ReasonOption,
    operator: OperatorOption = None,
) -> None:
    """Ask the risk-gate to return a halted or reducing account (or everything) to active."""
    from libs.contract.events import ResumePayload, TradingResumeRequested

    who = _operator(operator)
    event = TradingResumeRequested.create(
        ResumePayload(operator=who, reason=reason, scope=scope),
        source=f"operator/{who}",
        clock=WallClock(),
    )
    _publish(event)
    print(f"resume of {scope} requested by {who}: {reason} (event {event.id})")


@risk_app.command("status")
@reads_store
def status(
    config: ConfigOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object")] = False,
) -> None:
    """Trading states, kill switch, caps and their use, rebuilt from the event store."""
    from services.risk_gate.adapters.store import rebuild
    from services.risk_gate.config import RiskGateSettings
    from services.risk_gate.domain.limits import RiskLimits
    from services.risk_gate.domain.state import RiskState
    from services.risk_gate.domain.status import summarize

    settings = settings_or_exit(RiskGateSettings)
    path = _limits_path(config, required=False)
    limits = _load(path) if path is not None else RiskLimits()
    # An unusable store ends it with one line: reads_store.
    rebuilt = asyncio.run(
        rebuild(settings.database_url.get_secret_value(), RiskState.initial(limits))
    )
    summary = {"as_of_seq": rebuilt.last_seq, **summarize(rebuilt.state, time.time_ns())}
    if as_json:
        print(json.dumps(summary, default=str))
        return
    _print_status(summary, limits_given=path is not None)


def _print_status(s: dict[str, Any], *, limits_given: bool) -> None:
    ks = s["kill_switch"]
    out.print(f"risk status as of store sequence {s['as_of_seq']}, trading day {s['trading_day']}")
    if ks["engaged"]:
        # The operator's own words: printed as written, never read as markup.
        out.print(
            f"[bold red]KILL SWITCH ON[/bold red] by {escape(str(ks['operator']))}: "
            f"{escape(str(ks['reason']))}"
        )
    else:
        out.print("kill switch off")
    states = table("scope", "state", "reason", title="trading states")
    for scope, st in s["trading_states"].items():
        color = {"active": "green", "reducing": "yellow", "halted": "red"}[st["state"]]
        states.add_row(scope, f"[{color}]{st['state']}[/{color}]", escape(st["reason"]))
    out.print(states)
    accounts = table(
        "account",
        "state",
        "broker",
        "day P&L",
        "loss limit",
        "used",
        "open orders",
        "orders/window",
        "positions",
        title="accounts",
    )
    for name, a in s["accounts"].items():
        rate = a["rate"]
        accounts.add_row(
            name,
            a["state"],
            a["broker_connection"] or "-",
            money(a["day_pnl"]),
            money(a["daily_loss_limit"]) or "-",
            _pct(a["daily_loss_used"]),
            str(a["open_orders"]),
            f"{rate['orders_in_window']}/{rate['max_orders']}" if rate.get("max_orders") else "-",
            ", ".join(f"{k} {v}" for k, v in a["positions"].items()) or "-",
        )
    out.print(accounts)
    for name, a in s["accounts"].items():
        if a["stale_marks"]:
            marks = ", ".join(_stale(sym, m) for sym, m in a["stale_marks"].items())
            out.print(
                f"[yellow]{escape(name)}: day P&L marks a position at a stale price "
                f"(the breaker counts it all the same): {marks}[/yellow]"
            )
    strategies = table(
        "strategy",
        "account",
        "gross notional",
        "cap",
        "used",
        "open orders",
        "orders/window",
        "positions (qty/max)",
        title="strategies",
    )
    for name, st in s["strategies"].items():
        rate = st["rate"]
        for account, a in st["accounts"].items():
            strategies.add_row(
                name,
                account,
                money(a["gross_notional"]),
                money(a["max_gross_notional"]),
                _pct(a["gross_used"]),
                str(a["open_orders"]),
                f"{rate['orders_in_window']}/{rate['max_orders']}"
                if rate.get("max_orders")
                else "-",
                ", ".join(f"{k} {v['quantity']}/{v['max']}" for k, v in a["positions"].items())
                or "-",
            )
    out.print(strategies)
    if not limits_given:
        out.print("[dim](no --config: caps not shown)[/dim]")
    pending = s["pending"]
    if pending["intents"] or pending["orders"] or pending["reactions"]:
        out.print(f"pending in the gate: {pending}")


def _stale(symbol: str, mark: dict[str, Any]) -> str:
    """One entry of ``status``'s ``stale_marks``, for a trader to read."""
    age, limit = mark["age_s"], mark["max_age_s"]
    if age is None:
        return f"{escape(symbol)} no price (not counted)"
    where = f"stamped {age.lstrip('-')}s ahead" if age.startswith("-") else f"{age}s old"
    return f"{escape(symbol)} {where} (max {limit:g}s)"


def _pct(used: str | None) -> str:
    return "-" if used is None else f"{float(used):.1%}"


def register(root: typer.Typer) -> None:
    """Operator commands owned by the risk side (kill-switch, risk resume/status)."""
    root.add_typer(kill_switch_app, name="kill-switch")
    root.add_typer(risk_app, name="risk")
