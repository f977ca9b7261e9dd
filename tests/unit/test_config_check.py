"""The config files checked against each other: ``tradebus config check`` and ``up``.

Each file alone can be valid and the order path still dead: a strategy the
risk-gate has no limits for (every intent denied, unknown_strategy), an
account no broker serves (orders approved that no gateway takes).
"""

from __future__ import annotations

import dataclasses
import io
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from services.cli import app
from services.stack.configs import ConfigFiles, cross_check, load_configs, settings_problems
from services.stack.up import UpOptions, run_up
from services.stack.wiring import CONFIG_DIR

STRATEGIES = CONFIG_DIR / "strategies.yaml"
RISK = CONFIG_DIR / "risk.yaml"
BROKERS = CONFIG_DIR / "brokers.yaml"
BROKERS_ARGS = ("--brokers", str(BROKERS))


def edited(tmp_path: Path, source: Path, *changes: tuple[str, str]) -> Path:
    """``source`` with each ``(old, new)`` replaced once (``old`` must be there)."""
    text = source.read_text()
    for old, new in changes:
        assert old in text, old
        text = text.replace(old, new, 1)
    path = tmp_path / f"edited-{source.name}"
    path.write_text(text)
    return path


def checked(
    strategies: Path | None = None, risk: Path | None = None, brokers: Path | None = None
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    loaded = load_configs(ConfigFiles(strategies=strategies, risk=risk, brokers=brokers))
    assert loaded.problems == ()
    found = cross_check(loaded)
    return found.problems, found.notes


def test_the_deployed_files_agree_with_one_note_on_the_shadow_strategys_live_account() -> None:
    problems, notes = checked(STRATEGIES, RISK, BROKERS)
    assert problems == ()
    assert notes == (
        f"account alpaca ({RISK}) has no broker in {BROKERS}; only bb-nvda names it, as the "
        "live account beside a shadow_account: fine while it runs in shadow mode, add it to "
        f"{BROKERS} before going live",
    )


def test_a_strategy_without_risk_limits(tmp_path: Path) -> None:
    strategies = edited(tmp_path, STRATEGIES, ("name: sma-aapl", "name: sma-msft"))
    problems, _ = checked(strategies, RISK, BROKERS)
    assert problems == (
        f"strategy sma-msft ({strategies}) has no limits in {RISK}: the risk-gate would deny "
        "every intent of it (unknown_strategy). Add strategies.sma-msft to "
        f"{RISK}, or remove it from {strategies}",
    )


def test_a_strategy_whose_account_no_broker_serves(tmp_path: Path) -> None:
    # Its risk limits agree; only the broker is missing.
    strategies = edited(tmp_path, STRATEGIES, ("account: paper", "account: ib"))
    risk = edited(
        tmp_path,
        RISK,
        ("  alpaca:\n", "  ib:\n    daily_loss_limit: '100'\n  alpaca:\n"),
        ("sma-aapl:\n    account: paper", "sma-aapl:\n    account: ib"),
    )
    problems, _ = checked(strategies, risk, BROKERS)
    assert problems == (
        f"strategy sma-aapl sends its orders to account ib (account in {strategies}), which "
        f"no broker in {BROKERS} serves: no broker-gateway would take its orders. Add "
        f"accounts.ib to {BROKERS}, or give the strategy an account it serves",
    )  # and once only: not again as risk.yaml's account ib without broker


def test_a_shadow_strategy_going_live_on_an_account_without_broker(tmp_path: Path) -> None:
    strategies = edited(tmp_path, STRATEGIES, ("mode: shadow", "mode: live"))
    problems, notes = checked(strategies, RISK, BROKERS)
    assert problems == (
        f"strategy bb-nvda sends its orders to account alpaca (account in {strategies}), "
        f"which no broker in {BROKERS} serves: no broker-gateway would take its orders. Add "
        f"accounts.alpaca to {BROKERS}, or give the strategy an account it serves",
    )
    # Its shadow account is served: the live one is the problem, not a note.
    assert all("bb-nvda names" not in n for n in notes)


def test_a_strategy_sending_to_an_account_its_risk_limits_do_not_give_it(tmp_path: Path) -> None:
    strategies = edited(tmp_path, STRATEGIES, ("shadow_account: paper", "shadow_account: alpaca2"))
    strategies = edited(tmp_path, strategies, ("account: alpaca", "account: paper"))
    problems, _ = checked(strategies, RISK)
    assert problems == (
        f"strategy bb-nvda sends its orders to account alpaca2 (shadow_account in "
        f"{strategies}), but {RISK} gives it account alpaca and shadow_account paper: the "
        "risk-gate would deny every intent of it (unknown_account). Make the two files agree",
    )


def test_a_risk_account_with_no_broker_and_no_strategy(tmp_path: Path) -> None:
    risk = edited(
        tmp_path, RISK, ("  alpaca:\n", "  ib:\n    daily_loss_limit: '100'\n  alpaca:\n")
    )
    problems, _ = checked(risk=risk, brokers=BROKERS)
    assert problems == (
        f"account ib has limits in {risk} but no broker in {BROKERS} serves it: what the "
        "risk-gate approves or flattens there would reach no broker. Add accounts.ib to "
        f"{BROKERS}, or remove it from {risk}",
    )
    # The live account of a shadow strategy is only a note, also without strategies.yaml.
    problems, notes = checked(risk=RISK, brokers=BROKERS)
    assert (problems, len(notes)) == ((), 1)


def test_a_shadow_account_a_live_adapter_serves_is_a_problem() -> None:
    """Shadow mode exists to trade on live data without real money: a
    shadow_account served by a live broker would trade real money. Every
    adapter is paper so far (AccountSection.adapter is Literal["paper"]), so
    the account's adapter is widened here, unvalidated, as a live adapter's
    section would be."""
    loaded = load_configs(ConfigFiles(strategies=STRATEGIES, risk=RISK, brokers=BROKERS))
    assert loaded.brokers is not None
    paper = loaded.brokers.accounts["paper"]
    live = loaded.brokers.model_copy(
        update={"accounts": {"paper": paper.model_copy(update={"adapter": "alpaca"})}}
    )
    found = cross_check(dataclasses.replace(loaded, brokers=live))
    said = (
        f"is served by adapter 'alpaca' (accounts.paper.adapter in {BROKERS}), not 'paper': "
        "shadow mode sends the strategy's orders there, so they would trade real money. "
        "Name a paper account"
    )
    assert found.problems == (
        f"strategy bb-nvda's shadow_account paper (strategies[2].shadow_account in "
        f"{STRATEGIES}) {said}",
        f"strategy bb-nvda's shadow_account paper (strategies.bb-nvda.shadow_account in "
        f"{RISK}) {said}",
    )
    # A strategy trading that account live is what a live account is for.
    assert all("sma-aapl" not in p for p in found.problems)
    # The deployed files (a paper adapter) are fine.
    assert cross_check(loaded).problems == ()


def test_an_option_contract_already_expired_is_a_note_of_config_check(tmp_path: Path) -> None:
    # A pairs leg on last month's contract: valid (a backtest replays its
    # days), but live the risk-gate denies its entries (contract_expired).
    expired, live = "O:AAPL261211C00100000", "O:AAPL261218C00100000"
    strategies = edited(tmp_path, STRATEGIES, ("[MSFT, AAPL]", f"[{expired}, {live}]"))
    loaded = load_configs(ConfigFiles(strategies=strategies))
    assert loaded.problems == ()
    friday_close = 1_797_022_800 * 1_000_000_000  # 2026-12-11 16:00 New York
    assert cross_check(loaded, now_ns=friday_close - 1).notes == ()
    assert cross_check(loaded).notes == ()  # no clock, no look at expiries
    found = cross_check(loaded, now_ns=friday_close)
    assert found.problems == ()
    assert found.notes == (
        f"strategy pairs-msft-aapl ({strategies}) trades {expired}, which expired at the "
        "close of 2026-12-11 (16:00 New York): live, the risk-gate would deny its orders in "
        "it, a close included (contract_expired). Fine for a backtest of its "
        "days; replace it to trade live",
    )
    # config check reads the wall clock: a contract of 2024 has expired.
    old = "O:AAPL241220C00100000"
    strategies = edited(tmp_path, STRATEGIES, ("[MSFT, AAPL]", f"[MSFT, {old}]"))
    result = CliRunner().invoke(app, ["config", "check", "--strategies", str(strategies)])
    assert result.exit_code == 0, result.output
    assert f"note: strategy pairs-msft-aapl ({strategies}) trades {old}" in result.output


def test_config_check_refuses_an_option_contract_tradebus_cannot_settle(tmp_path: Path) -> None:
    # An SPX option settles in cash; tradebus would book its exercise as 100
    # SPX shares at the strike. A problem of the file, its key named: exit 1.
    spx = "O:SPX261218C05000000"
    strategies = edited(tmp_path, STRATEGIES, ("[MSFT, AAPL]", f"[MSFT, {spx}]"))
    result = CliRunner().invoke(app, ["config", "check", "--strategies", str(strategies)])
    assert result.exit_code == 1, result.output
    assert f"{strategies} is invalid:\n" in result.output
    assert (
        f"  strategies[3].symbols[1]: {spx} is not supported: SPX options are cash-settled"
    ) in result.output
    assert result.output.endswith("config check: 1 problem\n")


def test_a_strategy_trading_a_symbol_its_risk_limits_do_not_list(tmp_path: Path) -> None:
    # sma-aapl's risk limits list AAPL only: every order of it on NVDA is denied.
    strategies = edited(tmp_path, STRATEGIES, ("symbols: [AAPL]", "symbols: [AAPL, NVDA]"))
    problems, _ = checked(strategies, RISK)
    assert problems == (
        f"strategy sma-aapl ({strategies}) trades NVDA, which its limits in {RISK} do not "
        "list: the risk-gate would deny every order of it in NVDA (max_symbol_position). Add "
        f"strategies.sma-aapl.symbols.NVDA to {RISK} (max_position: 0 for a symbol it only "
        f"watches), or remove it from {strategies}",
    )
    # A strategy whose limits list no symbols may trade any.
    strategies = edited(tmp_path, STRATEGIES, ("symbols: [SPY]", "symbols: [SPY, QQQ]"))
    assert checked(strategies, RISK) == ((), ())


PAPER = CONFIG_DIR / "paper.yaml"


def paper_checked(
    brokers: Path, paper: Path, *, paper_url: bool = True
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    loaded = load_configs(ConfigFiles(brokers=brokers, paper=paper))
    assert loaded.problems == ()
    found = cross_check(loaded, paper_url=paper_url)
    return found.problems, found.notes


def test_the_deployed_paper_and_brokers_files_agree() -> None:
    assert paper_checked(BROKERS, PAPER) == ((), ())


def test_a_paper_account_the_paper_broker_does_not_have(tmp_path: Path) -> None:
    paper = edited(tmp_path, PAPER, ("accounts:\n  paper:", "accounts:\n  paper-b:"))
    problems, _ = paper_checked(BROKERS, paper)
    assert problems == (
        f"account paper ({BROKERS}) is a paper account, but {paper} has no account paper: "
        "the paper broker would refuse the gateway's login, or book its orders in another "
        f"account. Add accounts.paper to {paper}, or make the two files name it alike",
    )


def test_a_paper_account_whose_key_variables_differ(tmp_path: Path) -> None:
    paper = edited(tmp_path, PAPER, ("key_id_env: TRADEBUS_PAPER_KEY_ID", "key_id_env: PAPER_KEY"))
    problems, _ = paper_checked(BROKERS, paper)
    assert problems == (
        f"account paper logs in with the key id in TRADEBUS_PAPER_KEY_ID "
        f"(accounts.paper.credentials.key_id_env in {BROKERS}), but {paper} reads it from "
        "PAPER_KEY (accounts.paper.key_id_env): the paper broker would refuse the login "
        "unless both hold the same value. Name the same variable in both",
    )


def test_a_paper_url_on_another_port_than_the_paper_broker_s(tmp_path: Path) -> None:
    paper = edited(tmp_path, PAPER, ("port: 8765", "port: 8766"))
    problems, _ = paper_checked(BROKERS, paper)
    assert problems == (
        f"account paper connects to ws://127.0.0.1:8765/stream (accounts.paper.url in "
        f"{BROKERS}), but {paper} serves on port 8766: the gateway would not reach the "
        "paper broker. Make the two ports agree",
    )
    # tradebus up points every paper account at its own paper broker's port.
    assert paper_checked(BROKERS, paper, paper_url=False) == ((), ())


def test_config_check_checks_paper_yaml_against_brokers_yaml(tmp_path: Path) -> None:
    paper = edited(tmp_path, PAPER, ("port: 8765", "port: 8766"))
    result = CliRunner().invoke(app, ["config", "check", *BROKERS_ARGS, "--paper", str(paper)])
    assert result.exit_code == 1, result.output
    assert f"{paper}: ok (1 account)" in result.output
    assert "  problem: account paper connects to ws://127.0.0.1:8765/stream" in result.output
    result = CliRunner().invoke(app, ["config", "check", *BROKERS_ARGS, "--paper", str(PAPER)])
    assert result.exit_code == 0, result.output


# ------------------------------------------------------------ config check


def test_config_check_passes_the_deployed_files() -> None:
    result = CliRunner().invoke(
        app,
        ["config", "check", *("--strategies", str(STRATEGIES), "--risk", str(RISK)), *BROKERS_ARGS],
    )
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[:3] == [
        f"{STRATEGIES}: ok (4 strategies)",
        f"{RISK}: ok (2 accounts, 4 strategies)",
        f"{BROKERS}: ok (1 account)",
    ]
    assert "  note: account alpaca" in result.output
    assert result.output.endswith("config check: ok\n")


def test_config_check_reports_every_problem_and_exits_1(tmp_path: Path) -> None:
    strategies = edited(tmp_path, STRATEGIES, ("name: sma-aapl", "name: sma-msft"))
    bad_risk = edited(tmp_path, RISK, ("    max_gross_notional", "    max_gros_notional"))
    result = CliRunner().invoke(
        app,
        ["config", "check", *("--strategies", str(strategies), "--risk", str(RISK)), *BROKERS_ARGS],
    )
    assert result.exit_code == 1, result.output
    assert "  problem: strategy sma-msft" in result.output
    assert result.output.endswith("config check: 1 problem\n")
    # Any subset: a file alone is validated as its service would.
    result = CliRunner().invoke(app, ["config", "check", "--risk", str(bad_risk)])
    assert result.exit_code == 1, result.output
    assert result.output == (
        f"{bad_risk} is invalid:\n"
        "  strategies.sma-aapl.max_gross_notional: Field required\n"
        "  strategies.sma-aapl.max_gros_notional: Extra inputs are not permitted\n"
        "config check: 1 problem\n"
    )
    result = CliRunner().invoke(app, ["config", "check"])
    assert result.exit_code == 2
    assert "give at least one of --strategies, --risk, --brokers, --paper" in result.output


def test_config_check_names_the_kind_whose_module_raises_on_import(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Any exception of the module's top level, not only ImportError: it was a
    # traceback. An invalid file like any other: exit 1, the file and key named.
    (tmp_path / "desk_typo.py").write_text("LIMIT = int('ten')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    strategies = edited(tmp_path, STRATEGIES, ("kind: sma_crossover", "kind: desk_typo:Gap"))
    result = CliRunner().invoke(app, ["config", "check", "--strategies", str(strategies)])
    assert result.exit_code == 1, result.output
    assert result.output == (
        f"{strategies} is invalid:\n"
        "  strategies[0].kind: cannot import 'desk_typo': ValueError: invalid literal for "
        "int() with base 10: 'ten'\n"
        "config check: 1 problem\n"
    )


def test_config_check_warns_of_a_symbol_marketdata_does_not_subscribe_to(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Under docker compose or in production marketdata subscribes to its
    # TRADEBUS_SYMBOLS, not to the strategies' symbols: a strategy on TSLA
    # was never shown a bar of it, and nothing said so.
    monkeypatch.delenv("TRADEBUS_SYMBOLS", raising=False)
    strategies = edited(tmp_path, STRATEGIES, ("symbols: [AAPL]", "symbols: [TSLA]"))
    result = CliRunner().invoke(app, ["config", "check", "--strategies", str(strategies)])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        f"{strategies}: ok (4 strategies)",
        f"warning: strategy sma-aapl ({strategies}) trades TSLA, which marketdata does not "
        "subscribe to (marketdata's default AAPL,MSFT,NVDA,SPY: TRADEBUS_SYMBOLS is not set): "
        "it would be shown no market data of it. Add TSLA to marketdata's TRADEBUS_SYMBOLS",
        "config check: ok",
    ]
    monkeypatch.setenv("TRADEBUS_SYMBOLS", "aapl,msft,nvda,spy,tsla")  # as marketdata reads it
    result = CliRunner().invoke(app, ["config", "check", "--strategies", str(strategies)])
    assert result.exit_code == 0, result.output
    assert "warning" not in result.output


def test_config_check_warns_of_options_on_an_underlying_marketdata_does_not_subscribe_to(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A strategy on a TSLA contract: an exercise books it TSLA shares, which
    # nothing marks unless marketdata publishes TSLA's prices.
    option = "O:TSLA991217C00300000"
    monkeypatch.setenv("TRADEBUS_SYMBOLS", f"AAPL,MSFT,NVDA,SPY,{option}")
    strategies = edited(tmp_path, STRATEGIES, ("symbols: [AAPL]", f'symbols: ["{option}"]'))
    result = CliRunner().invoke(app, ["config", "check", "--strategies", str(strategies)])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[1:-1] == [
        f"warning: strategy sma-aapl ({strategies}) trades options on TSLA, which marketdata "
        f"does not subscribe to (TRADEBUS_SYMBOLS=AAPL,MSFT,NVDA,SPY,{option}): the shares an "
        "exercise or assignment books would be marked by nothing, in the risk-gate or the "
        "strategy's books. Add TSLA to marketdata's TRADEBUS_SYMBOLS",
    ]
    monkeypatch.setenv("TRADEBUS_SYMBOLS", f"AAPL,MSFT,NVDA,SPY,TSLA,{option}")
    result = CliRunner().invoke(app, ["config", "check", "--strategies", str(strategies)])
    assert "warning" not in result.output


def test_config_check_warns_of_symbols_that_differ_only_by_the_share_class_separator(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The contract takes BRK.B and BRK/B, and every subject, limit and book
    # takes them as two symbols: the one the feed does not name gets no data.
    monkeypatch.setenv("TRADEBUS_SYMBOLS", "AAPL,MSFT,NVDA,SPY,BRK.B")
    strategies = edited(
        tmp_path,
        STRATEGIES,
        ("symbols: [AAPL]", "symbols: [BRK.B]"),
        ("symbols: [SPY]", "symbols: [BRK/B]"),
    )
    result = CliRunner().invoke(app, ["config", "check", "--strategies", str(strategies)])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[1:] == [
        f"warning: strategy orb-spy ({strategies}) trades BRK/B, which marketdata does not "
        "subscribe to (TRADEBUS_SYMBOLS=AAPL,MSFT,NVDA,SPY,BRK.B): it would be shown no "
        "market data of it. Add BRK/B to marketdata's TRADEBUS_SYMBOLS",
        "warning: BRK.B (TRADEBUS_SYMBOLS, strategy sma-aapl) and BRK/B (strategy orb-spy) "
        "differ only by the share-class separator: market data, the risk-gate and the books "
        "take them as 2 symbols, so the one the feed does not name gets no data and a "
        "position in one is not netted with the other. Write them alike, as the feed names "
        "them (Polygon: BRK.B)",
        "config check: ok",
    ]
    # Both subscribed, the two spellings are still two symbols.
    monkeypatch.setenv("TRADEBUS_SYMBOLS", "AAPL,MSFT,NVDA,SPY,BRK.B,BRK/B")
    result = CliRunner().invoke(app, ["config", "check", "--strategies", str(strategies)])
    assert result.exit_code == 0, result.output
    assert [line[:40] for line in result.output.splitlines() if "warning" in line] == [
        "warning: BRK.B (TRADEBUS_SYMBOLS, strate"
    ]


# ------------------------------------------------------------------- up


@pytest.fixture
def no_servers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Servers that do not answer: a ``run_up`` past its checks fails at once."""
    monkeypatch.setenv("NATS_URL", "nats://127.0.0.1:1")
    monkeypatch.setenv("DATABASE_URL", "postgresql://postgres@127.0.0.1:1/tradebus")


@pytest.mark.usefixtures("no_servers")
def test_a_yaml_syntax_error_stays_under_its_file(tmp_path: Path) -> None:
    """PyYAML says where a file breaks in several lines; each is the file's,
    indented under it, whichever file it is (brokers.yaml's and
    strategies.yaml's continuation lines used to start at the margin, as if
    they were the next problem)."""
    bad = {name: tmp_path / f"{name}.yaml" for name in ("strategies", "risk", "brokers", "paper")}
    for path in bad.values():
        path.write_text("accounts:\n  paper: [1\n")
    loaded = load_configs(ConfigFiles(**bad))
    assert len(loaded.problems) == 4
    for problem, path in zip(loaded.problems, bad.values(), strict=True):
        head, first, *rest = problem.splitlines()
        assert head == f"{path} is invalid:"
        assert first == "  not valid YAML: while parsing a flow sequence"
        assert rest, problem
        assert all(line.startswith("  ") for line in rest), problem


def test_up_refuses_files_that_disagree_before_starting_anything(tmp_path: Path) -> None:
    strategies = edited(tmp_path, STRATEGIES, ("name: sma-aapl", "name: sma-msft"))
    out = io.StringIO()
    code = run_up(UpOptions(home=tmp_path / "home", strategies=strategies), out)
    text = re.sub(r"(?m)^[a-z-]+ +\| ", "", out.getvalue())
    assert code == 1, text
    assert text.startswith(
        "!!! the config files do not agree (tradebus config check shows it too):\n"
        f"  strategy sma-msft ({strategies}) has no limits in {RISK}"
    )
    assert "cannot migrate" not in text  # nothing was started


# ------------------------------------------------- settings across services

KEEP, DELAY, TRIM = "TRADEBUS_STREAM_KEEP_S", "TRADEBUS_MAX_SUBMIT_DELAY_S", "TRADEBUS_TRIM_EVERY_S"
SERVICES = ("recorder", "broker-gateway")


@pytest.fixture
def settings_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """The three variables unset: each service's default until a test sets one."""
    for name in (KEEP, DELAY, TRIM):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.mark.parametrize(
    ("env", "problem"),
    [
        ({}, None),  # two days against 30 s
        ({KEEP: "600", DELAY: "599"}, None),
        (
            {KEEP: "600", DELAY: "600"},
            "the recorder's TRADEBUS_STREAM_KEEP_S=600 must be longer than the "
            "broker-gateway's TRADEBUS_MAX_SUBMIT_DELAY_S=600: a recreated command consumer "
            "replays that far back, and would miss the commands trimmed from the stream. "
            "Raise the first or lower the second",
        ),
        ({KEEP: "120", DELAY: "120"}, "TRADEBUS_STREAM_KEEP_S=120 must be longer"),
        # Unset, each service's default: the gateway's 30 s, the recorder's two days.
        ({KEEP: "120"}, None),
        ({KEEP: "120", DELAY: "30"}, None),
        ({DELAY: "86400"}, None),
        ({KEEP: "86400", DELAY: "86400"}, "TRADEBUS_STREAM_KEEP_S=86400 must be longer"),
        ({KEEP: "120", DELAY: "600", TRIM: "0"}, None),  # the recorder never trims
        ({KEEP: "60", DELAY: "600"}, None),  # the recorder refuses 60 itself, naming it
    ],
)
def test_the_stream_keeps_what_a_recreated_command_consumer_replays(
    settings_env: pytest.MonkeyPatch, env: dict[str, str], problem: str | None
) -> None:
    for name, value in env.items():
        settings_env.setenv(name, value)
    problems = settings_problems(SERVICES)
    if problem is None:
        assert problems == []
    else:
        assert len(problems) == 1
        assert problem in problems[0]
    # Only where both services run.
    assert settings_problems(("recorder", "risk-gate")) == []
    assert settings_problems(("broker-gateway",)) == []


def test_config_check_refuses_settings_that_disagree_with_exit_2(
    settings_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    settings_env.setenv(KEEP, "300")
    settings_env.setenv(DELAY, "900")
    result = CliRunner().invoke(app, ["config", "check", "--risk", str(RISK)])
    assert result.exit_code == 2, result.output
    lines = result.output.splitlines()
    assert lines[0] == (
        "error: the recorder's TRADEBUS_STREAM_KEEP_S=300 must be longer than the "
        "broker-gateway's TRADEBUS_MAX_SUBMIT_DELAY_S=900: a recreated command consumer "
        "replays that far back, and would miss the commands trimmed from the stream. "
        "Raise the first or lower the second"
    )
    assert lines[-1] == "config check: 1 problem"
    # The files are still checked: one run shows everything to fix.
    bad = RISK.read_text().replace("max_order_notional", "max_order_notionl", 1)
    bad_risk = tmp_path / "risk.yaml"
    bad_risk.write_text(bad)
    result = CliRunner().invoke(app, ["config", "check", "--risk", str(bad_risk)])
    assert result.exit_code == 2, result.output
    assert "max_order_notionl: Extra inputs are not permitted" in result.output
    assert result.output.splitlines()[-1] == "config check: 2 problems"
    settings_env.setenv(DELAY, "299")
    result = CliRunner().invoke(app, ["config", "check", "--risk", str(RISK)])
    assert result.exit_code == 0, result.output


@pytest.mark.usefixtures("no_servers")
def test_up_refuses_settings_that_disagree_before_starting_anything(
    tmp_path: Path, settings_env: pytest.MonkeyPatch
) -> None:
    settings_env.setenv(KEEP, "3600")
    settings_env.setenv(DELAY, "7200")
    out = io.StringIO()
    code = run_up(UpOptions(home=tmp_path / "home"), out)
    text = re.sub(r"(?m)^[a-z-]+ +\| ", "", out.getvalue())
    assert code == 2, text
    assert text.splitlines() == [
        "!!! the recorder's TRADEBUS_STREAM_KEEP_S=3600 must be longer than the "
        "broker-gateway's TRADEBUS_MAX_SUBMIT_DELAY_S=7200: a recreated command consumer "
        "replays that far back, and would miss the commands trimmed from the stream. "
        "Raise the first or lower the second"
    ]
    # Without the gateway, the recorder's keep window holds nothing back: it starts.
    out = io.StringIO()
    code = run_up(UpOptions(home=tmp_path / "home", only=("recorder",)), out)
    assert code == 1
    assert "cannot migrate the event store" in out.getvalue()
