"""The strategy-runner's series the risk board counts with ``increase()``."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import REGISTRY

from libs.strategy.spec import load_strategies
from services.strategy_runner.config import RunnerSettings
from services.strategy_runner.runner import Runner

STRATEGIES = """
strategies:
  - name: counted-from-zero
    kind: sma_crossover
    symbols: [AAPL]
    account: paper
    params: {fast_period: 5, slow_period: 20, quantity: 100}
"""


def test_each_strategy_s_fault_series_start_at_zero(tmp_path: Path) -> None:
    """Prometheus's ``increase()`` starts from a series' first sample: a
    fault series first seen at 1 (made by its first ``inc()``) showed no
    increase, so the board's "Strategy faults" missed each strategy's first
    fault after the runner started, usually the only one."""
    path = tmp_path / "strategies.yaml"
    path.write_text(STRATEGIES)
    Runner(RunnerSettings(instance="series"), load_strategies(path))
    for action in ("stopped", "restarted"):
        labels = {"strategy": "counted-from-zero", "action": action}
        assert REGISTRY.get_sample_value("tradebus_strategy_faults_total", labels) == 0
