"""What the strategy-runner talks to: the event store (rebuild) and JetStream."""
