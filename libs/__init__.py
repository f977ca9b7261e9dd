"""Code shared by two or more tradebus services. Nothing here imports a service."""
