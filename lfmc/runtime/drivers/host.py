"""Host-memory buffers for drivers whose device memory is this process's memory (the ``cpu`` driver, the
``wafer`` simulator): zeroed, 64-byte-aligned numpy arrays, views and copies without transfers."""
from __future__ import annotations

import mmap
from typing import Any

import numpy as np

from ...paramfile import ALIGN      # one alignment for kernel buffers and the tensors of a mapped params file


HUGE_PAGE_MIN = 2 << 20      # buffers of at least one 2 MiB huge page: KV caches, activation slabs


def _huge_pages(nbytes: int) -> mmap.mmap | None:
    """A private anonymous mapping of ``nbytes`` (zeroed, page-aligned) advised MADV_HUGEPAGE: in Linux's default
    THP mode ("madvise") only memory that asks gets transparent huge pages. Streaming a long KV cache then misses
    the TLB once per 2 MiB instead of once per 4 KiB (the attention kernel alone, two threads on Zen 4:
    1.02-1.26x; BENCHMARKS.md "Huge pages and the value prefetch"). numpy advises the same for arrays of 4 MiB
    or more by default, but only for the page-aligned part of its allocation and only while its own switch
    (NUMPY_MADVISE_HUGEPAGE) is on: the driver asks for itself. Pages are still faulted in on first touch.
    None where the OS has no such advice (the caller falls back to numpy)."""
    if not hasattr(mmap, "MADV_HUGEPAGE"):
        return None
    try:
        m = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    except (OSError, ValueError):
        return None
    try:
        m.madvise(mmap.MADV_HUGEPAGE)
    except OSError:
        pass                    # THP off in this kernel: still a fine zeroed buffer
    return m


class HostMemory:
    """allocate / view / write / read / fill on numpy host buffers; ``sync`` is a no-op."""

    maps_params = True        # kernels take host memory as it is: the engine maps params.safetensors

    def alloc(self, shape: tuple[int, ...], dtype: str) -> np.ndarray:
        """A zeroed, 64-byte-aligned host buffer (TVM's kernels expect the alignment); one of HUGE_PAGE_MIN bytes
        or more in transparent huge pages where the OS offers them (:func:`_huge_pages`)."""
        dt = np.dtype(dtype)
        nbytes = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
        if nbytes >= HUGE_PAGE_MIN:
            huge = _huge_pages(nbytes)
            if huge is not None:
                return np.frombuffer(huge, dt, nbytes // dt.itemsize).reshape(shape)
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
