"""libs/runtime.py: what start-up built is kept out of the collector's sight."""

from __future__ import annotations

import gc
import logging
import weakref
from collections.abc import Coroutine, Iterator
from typing import Any

import pytest

from libs.runtime import keep_for_good, leaf_errors


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


@pytest.fixture
def unfrozen() -> Iterator[None]:
    yield
    gc.unfreeze()


@pytest.mark.usefixtures("unfrozen")
def test_what_is_kept_for_good_is_frozen_and_garbage_is_collected_first() -> None:
    a, b = Node(), Node()
    a.other, b.other = b, a  # a cycle: only the collector frees it
    gone = weakref.ref(a)
    del a, b
    held = [Node() for _ in range(1_000)]
    frozen_before = gc.get_freeze_count()
    keep_for_good()
    assert gone() is None, "garbage from before was frozen instead of freed"
    assert gc.get_freeze_count() >= frozen_before + len(held)
    in_sight = {id(o) for o in gc.get_objects()}
    assert not [x for x in held if id(x) in in_sight]


def test_leaf_errors_are_the_errors_inside_nested_groups() -> None:
    inner = ValueError("inner")
    nested = ExceptionGroup("outer", [ExceptionGroup("middle", [inner]), KeyError("k")])
    assert [str(e) for e in leaf_errors(nested)] == ["inner", "'k'"]
    plain = RuntimeError("plain")
    assert list(leaf_errors(plain)) == [plain]


@pytest.mark.parametrize("service", ["broker-gateway", "strategy-runner"])
def test_a_service_stopped_by_a_nested_group_logs_the_error_itself(
    service: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bus failure inside a task group inside the service's task group (the
    gateway's reconciliation task under its stream task) is logged as itself;
    it was logged as "unhandled errors in a TaskGroup (1 sub-exception)"."""
    from libs.bus.errors import BusUnavailable
    from services.broker_gateway import main as gateway_main
    from services.broker_gateway.config import GatewaySettings
    from services.strategy_runner import main as runner_main
    from services.strategy_runner.config import RunnerSettings

    module: Any = gateway_main if service == "broker-gateway" else runner_main
    settings: Any = GatewaySettings if service == "broker-gateway" else RunnerSettings
    settings = settings.model_construct(log_level="INFO", log_json=False)

    def run_service(coro: Coroutine[Any, Any, Any]) -> None:
        coro.close()
        error = BusUnavailable("NATS connection is closed")
        raise ExceptionGroup("outer", [ExceptionGroup("unhandled errors in a TaskGroup", [error])])

    monkeypatch.setattr(module, "run_service", run_service)
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        assert module.main(settings, []) == 1  # sets up its own logging
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    err = capsys.readouterr().err
    assert f"{service} stopped: NATS connection is closed" in err, err
    assert "unhandled errors" not in err, err
