"""The event contract: envelope, every event type, subjects and the codec."""
