"""arm64 CPUs (Snapdragon, Apple silicon, iPhone): the shared kernels with NEON-sized schedules, cross-compiled
here by TVM's LLVM backend and packaged the way each platform loads them.

- Linux / Android-class aarch64 (``*-linux-*`` triples): one ``.so`` per kernel, linked by Debian's
  ``aarch64-linux-gnu-g++`` (per kernel for the same reason as the host build: LLVM keeps each matmul's register
  tile in registers only when it compiles the kernel alone);
- macOS (``arm64-apple-macos``): one ``.dylib`` per kernel, linked by ``ld64.lld-22`` without an SDK
  (``-undefined dynamic_lookup``: TVM's runtime symbols come from the process that loads it);
- iOS (``arm64-apple-ios``): apps cannot load libraries at run time, so one object with every kernel in a static
  library ``kernels/lfmc_kernels.a`` for the app to link.

They run through the ``cpu`` driver on a device with TVM's runtime, and here under qemu-aarch64 (tests/targets/arm:
the runtime in an aarch64 Python, tokens checked against the interpreter).
"""
from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from ...ir.errors import LfmcError
from .. import cache, llvm_ir
from ..knobs import Knobs
from ..variants import OptionalFeatures

# Optional ISA features (lfmc/targets/variants.py): the smmla (i8mm) and bfmmla (bf16) kernels are built with the
# feature and again without (sdot rows, FMA pairs), the rest of an artifact without them, so an artifact for a
# Snapdragon 8 Gen 3 still runs on a dotprod-only core (Cortex-A76 class) at the fallbacks' speed.
OPTIONAL = OptionalFeatures(llvm={"i8mm": "i8mm", "bf16": "bf16"},
                            fallbacks={("dot", "i8mm"): (("i8mm",), {"dot": "sdot"}),
                                       ("bf16dot", "bfmmla"): (("bf16",), {"bf16dot": "fma"})})


def arm_knobs(entry: str, dot: str = "", bf16dot: str = "fma") -> Knobs:
    """NEON: 4 f32 lanes per register, 32 registers: GEMV tiles of 8 vectors, GEMM tiles of 4 rows x 4 vectors
    (prefill, and decode steps of several sequences). ``dot``: the integer dot-product family (:func:`arm_dot`);
    its int8 tiles hold two 128-bit int32 and two float accumulators per 8-output block, so they take fewer blocks
    (a8_cols) than the float tiles take vectors. ``bf16dot``: bfmmla where the CPU has FEAT_BF16, else float32 FMAs
    on input pairs."""
    if entry == "decode":
        return Knobs(lanes=4, rows=1, cols=8, batch_rows=4, batch_cols=4, dot=dot, a8_cols=4, bf16dot=bf16dot)
    return Knobs(lanes=4, rows=4, cols=4, dot=dot, a8_cols=2, bf16dot=bf16dot)


def arm_dot(profile) -> str:
    """The integer dot-product family of an arm64 profile, from what LLVM says its CPU (``-mcpu`` or ``-mattr``)
    has: ``i8mm`` (smmla for tiles of row pairs, sdot for single rows: every Snapdragon and Apple profile),
    ``sdot`` with dotprod alone (ARMv8.2+), else none."""
    from tvm.target.codegen import target_has_features

    t = profile.target()
    if target_has_features("i8mm", t) and target_has_features("dotprod", t):
        return "i8mm"
    return "sdot" if target_has_features("dotprod", t) else ""


def _tool(*names: str) -> str:
    for n in names:
        p = shutil.which(n)
        if p:
            return p
    raise LfmcError(f"cross-linking for arm64 needs {' or '.join(names)} (Debian: apt install "
                    f"{'g++-aarch64-linux-gnu' if 'g++' in names[0] else 'lld-22'})")


def _link(objs: list[Path], out: Path, triple: str) -> None:
    if "apple" in triple:
        plat = "ios" if "ios" in triple else "macos"
        ver = "14.0" if plat == "ios" else "11.0"
        cmd = [_tool("ld64.lld-22", "ld64.lld"), "-dylib", "-arch", "arm64", "-platform_version", plat, ver, ver,
               "-undefined", "dynamic_lookup", "-o", str(out), *map(str, objs)]
    else:
        cmd = [_tool("aarch64-linux-gnu-g++"), "-shared", "-fPIC", "-o", str(out), *map(str, objs)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise LfmcError(f"linking {out.name} failed: {r.stderr.strip()[:1000]}")


def build_arm(kernels: dict, profile, out_dir, progress=None) -> dict[str, str]:
    """Cross-compile every kernel for ``profile`` (an arm64 CPU profile) into ``out_dir/kernels``."""
    import tvm

    target = tvm.target.Target(profile.tvm)
    triple = str(profile.tvm.get("mtriple", ""))
    d = Path(out_dir) / "kernels"
    d.mkdir(exist_ok=True)
    files: dict[str, str] = {}
    names = sorted(kernels)
    if profile.packaging == "static":
        mod = tvm.IRModule({n: kernels[n].build(n) for n in names})
        lib = tvm.compile(mod, target=target)
        with tempfile.TemporaryDirectory() as tmp:
            obj = Path(tmp) / "lfmc_kernels.o"
            lib.mod.write_to_file(str(obj))
            r = subprocess.run([_tool("llvm-ar", "ar"), "rcs", str(d / "lfmc_kernels.a"), str(obj)],
                               capture_output=True, text=True)
            if r.returncode != 0:
                raise LfmcError(f"archiving the kernels failed: {r.stderr.strip()[:500]}")
        if progress:
            progress(len(names), len(names), "static library")
        return {n: "kernels/lfmc_kernels.a" for n in names}
    ext = "dylib" if "apple" in triple else "so"
    target_of = OPTIONAL.targets(kernels, target, arm_features(profile))
    with tempfile.TemporaryDirectory() as tmp:
        for i, n in enumerate(names, 1):
            tgt, tkey = target_of(kernels[n])
            key, func = cache.kernel_key(f"arm .{ext} 1", tkey, n, kernels[n])

            def build(out: Path, n=n, func=func, tgt=tgt) -> None:
                lib = tvm.compile(tvm.IRModule({n: func or kernels[n].build(n)}), target=tgt)
                mod = llvm_ir.rebuild(lib) if llvm_ir.needs_substitution(kernels[n]) else lib.mod
                obj = Path(tmp) / f"{n}.o"
                mod.write_to_file(str(obj))
                _link([obj], out, triple)

            cache.build_file("cpu", key, f".{ext}", d / f"{n}.{ext}", build)
            files[n] = f"kernels/{n}.{ext}"
            if progress:
                progress(i, len(names), n)
    cache.trim("cpu")
    if ext == "so":             # Linux / Android: the step runner too (Apple builds have no C compiler here)
        from ...plan import STEP_RUNNER
        from ..host import build_step_runner

        runner = build_step_runner(Path(out_dir), ["aarch64-linux-gnu-gcc"])
        if runner:
            files[STEP_RUNNER] = runner
    return files


def arm_features(profile) -> dict[str, Any]:
    """What the manifest records of an arm64 profile's CPU; the ``cpu`` driver refuses a CPU that lacks dotprod,
    i8mm or bf16 where the profile has them (LLVM may use them in any kernel)."""
    from tvm.target.codegen import target_has_features

    t, tgt = profile.tvm, profile.target()
    return {"arch": "arm64" if "apple" in str(t.get("mtriple", "")) else "aarch64", "mcpu": t.get("mcpu"),
            "mtriple": t.get("mtriple"), "mattr": t.get("mattr", []), "avx2": False, "avx512": False, "fma": False,
            **{f: bool(target_has_features(f, tgt)) for f in ("dotprod", "i8mm", "bf16")}}
