"""``tradebus recorder …``: run the event-recorder, replay from the store."""

from __future__ import annotations

import typer

from libs.cli import add_replay_command, settings_or_exit

app = typer.Typer(help="The event-recorder: every event into Postgres, in order.")


@app.command("run")
def run() -> None:
    """Record the whole stream into the event store until stopped (SIGTERM)."""
    from services.recorder.config import RecorderSettings
    from services.recorder.main import main

    main(settings_or_exit(RecorderSettings))


add_replay_command(app, "recorder")
