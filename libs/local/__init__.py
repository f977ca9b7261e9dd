"""Local infrastructure: nats-server and PostgreSQL from wheels."""
