"""Risk-gate errors.

ValueError
└── RiskConfigError        the limits file is missing or invalid (config.py)

Faults of NATS and Postgres arrive as the libraries' own trees
(``libs.bus.errors.BusError``, ``libs.store.errors.StoreError``); the gate
catches those in one place (``gate.RETRYABLE``), rebuilds its state from the
store and carries on. A denial is not an error: it is a decision.
"""

from __future__ import annotations

from services.risk_gate.config import RiskConfigError

__all__ = ["RiskConfigError"]
