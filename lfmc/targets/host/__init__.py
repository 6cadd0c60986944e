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
    """Schedules for this CPU: AVX-512 gets 16 lanes; decode matmuls are GEMVs (1 row tile, 8 vectors); AVX2
    brings the integer dot kernels of int8-activation matmuls."""
    feats = cpu_features()
    lanes = 16 if feats["avx512"] else 8
    idot = bool(feats["avx2"]) and feats["arch"] in ("x86_64", "AMD64")
    if entry == "decode":
        # prefetch: 8 KB ahead took 350M W4A8 decode from ~59 to ~65 tok/s (4 KB and 32 KB alike; BENCHMARKS.md)
        return Knobs(lanes=lanes, rows=1, cols=8, idot=idot, prefetch=8192)
    return Knobs(lanes=lanes, rows=4, cols=3, idot=idot)


def build_host(kernels: dict, out_dir, progress=None) -> dict[str, str]:
    """Compile each kernel for this CPU into its own shared library ``kernels/NAME.so``; returns name -> file.
    Libraries come from the build cache (:mod:`lfmc.targets.cache`) when the same kernel was built before.

    One LLVM module per kernel on purpose: compiled together in one module, LLVM stopped promoting the matmul's
    register tile to registers (it spilled the accumulators every iteration, 3x slower; seen with TVM 0.27)."""
    import json

    import tvm

    from .. import cache

    target = host_target()
    tkey = json.dumps(target.export(), sort_keys=True, default=str)
    (out_dir / "kernels").mkdir(exist_ok=True)
    files = {}
    for i, (name, spec) in enumerate(sorted(kernels.items())):
        rel = f"kernels/{name}.so"
        key, func = cache.kernel_key("host .so 1", tkey, name, spec)
        data = cache.get("cpu", key, ".so")
        if data is not None:
            (out_dir / rel).write_bytes(data)
        else:
            lib = tvm.compile(tvm.IRModule({name: func or spec.build(name)}), target=target)
            lib.export_library(str(out_dir / rel))
            cache.put("cpu", key, {".so": (out_dir / rel).read_bytes()})
        files[name] = rel
        if progress:
            progress(i + 1, len(kernels), name)
    cache.trim("cpu")
    return files
