"""HostMemory (the cpu and wafer drivers' buffers): zeroed, aligned, and large ones in transparent huge pages."""
from __future__ import annotations

import mmap
import sys

import numpy as np
import pytest

from lfmc.runtime.drivers.host import HUGE_PAGE_MIN, HostMemory
from lfmc.paramfile import ALIGN


def _vm_flags(addr: int) -> list[str]:
    """The VmFlags of the mapping of this process that holds ``addr`` (Linux /proc/self/smaps)."""
    flags, inside = None, False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()[0]
            if "-" in head and not head.endswith(":"):
                lo, hi = (int(x, 16) for x in head.split("-"))
                inside = lo <= addr < hi
            elif inside and head == "VmFlags:":
                flags = line.split()[1:]
    assert flags is not None, f"no mapping holds {addr:#x}"
    return flags


@pytest.mark.parametrize("shape,dtype", [((7, 3), "float32"), ((3, HUGE_PAGE_MIN // 8 + 5), "float16"),
                                         ((2, 1 << 20, 3), "int8")])
def test_alloc_is_zeroed_aligned_and_writable(shape, dtype):
    """Small (numpy) and large (huge-page) buffers alike: the shape and dtype asked, zeros, 64-byte aligned,
    writable, and independent of each other."""
    mem = HostMemory()
    a, b = mem.alloc(shape, dtype), mem.alloc(shape, dtype)
    assert a.shape == shape and a.dtype == np.dtype(dtype)
    assert a.ctypes.data % ALIGN == 0 and not a.any()
    a[...] = 3
    assert (a == 3).all() and not b.any()
    mem.fill(a, 1, 0.0)
    assert not a[1].any() and (a[0] == 3).all()


@pytest.mark.skipif(not sys.platform.startswith("linux") or not hasattr(mmap, "MADV_HUGEPAGE"),
                    reason="transparent huge pages are Linux's")
def test_large_buffers_ask_for_huge_pages():
    """A buffer of HUGE_PAGE_MIN bytes or more is its own mapping advised MADV_HUGEPAGE ("hg" in smaps' VmFlags: a
    long KV cache then streams with a TLB miss per 2 MiB, not per 4 KiB), whatever numpy's own switch says."""
    mem = HostMemory()
    big = mem.alloc((HUGE_PAGE_MIN // 4,), "float32")
    big[::1024] = 1.0                                       # fault it in
    assert "hg" in _vm_flags(big.ctypes.data)
    assert "hg" in _vm_flags(big.ctypes.data + big.nbytes - 1)
