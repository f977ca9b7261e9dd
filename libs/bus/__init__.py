"""The bus: JetStream connection, stream, publishing and consuming."""
