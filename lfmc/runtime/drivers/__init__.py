"""Device drivers for the plan executor: one file per device API, each importing its library lazily."""
from __future__ import annotations

from typing import Any

from ..errors import RuntimeLoadError

DRIVERS = ("cpu", "opencl", "cuda", "wafer")


def get_driver(name: str, **kw: Any):
    """The driver for device API ``name``: ``cpu`` (TVM runtime), ``opencl`` (pyopencl), ``cuda`` (CuPy),
    ``wafer`` (lfmc's mesh simulator)."""
    if name == "cpu":
        from .cpu import CpuDriver

        return CpuDriver(**kw)
    if name == "opencl":
        from .opencl import OpenCLDriver

        return OpenCLDriver(**kw)
    if name == "cuda":
        from .cuda import CudaDriver

        return CudaDriver(**kw)
    if name == "wafer":
        from .wafer import WaferDriver

        return WaferDriver(**kw)
    raise RuntimeLoadError(f"unknown device driver {name!r} (available: {', '.join(DRIVERS)})")
