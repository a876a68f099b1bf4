"""Errors the engine raises to its callers."""


class QueueFullError(RuntimeError):
    """Too many requests are queued; retry later (HTTP 429)."""


class EngineDeadError(RuntimeError):
    """The engine's scheduler loop has stopped; create a new Engine."""
