"""Which orders the paper broker takes: :func:`validate` refuses an order
spec as Alpaca would (bad fields, an untradable or unknown symbol, an option
contract past the close of its expiry day, an auction order out of its hours,
too large), before anything is created. Pure.
"""

from __future__ import annotations

from decimal import Decimal

from libs.contract.options import OPTION_PREFIX, parse_option
from services.paper_broker.domain.auction import AUCTIONS, refusal, session_for
from services.paper_broker.domain.model import (
    CODE_FORBIDDEN,
    CODE_UNPROCESSABLE,
    BookConfig,
    OrderSpec,
    Refused,
)

#: Alpaca's limit on a client order id.
MAX_CLIENT_ORDER_ID = 48
#: Quantities and prices must stay below this: the contract carries 38 digits,
#: 12 of them places. A larger quantity's fill could not be published, and one
#: past the decimal context's exponent (1e1000000) raised Overflow in the
#: middle of a submit, then again at every price of its symbol.
MAX_AMOUNT = Decimal("1e26")


def validate(config: BookConfig, spec: OrderSpec, now: int) -> None:
    """Raise :class:`Refused` (HTTP status, Alpaca's code, why) if the broker
    refuses ``spec`` at ``now``; return if it takes it."""

    def refuse(message: str, status: int = 422, code: int = CODE_UNPROCESSABLE) -> Refused:
        return Refused(status, code, message)

    if spec.qty <= 0:
        raise refuse("qty must be > 0")
    if spec.order_type in ("limit", "stop_limit") and spec.limit_price is None:
        raise refuse(f"limit_price is required for {spec.order_type} orders")
    if spec.order_type in ("stop", "stop_limit") and spec.stop_price is None:
        raise refuse(f"stop_price is required for {spec.order_type} orders")
    for name, price in (("limit_price", spec.limit_price), ("stop_price", spec.stop_price)):
        if price is not None and price <= 0:
            raise refuse(f"{name} must be > 0")
    for name, amount in (
        ("qty", spec.qty),
        ("limit_price", spec.limit_price),
        ("stop_price", spec.stop_price),
    ):
        if amount is not None and amount >= MAX_AMOUNT:
            raise refuse(f"{name} must be less than 1e26")
    if spec.asset_class == "us_option" and spec.qty != spec.qty.to_integral_value():
        # Options trade in whole contracts; the real broker refuses part of one.
        raise refuse("qty must be a whole number of contracts for options")
    if spec.time_in_force in AUCTIONS:
        tif = spec.time_in_force
        if spec.order_type not in ("market", "limit"):
            raise refuse(f"time_in_force {tif} is for market and limit orders only")
        if spec.asset_class == "us_option" or spec.symbol.startswith(OPTION_PREFIX):
            # As at Alpaca, whose options trade day orders only.
            raise refuse(f"time_in_force {tif} is not supported for options")
        if session_for(now, tif) is None:
            raise refuse(refusal(tif, now))
    if spec.client_order_id is not None and len(spec.client_order_id) > MAX_CLIENT_ORDER_ID:
        raise refuse(f"client_order_id must be at most {MAX_CLIENT_ORDER_ID} characters")
    if spec.symbol in config.untradable_symbols:
        raise refuse(f"asset {spec.symbol} is not tradable")
    if spec.symbol.startswith(OPTION_PREFIX):
        try:
            contract = parse_option(spec.symbol)
        except ValueError as e:
            raise refuse(f"asset {spec.symbol} not found: {e}") from None
        if contract.expired_by(now):
            # As a broker does: an expired contract no longer trades,
            # closing orders included (its position is the broker's to settle).
            raise refuse(f"asset {spec.symbol} is not tradable: it {contract.expired_text}")
    limit = config.max_order_quantity
    if limit is not None and spec.qty > limit:
        raise refuse(
            f"qty {spec.qty} exceeds the account's maximum order quantity {limit}",
            status=403,
            code=CODE_FORBIDDEN,
        )
