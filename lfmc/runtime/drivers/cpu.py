"""The `cpu` driver: TVM's runtime calling LLVM-compiled kernels. Memory is host numpy memory shared with TVM
through DLPack (no copies); every buffer is 64-byte aligned as TVM's kernels expect."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import RuntimeLoadError


class CpuDriver:
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

    def alloc(self, shape: tuple[int, ...], dtype: str) -> np.ndarray:
        """A zeroed, 64-byte-aligned host buffer."""
        dt = np.dtype(dtype)
        nbytes = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
        raw = np.zeros(nbytes + 64, np.uint8)
        off = (-raw.ctypes.data) % 64
        return raw[off:off + nbytes].view(dt).reshape(shape)

    def alloc_host(self, shape: tuple[int, ...], dtype: str) -> np.ndarray:
        """Host staging memory for loading; on the CPU it is the device memory itself."""
        return self.alloc(shape, dtype)

    def to_device(self, host: np.ndarray) -> np.ndarray:
        return host

    def upload(self, a: np.ndarray) -> np.ndarray:
        buf = self.alloc(a.shape, str(a.dtype))
        np.copyto(buf, a)
        return buf

    def device_view(self, buf: np.ndarray, shape: tuple[int, ...]) -> Any:
        """The kernel-argument form of the first prod(shape) elements of ``buf``, shaped ``shape``."""
        n = int(np.prod(shape, dtype=np.int64))
        return self._tvm.runtime.from_dlpack(buf.reshape(-1)[:n].reshape(shape))

    def write(self, buf: np.ndarray, data: np.ndarray) -> None:
        buf.reshape(-1)[: data.size] = data.reshape(-1)

    def read(self, buf: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        n = int(np.prod(shape, dtype=np.int64))
        return buf.reshape(-1)[:n].reshape(shape).copy()

    def fill(self, buf: np.ndarray, index: int, value: float = 0.0) -> None:
        """Set ``buf[index]`` (one slot of a state tensor) to ``value``."""
        buf[index] = value

    def sync(self) -> None:
        pass


def _import_tvm_without_torch():
    """Import TVM. tvm_ffi imports torch eagerly when it is installed (a workaround for a Windows symbol clash);
    a device runtime must not pay for torch, so hide it for the duration of the import unless it is loaded."""
    import sys

    hide = "torch" not in sys.modules
    if hide:
        sys.modules["torch"] = None  # type: ignore[assignment]  # makes `import torch` raise ImportError
    try:
        import tvm
        import tvm.runtime  # noqa: F401
    except ImportError as e:
        raise RuntimeLoadError(f"the cpu driver needs TVM's runtime (pip install apache-tvm): {e}") from None
    finally:
        if hide and sys.modules.get("torch", 0) is None:
            del sys.modules["torch"]
    return tvm
