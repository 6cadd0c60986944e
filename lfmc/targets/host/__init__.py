"""x86-64 CPUs through TVM's LLVM backend: the host (this machine's CPU, its features detected) and profiles
for other x86-64 machines (``x86-64-v3``, ``x86-64-v4``, ``xeon-sapphirerapids``: a named ISA level, its
features asked of LLVM). Same kernels, same packaging (one ``.so`` per kernel); the runtime refuses an artifact
whose vector features the loading CPU lacks."""
from __future__ import annotations

import functools
import platform
from pathlib import Path
from typing import Any

from ...plan import STEP_RUNNER
from ..knobs import Knobs
from ..variants import OptionalFeatures


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
            "avx512": "avx512f" in flags, "amx": "amx_tile" in flags, "amx_int8": "amx_int8" in flags,
            "amx_bf16": "amx_bf16" in flags, "avx512_bf16": "avx512_bf16" in flags,
            "avx512_fp16": "avx512_fp16" in flags,
            "avx512_vnni": "avx512_vnni" in flags and "avx512vl" in flags, "avxvnni": "avx_vnni" in flags}


def cpu_info() -> dict[str, Any]:
    """This CPU's model name, core count and :func:`cpu_features`: what a benchmark result records (figures from
    another machine differ)."""
    import os

    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "")
    except OSError:
        pass
    return {"model": model, "cpus": os.cpu_count(), **cpu_features()}


def host_target():
    """The TVM target for this CPU (LLVM, -mcpu of the host)."""
    import tvm

    return tvm.target.Target({"kind": "llvm", "mcpu": cpu_features()["mcpu"]})


_LLVM_FEATURES = {"avx2": "avx2", "fma": "fma", "avx512": "avx512f", "amx": "amx-tile", "amx_int8": "amx-int8",
                  "amx_bf16": "amx-bf16", "avx512_bf16": "avx512bf16", "avx512_vnni": "avx512vnni",
                  "avxvnni": "avxvnni", "avx512_fp16": "avx512fp16"}


def x86_features(profile) -> dict[str, Any]:
    """What the CPU of an x86 profile offers (the host's detected; another's from LLVM's description of its
    -mcpu), in the form of :func:`cpu_features`: what the manifest records and the runtime checks."""
    if profile.name == "host":
        return cpu_features()
    from tvm.target.codegen import target_has_features

    t = profile.target()
    return {"arch": "x86_64", "mcpu": profile.tvm.get("mcpu"),
            **{k: bool(target_has_features(f, t)) for k, f in _LLVM_FEATURES.items()}}


def x86_target(profile):
    """The TVM target of an x86 profile."""
    return host_target() if profile.name == "host" else profile.target()


# Optional ISA features (lfmc/targets/variants.py): the int8 kernels' AMX tiles and VNNI and the bf16 kernels' AMX
# tiles and AVX512-BF16 are built with the feature and again without (AMX -> VNNI -> AVX2 pmaddubsw; AMX ->
# vdpbf16ps -> FMA pairs), the rest of an artifact without them, so an artifact built for a Sapphire Rapids CPU still
# runs on an AVX-512 CPU without AMX and one built on a CPU with VNNI and BF16 on an AVX-512 CPU without them. An
# AMX kernel also uses vpdpbusd (its weights' sums) / is built with AVX512-BF16, so it needs those too.
OPTIONAL = OptionalFeatures(
    llvm={k: _LLVM_FEATURES[k] for k in ("avx512_vnni", "avxvnni", "avx512_bf16", "amx", "amx_int8", "amx_bf16")},
    fallbacks={("dot", "amx"): (("amx", "amx_int8", "avx512_vnni"), {"dot": "vnni"}),
               ("dot", "vnni"): (("avx512_vnni", "avxvnni"), {"dot": "avx2", "a8_cols": 3}),
               ("bf16dot", "amx"): (("amx", "amx_bf16", "avx512_bf16"), {"bf16dot": "avx512bf16"}),
               ("bf16dot", "avx512bf16"): (("avx512_bf16",), {"bf16dot": "fma"})})


def x86_runs_here(profile) -> str:
    """Whether this machine runs what ``profile`` builds: yes where this CPU has its vector features."""
    if profile.name == "host":
        return "yes (this CPU)"
    here, want = cpu_features(), x86_features(profile)
    if here["arch"] not in ("x86_64", "AMD64"):
        return "no (x86-64 code; this CPU is not)"
    lacks = [_LLVM_FEATURES[k].upper() for k in ("avx2", "fma", "avx512") if want[k] and not here[k]]
    return f"no (this CPU lacks {', '.join(lacks)}: code checked)" if lacks else "yes (this CPU has its features)"


def host_knobs(entry: str, feats: dict[str, Any] | None = None) -> Knobs:
    """Schedules for an x86 CPU (``feats``: :func:`x86_features`; default this one): AVX-512 gets 16 lanes;
    decode matmuls are GEMVs (1 row tile, 8 vectors); AVX2 brings the integer dot kernels of int8-activation
    matmuls (``pmaddubsw`` + ``pmaddwd``), AVX512-VNNI or AVX-VNNI their ``vpdpbusd`` family."""
    feats = feats or cpu_features()
    lanes = 16 if feats["avx512"] else 8
    idot = bool(feats["avx2"]) and feats["arch"] in ("x86_64", "AMD64")
    vnni = idot and bool(feats.get("avx512_vnni") or feats.get("avxvnni"))
    dot = "vnni" if vnni else "avx2" if idot else ""
    bf16dot = "avx512bf16" if feats.get("avx512_bf16") and feats["avx512"] else "fma" if feats["fma"] else ""
    amx = bool(feats.get("amx")) and feats["avx512"]
    if entry == "decode":
        # prefetch: 8 KB ahead took 350M W4A8 decode from ~59 to ~65 tok/s (4 KB and 32 KB alike; BENCHMARKS.md)
        # batch_rows: a decode step of several sequences reads each weight vector once per 4 rows, not per row
        # f32_cols 4 (AVX-512): a float32 GEMV's tile of 4 columns (panel after panel) read LFM2-350M's weights
        # 1.08x faster per decode step than 8 columns in the high-bandwidth phase and 1.01-1.02x in the low one
        # (fresh copies of both artifacts, BENCHMARKS.md); 16-bit and int8 weights keep 8 (their widening has more
        # work per byte; 4 for them not compared with the page cache controlled)
        return Knobs(lanes=lanes, rows=1, cols=8, f32_cols=4 if lanes == 16 else 0, dot=dot, bf16dot=bf16dot,
                     prefetch=8192, batch_rows=4, batch_cols=4 if lanes == 16 else 3)
    # cols 4 on AVX-512 (32 registers): a 4 x 4 float tile prefilled f16 projections of LFM2-350M's shapes 1.06-1.19x
    # faster than 4 x 3 (4 x 2 where N / 16 is not a multiple of 3), f32 1.00-1.04x, and its 4 columns make the
    # 16-bit weights' interleave every tile reads whole (knobs.gemv_panels: 4 panels, 2 per SwiGLU half); AVX2
    # (16 registers) keeps 4 x 3
    # a8_cols 6: with vpdpbusd the int8 tile has registers for 3 weight blocks per row (4 x 3 blocks against
    # 4 x 1: +0-19% per projection of LFM2-350M at 512 rows); else the 3 columns it always had
    # AMX (prefill only: a 1-row GEMV has no tile to multiply): tiles of the 4 rows the other prefill matmuls
    # take (their register tiles) x 16 outputs; not measured on AMX hardware (none was available)
    if amx and vnni and feats.get("amx_int8"):
        dot = "amx"
    if amx and bf16dot == "avx512bf16" and feats.get("amx_bf16"):
        bf16dot = "amx"
    return Knobs(lanes=lanes, rows=4, cols=4 if lanes == 16 else 3, dot=dot, bf16dot=bf16dot,
                 a8_cols=6 if vnni else 3)


def build_host(kernels: dict, out_dir, progress=None, target=None, feats: dict[str, Any] | None = None
               ) -> dict[str, str]:
    """Compile each kernel for this CPU (or ``target``, an x86 profile's) into its own shared library
    ``kernels/NAME.so``; returns name -> file. Libraries come from the build cache (:mod:`lfmc.targets.cache`)
    when the same kernel was built before.

    One LLVM module per kernel on purpose: compiled together in one module, LLVM stopped promoting the matmul's
    register tile to registers (it spilled the accumulators every iteration, 3x slower; seen with TVM 0.27)."""
    import tvm

    from .. import cache, llvm_ir

    target = target or host_target()
    target_of = OPTIONAL.targets(kernels, target, feats or cpu_features())
    (out_dir / "kernels").mkdir(exist_ok=True)
    files = {}
    for i, (name, spec) in enumerate(sorted(kernels.items())):
        tgt, tkey = target_of(spec)
        key, func = cache.kernel_key("host .so 1", tkey, name, spec)

        def build(out: Path, name=name, spec=spec, func=func, tgt=tgt) -> None:
            lib = tvm.compile(tvm.IRModule({name: func or spec.build(name)}), target=tgt)
            if llvm_ir.needs_substitution(spec):       # intrinsics TVM cannot call (vdpbf16ps): see llvm_ir
                lib = llvm_ir.rebuild(lib)
            lib.export_library(str(out))

        cache.build_file("cpu", key, ".so", out_dir / f"kernels/{name}.so", build)
        files[name] = f"kernels/{name}.so"
        if progress:
            progress(i + 1, len(kernels), name)
    cache.trim("cpu")
    runner = build_step_runner(out_dir, ["cc", "gcc", "clang"])
    if runner:
        files[STEP_RUNNER] = runner
    return files


def build_step_runner(out_dir: Path, compilers: list[str], flags: tuple[str, ...] = ()) -> str | None:
    """Compile the step runner (``step_runner.c``: one native call runs every kernel launch of a step) into
    ``out_dir/kernels/lfmc_step.so`` with the first of ``compilers`` found; its file, or None without a compiler
    (the runtime then calls the kernels one by one). Plain C, built without -march: it only loops over calls."""
    import shutil
    import subprocess

    from ...ir.errors import LfmcError

    cc = next((shutil.which(c) for c in compilers if shutil.which(c)), None)
    if cc is None:
        return None
    src = Path(__file__).with_name("step_runner.c")
    out = Path(out_dir) / "kernels" / "lfmc_step.so"
    r = subprocess.run([cc, "-O2", "-shared", "-fPIC", *flags, "-o", str(out), str(src)], capture_output=True,
                       text=True)
    if r.returncode != 0:
        raise LfmcError(f"building the step runner with {cc} failed: {r.stderr.strip()[:1000]}")
    return "kernels/lfmc_step.so"
