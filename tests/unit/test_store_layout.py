"""The services read the event store's layout without SQLAlchemy."""

from __future__ import annotations

import subprocess
import sys

from libs.store import layout, schema


def test_the_models_and_the_layout_agree() -> None:
    # schema.py takes its row types and COPY order from layout.py: the
    # columns the recorder copies are the model's, less the one the
    # database fills in.
    copied = set(layout.COPY_COLUMNS)
    columns = {c.name for c in schema.Base.metadata.tables["events"].columns}
    assert copied == columns - {"recorded_at"}
    assert (schema.DUPLICATE, schema.MISSING, schema.UNDECODABLE) == (
        layout.DUPLICATE,
        layout.MISSING,
        layout.UNDECODABLE,
    )


def test_the_services_start_without_sqlalchemy() -> None:
    # Importing SQLAlchemy costs every service and command about 0.3 s of
    # CPU at start; only migrations need it.
    modules = (
        "services.cli",
        "services.recorder.recorder",
        "services.risk_gate.gate",
        "services.strategy_runner.runner",
        "services.broker_gateway.main",
        "services.ops.cli",
        "libs.continuity",
    )
    code = f"import sys; import {', '.join(modules)}; print('sqlalchemy' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "False", out.stderr
