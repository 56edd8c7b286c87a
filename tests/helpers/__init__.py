"""Shared test helpers (imported as ``helpers.<module>``; tests/ is on the pytest path)."""
