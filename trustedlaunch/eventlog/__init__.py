"""Event log layer: TCG PC Client event log parsing, replay and boot summaries."""
