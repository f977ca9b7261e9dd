"""The config files ``tradebus up`` hands to its services, checked before any starts.

Each file is loaded by the loader of the service that reads it (the same
validation, the same messages), so that a file the service would refuse at
start-up (exit code 2, a restart loop under the supervisor) is refused here,
before anything runs, with the file and the offending key named.

:func:`settings_problems` does the same for what two services' ``TRADEBUS_*``
settings must agree on, which neither service can check alone, and
:func:`symbol_warnings` warns of what the strategies' symbols and
marketdata's ``TRADEBUS_SYMBOLS`` say of each other.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from libs.strategy.spec import LoadedStrategy
    from services.broker_gateway.config import BrokersConfig
    from services.paper_broker.config import PaperConfig
    from services.risk_gate.domain.limits import RiskLimits


@dataclass(frozen=True)
class ConfigFiles:
    """The files to check; None: not in use (that service does not run)."""

    strategies: Path | None = None
    risk: Path | None = None
    brokers: Path | None = None
    paper: Path | None = None


@dataclass(frozen=True)
class Loaded:
    """Each file's validated content; None where the file was not given or is invalid."""

    files: ConfigFiles
    strategies: list[LoadedStrategy] | None = None
    risk: RiskLimits | None = None
    brokers: BrokersConfig | None = None
    paper: PaperConfig | None = None
    #: One entry per invalid file: ``<file> is invalid:`` then a line per problem.
    problems: tuple[str, ...] = ()


def _invalid(path: Path, lines: list[str]) -> str:
    return "\n".join([f"{path} is invalid:", *(f"  {line}" for line in lines)])


def _without_path(path: Path, message: str) -> str:
    return message.removeprefix(f"{path}: ")


T = TypeVar("T")


def _load(
    path: Path, read: Callable[[Path], T], error: type[Exception], problems: list[str]
) -> T | None:
    """``read(path)``; None if it raises ``error`` (the file is invalid), whose
    problems are added to ``problems`` as one entry, every line under the file."""
    try:
        return read(path)
    except error as e:
        # StrategyConfigError lists its problems; the others' message says them
        # a line each. A YAML syntax error takes several lines of its own.
        messages = getattr(e, "problems", None) or [str(e)]
        lines = [_without_path(path, line) for m in messages for line in m.splitlines()]
        problems.append(_invalid(path, lines))
        return None


def load_configs(files: ConfigFiles) -> Loaded:
    """Load and validate every file given, collecting every file's problems.
    A loader is imported only when its file is given (``config check --risk``
    needs no strategy code)."""
    problems: list[str] = []
    strategies = risk = brokers = paper = None
    if files.strategies is not None:
        from libs.strategy.spec import StrategyConfigError, load_strategies

        strategies = _load(files.strategies, load_strategies, StrategyConfigError, problems)
    if files.risk is not None:
        from services.risk_gate.config import RiskConfigError, load_limits

        risk = _load(files.risk, load_limits, RiskConfigError, problems)
    if files.brokers is not None:
        from libs.config import ConfigError
        from services.broker_gateway.config import load_brokers_config

        brokers = _load(files.brokers, load_brokers_config, ConfigError, problems)
    if files.paper is not None:
        from libs.config import ConfigError
        from services.paper_broker.config import load_paper_config

        paper = _load(files.paper, load_paper_config, ConfigError, problems)
    return Loaded(files, strategies, risk, brokers, paper, tuple(problems))


@dataclass(frozen=True)
class CrossCheck:
    """What the files say about each other: ``problems`` refuse a start (the
    order path would deny or strand every order of a strategy or account),
    ``notes`` are worth knowing and harmless as things are."""

    problems: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()


def cross_check(loaded: Loaded, *, paper_url: bool = True, now_ns: int | None = None) -> CrossCheck:
    """Check the valid files of ``loaded`` against each other.

    - every strategy has limits in risk.yaml, and its orders' account
      (``account``, or ``shadow_account`` in shadow mode) is one of the two
      risk.yaml gives it: else the risk-gate denies every intent of it
      (``unknown_strategy`` / ``unknown_account``); where those limits list
      symbols, they list each of the strategy's: else every order of it in
      that symbol is denied (``max_symbol_position``);
    - a broker in brokers.yaml serves that account: else no gateway takes
      the orders the gate approves;
    - a ``shadow_account`` (of strategies.yaml, or of a strategy's limits in
      risk.yaml) that a broker of brokers.yaml serves is served by the paper
      adapter: shadow mode is trading on live data without real money, and
      neither the strategy-runner nor the risk-gate reads brokers.yaml to
      see it (:func:`_live_shadow_accounts`);
    - a broker serves every risk.yaml account, except one that risk.yaml
      names only as the live ``account`` of strategies that have a
      ``shadow_account`` (a strategy not live yet; a note);
    - each paper account of brokers.yaml is an account of paper.yaml, with
      the same key variables, and (unless ``paper_url`` is false: ``tradebus
      up`` points the gateway at its own paper broker) its URL's port is the
      one paper.yaml serves on: else the gateway cannot log in to it.

    With ``now_ns`` (``config check`` gives the wall clock's), a strategy's
    option contract already past its expiry at ``now_ns`` is a note: the
    file stays valid (a backtest replays a past contract's own days), but
    live the risk-gate denies every order of the strategy's in it.
    """
    problems: list[str] = []
    notes: list[str] = []
    files = loaded.files
    strategies, risk, brokers = loaded.strategies, loaded.risk, loaded.brokers
    served = set(brokers.accounts) if brokers is not None else set()
    #: Accounts a strategy sends orders to that no broker serves (reported once).
    stranded: set[str] = set()
    for strategy in strategies or []:
        spec = strategy.spec
        if now_ns is not None:
            notes += _expired_contracts(spec.name, spec.symbols, files, now_ns)
        account = spec.order_account
        field = "shadow_account" if spec.mode == "shadow" else "account"
        sends = (
            f"strategy {spec.name} sends its orders to account {account} "
            f"({field} in {files.strategies})"
        )
        if risk is not None:
            limits = risk.strategies.get(spec.name)
            if limits is None:
                problems.append(
                    f"strategy {spec.name} ({files.strategies}) has no limits in {files.risk}: "
                    f"the risk-gate would deny every intent of it (unknown_strategy). Add "
                    f"strategies.{spec.name} to {files.risk}, or remove it from {files.strategies}"
                )
            elif account not in (limits.account, limits.shadow_account):
                allowed = f"account {limits.account}" + (
                    f" and shadow_account {limits.shadow_account}" if limits.shadow_account else ""
                )
                problems.append(
                    f"{sends}, but {files.risk} gives it {allowed}: the risk-gate would deny "
                    f"every intent of it (unknown_account). Make the two files agree"
                )
            if limits is not None and limits.symbols is not None:
                for symbol in spec.symbols:
                    if symbol not in limits.symbols:
                        problems.append(
                            f"strategy {spec.name} ({files.strategies}) trades {symbol}, which "
                            f"its limits in {files.risk} do not list: the risk-gate would deny "
                            f"every order of it in {symbol} (max_symbol_position). Add "
                            f"strategies.{spec.name}.symbols.{symbol} to {files.risk} "
                            f"(max_position: 0 for a symbol it only watches), or remove it "
                            f"from {files.strategies}"
                        )
        if brokers is not None:
            if account not in served:
                stranded.add(account)
                problems.append(
                    f"{sends}, which no broker in {files.brokers} serves: no broker-gateway "
                    f"would take its orders. Add accounts.{account} to {files.brokers}, or "
                    f"give the strategy an account it serves"
                )
            other = spec.account if spec.mode == "shadow" else spec.shadow_account
            # An account with risk limits gets its own note below.
            in_risk = risk is not None and other in risk.accounts
            if other is not None and other != account and other not in served and not in_risk:
                notes.append(
                    f"strategy {spec.name} names account {other} too, which no broker in "
                    f"{files.brokers} serves: harmless while it is in {spec.mode} mode"
                )
    if risk is not None and brokers is not None:
        for account in risk.accounts:
            if account in served or account in stranded:
                continue
            naming = [
                (name, limits)
                for name, limits in risk.strategies.items()
                if account in (limits.account, limits.shadow_account)
            ]
            if naming and all(
                limits.account == account and limits.shadow_account not in (None, account)
                for _, limits in naming
            ):
                names = ", ".join(name for name, _ in naming)
                one = len(naming) == 1
                notes.append(
                    f"account {account} ({files.risk}) has no broker in {files.brokers}; only "
                    f"{names} name{'s' if one else ''} it, as the live account beside a "
                    f"shadow_account: fine while {'it runs' if one else 'they run'} in shadow "
                    f"mode, add it to {files.brokers} before going live"
                )
                continue
            problems.append(
                f"account {account} has limits in {files.risk} but no broker in "
                f"{files.brokers} serves it: what the risk-gate approves or flattens there "
                f"would reach no broker. Add accounts.{account} to {files.brokers}, or remove "
                f"it from {files.risk}"
            )
    if brokers is not None:
        adapters = {name: section.adapter for name, section in brokers.accounts.items()}
        problems += _live_shadow_accounts(files, strategies, risk, adapters)
    if brokers is not None and loaded.paper is not None:
        problems += _paper_problems(files, brokers, loaded.paper, paper_url=paper_url)
    return CrossCheck(tuple(problems), tuple(notes))


#: The adapter of a broker that books no real trade (services/paper_broker).
PAPER_ADAPTER = "paper"


def _live_shadow_accounts(
    files: ConfigFiles,
    strategies: Sequence[LoadedStrategy] | None,
    risk: RiskLimits | None,
    adapters: Mapping[str, str],
) -> list[str]:
    """A problem per ``shadow_account`` that ``adapters`` (account -> its
    adapter in brokers.yaml) serve with another adapter than paper: in
    shadow mode the strategy's orders go there, and would trade real money.
    Named whatever the strategy's mode, since turning a live strategy to
    shadow is a one-word edit. An account no broker serves is reported
    (or noted) by :func:`cross_check` itself."""
    named: list[tuple[str, str, str, Path | None]] = [
        (s.spec.name, s.spec.shadow_account, f"strategies[{i}].shadow_account", files.strategies)
        for i, s in enumerate(strategies or [])
        if s.spec.shadow_account is not None
    ]
    named += [
        (name, limits.shadow_account, f"strategies.{name}.shadow_account", files.risk)
        for name, limits in (risk.strategies.items() if risk is not None else ())
        if limits.shadow_account is not None
    ]
    problems = []
    for name, account, key, path in named:
        adapter = adapters.get(account)
        if adapter is None or adapter == PAPER_ADAPTER:
            continue
        problems.append(
            f"strategy {name}'s shadow_account {account} ({key} in {path}) is served by "
            f"adapter {adapter!r} (accounts.{account}.adapter in {files.brokers}), not "
            f"{PAPER_ADAPTER!r}: shadow mode sends the strategy's orders there, so they "
            f"would trade real money. Name a paper account"
        )
    return problems


def _expired_contracts(
    name: str, symbols: Collection[str], files: ConfigFiles, now_ns: int
) -> list[str]:
    """A note per option contract of strategy ``name`` expired at ``now_ns``."""
    from libs.contract.options import OPTION_PREFIX, parse_option

    notes = []
    for symbol in symbols:
        if not symbol.startswith(OPTION_PREFIX):
            continue
        contract = parse_option(symbol)  # the loader took it: it parses
        if contract.expired_by(now_ns):
            notes.append(
                f"strategy {name} ({files.strategies}) trades {symbol}, which "
                f"{contract.expired_text}: live, the risk-gate would deny its orders in it, "
                f"a close included (contract_expired). Fine for a backtest of its days; "
                f"replace it to trade live"
            )
    return notes


def _paper_problems(
    files: ConfigFiles, brokers: BrokersConfig, paper: PaperConfig, *, paper_url: bool
) -> list[str]:
    """What keeps the gateway from logging in to the paper broker of ``paper``."""
    problems = []
    for name, section in brokers.accounts.items():
        if section.adapter != PAPER_ADAPTER:
            continue
        account = paper.accounts.get(name)
        if account is None:
            problems.append(
                f"account {name} ({files.brokers}) is a paper account, but {files.paper} has no "
                f"account {name}: the paper broker would refuse the gateway's login, or book its "
                f"orders in another account. Add accounts.{name} to {files.paper}, or make the "
                f"two files name it alike"
            )
            continue
        for key, what in (("key_id_env", "key id"), ("secret_key_env", "secret key")):
            ours, theirs = getattr(section.credentials, key), getattr(account, key)
            if ours != theirs:
                problems.append(
                    f"account {name} logs in with the {what} in {ours} "
                    f"(accounts.{name}.credentials.{key} in {files.brokers}), but {files.paper} "
                    f"reads it from {theirs} (accounts.{name}.{key}): the paper broker would "
                    f"refuse the login unless both hold the same value. Name the same variable "
                    f"in both"
                )
        url = urlsplit(section.url)
        port = url.port if url.port is not None else (443 if url.scheme == "wss" else 80)
        if paper_url and paper.port and port != paper.port:
            problems.append(
                f"account {name} connects to {section.url} (accounts.{name}.url in "
                f"{files.brokers}), but {files.paper} serves on port {paper.port}: the gateway "
                f"would not reach the paper broker. Make the two ports agree"
            )
    return problems


def summary(loaded: Loaded) -> list[str]:
    """A line per valid file: its path and what it holds."""
    out = []
    if loaded.strategies is not None:
        out.append(f"{loaded.files.strategies}: ok ({_count(len(loaded.strategies), 'strategy')})")
    if loaded.risk is not None:
        accounts = _count(len(loaded.risk.accounts), "account")
        strategies = _count(len(loaded.risk.strategies), "strategy")
        out.append(f"{loaded.files.risk}: ok ({accounts}, {strategies})")
    if loaded.brokers is not None:
        out.append(
            f"{loaded.files.brokers}: ok ({_count(len(loaded.brokers.accounts), 'account')})"
        )
    if loaded.paper is not None:
        out.append(f"{loaded.files.paper}: ok ({_count(len(loaded.paper.accounts), 'account')})")
    return out


def _count(n: int, what: str) -> str:
    plural = what[:-1] + "ies" if what.endswith("y") else what + "s"
    return f"{n} {what if n == 1 else plural}"


def settings_problems(services: Collection[str]) -> list[str]:
    """What the settings of ``services`` (names of ``services.stack.wiring.SERVICES``),
    read from this process's environment as each service reads it (its
    default where a variable is unset), say against each other; a line each.

    - The recorder's ``TRADEBUS_STREAM_KEEP_S`` must be longer than the
      broker-gateway's ``TRADEBUS_MAX_SUBMIT_DELAY_S``: a recreated command
      consumer starts that far back, and the recorder may trim anything
      older than the keep window from the stream (unless it does not trim:
      ``TRADEBUS_TRIM_EVERY_S`` 0 or less).

    A value that one of the services refuses on its own is left to it (it
    exits 2 naming the variable when it starts): nothing is compared then.
    """
    if not {"recorder", "broker-gateway"} <= set(services):
        return []
    from libs.config import ConfigError, load_settings
    from services.broker_gateway.config import GatewaySettings
    from services.recorder.config import RecorderSettings

    try:
        recorder = load_settings(RecorderSettings)
        gateway = load_settings(GatewaySettings)
    except ConfigError:
        return []
    keep, delay = recorder.stream_keep_s, gateway.max_submit_delay_s
    if recorder.trim_every_s <= 0 or keep > delay:
        return []
    # The defaults (two days, 30 s) and bounds (at least 120 s, at most a day)
    # are such that only two values set on purpose can disagree.
    return [
        f"the recorder's TRADEBUS_STREAM_KEEP_S={keep:g} must be longer than the "
        f"broker-gateway's TRADEBUS_MAX_SUBMIT_DELAY_S={delay:g}: a recreated command "
        "consumer replays that far back, and would miss the commands trimmed from the "
        "stream. Raise the first or lower the second"
    ]


def marketdata_symbols() -> tuple[str, ...] | None:
    """The symbols marketdata subscribes to, read from this process's
    environment as marketdata reads it (``TRADEBUS_SYMBOLS``, else its
    default); None if marketdata would refuse its environment (it exits 2
    naming the variable when it starts)."""
    from libs.config import ConfigError, load_settings
    from services.marketdata.config import MarketdataSettings

    try:
        return load_settings(MarketdataSettings).symbol_list
    except ConfigError:
        return None


def _share_class(symbol: str) -> str:
    """``symbol`` with its share-class separator written as a dot: ``BRK/B`` -> ``BRK.B``."""
    return symbol.replace("/", ".")


def symbol_warnings(
    strategies: Sequence[LoadedStrategy] | None,
    files: ConfigFiles,
    subscribed: Sequence[str] | None,
) -> list[str]:
    """What the strategies' symbols and marketdata's (``subscribed``, None:
    unknown) say of each other; a line each, a warning: nothing refuses them.

    - a strategy trades a symbol marketdata does not subscribe to: it would be
      shown no market data of it (``tradebus up`` subscribes to the
      strategies' symbols itself; docker compose and production read
      ``TRADEBUS_SYMBOLS``); or options on an underlying it does not
      subscribe to: the shares an exercise books would be marked by nothing
      (``tradebus up`` subscribes to those underlyings too);
    - two symbols differ only by the share-class separator (``BRK.B``,
      ``BRK/B``): the contract takes both, and every subject, limit and book
      takes them as two symbols, so the one the feed does not name gets no
      data and the risk-gate keeps two positions of the same shares.
    """
    from libs.contract.options import underlyings

    warnings: list[str] = []
    #: Each symbol named, and who names it, in the order first named.
    named: dict[str, list[str]] = {}
    if subscribed is not None:
        variable = "TRADEBUS_SYMBOLS"
        where = (
            f"{variable}={','.join(subscribed)}"
            if variable in os.environ
            else f"marketdata's default {','.join(subscribed)}: {variable} is not set"
        )
        for symbol in subscribed:
            named.setdefault(symbol, []).append(variable)
    for strategy in strategies or []:
        spec = strategy.spec
        for symbol in spec.symbols:
            named.setdefault(symbol, []).append(f"strategy {spec.name}")
            if subscribed is not None and symbol not in subscribed:
                warnings.append(
                    f"strategy {spec.name} ({files.strategies}) trades {symbol}, which "
                    f"marketdata does not subscribe to ({where}): it would be shown no "
                    f"market data of it. Add {symbol} to marketdata's TRADEBUS_SYMBOLS"
                )
        if subscribed is not None:
            for root in underlyings(spec.symbols):
                if root not in subscribed:
                    warnings.append(
                        f"strategy {spec.name} ({files.strategies}) trades options on "
                        f"{root}, which marketdata does not subscribe to ({where}): the "
                        f"shares an exercise or assignment books would be marked by "
                        f"nothing, in the risk-gate or the strategy's books. Add {root} to "
                        f"marketdata's TRADEBUS_SYMBOLS"
                    )
    spellings: dict[str, list[str]] = {}
    for symbol in named:
        spellings.setdefault(_share_class(symbol), []).append(symbol)
    for alike in spellings.values():
        if len(alike) < 2:
            continue
        each = " and ".join(f"{symbol} ({', '.join(named[symbol])})" for symbol in alike)
        warnings.append(
            f"{each} differ only by the share-class separator: market data, the "
            f"risk-gate and the books take them as {len(alike)} symbols, so the one the feed "
            f"does not name gets no data and a position in one is not netted with the "
            f"other. Write them alike, as the feed names them (Polygon: "
            f"{_share_class(alike[0])})"
        )
    return warnings
