"""The demo event source: a seeded market and order chains, so events visibly flow."""
