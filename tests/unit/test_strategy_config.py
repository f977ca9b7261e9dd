"""strategies.yaml: the shipped file loads; every bad key is refused by name."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from libs.strategy.examples.pairs import PairsTrade
from libs.strategy.examples.sma_crossover import SmaCrossover, SmaCrossoverParams
from libs.strategy.spec import StrategyConfigError, load_strategies, validate_strategies

ROOT = Path(__file__).resolve().parents[2]
DEPLOYED = ROOT / "deploy" / "config" / "strategies.yaml"


def entry(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "name": "sma",
        "kind": "sma_crossover",
        "symbols": ["AAPL"],
        "account": "paper",
        "params": {"fast_period": 5, "slow_period": 20},
    }
    return {**base, **overrides}


def problems(*entries: dict[str, Any]) -> tuple[str, ...]:
    with pytest.raises(StrategyConfigError) as info:
        validate_strategies({"strategies": list(entries)})
    return info.value.problems


def test_the_deployed_file_loads_the_four_examples_on_the_demo_symbols() -> None:
    loaded = load_strategies(DEPLOYED)
    by_name = {s.spec.name: s for s in loaded}
    assert len(loaded) == 4
    assert {s.spec.kind for s in loaded} == {
        "sma_crossover",
        "opening_range_breakout",
        "bollinger_reversion",
        "pairs_trade",
    }
    assert {sym for s in loaded for sym in s.spec.symbols} == {"AAPL", "MSFT", "NVDA", "SPY"}
    sma = by_name["sma-aapl"]
    assert sma.cls is SmaCrossover
    assert isinstance(sma.params, SmaCrossoverParams)
    assert sma.params.slow_period == 20
    shadow = by_name["bb-nvda"].spec
    assert (shadow.mode, shadow.account, shadow.order_account) == ("shadow", "alpaca", "paper")
    assert by_name["pairs-msft-aapl"].cls is PairsTrade


def test_a_cross_field_param_error_names_the_field_and_the_entry() -> None:
    good = entry()
    bad = entry(name="bad", params={"fast_period": 30, "slow_period": 20})
    assert problems(good, entry(name="two"), bad) == (
        "strategies[2].params.fast_period: must be < slow_period",
    )


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"kind": "no_such"}, "strategies[0].kind: unknown strategy 'no_such'"),
        ({"kind": "os:path"}, "strategies[0].kind: 'os:path' is not a Strategy subclass"),
        ({"colour": "red"}, "strategies[0].colour: Extra inputs are not permitted"),
        ({"params": {"fast": 3}}, "strategies[0].params.fast: Extra inputs are not permitted"),
        (
            {"params": {"quantity": -1}},
            "strategies[0].params.quantity: Input should be greater than 0",
        ),
        ({"mode": "shadow"}, "strategies[0].shadow_account: required when mode is shadow"),
        (
            {"mode": "shadow", "shadow_account": "paper"},
            "strategies[0].shadow_account: must differ from account",
        ),
        ({"mode": "paper"}, "strategies[0].mode: Input should be 'live' or 'shadow'"),
        ({"restart": "sometimes"}, "strategies[0].restart: Input should be 'never' or 'always'"),
        ({"inbox_size": 0}, "strategies[0].inbox_size: Input should be greater than or equal to 1"),
        ({"max_callback_s": 0}, "strategies[0].max_callback_s: Input should be greater than 0"),
        ({"bar_interval": "5m"}, "strategies[0].bar_interval: Input should be '1s' or '1m'"),
        ({"max_callback_s": "x"}, "strategies[0].max_callback_s: Input should be a valid number"),
        ({"symbols": []}, "strategies[0].symbols: Tuple should have at least 1 item"),
        ({"symbols": ["AAPL", "AAPL"]}, "strategies[0].symbols: must not repeat a symbol"),
        ({"name": "has space"}, "strategies[0].name: String should match pattern"),
        (
            {"kind": "pairs_trade", "params": {}},
            "strategies[0].symbols: pairs_trade needs exactly 2 symbols, got 1",
        ),
        (
            {"kind": "pairs_trade", "symbols": ["A", "B"], "params": {"entry_z": 1, "exit_z": 2}},
            "strategies[0].params.exit_z: must be < entry_z",
        ),
        (
            {"kind": "opening_range_breakout", "params": {"timezone": "Mars/Olympus"}},
            "strategies[0].params.timezone: unknown time zone 'Mars/Olympus'",
        ),
        (
            {"kind": "opening_range_breakout", "params": {"flatten_at": "09:40"}},
            "strategies[0].params.flatten_at: must be after the opening range ends (09:45)",
        ),
    ],
)
def test_each_bad_key_is_named(overrides: dict[str, Any], expected: str) -> None:
    (problem,) = problems(entry(**overrides))
    assert problem.startswith(expected), problem


@pytest.mark.parametrize("kind", ["sma_crossover", "bollinger_reversion", "opening_range_breakout"])
@pytest.mark.parametrize(
    ("quantity", "says"),
    [("1e30", "26 digits before the decimal point"), ("0.0000000000001", "12 decimal places")],
)
def test_a_quantity_no_order_can_carry_is_refused_naming_the_key(
    kind: str, quantity: str, says: str
) -> None:
    # Accepted until this: the strategy's first order failed the contract's
    # Quantity, a StrategyFaulted, and the strategy stopped (or restarted to fault again).
    (problem,) = problems(entry(kind=kind, params={"quantity": quantity}))
    assert problem.startswith("strategies[0].params.quantity: "), problem
    assert says in problem, problem
    assert validate_strategies({"strategies": [entry(kind=kind, params={"quantity": "0.5"})]})


def test_a_callback_budget_of_one_second_by_default_or_none() -> None:
    default, unlimited = validate_strategies(
        {"strategies": [entry(), entry(name="free", max_callback_s=None)]}
    )
    assert default.spec.max_callback_s == 1.0
    assert unlimited.spec.max_callback_s is None


def test_minute_bars_by_default_or_every_interval() -> None:
    minute, every = validate_strategies(
        {"strategies": [entry(), entry(name="all", bar_interval=None)]}
    )
    assert minute.spec.bar_interval == "1m"
    assert every.spec.bar_interval is None


def test_every_problem_is_reported_at_once() -> None:
    found = problems(
        entry(params={"fast_period": 0}),
        entry(name="sma", kind="nope"),
    )
    assert found == (
        "strategies[0].params.fast_period: Input should be greater than or equal to 1",
        "strategies[1].name: 'sma' is already used by strategies[0]",
        "strategies[1].kind: unknown strategy 'nope' (one of bollinger_reversion, "
        "opening_range_breakout, pairs_trade, sma_crossover, or 'module:Class')",
    )


def test_file_level_errors(tmp_path: Path) -> None:
    with pytest.raises(StrategyConfigError, match="strategies: Field required"):
        validate_strategies({"strategy": []})
    with pytest.raises(StrategyConfigError, match="strategies: must list at least one strategy"):
        validate_strategies({"strategies": []})
    bad_yaml = tmp_path / "s.yaml"
    bad_yaml.write_text("strategies: [\n")
    with pytest.raises(StrategyConfigError, match="not valid YAML"):
        load_strategies(bad_yaml)
    with pytest.raises(StrategyConfigError, match="cannot read"):
        load_strategies(tmp_path / "missing.yaml")


def test_a_key_given_twice_is_refused_with_its_line(tmp_path: Path) -> None:
    """YAML alone keeps the last of two equal keys: quantity 100 then 100000
    was read as 100000, the parameter typo this validation exists to catch."""
    text = DEPLOYED.read_text()
    assert "      quantity: 100\n" in text
    path = tmp_path / "strategies.yaml"
    path.write_text(
        text.replace("      quantity: 100\n", "      quantity: 100\n      quantity: 100000\n", 1)
    )
    line = path.read_text().splitlines().index("      quantity: 100000") + 1
    with pytest.raises(StrategyConfigError) as info:
        load_strategies(path)
    assert info.value.problems == (
        f"not valid YAML: duplicate key 'quantity' on line {line} (first on line {line - 1}); "
        "YAML would silently keep only the last",
    )
    # A second strategy of the same name is its own problem, named as such.
    path.write_text(text.replace("name: orb-spy", "name: sma-aapl"))
    with pytest.raises(StrategyConfigError, match=r"strategies\[1\]\.name: 'sma-aapl' is already"):
        load_strategies(path)


def test_an_import_path_kind_loads_a_custom_strategy() -> None:
    (loaded,) = validate_strategies(
        {"strategies": [entry(kind="libs.strategy.testing:EchoStrategy", params={"quantity": 2})]}
    )
    assert loaded.cls.__name__ == "EchoStrategy"
    assert loaded.spec.order_account == "paper"


def test_a_pairs_exit_z_of_zero_is_refused_naming_the_key() -> None:
    # The pair closes when |z| < exit_z: with 0 it never closes (a rounded
    # |z| is never below 0), so a pair entered was held for ever. It was
    # accepted until this.
    pair = {"kind": "pairs_trade", "symbols": ["A", "B"]}
    (problem,) = problems(entry(**pair, params={"exit_z": 0}))
    assert problem.startswith("strategies[0].params.exit_z: Input should be greater than 0")
    assert validate_strategies({"strategies": [entry(**pair, params={"exit_z": "0.01"})]})


@pytest.mark.parametrize("notional", ["1e30", "1e13"])
def test_a_pairs_leg_notional_no_order_can_carry_is_refused_naming_the_key(notional: str) -> None:
    # A leg trades floor(leg_notional / price) units: 1e30 at a price of 100
    # is 1e28 shares, past the contract's 26 digits, so the first entry's
    # order failed the contract, a StrategyFaulted. Up to 1e12, even at the
    # smallest price an order carries (1e-12), a leg is at most 1e24 units.
    pair = {"kind": "pairs_trade", "symbols": ["A", "B"]}
    (problem,) = problems(entry(**pair, params={"leg_notional": notional}))
    assert problem.startswith("strategies[0].params.leg_notional: "), problem
    assert "less than or equal to 1000000000000" in problem, problem
    ok = {"leg_notional": "1e12"}
    assert validate_strategies({"strategies": [entry(**pair, params=ok)]})


def test_a_pairs_leg_notional_too_small_to_buy_anything_is_refused_naming_the_key() -> None:
    # 1e-20 sized both legs to 0 at any price an order can carry (1e-12 and
    # up), so the pair never traded, and nothing said so. Money and prices
    # have 12 decimal places; so does leg_notional.
    pair = {"kind": "pairs_trade", "symbols": ["A", "B"]}
    (problem,) = problems(entry(**pair, params={"leg_notional": "1e-20"}))
    assert problem.startswith("strategies[0].params.leg_notional: "), problem
    assert "12 decimal places" in problem, problem
    ok = {"leg_notional": "1e-12"}
    assert validate_strategies({"strategies": [entry(**pair, params=ok)]})


@pytest.mark.parametrize("symbol", ["aapl", "Msft", "O:spy241220P00720000"])
def test_a_symbol_not_in_upper_case_is_refused_naming_the_key(symbol: str) -> None:
    # Market data names symbols in upper case (marketdata upper-cases its
    # TRADEBUS_SYMBOLS; Polygon sends them so): a strategy on 'aapl' was
    # accepted and subscribed to md.bar.1m.aapl, on which nothing is published.
    (problem,) = problems(entry(symbols=["NVDA", symbol]))
    assert problem.startswith("strategies[0].symbols[1]: must be upper case"), problem
    assert symbol.upper() in problem
    assert validate_strategies({"strategies": [entry(symbols=["NVDA", "O:SPY241220P00720000"])]})


@pytest.mark.parametrize(
    "symbol", ["O:SPY241340P00720000", "O:SPY241220P0072000", "O:SPY24122000720000", "O:SPY"]
)
def test_an_option_symbol_that_does_not_parse_is_refused_naming_the_key(symbol: str) -> None:
    # A typo in a contract (month 13, a strike of 7 digits, no C or P) was
    # taken: the strategy subscribed to a contract no feed quotes and never
    # traded, without a word.
    (problem,) = problems(entry(symbols=["NVDA", symbol]))
    assert problem.startswith(f"strategies[0].symbols[1]: {symbol} is not an option symbol"), (
        problem
    )


@pytest.mark.parametrize(
    ("symbol", "why"),
    [
        ("O:SPX261218C05000000", "SPX options are cash-settled: an exercise or assignment pays"),
        ("O:XSP261218P00500000", "XSP options are cash-settled"),
        ("O:AAPL1261218C00100000", "an adjusted contract (its root AAPL1 ends in a digit)"),
    ],
)
def test_an_option_contract_tradebus_cannot_settle_is_refused_naming_the_key(
    symbol: str, why: str
) -> None:
    # Every settlement books an exercise or assignment as 100 shares of the
    # root at the strike: an SPX call exercised was booked as 100 SPX shares,
    # which no broker delivers (it pays cash), and an adjusted contract's
    # deliverable is not 100 shares of its root. Refused, not traded.
    (problem,) = problems(entry(symbols=["NVDA", symbol]))
    assert problem.startswith(f"strategies[0].symbols[1]: {symbol} is not supported: {why}"), (
        problem
    )
    assert problem.endswith(
        "where tradebus would book 100 shares of " + symbol[2:-15] + " at the strike"
    )
    # SPY's and AAPL's own contracts deliver 100 shares: taken.
    symbols = ["O:SPY261218C00600000", "O:AAPL261218C00100000"]
    assert validate_strategies({"strategies": [entry(symbols=symbols)]})


@pytest.mark.parametrize("symbol", ["BRK.B", "BRK/B"])
def test_a_share_class_symbol_is_taken_as_the_contract_takes_it(symbol: str) -> None:
    # Polygon names Berkshire's class B shares BRK.B (Alpaca BRK.B or BRK/B),
    # and the contract's Symbol takes both; strategies.yaml took only a subject
    # token, so a strategy could not trade them at all. Subjects write the dot
    # as '~' (symbol_token), which is what the strategy-runner subscribes to.
    (spec,) = (s.spec for s in validate_strategies({"strategies": [entry(symbols=[symbol])]}))
    assert spec.symbols == (symbol,)
    (problem,) = problems(entry(symbols=["NVDA", symbol.lower()]))
    assert problem.startswith("strategies[0].symbols[1]: must be upper case"), problem
    assert symbol in problem
    for bad in ("BRK B", "BRK*B", "BRK.>"):
        problem = problems(entry(symbols=["NVDA", bad]))[0]
        assert problem.startswith("strategies[0].symbols[1]: String should match"), problem


def test_a_strategy_module_that_raises_on_import_is_a_problem_of_its_kind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Not only ImportError: a module whose top level fails any other way
    # (a bad constant, a missing environment variable) stopped the runner,
    # and config check, with a traceback instead of naming the entry.
    (tmp_path / "desk_broken.py").write_text("raise RuntimeError('no API key in DESK_KEY')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    (problem,) = problems(entry(kind="desk_broken:Gap"))
    assert problem == (
        "strategies[0].kind: cannot import 'desk_broken': RuntimeError: no API key in DESK_KEY"
    )


def test_the_runner_exits_2_naming_the_kind_whose_module_raises(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from services.cli import app

    (tmp_path / "desk_zero.py").write_text("RATIO = 1 / 0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    path = tmp_path / "strategies.yaml"
    path.write_text(
        "strategies:\n  - {name: gap, kind: 'desk_zero:Gap', symbols: [AAPL], account: paper}\n"
    )
    result = CliRunner().invoke(app, ["strategy-runner", "run", "--config", str(path)])
    assert result.exit_code == 2, result.output
    assert (
        "strategies[0].kind: cannot import 'desk_zero': ZeroDivisionError: division by zero"
        in result.output
    )


def test_the_calendar_is_warmed_once_per_file_and_its_absence_said_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Warmed for every option symbol it validated: past the committed
    # table, each warming asks exchange-calendars for its calendar names.
    from libs.contract import sessions
    from libs.strategy import spec

    warmed: list[None] = []
    monkeypatch.setattr(spec, "warm_calendar", lambda: warmed.append(None))
    contracts = ["O:SPY261218C00600000", "O:SPY261218P00500000", "O:AAPL261218C00100000"]
    other = entry(name="other", symbols=["NVDA", *contracts[:2]])
    assert len(validate_strategies({"strategies": [entry(symbols=contracts), other]})) == 2
    assert len(warmed) == 1
    assert validate_strategies({"strategies": [entry(symbols=["NVDA"])]})
    assert len(warmed) == 1  # no option listed: nothing to warm

    def missing() -> None:
        raise sessions.CalendarError("exchange-calendars is not installed")

    monkeypatch.setattr(spec, "warm_calendar", missing)
    (problem,) = problems(entry(symbols=["NVDA", *contracts]), other)
    assert problem == "strategies[0].symbols[1]: exchange-calendars is not installed"
