"""The demo's pure parts: the random walk, bar building, the order-chain builder.

Nothing here reads the wall clock, does I/O or draws unseeded randomness: the
same seed and the same tick times give the same prices, bars and chains.
"""
