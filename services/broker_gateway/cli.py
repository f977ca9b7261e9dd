"""``tradebus broker-gateway …``: order commands to brokers, broker events back.

Also ``tradebus positions`` (registered on the root command by :func:`register`).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Annotated

import typer

from libs.cli import add_replay_command, err, fail, reads_store, settings_or_exit
from libs.config import ServiceSettings, masked_url
from libs.tables import money, out, price, table

app = typer.Typer(help="The broker-gateway: one adapter per broker account.")

add_replay_command(app, "broker-gateway", default_subject="broker.>")


@app.command("run")
def run(
    config: Annotated[
        Path | None,
        typer.Option("--config", help="brokers.yaml (env TRADEBUS_BROKERS_CONFIG)"),
    ] = None,
) -> None:
    """Turn order commands into broker calls and broker events into events, until SIGTERM."""
    from libs.config import ConfigError
    from services.broker_gateway.config import (
        GatewaySettings,
        load_brokers_config,
        resolve_accounts,
    )
    from services.broker_gateway.main import main

    settings = settings_or_exit(GatewaySettings)
    path = config or settings.brokers_config
    if path is None:
        err.print("[red]error:[/red] no brokers.yaml: pass --config or set TRADEBUS_BROKERS_CONFIG")
        raise typer.Exit(2)
    try:
        accounts = resolve_accounts(load_brokers_config(path))
    except ConfigError as e:
        err.print(f"[red]error:[/red] {e}")
        raise typer.Exit(2) from e
    raise typer.Exit(main(settings, accounts))


def register(root: typer.Typer) -> None:
    """Operator commands owned by the broker side (positions)."""

    @root.command("positions")
    @reads_store
    def positions(
        account: Annotated[str | None, typer.Option(help="Only this account")] = None,
        as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line")] = False,
    ) -> None:
        """Positions and P&L per account, strategy and symbol (from the event store)."""
        from libs.store.connect import STORE_ERRORS
        from services.broker_gateway.positions import nets, plain, read_positions, totals

        settings = settings_or_exit(ServiceSettings)
        url = settings.database_url.get_secret_value()
        try:
            rows = asyncio.run(read_positions(url, account))
        except STORE_ERRORS as e:
            fail(f"cannot read the event store at {masked_url(url)}: {e}", 1)
        if as_json:
            for r in rows:
                print(json.dumps(r.as_json()))
            return
        listing = table(
            "account",
            "strategy",
            "symbol",
            "quantity",
            "avg price",
            "last price",
            "realized P&L",
            "unrealized P&L",
        )
        for r in rows:
            listing.add_row(
                r.account,
                r.strategy or "-",
                r.symbol,
                plain(r.quantity),
                price(r.avg_price) if r.quantity else "",
                price(r.last_price),
                money(r.realized_pnl),
                money(r.unrealized_pnl),
            )
        for (acct, symbol), net in nets(rows).items():
            listing.add_row(acct, "[b]net[/b]", symbol, plain(net), "", "", "", "")
        summed = totals(rows)
        for acct, t in summed.items():
            listing.add_row(
                acct, "[b]total[/b]", "", "", "", "", money(t.realized), money(t.unrealized)
            )
        out.print(listing)
        for acct, t in summed.items():
            if t.unpriced:
                # Said, not summed as 0: an account's total looked complete.
                out.print(
                    f"[yellow]{acct}: the unrealized P&L leaves out {len(t.unpriced)} "
                    f"position(s) with no price: {', '.join(t.unpriced)}[/yellow]"
                )
