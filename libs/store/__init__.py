"""The Postgres event store: schema, migrations, writer and readers."""
