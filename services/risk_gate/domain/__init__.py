"""The risk-gate's pure core: ``evolve``, ``decide`` and ``react`` over ``RiskState``.

No I/O, no clock, no random ids: the same code runs live and in the backtest.
"""
