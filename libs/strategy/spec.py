"""``strategies.yaml``: what to run, validated up front, errors named by key.

::

    strategies:
      - name: sma-aapl              # unique; the subject token (strategy.intent.sma-aapl)
        kind: sma_crossover         # a built-in kind, or module:Class
        symbols: [AAPL]
        account: paper-a            # where its intents go in live mode
        mode: live                  # live | shadow
        shadow_account: null        # the paper account shadow mode routes intents to
                                    # (config check refuses one a live adapter serves)
        restart: always             # never | always (up to max_restarts)
        max_restarts: 3
        inbox_size: 1000            # bounded inbox of its task
        overflow: drop_oldest       # drop_oldest (market data only) | block
        bar_interval: 1m            # 1m | 1s | null (every interval): the bars it is shown
        max_callback_s: 1.0         # a callback running longer is stopped: a fault (null: no limit)
        params: {fast_period: 10, slow_period: 30, quantity: 100}

A key given twice in one mapping (``quantity: 100`` then ``quantity:
100000``) is refused, naming the key and its line: YAML alone would keep
the last. Every problem in the file is reported at once, each as ``path: message``
with the path spelled as in the file (``strategies[2].params.fast_period:
must be < slow_period``), and the file is refused as a whole.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from libs.contract.envelope import SymbolToken, Token
from libs.contract.options import OPTION_PREFIX, parse_option, warm_calendar
from libs.contract.sessions import CalendarError
from libs.strategy.base import ParamError, Strategy, StrategyParams
from libs.strategy.host import RestartPolicy
from libs.strategy.registry import UnknownStrategy, resolve

Mode = Literal["live", "shadow"]
#: A bar interval of the contract (``BarPayload.interval``).
BarInterval = Literal["1s", "1m"]
Overflow = Literal["drop_oldest", "block"]


def _settled(symbol: str) -> str:
    """``symbol``, unless it is an option contract tradebus cannot settle."""
    if symbol.startswith(OPTION_PREFIX):
        why = parse_option(symbol).unsupported  # a SymbolToken: it parses
        if why is not None:
            raise ValueError(f"{symbol} is not supported: {why}")
    return symbol


#: A strategy's symbol: a :data:`SymbolToken` tradebus can settle. Every
#: settlement books an option's exercise or assignment as 100 shares of its
#: root at the strike, so a cash-settled index option or an adjusted
#: contract (``OptionContract.unsupported``) is refused here, naming the key,
#: rather than traded (the risk-gate denies its orders, contract_unsupported).
StrategySymbol = Annotated[SymbolToken, AfterValidator(_settled)]


class StrategyConfigError(ValueError):
    """``strategies.yaml`` is invalid; ``problems`` holds one ``path: message`` each."""

    def __init__(self, source: str, problems: Sequence[str]) -> None:
        self.source = source
        self.problems = tuple(problems)
        super().__init__(f"{source}: " + "; ".join(self.problems))


class StrategySpec(BaseModel):
    """One entry of ``strategies``; ``params`` is checked against its kind's model."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: Token
    kind: str = Field(min_length=1)
    symbols: tuple[StrategySymbol, ...] = Field(min_length=1, max_length=500)
    account: Token
    mode: Mode = "live"
    shadow_account: Token | None = None
    restart: RestartPolicy = "never"
    max_restarts: int = Field(default=3, ge=0, le=1000)
    inbox_size: int = Field(default=1000, ge=1, le=1_000_000)
    overflow: Overflow = "drop_oldest"
    #: The bars it is shown (live, in the catch-up and for warm-up): one
    #: interval, so that its indicators never mix them (null: every interval).
    bar_interval: BarInterval | None = "1m"
    #: A callback running longer is stopped, a fault (``null``: no limit).
    max_callback_s: float | None = Field(default=1.0, gt=0, le=3600)
    params: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _shadow(self) -> StrategySpec:
        if self.mode == "shadow" and self.shadow_account is None:
            raise ParamError("shadow_account", "required when mode is shadow")
        if self.shadow_account is not None and self.shadow_account == self.account:
            raise ParamError("shadow_account", "must differ from account")
        if len(set(self.symbols)) != len(self.symbols):
            raise ParamError("symbols", "must not repeat a symbol")
        return self

    @property
    def order_account(self) -> str:
        """Where the strategy's intents go: the shadow (paper) account in shadow mode."""
        if self.mode == "shadow":
            assert self.shadow_account is not None  # checked by _shadow
            return self.shadow_account
        return self.account


class StrategiesFile(BaseModel):
    """The file's top level. Entries stay raw here: each is validated on its
    own below, so that one bad entry does not hide another's problems."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    strategies: list[dict[str, Any]]

    @field_validator("strategies")
    @classmethod
    def _not_empty(cls, value: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if not value:
            raise ValueError("must list at least one strategy")
        return value


@dataclass(frozen=True, slots=True)
class LoadedStrategy:
    """A validated entry: its spec, its class and its typed params."""

    spec: StrategySpec
    cls: type[Strategy[Any]]
    params: StrategyParams


def _path(loc: Sequence[int | str]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _problems(error: ValidationError, prefix: Sequence[int | str] = ()) -> list[str]:
    lines = []
    for err in error.errors(include_url=False, include_input=False):
        loc: list[int | str] = [*prefix, *err["loc"]]
        message = err["msg"]
        cause = (err.get("ctx") or {}).get("error")
        if isinstance(cause, ParamError):
            loc.append(cause.field)
            message = cause.message
        else:
            message = message.removeprefix("Value error, ")
        lines.append(f"{_path(loc) or '(file)'}: {message}")
    return lines


def _entry(
    i: int, raw: dict[str, Any], problems: list[str], names: dict[str, int]
) -> LoadedStrategy | None:
    """Validate one entry, adding every problem found to ``problems``."""
    where = f"strategies[{i}]"
    spec: StrategySpec | None = None
    try:
        spec = StrategySpec.model_validate(raw)
    except ValidationError as e:
        problems.extend(_problems(e, ("strategies", i)))
    name = raw.get("name")
    if isinstance(name, str):
        if name in names:
            problems.append(f"{where}.name: {name!r} is already used by strategies[{names[name]}]")
        names.setdefault(name, i)
    kind, params = raw.get("kind"), raw.get("params", {})
    if not isinstance(kind, str) or not isinstance(params, dict):
        return None  # already reported by the spec's own validation
    try:
        cls = resolve(kind)
    except UnknownStrategy as e:
        problems.append(f"{where}.kind: {e}")
        return None
    symbols = raw.get("symbols")
    if (
        cls.symbol_count is not None
        and isinstance(symbols, list)
        and symbols
        and len(symbols) != cls.symbol_count
    ):
        problems.append(
            f"{where}.symbols: {kind} needs exactly {cls.symbol_count} symbols, got {len(symbols)}"
        )
    try:
        typed = cls.params_model.model_validate(params)
    except ValidationError as e:
        problems.extend(_problems(e, ("strategies", i, "params")))
        return None
    return LoadedStrategy(spec, cls, typed) if spec is not None else None


def _warm_calendar(loaded: Sequence[tuple[int, LoadedStrategy]], problems: list[str]) -> None:
    """Warm the exchange calendar once if any strategy lists an option
    contract; if it cannot be, say so at the first one listed. Its expiry is
    asked in callbacks (ctx.expired, every emit): made ready now, not in a
    callback's watchdog time (the committed table, or the library's calendar
    past the table's reach, which each warming asks for its names)."""
    for i, entry in loaded:
        for j, symbol in enumerate(entry.spec.symbols):
            if symbol.startswith(OPTION_PREFIX):
                try:
                    warm_calendar()
                except CalendarError as e:
                    problems.append(f"strategies[{i}].symbols[{j}]: {e}")
                return


def validate_strategies(data: Any, *, source: str = "strategies") -> list[LoadedStrategy]:
    """Validate parsed ``strategies.yaml`` content; raise :class:`StrategyConfigError`."""
    try:
        parsed = StrategiesFile.model_validate(data)
    except ValidationError as e:
        raise StrategyConfigError(source, _problems(e)) from None
    problems: list[str] = []
    loaded: list[tuple[int, LoadedStrategy]] = []
    names: dict[str, int] = {}
    for i, raw in enumerate(parsed.strategies):
        entry = _entry(i, raw, problems, names)
        if entry is not None:
            loaded.append((i, entry))
    _warm_calendar(loaded, problems)
    if problems:
        raise StrategyConfigError(source, problems)
    return [entry for _, entry in loaded]


def load_strategies(path: str | Path) -> list[LoadedStrategy]:
    """Read and validate ``strategies.yaml``; raise :class:`StrategyConfigError`."""
    import yaml  # the runner's and backtest's dependency, not every service's

    from libs.yamlfile import load_yaml

    source = str(path)
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise StrategyConfigError(source, [f"cannot read: {e.strerror or e}"]) from None
    try:
        data = load_yaml(text)  # a key given twice is refused, not overwritten
    except yaml.YAMLError as e:
        raise StrategyConfigError(source, [f"not valid YAML: {e}"]) from None
    return validate_strategies(data, source=source)
