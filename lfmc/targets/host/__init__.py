"""The host target: this machine's CPU through TVM's LLVM backend (x86-64 AVX2 / AVX-512 / AMX detected)."""
from __future__ import annotations

import functools
import platform
from typing import Any

from ..kernels import Knobs


@functools.lru_cache(maxsize=None)
def cpu_features() -> dict[str, Any]:
    """What this CPU offers: LLVM's name for it, vector flags from /proc/cpuinfo."""
    import tvm

    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    mcpu = str(tvm.target.codegen.llvm_get_system_cpu())
    return {"arch": platform.machine(), "mcpu": mcpu, "avx2": "avx2" in flags, "fma": "fma" in flags,
            "avx512": "avx512f" in flags, "amx": "amx_tile" in flags, "avx512_bf16": "avx512_bf16" in flags}


def host_target():
    """The TVM target for this CPU (LLVM, -mcpu of the host)."""
    import tvm

    return tvm.target.Target({"kind": "llvm", "mcpu": cpu_features()["mcpu"]})


def host_knobs(entry: str) -> Knobs:
    """Schedules for this CPU: AVX-512 gets 16 lanes; decode matmuls are GEMVs (1 row tile, 8 vectors)."""
    lanes = 16 if cpu_features()["avx512"] else 8
    if entry == "decode":
        return Knobs(lanes=lanes, rows=1, cols=8)
    return Knobs(lanes=lanes, rows=4, cols=3)


def build_host(kernels: dict, out_dir, progress=None) -> list[str]:
    """Compile every kernel for this CPU into one shared library ``kernels.so``; returns the file names."""
    import tvm

    funcs = {}
    for i, (name, spec) in enumerate(sorted(kernels.items())):
        funcs[name] = spec.build(name)
        if progress:
            progress(i + 1, len(kernels), name)
    lib = tvm.compile(tvm.IRModule(funcs), target=host_target())
    lib.export_library(str(out_dir / "kernels.so"))
    return ["kernels.so"]
