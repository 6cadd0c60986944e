"""Device drivers for the plan executor: one file per device API, each importing its library lazily."""
from __future__ import annotations

from typing import Any

from ..errors import RuntimeLoadError

DRIVERS = ("cpu",)


def get_driver(name: str, **kw: Any):
    if name == "cpu":
        from .cpu import CpuDriver

        return CpuDriver(**kw)
    raise RuntimeLoadError(f"unknown device driver {name!r} (available: {', '.join(DRIVERS)})")
