"""What the gateway talks to: brokers (one adapter each), NATS, the event store."""
