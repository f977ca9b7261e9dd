"""paper.yaml and brokers.yaml: strict validation, errors that name the key, secrets kept."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from pathlib import Path

import pytest

from libs.config import ConfigError
from services.broker_gateway.config import load_brokers_config, resolve_accounts
from services.paper_broker.config import load_paper_config

DEPLOY = Path(__file__).parents[2] / "deploy" / "config"


def test_the_example_files_load() -> None:
    paper = load_paper_config(DEPLOY / "paper.yaml")
    brokers = load_brokers_config(DEPLOY / "brokers.yaml")
    assert set(paper.accounts) == set(brokers.accounts) == {"paper"}
    assert paper.book_config().fill_model.max_fill_quantity == Decimal(500)
    # Both name the same variables, so the broker and the gateway agree on the keys.
    assert paper.accounts["paper"].key_id_env == brokers.accounts["paper"].credentials.key_id_env


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "fill_model: {slipage_bps: 1}\n",
            "fill_model.slipage_bps: Extra inputs are not permitted",
        ),
        ("fill_model: {max_fill_quantity: 0}\n", "fill_model.max_fill_quantity"),
        ("accounts: {}\n", "accounts"),
        ("accounts: {a: {key_id_env: K}}\n", "accounts.a.secret_key_env: Field required"),
        ("accounts: {'bad name': {key_id_env: K, secret_key_env: S}}\n", "accounts.bad name"),
        ("port: 70000\n", "port"),
        ("market_data: {linger_s: -1}\n", "market_data.linger_s"),
        ("journal_keep_finished_days: 0\n", "journal_keep_finished_days"),
        ("journal_compact_mb: -1\n", "journal_compact_mb"),
        # Accepted until this, then start-up died of an OverflowError naming nothing.
        ("journal_keep_finished_days: .inf\n", "journal_keep_finished_days"),
        ("journal_keep_finished_days: 1e300\n", "journal_keep_finished_days"),
        ("journal_compact_mb: .inf\n", "journal_compact_mb"),
        # Orders name symbols in upper case: a halt on 'aapl' never halted AAPL.
        ("halted_symbols: [aapl]\n", "halted_symbols.0: Value error, must be upper case"),
        ("untradable_symbols: [Msft]\n", "untradable_symbols.0: Value error, must be upper case"),
        ("halted_symbols: [brk.b]\n", "must be upper case, as market data names it: BRK.B"),
        ("halted_symbols: [BRK B]\n", "halted_symbols.0: String should match pattern"),
        ("[1, 2\n", "not valid YAML"),
        ("port: 1\nhost: h\nport: 2\n", "duplicate key 'port' on line 3 (first on line 1)"),
    ],
)
def test_paper_yaml_errors_name_the_key(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "paper.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=r"paper\.yaml") as e:
        load_paper_config(path)
    assert message in str(e.value)


def test_share_class_symbols_are_taken_as_the_contract_takes_them(tmp_path: Path) -> None:
    # Orders name Berkshire's class B shares BRK.B (or BRK/B at Alpaca); a
    # halt or a refusal of them could not be configured at all.
    path = tmp_path / "paper.yaml"
    path.write_text("halted_symbols: [BRK.B]\nuntradable_symbols: [BRK/B]\n")
    book = load_paper_config(path).book_config()
    assert book.halted_symbols == frozenset({"BRK.B"})
    assert book.untradable_symbols == frozenset({"BRK/B"})


def test_the_journal_s_compaction_settings(tmp_path: Path) -> None:
    example = load_paper_config(DEPLOY / "paper.yaml").journal_file()
    assert example is not None
    assert (example.keep_finished_s, example.compact_bytes) == (7 * 86_400, 64 << 20)
    path = tmp_path / "paper.yaml"
    path.write_text("journal: j.jsonl\njournal_keep_finished_days: null\njournal_compact_mb: 1\n")
    kept = load_paper_config(path).journal_file()
    assert kept is not None
    assert (kept.keep_finished_s, kept.compact_bytes) == (None, 1 << 20)
    path.write_text("journal: j.jsonl\njournal_compact: false\n")
    off = load_paper_config(path).journal_file()
    assert off is not None
    assert (off.keep_finished_s, off.compact_bytes) == (None, None), "every update kept"
    assert load_paper_config(None).journal_file() is None


CREDS = "credentials: {key_id_env: K, secret_key_env: S}"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (f"accounts: {{a: {{adapter: alpaca, url: 'ws://x', {CREDS}}}}}", "accounts.a.adapter"),
        (f"accounts: {{a: {{adapter: paper, url: 'http://x', {CREDS}}}}}", "accounts.a.url"),
        (
            f"accounts: {{a: {{adapter: paper, url: 'ws://x', {CREDS}, "
            "heartbeat: {timeout_s: 0}}}",
            "accounts.a.heartbeat.timeout_s",
        ),
        (
            "accounts: {a: {adapter: paper, url: 'ws://x', "
            "credentials: {key_id: K, secret_key_env: S}}}",
            "accounts.a.credentials.key_id",
        ),
        # Accepted until this: the first retry waited initial_s, every later one max_s.
        (
            f"accounts: {{a: {{adapter: paper, url: 'ws://x', {CREDS}, "
            "reconnect: {initial_s: 10}}}",
            "accounts.a.reconnect.max_s: Value error, must be at least initial_s (10)",
        ),
    ],
)
def test_brokers_yaml_errors_name_the_key(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "brokers.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_brokers_config(path)
    assert message in str(e.value)


def test_credentials_come_from_the_environment_and_stay_secret(tmp_path: Path) -> None:
    paper = load_paper_config(None)  # the default: one account "paper"
    with pytest.raises(ConfigError, match="TRADEBUS_PAPER_SECRET_KEY is not set"):
        paper.credentials({"TRADEBUS_PAPER_KEY_ID": "k"})
    [cred] = paper.credentials({"TRADEBUS_PAPER_KEY_ID": "k", "TRADEBUS_PAPER_SECRET_KEY": "hush"})
    assert (cred.account, cred.key_id) == ("paper", "k")
    assert "hush" not in repr(cred)
    brokers = load_brokers_config(DEPLOY / "brokers.yaml")
    with pytest.raises(
        ConfigError, match=r"accounts.paper.credentials.key_id_env: .*KEY_ID is not set"
    ):
        resolve_accounts(brokers, {})
    env = {"TRADEBUS_PAPER_KEY_ID": "k", "TRADEBUS_PAPER_SECRET_KEY": "hush"}
    [account] = resolve_accounts(brokers, env)
    assert account.secret_key.get_secret_value() == "hush"
    assert "hush" not in repr(account)


def test_two_accounts_with_one_key_id_are_refused_naming_both(tmp_path: Path) -> None:
    """An account block copied without changing its key variable: the refusal
    names both accounts and the variables, never the key id's value."""
    path = tmp_path / "paper.yaml"
    path.write_text(
        "accounts:\n"
        "  alpha: {key_id_env: KEY_A, secret_key_env: SECRET_A}\n"
        "  beta: {key_id_env: KEY_B, secret_key_env: SECRET_B}\n"
    )
    paper = load_paper_config(path)
    env = {"KEY_A": "the-key", "SECRET_A": "s1", "KEY_B": "the-key", "SECRET_B": "s2"}
    with pytest.raises(ConfigError) as e:
        paper.credentials(env)
    message = str(e.value)
    assert message.startswith("accounts.beta.key_id_env: ")
    assert "KEY_B" in message
    assert "accounts.alpha.key_id_env" in message
    assert "KEY_A" in message
    assert "the-key" not in message


def test_a_brokers_yaml_key_given_twice_is_refused_with_its_line(tmp_path: Path) -> None:
    """YAML alone keeps the last: the second account ``paper`` silently replaced
    the first, URL and credentials and all."""
    path = tmp_path / "brokers.yaml"
    path.write_text(
        "accounts:\n"
        "  paper:\n"
        "    adapter: paper\n"
        "    url: ws://127.0.0.1:1/stream\n"
        "    credentials: {key_id_env: A, secret_key_env: B}\n"
        "  paper:\n"
        "    adapter: paper\n"
        "    url: ws://127.0.0.1:2/stream\n"
        "    credentials: {key_id_env: C, secret_key_env: C}\n"
    )
    with pytest.raises(ConfigError) as e:
        load_brokers_config(path)
    assert str(e.value) == (
        f"{path}: not valid YAML: duplicate key 'paper' on line 6 (first on line 2); "
        "YAML would silently keep only the last"
    )
    path.write_text("accounts: {paper: {adapter: paper, adapter: paper}}\n")
    with pytest.raises(ConfigError, match="duplicate key 'adapter' on line 1"):
        load_brokers_config(path)


def test_day_orders_expire_at_the_session_s_close_by_default(tmp_path: Path) -> None:
    """``close``: the exchange's close, 13:00 on a half day; a time is kept
    (the session's close if that is earlier), null never."""
    assert load_paper_config(None).book_config().day_orders_expire_at == "close"
    assert load_paper_config(DEPLOY / "paper.yaml").day_orders_expire_at == "close"
    paper = tmp_path / "paper.yaml"
    for text, expected in (
        ("day_orders_expire_at: close\n", "close"),
        ("day_orders_expire_at: 15:30\n", dt.time(15, 30)),
        ("day_orders_expire_at: null\n", None),
    ):
        paper.write_text(text)
        assert load_paper_config(paper).day_orders_expire_at == expected, text
    paper.write_text("day_orders_expire_at: closing\n")
    with pytest.raises(ConfigError, match="day_orders_expire_at"):
        load_paper_config(paper)
