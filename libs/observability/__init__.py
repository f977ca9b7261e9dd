"""Logging set-up and the /metrics + /health endpoint every service serves."""
