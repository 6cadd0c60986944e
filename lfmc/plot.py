"""matplotlib for lfmc's pictures (``--plot`` options, benchmarks): the Agg backend, PNG files, and a clear error
when the optional plotting extra is missing (``pip install 'lfmc[plot]'``)."""
from __future__ import annotations

from typing import Any

from .ir.errors import LfmcError


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the non-interactive Agg backend."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise LfmcError("--plot needs matplotlib: pip install 'lfmc[plot]'") from None
    return plt
