"""What the paper broker talks to: its WebSocket clients, NATS prices, its journal."""
