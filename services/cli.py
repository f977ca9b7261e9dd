"""The ``tradebus`` command: one group per service, plus operator commands.

Each group lives in its service (``services/<service>/cli.py``) and is
imported here; a group's heavy imports happen inside its commands, so that
an image holding one service does not need another's dependencies.
"""

from __future__ import annotations

import typer

from services.ops import cli as ops_cli
from services.recorder import cli as recorder_cli
from services.stack import cli as stack_cli

app = typer.Typer(
    name="tradebus",
    help="tradebus: risk-gated trading-bot orchestration over NATS JetStream and Postgres.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(recorder_cli.app, name="recorder")
app.add_typer(ops_cli.db_app, name="db")
ops_cli.register(app)
stack_cli.register(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
