"""The `cuda` driver: CuPy on an NVIDIA GPU, no TVM at run time.

A CUDA artifact's kernel library is ``kernels/device.json``: the CUDA C source TVM generated (plus, when nvcc was
present at compile time, a PTX for the profile's architecture) and the launch table (see :mod:`.launch`). The
source is compiled once by NVRTC through ``cupy.RawModule`` (or the PTX loaded). Decode steps can be captured
into a CUDA graph per batch size (``Engine(..., device="cuda")`` does so), so that a step is one launch from
Python.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import RuntimeLoadError
from .launch import LaunchSpec, TempPool, read_device_library
from .launch import verify_library  # noqa: F401  (the driver's library check: lfmc verify)


class CuView:
    """The first prod(shape) elements of a device array, seen with ``shape`` (a kernel argument)."""

    __slots__ = ("ptr", "shape")

    def __init__(self, ptr: Any, shape: tuple[int, ...]):
        self.ptr, self.shape = ptr, tuple(shape)


class _Kernel:
    def __init__(self, drv: "CudaDriver", spec: LaunchSpec, module: Any):
        self.drv, self.spec = drv, spec
        try:
            self.funcs = [module.get_function(fn) for fn, *_ in spec.launches]
        except Exception as e:                     # noqa: BLE001
            raise RuntimeLoadError(f"kernel {spec.name}: device function missing from the module ({e})") from None
        self.temps = TempPool(spec, lambda n, dtype: drv.cp.zeros((n,), dtype))

    def __call__(self, *args: Any) -> None:
        env = self.spec.env(args, lambda a: a.shape)
        for f, (_, largs, grid, block) in zip(self.funcs, self.spec.launches):
            kargs = self.spec.arguments(largs, args, env, self.temps, lambda a: a.ptr)
            g = tuple(x(env) for x in grid)
            if min(g) <= 0:
                continue
            with self.drv.stream:
                f(g, tuple(x(env) for x in block), tuple(kargs))


class CudaDriver:
    name = "cuda"

    def __init__(self, device: int = 0):
        try:
            import cupy as cp
        except ImportError as e:
            raise RuntimeLoadError(f"the cuda driver needs CuPy (pip install cupy-cuda12x): {e}") from None
        self.cp = cp
        try:
            cp.cuda.Device(device).use()
        except Exception as e:                     # noqa: BLE001
            raise RuntimeLoadError(f"no CUDA device {device} ({e})") from None
        self.stream = cp.cuda.Stream(non_blocking=True)
        self.graphs: dict[Any, Any] = {}

    def load_library(self, path: Path) -> Any:
        lib = read_device_library(path, "cuda")
        source, table = lib["source"], lib["table"]
        try:
            module = self.cp.RawModule(code=source, options=("--std=c++17",))
            module.compile()
        except Exception as e:                     # noqa: BLE001
            raise RuntimeLoadError(f"{path}: NVRTC rejected the kernels: {str(e)[:2000]}") from None
        return {"module": module, "table": table, "path": path}

    def function(self, lib: Any, name: str) -> Any:
        if name not in lib["table"]:
            raise RuntimeLoadError(f"kernel {name!r} is missing from {lib['path']}")
        return _Kernel(self, LaunchSpec(name, lib["table"][name]), lib["module"])

    def alloc(self, shape: tuple[int, ...], dtype: str) -> Any:
        return self.cp.zeros(shape, dtype)

    def alloc_host(self, shape: tuple[int, ...], dtype: str) -> np.ndarray:
        return np.empty(shape, dtype)

    def to_device(self, host: np.ndarray) -> Any:
        return self.cp.asarray(host)

    def device_view(self, buf: Any, shape: tuple[int, ...]) -> CuView:
        return CuView(buf, shape)

    def write(self, buf: Any, data: np.ndarray) -> None:
        data = np.ascontiguousarray(data, dtype=buf.dtype).reshape(-1)
        buf.reshape(-1)[: data.size].set(data, stream=self.stream)

    def read(self, buf: Any, shape: tuple[int, ...]) -> np.ndarray:
        n = int(np.prod(shape, dtype=np.int64))
        self.stream.synchronize()
        return buf.reshape(-1)[:n].get().reshape(shape)

    def fill(self, buf: Any, index: int, value: float = 0.0) -> None:
        with self.stream:
            buf[index] = value

    def copy_slot(self, buf: Any, src: int, dst: int, rows: int | None = None) -> None:
        """``buf[dst] = buf[src]`` (one slot of a state tensor), only its first ``rows`` rows when given."""
        with self.stream:
            if rows is None:
                buf[dst] = buf[src]
            else:
                buf[dst, :rows] = buf[src, :rows]

    def read_slot(self, buf: Any, slot: int, rows: int | None = None, start: int = 0) -> np.ndarray:
        """A host copy of ``buf[slot]`` (one slot of a state tensor), only its rows [start, rows) when given."""
        self.stream.synchronize()
        return (buf[slot] if rows is None else buf[slot, start:rows]).get()

    def write_slot(self, buf: Any, slot: int, data: np.ndarray) -> None:
        """``buf[slot][:len(data)] = data``: a slot (or its first rows) from a host copy (:meth:`read_slot`)."""
        data = np.ascontiguousarray(data, dtype=buf.dtype)
        buf[slot, : data.shape[0]].set(data, stream=self.stream)

    def sync(self) -> None:
        self.stream.synchronize()

    def run_graph(self, key: Any, body: Callable[[], None]) -> None:
        """Run ``body`` (a fixed sequence of launches) as a CUDA graph, captured on first use for ``key``."""
        g = self.graphs.get(key)
        if g is None:
            body()                                      # warm-up: module loads, temporaries allocated
            self.stream.begin_capture()
            try:
                body()
            finally:
                g = self.stream.end_capture()
            self.graphs[key] = g
        g.launch(stream=self.stream)
