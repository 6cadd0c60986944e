"""Host-memory buffers for drivers whose device memory is this process's memory (the ``cpu`` driver, the
``wafer`` simulator): zeroed, 64-byte-aligned numpy arrays, views and copies without transfers."""
from __future__ import annotations

from typing import Any

import numpy as np

from ...paramfile import ALIGN      # one alignment for kernel buffers and the tensors of a mapped params file


class HostMemory:
    """allocate / view / write / read / fill on numpy host buffers; ``sync`` is a no-op."""

    maps_params = True        # kernels take host memory as it is: the engine maps params.safetensors

    def alloc(self, shape: tuple[int, ...], dtype: str) -> np.ndarray:
        """A zeroed, 64-byte-aligned host buffer (TVM's kernels expect the alignment)."""
        dt = np.dtype(dtype)
        nbytes = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
        raw = np.zeros(nbytes + ALIGN, np.uint8)
        off = (-raw.ctypes.data) % ALIGN
        return raw[off:off + nbytes].view(dt).reshape(shape)

    def alloc_host(self, shape: tuple[int, ...], dtype: str) -> np.ndarray:
        """Host staging memory for loading; here it is the device memory itself."""
        return self.alloc(shape, dtype)

    def to_device(self, host: np.ndarray) -> np.ndarray:
        return host

    def upload(self, a: np.ndarray) -> np.ndarray:
        buf = self.alloc(a.shape, str(a.dtype))
        np.copyto(buf, a)
        return buf

    def device_view(self, buf: np.ndarray, shape: tuple[int, ...]) -> Any:
        """The first prod(shape) elements of ``buf``, shaped ``shape``."""
        n = int(np.prod(shape, dtype=np.int64))
        return buf.reshape(-1)[:n].reshape(shape)

    def write(self, buf: np.ndarray, data: np.ndarray) -> None:
        buf.reshape(-1)[: data.size] = data.reshape(-1)

    def read(self, buf: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        n = int(np.prod(shape, dtype=np.int64))
        return buf.reshape(-1)[:n].reshape(shape).copy()

    def fill(self, buf: np.ndarray, index: int, value: float = 0.0) -> None:
        """Set ``buf[index]`` (one slot of a state tensor) to ``value``."""
        buf[index] = value

    def copy_slot(self, buf: np.ndarray, src: int, dst: int, rows: int | None = None) -> None:
        """``buf[dst] = buf[src]`` (one slot of a state tensor), only its first ``rows`` rows when given."""
        if rows is None:
            buf[dst] = buf[src]
        else:
            buf[dst, :rows] = buf[src, :rows]

    def read_slot(self, buf: np.ndarray, slot: int, rows: int | None = None, start: int = 0) -> np.ndarray:
        """A host copy of ``buf[slot]`` (one slot of a state tensor), only its rows [start, rows) when given."""
        return (buf[slot] if rows is None else buf[slot, start:rows]).copy()

    def write_slot(self, buf: np.ndarray, slot: int, data: np.ndarray) -> None:
        """``buf[slot][:len(data)] = data``: a slot (or its first rows) from a host copy (:meth:`read_slot`)."""
        buf[slot, : data.shape[0]] = data

    def sync(self) -> None:
        pass
