"""Watching the served model: the reference profile saved with each version (next: drift, accuracy)."""
