"""Replay and live follow over any engine, and the writer-to-loop hand-off."""
