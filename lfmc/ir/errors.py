"""lfmc's error types: every failure on bad input is one of these, with a message that says what and where."""
from __future__ import annotations


class LfmcError(Exception):
    """Base class of every error lfmc raises on bad input or unsupported models."""


class ParseError(LfmcError):
    """IR text that does not parse; the message names the line and column."""

    def __init__(self, msg: str, line: int | None = None, col: int | None = None, source: str = "<ir>"):
        where = source if line is None else f"{source}:{line}:{col}"
        super().__init__(f"{where}: {msg}")
        self.line, self.col = line, col


class VerifyError(LfmcError):
    """A structurally invalid IR graph; the message names the node."""


class ShapeError(VerifyError, ValueError):
    """An operator whose attributes or parameter shapes do not fit together (heads vs kv_heads, a weight's
    width vs the hidden size): raised while a graph is built, so that a config or file describing such a model is
    refused as bad input (an LfmcError), and still a ValueError for callers that catch that."""


class WeightsError(LfmcError):
    """Missing, corrupt or mismatched weights; the message names the file and the parameter."""


class ModelLoadError(LfmcError):
    """A saved model directory (NAME.lfm) that cannot be read."""
