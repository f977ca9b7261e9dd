"""``tradebus up``: it warns of a strategy that would see no bar from the demo feed,
refuses a bad config before it starts anything, reads strategies.yaml once, and
gives marketdata the strategies' symbols and a fresh id salt at every start."""

from __future__ import annotations

import dataclasses
import io
import re
from pathlib import Path
from typing import Any

import pytest

import libs.strategy.spec
from libs.strategy.spec import LoadedStrategy, load_strategies
from services.stack import wiring
from services.stack.up import UpOptions, run_up
from services.stack.wiring import CONFIG_DIR, DEFAULT_CHANNELS

ENTRY = """
  - name: {name}
    kind: sma_crossover
    symbols: [AAPL]
    account: paper
    {interval}
    params: {{fast_period: 2, slow_period: 3, quantity: 10}}
"""


def strategies(tmp_path: Path, **intervals: str) -> Path:
    path = tmp_path / "strategies.yaml"
    path.write_text(
        "strategies:" + "".join(ENTRY.format(name=n, interval=iv) for n, iv in intervals.items())
    )
    return path


def bar_interval_warnings(path: Path, channels: str) -> list[str]:
    """:func:`wiring.bar_interval_warnings` of the strategies in ``path``."""
    return wiring.bar_interval_warnings(load_strategies(path), channels)


def test_the_deployed_strategies_take_the_demo_feeds_bars() -> None:
    assert bar_interval_warnings(CONFIG_DIR / "strategies.yaml", DEFAULT_CHANNELS) == []


def test_a_minute_strategy_on_the_second_bar_feed_is_named_with_its_fixes(
    tmp_path: Path,
) -> None:
    path = strategies(tmp_path, minute="", second="bar_interval: 1s", every="bar_interval: null")
    assert bar_interval_warnings(path, DEFAULT_CHANNELS) == [
        "strategy minute takes 1m bars (bar_interval), but the demo feed publishes 1s bars "
        "(TRADEBUS_CHANNELS=trades,quotes,second_bars): it will see no bar. Give it "
        "bar_interval: 1s or minute_bars in TRADEBUS_CHANNELS"
    ]
    assert bar_interval_warnings(path, "trades,quotes,second_bars,minute_bars") == []


def test_a_feed_without_bars(tmp_path: Path) -> None:
    (warning,) = bar_interval_warnings(strategies(tmp_path, s="bar_interval: 1s"), "trades")
    assert "the demo feed publishes no bars (TRADEBUS_CHANNELS=trades)" in warning
    assert warning.endswith("Give it second_bars in TRADEBUS_CHANNELS")


@pytest.fixture
def no_servers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Servers that do not answer: a ``run_up`` that got past its config checks
    fails at once ("cannot migrate the event store") instead of starting any."""
    monkeypatch.setenv("NATS_URL", "nats://127.0.0.1:1")
    monkeypatch.setenv("DATABASE_URL", "postgresql://postgres@127.0.0.1:1/tradebus")


def up_output(tmp_path: Path, **options: Any) -> tuple[int, str]:
    """``run_up``'s exit code and output, without the ``up | `` prefixes."""
    out = io.StringIO()
    code = run_up(UpOptions(home=tmp_path / "home", **options), out)
    return code, re.sub(r"(?m)^[a-z-]+ +\| ", "", out.getvalue())


@pytest.mark.usefixtures("no_servers")
def test_up_refuses_a_bad_strategies_file_as_the_runner_does(tmp_path: Path) -> None:
    path = strategies(tmp_path, s="bar_interval: 1s")
    path.write_text(path.read_text().replace("sma_crossover", "sma_crosover"))
    code, text = up_output(tmp_path, strategies=path)
    assert code == 1
    assert f"!!! {path} is invalid:\n  strategies[0].kind: " in text
    assert "sma_crosover" in text
    assert "Traceback" not in text
    assert not (tmp_path / "home" / "stack.json").exists()  # nothing was started


def deployed_with(tmp_path: Path, name: str, old: str, new: str) -> Path:
    """deploy/config/<name> with ``old`` replaced by ``new`` (once, which must be there)."""
    text = (CONFIG_DIR / name).read_text()
    assert old in text
    path = tmp_path / name
    path.write_text(text.replace(old, new, 1))
    return path


@pytest.mark.usefixtures("no_servers")
def test_up_refuses_a_bad_risk_file_before_starting_anything(tmp_path: Path) -> None:
    risk = deployed_with(tmp_path, "risk.yaml", "max_gross_notional", "max_gros_notional")
    code, text = up_output(tmp_path, risk=risk)
    assert code == 1
    assert f"!!! {risk} is invalid:\n" in text
    assert "\n  strategies.sma-aapl.max_gros_notional: Extra inputs are not permitted\n" in text
    assert "migrating" not in text  # nothing was started
    assert "cannot migrate" not in text


@pytest.mark.parametrize(
    ("name", "old", "new", "problem"),
    [
        ("brokers.yaml", "interval_s: 2", "intervl_s: 2", "accounts.paper.heartbeat.intervl_s"),
        ("brokers.yaml", "adapter: paper", "adapter: alpaca", "accounts.paper.adapter"),
        ("paper.yaml", "slippage_bps", "slipage_bps", "fill_model.slipage_bps"),
        (
            "brokers.yaml",
            "    request_timeout_s: 5\n",
            "    request_timeout_s: 5\n    request_timeout_s: 50\n",
            "not valid YAML: duplicate key 'request_timeout_s' on line 30 (first on line 29)",
        ),
    ],
)
@pytest.mark.usefixtures("no_servers")
def test_up_refuses_a_bad_broker_or_paper_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, old: str, new: str, problem: str
) -> None:
    path = deployed_with(tmp_path, name, old, new)
    monkeypatch.setattr(
        wiring, "BROKERS_CONFIG" if name == "brokers.yaml" else "PAPER_CONFIG", path
    )
    code, text = up_output(tmp_path)
    assert code == 1
    assert f"!!! {path} is invalid:\n  {problem}" in text
    assert "cannot migrate" not in text


@pytest.mark.usefixtures("no_servers")
def test_up_checks_only_the_files_of_the_services_it_runs(tmp_path: Path) -> None:
    risk = deployed_with(tmp_path, "risk.yaml", "max_gross_notional", "max_gros_notional")
    code, text = up_output(tmp_path, risk=risk, only=("recorder",))
    assert code == 1
    assert "is invalid" not in text
    assert "cannot migrate the event store" in text  # it went on to start


def test_the_rewritten_broker_configs_keep_no_duplicate_either(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``up`` rewrites brokers.yaml and paper.yaml into its home: read with
    safe_load, a key given twice would reach the service once, unseen."""
    for name, attr in (("brokers.yaml", "BROKERS_CONFIG"), ("paper.yaml", "PAPER_CONFIG")):
        path = tmp_path / name
        path.write_text((CONFIG_DIR / name).read_text() + "port: 1\nport: 2\n")
        monkeypatch.setattr(wiring, attr, path)
    with pytest.raises(wiring.WiringError, match="duplicate key 'port'"):
        wiring.brokers_config(tmp_path / "home", 1234)
    with pytest.raises(wiring.WiringError, match="duplicate key 'port'"):
        wiring.paper_config(tmp_path / "home", 1234)


@pytest.mark.usefixtures("no_servers")
def test_up_reads_the_strategies_file_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The config check, the bar-interval warnings and marketdata's symbols
    share one parse of strategies.yaml."""
    calls: list[Path] = []
    real = libs.strategy.spec.load_strategies

    def counting(path: str | Path) -> list[LoadedStrategy]:
        calls.append(Path(path))
        return real(path)

    monkeypatch.setattr(libs.strategy.spec, "load_strategies", counting)
    path = strategies(tmp_path, **{"sma-aapl": ""})  # as in risk.yaml, on 1m bars
    code, text = up_output(tmp_path, strategies=path)
    assert code == 1
    assert "strategy sma-aapl takes 1m bars" in text  # the warnings saw the strategies
    assert "cannot migrate the event store" in text  # and it went on to start
    assert calls == [path]


@pytest.mark.usefixtures("no_servers")
def test_up_warns_of_symbols_that_differ_only_by_the_share_class_separator(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As ``tradebus config check`` does (:func:`configs.symbol_warnings`):
    BRK.B and BRK/B are two symbols to every subject, limit and book, so the
    one the feed does not name gets no data. Not the TRADEBUS_SYMBOLS
    warning: up subscribes marketdata to the strategies' symbols itself."""
    monkeypatch.setenv("TRADEBUS_SYMBOLS", "AAPL")  # what up does not give marketdata
    path = deployed_with(tmp_path, "strategies.yaml", "symbols: [SPY]", "symbols: [BRK.B]")
    path.write_text(path.read_text().replace("symbols: [NVDA]", "symbols: [BRK/B]", 1))
    code, text = up_output(tmp_path, strategies=path)
    assert code == 1
    assert (
        "!!! BRK.B (strategy orb-spy) and BRK/B (strategy bb-nvda) differ only by the "
        "share-class separator: market data, the risk-gate and the books take them as 2 "
        "symbols, so the one the feed does not name gets no data and a position in one is "
        "not netted with the other. Write them alike, as the feed names them (Polygon: BRK.B)\n"
    ) in text
    assert "TRADEBUS_SYMBOLS" not in text
    assert "cannot migrate the event store" in text  # a warning: it went on to start
    # The strategies alone: marketdata runs, so its symbols are checked all the same.
    code, text = up_output(tmp_path, strategies=path, only=("strategy-runner",))
    assert "differ only by the share-class separator" in text
    # Neither the runner nor marketdata: the strategies file is no one's.
    code, text = up_output(tmp_path, strategies=path, only=("recorder",))
    assert "share-class" not in text


def inputs(tmp_path: Path, strategies: Path, **environ: str) -> wiring.Inputs:
    """What ``up`` hands the wiring, with servers nobody runs and ``environ``."""
    return wiring.Inputs(
        home=tmp_path / "home",
        nats_url="nats://127.0.0.1:1",
        database_url="postgresql://postgres@127.0.0.1:1/tradebus",
        credentials=None,
        strategies=strategies,
        risk=CONFIG_DIR / "risk.yaml",
        paper_port=1,
        md_rate="5/s",
        loaded_strategies=load_strategies(strategies),
        environ=environ,
    )


def test_marketdata_trades_the_symbols_of_the_loaded_strategies(tmp_path: Path) -> None:
    path = tmp_path / "strategies.yaml"
    path.write_text(
        "strategies:"
        + ENTRY.format(name="one", interval="").replace("[AAPL]", "[AAPL, MSFT]")
        + ENTRY.format(name="two", interval="").replace("[AAPL]", "[MSFT, SPY]")
    )
    given = inputs(tmp_path, path)
    path.unlink()  # what marketdata trades comes from the strategies loaded, not the file
    (plan,) = wiring.plans(given, ["marketdata"])
    assert plan.argv[plan.argv.index("--symbols") + 1] == "AAPL,MSFT,SPY"


def test_marketdata_also_prices_the_underlying_of_an_option_strategy(tmp_path: Path) -> None:
    """A strategy trading only an SPY contract: an exercise books it SPY
    shares, which the risk-gate and its ledger mark by SPY's prices; the
    stack's feed carried only the strategies' symbols, so nothing marked
    them. A root some strategy trades is not named twice."""
    option = "O:SPY991217C00600000"
    path = tmp_path / "strategies.yaml"
    path.write_text(
        "strategies:"
        + ENTRY.format(name="one", interval="").replace("[AAPL]", f'["{option}"]')
        + ENTRY.format(name="two", interval="").replace("[AAPL]", '[AAPL, "O:AAPL991217C00100000"]')
    )
    (plan,) = wiring.plans(inputs(tmp_path, path), ["marketdata"])
    assert plan.argv[plan.argv.index("--symbols") + 1] == (
        f"{option},AAPL,O:AAPL991217C00100000,SPY"
    )


def test_each_start_of_the_stacks_marketdata_has_ids_of_its_own(tmp_path: Path) -> None:
    """``fresh``, as docker-compose.yml sets it: marketdata draws a new salt
    at every start, so a restart's prices are not dropped as duplicates.
    The supervisor restarts it with the same environment."""
    from services.marketdata.config import MarketdataSettings
    from tests.unit.compose_files import assert_two_starts_share_no_ids

    given = inputs(tmp_path, CONFIG_DIR / "strategies.yaml", TRADEBUS_SYNTHETIC_RUN="pinned")
    (plan,) = wiring.plans(given, ["marketdata"])
    assert plan.env["TRADEBUS_SYNTHETIC_RUN"] == "fresh"  # whatever the environment says
    settings = MarketdataSettings(
        source="synthetic",
        symbols=plan.argv[plan.argv.index("--symbols") + 1],
        channels=plan.env["TRADEBUS_CHANNELS"],
        synthetic_run=plan.env["TRADEBUS_SYNTHETIC_RUN"],
    )
    assert_two_starts_share_no_ids(settings)


@pytest.mark.parametrize(
    ("nats_url", "database_url"),
    [
        ("nats://s3cr3t-token@10.0.0.5:4222", "postgresql://postgres@127.0.0.1:1/tradebus"),
        ("nats://127.0.0.1:1", "postgresql://postgres@db:5432/tradebus?password=s3cr3t-token"),
    ],
)
def test_no_url_with_a_secret_goes_to_the_env_file(
    tmp_path: Path, nats_url: str, database_url: str
) -> None:
    # A NATS token (a user without a password) and a ?password= are secrets
    # as a URL's password is: up wrote them into .tradebus/env until this.
    from services.stack.up import _stack_info

    home = tmp_path / "home"
    home.mkdir()
    given = inputs(tmp_path, CONFIG_DIR / "strategies.yaml")
    info = _stack_info(home, nats_url, database_url, [], None, None, given)
    assert info.env_file is None
    assert not (home / "env").exists()
    # Without a secret in either URL, the file is written.
    plain = _stack_info(home, "nats://127.0.0.1:1", given.database_url, [], None, None, given)
    assert plain.env_file == home / "env"
    assert "nats://127.0.0.1:1" in (home / "env").read_text()


@pytest.mark.usefixtures("no_servers")
def test_up_prints_the_notes_config_check_prints(tmp_path: Path) -> None:
    """A pairs leg on a contract of 2024: config check notes it (live, the
    risk-gate denies its orders in it); up printed none of config check's
    notes, and read no clock for them."""
    old = "O:AAPL241220C00100000"
    strategies = deployed_with(tmp_path, "strategies.yaml", "[MSFT, AAPL]", f"[MSFT, {old}]")
    risk = deployed_with(
        tmp_path,
        "risk.yaml",
        "      AAPL: {max_position: 200}",
        f'      "{old}": {{max_position: 2}}',
    )
    code, text = up_output(tmp_path, strategies=strategies, risk=risk)
    assert code == 1
    assert f"note: strategy pairs-msft-aapl ({strategies}) trades {old}, which expired" in text
    assert "cannot migrate the event store" in text  # a note: it went on to start


async def test_up_reaches_services_whose_metrics_listen_on_an_ipv6_address(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``TRADEBUS_METRICS_HOST=::1``: the services listen there, and up
    printed ``http://::1:19100/health``, which is no URL; its /health wait
    then raised ValueError on the port of it, and up ended with a traceback
    as the services started."""
    from prometheus_client import CollectorRegistry

    from libs.observability.http import MetricsServer
    from services.stack.ports import Ports
    from services.stack.running import _wait_healthy, service_specs

    monkeypatch.setenv("TRADEBUS_METRICS_HOST", "::1")
    given = inputs(tmp_path, CONFIG_DIR / "strategies.yaml")
    options = UpOptions(home=tmp_path / "home", metrics_port=0)
    ports = Ports(options, ["recorder"], lambda text: None)
    specs, endpoints = service_specs(["recorder"], given, ports)
    (spec,) = specs
    (endpoint,) = endpoints
    port = int(spec.env["TRADEBUS_METRICS_PORT"])
    assert endpoint.health_url == f"http://[::1]:{port}/health"
    assert endpoint.metrics_url == f"http://[::1]:{port}/metrics"
    server = MetricsServer("::1", port, lambda: (True, {}), CollectorRegistry())
    async with server:
        assert await _wait_healthy(endpoints, timeout=10) == []


@pytest.mark.parametrize(
    ("host", "reached"),
    [
        ("0.0.0.0", "127.0.0.1"),
        ("::", "[::1]"),
        ("::1", "[::1]"),
        ("127.0.0.2", "127.0.0.2"),
        ("localhost", "localhost"),
    ],
)
def test_up_reaches_a_wildcard_metrics_host_on_the_loopback_of_its_family(
    host: str, reached: str
) -> None:
    """``TRADEBUS_METRICS_HOST=::`` binds IPv6 only (asyncio sets
    IPV6_V6ONLY), and up printed and waited on 127.0.0.1, where nothing
    answers; now ``[::1]``."""
    from services.stack.running import url_host

    assert url_host(host) == reached


async def test_up_reaches_services_whose_metrics_listen_on_the_ipv6_wildcard(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``TRADEBUS_METRICS_HOST=::``: a service's /metrics bound there answers
    the /health wait at the URL up prints."""
    from prometheus_client import CollectorRegistry

    from libs.observability.http import MetricsServer
    from services.stack.ports import Ports
    from services.stack.running import _wait_healthy, service_specs

    monkeypatch.setenv("TRADEBUS_METRICS_HOST", "::")
    given = inputs(tmp_path, CONFIG_DIR / "strategies.yaml")
    options = UpOptions(home=tmp_path / "home", metrics_port=0)
    ports = Ports(options, ["recorder"], lambda text: None)
    (spec,), endpoints = service_specs(["recorder"], given, ports)
    port = int(spec.env["TRADEBUS_METRICS_PORT"])
    assert endpoints[0].health_url == f"http://[::1]:{port}/health"
    server = MetricsServer("::", port, lambda: (True, {}), CollectorRegistry())
    async with server:
        assert await _wait_healthy(endpoints, timeout=10) == []


@pytest.mark.usefixtures("no_servers")
def test_up_refuses_two_options_asking_for_one_port(tmp_path: Path) -> None:
    """``--paper-port 19101 --metrics-port 19100``: the risk-gate's /metrics
    (19100 counts up, a port a service) and the paper broker were both given
    19101, which looked free as neither listened yet; one then failed to bind."""
    code, text = up_output(tmp_path, paper_port=19101, metrics_port=19100)
    assert code == 1
    assert (
        "!!! --paper-port 19101 and --metrics-port 19100 (19100 to 19105, a port a service) "
        "both ask for port 19101; give each a port of its own (0: any free one)\n"
    ) in text
    assert "migrating" not in text  # nothing was started
    assert "cannot migrate" not in text


@pytest.mark.parametrize("option", ["--paper-port", "--metrics-port"])
def test_a_preferred_port_another_option_asks_for_goes_to_that_option(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, option: str
) -> None:
    """``--paper-port 19100`` (the first /metrics port up prefers), or
    ``--metrics-port 8765`` (the paper broker's): both servers were given
    that port, as neither listened yet when the other's was chosen. Now the
    option is followed, and the other server takes another port, saying why."""
    from libs.local.servers import free_port
    from services.stack import ports as stack_ports
    from services.stack.running import service_specs

    port = free_port()  # as the preferred port, one free here, whatever runs
    if option == "--paper-port":
        monkeypatch.setattr(stack_ports, "PREFERRED_METRICS_PORT", port)
        options = UpOptions(home=tmp_path / "home", paper_port=port)
    else:
        monkeypatch.setattr(stack_ports, "PREFERRED_PAPER_PORT", port)
        options = UpOptions(home=tmp_path / "home", metrics_port=port)
    notes: list[str] = []
    ports = stack_ports.Ports(options, ["paper-broker"], notes.append)
    paper = ports.paper()  # chosen first, as up does
    given = dataclasses.replace(inputs(tmp_path, CONFIG_DIR / "strategies.yaml"), paper_port=paper)
    (spec,), _ = service_specs(["paper-broker"], given, ports)
    metrics = int(spec.env["TRADEBUS_METRICS_PORT"])
    assert paper != metrics
    assert port == (paper if option == "--paper-port" else metrics)
    what = "paper-broker metrics" if option == "--paper-port" else "paper broker"
    (note,) = notes
    assert note.startswith(f"port {port} for {what} is the one {option} {port} asks for; using ")


def test_up_refuses_a_nats_monitor_port_in_use_naming_the_option(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The other ports were checked before the servers started; this one
    failed inside the server keeper, as "cannot start the servers: ...",
    once nats-server had been started on it."""
    import socket

    from libs.local.servers import free_port

    monkeypatch.delenv("NATS_URL", raising=False)
    # Never reached: only nats-server is ours, and it is refused first.
    monkeypatch.setenv("DATABASE_URL", "postgresql://postgres@127.0.0.1:1/tradebus")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, text = up_output(tmp_path, nats_port=free_port(), nats_monitor_port=port)
    assert code == 1
    assert (
        f"!!! nats-server monitoring port {port} is in use (--nats-monitor-port {port}); "
        "pick another or pass 0 for any\n"
    ) in text
    assert "starting nats-server" not in text


def test_up_refuses_a_metrics_port_in_use_on_the_metrics_host(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``TRADEBUS_METRICS_HOST=127.0.0.2`` and ``--metrics-port N`` with N in
    use there (free on 127.0.0.1): up only checked 127.0.0.1, handed N out,
    and the service then failed to bind it."""
    import socket

    from services.stack.ports import Ports
    from services.stack.preflight import UpError

    monkeypatch.setenv("TRADEBUS_METRICS_HOST", "127.0.0.2")
    with socket.socket() as taken:
        taken.bind(("127.0.0.2", 0))
        taken.listen()
        port = taken.getsockname()[1]
        ports = Ports(UpOptions(home=tmp_path, metrics_port=port), ["recorder"], print)
        with pytest.raises(UpError) as refused:
            ports.metrics(0, "recorder")
        # Any port then: one free on 127.0.0.2, not only on 127.0.0.1.
        monkeypatch.setattr("services.stack.ports.free_port", iter([port, port + 1]).__next__)
        any_port = Ports(UpOptions(home=tmp_path, metrics_port=0), ["recorder"], print)
        assert any_port.metrics(0, "recorder") == port + 1
    assert str(refused.value) == (
        f"recorder metrics port {port} is in use on 127.0.0.2 (TRADEBUS_METRICS_HOST) "
        f"(--metrics-port {port}); pick another or pass 0 for any"
    )


@pytest.mark.usefixtures("no_servers")
def test_up_refuses_metrics_ports_past_the_last_port(tmp_path: Path) -> None:
    """``--metrics-port 65533`` for six services asks for 65533 to 65538: up
    went on to start the servers, and met port 65536 only when handing the
    services theirs (binding it raises OverflowError, a traceback)."""
    code, text = up_output(tmp_path, metrics_port=65533)
    assert code == 1
    assert (
        "!!! --metrics-port 65533 (65533 to 65538, a port a service) asks for ports outside "
        "1 to 65535; give a lower one (0: any free one)\n"
    ) in text
    assert "migrating" not in text  # nothing was started
