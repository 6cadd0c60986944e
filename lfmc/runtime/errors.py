"""Runtime error types (the runtime imports nothing of the compiler, so it has its own)."""


class RuntimeLoadError(Exception):
    """An artifact that cannot be loaded: missing or altered files, wrong version, target or device."""


class EngineError(Exception):
    """Bad use of a loaded engine: prompt too long, unknown sequence, batch too large."""
