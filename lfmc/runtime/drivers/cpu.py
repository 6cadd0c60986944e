"""The `cpu` driver: TVM's runtime calling LLVM-compiled kernels. Memory is host numpy memory shared with TVM
through DLPack (no copies); every buffer is 64-byte aligned as TVM's kernels expect."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import RuntimeLoadError
from .host import HostMemory


class CpuDriver(HostMemory):
    name = "cpu"

    def __init__(self, num_threads: int | None = None):
        # TVM's thread pool reads this once; more threads than cores makes every parallel launch slow.
        n = num_threads or int(os.environ.get("TVM_NUM_THREADS", 0)) or len(os.sched_getaffinity(0))
        os.environ["TVM_NUM_THREADS"] = str(n)
        self.num_threads = n
        self._tvm = _import_tvm_without_torch()

    def load_library(self, path: Path) -> Any:
        try:
            return self._tvm.runtime.load_module(str(path))
        except Exception as e:
            raise RuntimeLoadError(f"{path}: cannot load the kernel library ({type(e).__name__}: {e})") from None

    def function(self, lib: Any, name: str) -> Any:
        try:
            return lib[name]
        except Exception:
            raise RuntimeLoadError(f"kernel {name!r} is missing from the kernel library") from None

    def device_view(self, buf: np.ndarray, shape: tuple[int, ...]) -> Any:
        """The kernel-argument form of the first prod(shape) elements of ``buf``, shaped ``shape``."""
        return self._tvm.runtime.from_dlpack(HostMemory.device_view(self, buf, shape))


def _import_tvm_without_torch():
    """Import TVM without torch (see :mod:`lfmc.tvm_env`): a device runtime must not pay for torch."""
    from ...tvm_env import import_tvm

    try:
        return import_tvm()
    except ImportError as e:
        raise RuntimeLoadError(f"the cpu driver needs TVM's runtime (pip install apache-tvm): {e}") from None
