"""Device drivers for the plan executor: one file per device API, registered here by name.

A registration names the driver's module and class; nothing is imported until the driver is asked for, and a
driver module imports its device library (TVM's runtime, pyopencl, CuPy) only when a driver is made. Besides
the class, a driver module may define two checks that need no device (``lfmc verify``, loading):

- ``check_artifact(manifest)``: refuse an artifact this machine cannot run (e.g. CPU features it lacks);
- ``verify_library(path, manifest, nargs) -> str``: check one kernel library as data (no code loaded) against
  the plan's argument counts ``{kernel: n}``; returns what kind of library it is.

Device APIs whose code lfmc generates but this runtime cannot execute (Metal, HIP) are registered without a
class: their libraries verify, and asking for the driver says where they run.
"""
from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from ..errors import RuntimeLoadError


@dataclass(frozen=True)
class DriverEntry:
    name: str
    module: str                   # absolute, or relative to this package (".cpu")
    cls: str | None               # None: code is generated for this API, but no driver runs it here
    runs_on: str = ""             # for cls None: where such artifacts run

    def load_module(self) -> ModuleType:
        return importlib.import_module(self.module, __package__ if self.module.startswith(".") else None)


_REGISTRY: dict[str, DriverEntry] = {}


def register_driver(name: str, module: str, cls: str | None, runs_on: str = "") -> DriverEntry:
    """Register (or replace) the driver ``name``: ``cls`` in ``module``, imported when first used."""
    e = _REGISTRY[name] = DriverEntry(name, module, cls, runs_on)
    return e


def unregister_driver(name: str) -> None:
    _REGISTRY.pop(name, None)


def driver_names(runnable: bool = True) -> tuple[str, ...]:
    """The registered drivers (``runnable``: only those this runtime can execute with)."""
    return tuple(n for n, e in _REGISTRY.items() if e.cls is not None or not runnable)


def driver_entry(name: str) -> DriverEntry:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise RuntimeLoadError(f"unknown device driver {name!r} (available: {', '.join(driver_names())})") from None


def driver_hook(name: str, hook: str):
    """The module-level function ``hook`` of driver ``name``'s module, or None."""
    return getattr(driver_entry(name).load_module(), hook, None)


def driver_class(name: str) -> type:
    """The class of driver ``name`` (imports its module, not its device library)."""
    e = driver_entry(name)
    if e.cls is None:
        raise RuntimeLoadError(f"this runtime has no {name!r} driver: such artifacts run on {e.runs_on}")
    return getattr(e.load_module(), e.cls)


def get_driver(name: str, **kw: Any):
    """A driver for device API ``name``; keyword options a driver does not take (``num_threads`` for a GPU) are
    left out."""
    cls = driver_class(name)
    params = inspect.signature(cls.__init__).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        kw = {k: v for k, v in kw.items() if k in params}
    return cls(**kw)


register_driver("cpu", ".cpu", "CpuDriver")
register_driver("opencl", ".opencl", "OpenCLDriver")
register_driver("cuda", ".cuda", "CudaDriver")
register_driver("wafer", ".wafer", "WaferDriver")
register_driver("metal", ".launch", None, "a Mac (TVM's Metal runtime, through the cpu driver's TVM runtime)")
register_driver("hip", ".launch", None, "an AMD GPU (ROCm)")
