"""The paper broker adapter (``services/paper_broker``: Alpaca-shaped WebSocket)."""
