"""The `opencl` driver: pyopencl on any OpenCL device (PoCL on a CPU here; Adreno, Mali, Intel, AMD GPUs).

A GPU artifact's kernel library is ``kernels/device.json``: the OpenCL source TVM generated for every kernel and
the launch table lfmc read off TVM's host code (see :mod:`.launch`). The driver builds the program once, and a
plan kernel call enqueues its device functions with work sizes from the table. No TVM at run time.

Pick a device with ``LFMC_OPENCL_DEVICE`` (a substring of the platform or device name) when there are several.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import RuntimeLoadError
from .launch import LaunchSpec, TempPool, read_device_library
from .launch import verify_library  # noqa: F401  (the driver's library check: lfmc verify)


class ClArray:
    """A device buffer with the shape and dtype it was allocated with."""

    __slots__ = ("buf", "shape", "dtype", "nbytes")

    def __init__(self, buf: Any, shape: tuple[int, ...], dtype: np.dtype):
        self.buf, self.shape, self.dtype = buf, tuple(shape), np.dtype(dtype)
        self.nbytes = int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize


class ClView:
    """The first prod(shape) elements of a :class:`ClArray`, seen with ``shape`` (a kernel argument)."""

    __slots__ = ("buf", "shape")

    def __init__(self, buf: Any, shape: tuple[int, ...]):
        self.buf, self.shape = buf, tuple(shape)


class _Kernel:
    """A callable plan kernel: enqueues the device functions of one launch-table entry."""

    def __init__(self, drv: "OpenCLDriver", spec: LaunchSpec, program: Any):
        self.drv, self.spec = drv, spec
        try:
            self.funcs = [getattr(program, fn) for fn, *_ in spec.launches]
        except AttributeError as e:
            raise RuntimeLoadError(f"kernel {spec.name}: device function missing from the program ({e})") from None
        self.temps = TempPool(spec, lambda n, dtype: drv.alloc((n,), dtype).buf)

    def __call__(self, *args: Any) -> None:
        cl = self.drv.cl
        env = self.spec.env(args, lambda a: a.shape)
        for f, (_, largs, grid, block) in zip(self.funcs, self.spec.launches):
            for i, v in enumerate(self.spec.arguments(largs, args, env, self.temps, lambda a: a.buf)):
                f.set_arg(i, v)
            b = [x(env) for x in block]
            g = [x(env) * y for x, y in zip(grid, b)]
            if min(g) <= 0:
                continue                                # an empty launch (no rows)
            cl.enqueue_nd_range_kernel(self.drv.queue, f, g, b)


class OpenCLDriver:
    name = "opencl"

    def __init__(self, device: str | None = None):
        try:
            import pyopencl as cl
        except ImportError as e:
            raise RuntimeLoadError(f"the opencl driver needs pyopencl (pip install 'lfmc[opencl]'): {e}") from None
        self.cl = cl
        want = (device or os.environ.get("LFMC_OPENCL_DEVICE") or "").lower()
        try:
            devs = [d for p in cl.get_platforms() for d in p.get_devices()]
        except cl.Error as e:
            raise RuntimeLoadError(f"no OpenCL platform ({e}); on Debian: apt install pocl-opencl-icd") from None
        devs = [d for d in devs if want in (d.name + " " + d.platform.name).lower()]
        if not devs:
            raise RuntimeLoadError("no OpenCL device" + (f" matching {want!r}" if want else "")
                                   + " (on Debian, PoCL runs OpenCL on the CPU: apt install pocl-opencl-icd)")
        self.device = devs[0]
        self.ctx = cl.Context([self.device])
        self.queue = cl.CommandQueue(self.ctx)
        self.has_fp16 = "cl_khr_fp16" in self.device.extensions
        self.mf = cl.mem_flags

    # ----------------------------------------------------------------------------------------- kernels
    def load_library(self, path: Path) -> Any:
        lib = read_device_library(path, "opencl")
        source, table = lib["source"], lib["table"]
        if "cl_khr_fp16" in source and not self.has_fp16:
            raise RuntimeLoadError(f"{path}: the kernels use half precision (16-bit weights or KV cache) and "
                                   f"{self.device.name} lacks cl_khr_fp16: compile with --dtype f32 / --kv-dtype f32 "
                                   "(int8 / int4 weights work)")
        try:
            program = self.cl.Program(self.ctx, source).build()
        except self.cl.Error as e:
            raise RuntimeLoadError(f"{path}: the OpenCL compiler of {self.device.name} rejected the kernels: "
                                   f"{str(e)[:2000]}") from None
        return {"program": program, "table": table, "path": path}

    def function(self, lib: Any, name: str) -> Any:
        if name not in lib["table"]:
            raise RuntimeLoadError(f"kernel {name!r} is missing from {lib['path']}")
        return _Kernel(self, LaunchSpec(name, lib["table"][name]), lib["program"])

    # ------------------------------------------------------------------------------------------ memory
    def alloc(self, shape: tuple[int, ...], dtype: str) -> ClArray:
        """A zeroed device buffer."""
        a = ClArray(None, shape, np.dtype(dtype))
        a.buf = self.cl.Buffer(self.ctx, self.mf.READ_WRITE, max(a.nbytes, 4))
        self.cl.enqueue_fill_buffer(self.queue, a.buf, np.uint8(0), 0, max(a.nbytes, 4))
        return a

    def alloc_host(self, shape: tuple[int, ...], dtype: str) -> np.ndarray:
        return np.empty(shape, dtype)

    def to_device(self, host: np.ndarray) -> ClArray:
        return self.upload(host)

    def upload(self, a: np.ndarray) -> ClArray:
        d = self.alloc(a.shape, str(a.dtype))
        if a.size:
            self.cl.enqueue_copy(self.queue, d.buf, np.ascontiguousarray(a))
        return d

    def device_view(self, buf: ClArray, shape: tuple[int, ...]) -> ClView:
        return ClView(buf.buf, shape)

    def write(self, buf: ClArray, data: np.ndarray) -> None:
        data = np.ascontiguousarray(data, dtype=buf.dtype)
        if data.size:
            self.cl.enqueue_copy(self.queue, buf.buf, data)

    def read(self, buf: ClArray, shape: tuple[int, ...]) -> np.ndarray:
        out = np.empty(shape, buf.dtype)
        if out.size:
            self.cl.enqueue_copy(self.queue, out, buf.buf)
        return out

    def fill(self, buf: ClArray, index: int, value: float = 0.0) -> None:
        """Set ``buf[index]`` (one slot of a state tensor) to ``value``."""
        per = int(np.prod(buf.shape[1:], dtype=np.int64)) * buf.dtype.itemsize
        if per:
            self.cl.enqueue_fill_buffer(self.queue, buf.buf, buf.dtype.type(value), index * per, per)

    def copy_slot(self, buf: ClArray, src: int, dst: int, rows: int | None = None) -> None:
        """``buf[dst] = buf[src]`` (one slot of a state tensor), only its first ``rows`` rows when given."""
        per = int(np.prod(buf.shape[1:], dtype=np.int64)) * buf.dtype.itemsize
        n = per if rows is None else int(np.prod(buf.shape[2:], dtype=np.int64)) * buf.dtype.itemsize * rows
        if n:
            self.cl.enqueue_copy(self.queue, buf.buf, buf.buf, byte_count=n, src_offset=src * per,
                                 dst_offset=dst * per)

    def read_slot(self, buf: ClArray, slot: int, rows: int | None = None, start: int = 0) -> np.ndarray:
        """A host copy of ``buf[slot]`` (one slot of a state tensor), only its rows [start, rows) when given."""
        per = int(np.prod(buf.shape[1:], dtype=np.int64)) * buf.dtype.itemsize
        row = int(np.prod(buf.shape[2:], dtype=np.int64)) * buf.dtype.itemsize
        out = np.empty(buf.shape[1:] if rows is None else (rows - start,) + tuple(buf.shape[2:]), buf.dtype)
        if out.size:
            self.cl.enqueue_copy(self.queue, out, buf.buf, src_offset=slot * per + (start * row if rows else 0))
        return out

    def write_slot(self, buf: ClArray, slot: int, data: np.ndarray) -> None:
        """``buf[slot][:len(data)] = data``: a slot (or its first rows) from a host copy (:meth:`read_slot`)."""
        per = int(np.prod(buf.shape[1:], dtype=np.int64)) * buf.dtype.itemsize
        data = np.ascontiguousarray(data, dtype=buf.dtype)
        if data.size:
            self.cl.enqueue_copy(self.queue, buf.buf, data, dst_offset=slot * per)

    def sync(self) -> None:
        self.queue.finish()
