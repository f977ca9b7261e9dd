"""What the risk-gate talks to: the event store (rebuild) and JetStream (live)."""
