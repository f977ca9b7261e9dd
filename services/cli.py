"""The ``tradebus`` command: one group per service, plus operator commands.

Each group lives in its service (``services/<service>/cli.py``) and is
imported here; a group's heavy imports happen inside its commands, so that
an image holding one service does not need another's dependencies.
"""

from __future__ import annotations

import typer

from services.broker_gateway import cli as broker_gateway_cli
from services.marketdata import cli as marketdata_cli
from services.ops import cli as ops_cli
from services.paper_broker import cli as paper_broker_cli
from services.recorder import cli as recorder_cli
from services.risk_gate import cli as risk_gate_cli
from services.stack import cli as stack_cli
from services.strategy_runner import cli as strategy_runner_cli

app = typer.Typer(
    name="tradebus",
    help="tradebus: risk-gated trading-bot orchestration over NATS JetStream and Postgres.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(recorder_cli.app, name="recorder")
app.add_typer(marketdata_cli.app, name="marketdata")
app.add_typer(strategy_runner_cli.app, name="strategy-runner")
app.add_typer(risk_gate_cli.app, name="risk-gate")
app.add_typer(broker_gateway_cli.app, name="broker-gateway")
app.add_typer(paper_broker_cli.app, name="paper-broker")
app.add_typer(ops_cli.db_app, name="db")
ops_cli.register(app)
stack_cli.register(app)
risk_gate_cli.register(app)
broker_gateway_cli.register(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
