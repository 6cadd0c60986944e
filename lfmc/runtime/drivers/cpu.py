"""The `cpu` driver: TVM's runtime calling LLVM-compiled kernels. Memory is host numpy memory shared with TVM
through DLPack (no copies); every buffer is 64-byte aligned as TVM's kernels expect."""
from __future__ import annotations

import os
import platform
import struct
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


_ELF_MACHINE = {"x86_64": 62, "aarch64": 183}


def check_artifact(m: dict[str, Any]) -> None:
    """Refuse an artifact built for another CPU architecture, or for vector features this CPU lacks."""
    feats = m["target"].get("features", {})
    if feats.get("arch") and feats["arch"] != platform.machine():
        raise RuntimeLoadError(f"artifact was compiled for {feats['arch']} CPUs, this is {platform.machine()}")
    flags = _cpu_flags()
    for want, flag in (("avx512", "avx512f"), ("avx2", "avx2"), ("fma", "fma")):
        if feats.get(want) and flags is not None and flag not in flags:
            raise RuntimeLoadError(f"artifact was compiled for CPUs with {flag.upper()} "
                                   f"({feats.get('mcpu')}); this CPU lacks it: recompile here")


def _cpu_flags() -> set[str] | None:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        return None
    return None


def verify_library(path: Path, m: dict[str, Any], nargs: dict[str, int]) -> str:
    """The kind of a CPU kernel library (an object file, checked against the manifest's architecture)."""
    arch = m["target"].get("features", {}).get("arch")
    b = path.read_bytes()[:64]
    if b[:4] == b"\x7fELF":
        machine = struct.unpack_from("<H", b, 18)[0]
        want = _ELF_MACHINE.get(arch or "")
        if want is not None and machine != want:
            raise RuntimeLoadError(f"{path.name}: ELF for machine {machine}, the manifest says {arch}")
        return "elf"
    if b[:4] == b"\xcf\xfa\xed\xfe":
        if arch not in ("arm64", None):
            raise RuntimeLoadError(f"{path.name}: a Mach-O library, the manifest says {arch}")
        return "mach-o"
    if b[:8] == b"!<arch>\n":
        return "archive"
    raise RuntimeLoadError(f"{path.name}: not an object file or library (no ELF / Mach-O / ar header)")
