"""The int8-activation matmul kernel alone, at LFM2-350M's projection shapes and a 512-row prefill: AVX2
(``pmaddubsw`` + ``pmaddwd``) against VNNI (``vpdpbusd``), and the VNNI prefill tile with 1 and 3 weight blocks
per row (``Knobs.a8_cols``). GOP/s (2 x rows x N x K per call), medians of alternating repetitions.

    .venv/bin/python benchmarks/a8_kernels.py            # needs a CPU with AVX512-VNNI or AVX-VNNI for the VNNI rows

Shapes: the conv in-projection (3072 x 1024), the fused gate + up of the MLP (2 x 4608 x 1024, SwiGLU) and its
down-projection (1024 x 4608); int8 weights with a scale per channel (q8) and int4 in groups of 32 (q4g32). With
SwiGLU the gate and up blocks share the tile, so ``a8_cols`` 6 still gives one block of each per row there.
Writes JSON (default benchmarks/results/a8-kernels.json) with the CPU.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

SHAPES = [(3072, 1024, False), (4608, 1024, True), (1024, 4608, False)]
QUANTS = {"q8": ("q8",), "q4g32": ("q4", 32, False)}
VARIANTS = {"avx2 4x1": dict(dot="avx2"), "vnni 4x1": dict(dot="vnni"), "vnni 4x3": dict(dot="vnni", a8_cols=6)}


def kernel(N: int, Kd: int, swiglu: bool, quant: tuple, knobs, rows: int = 512):
    """A compiled int8-activation matmul with packed random weights: (call, ops per call)."""
    import tvm

    from lfmc.ir.quant import quantize
    from lfmc.targets import kernels as K
    from lfmc.targets.host import host_target
    from lfmc.targets.lower import pack_weight_a8

    il = K.a8_interleave(N, swiglu, K.Knobs(8, 1, 8), quant)
    f = K.make_matmul_a8("m", N, Kd, knobs, False, 1e-5, False, swiglu, quant, il)
    fn = tvm.compile(tvm.IRModule({"m": f}), target=host_target())["m"]
    rng = np.random.default_rng(0)
    H = 2 if swiglu else 1
    w = rng.standard_normal((H * N, Kd)).astype(np.float32) * 0.05
    bits, group, asym = (8, None, False) if quant[0] == "q8" else (4, quant[1], quant[2])
    codes, scale, zero = quantize(w, bits, group, asym)
    packed, qargs = pack_weight_a8(codes, scale, zero, quant, swiglu, il)
    x = tvm.runtime.tensor(rng.standard_normal((rows, Kd)).astype(np.float32))
    y = tvm.runtime.tensor(np.zeros((rows, N), np.float32))
    args = [x, tvm.runtime.tensor(packed)] + [tvm.runtime.tensor(q) for q in qargs] \
        + [tvm.runtime.tensor(np.ones(Kd, np.float32)), y, rows // knobs.rows]
    fn(*args)
    return (lambda: fn(*args)), 2 * rows * H * N * Kd


def main() -> int:
    import compare
    from lfmc.targets import kernels as K
    from lfmc.targets.host import cpu_features, host_knobs

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--out", default="benchmarks/results/a8-kernels.json")
    a = ap.parse_args()
    f = cpu_features()
    variants = VARIANTS if f.get("avx512_vnni") or f.get("avxvnni") else {"avx2 4x1": VARIANTS["avx2 4x1"]}
    base = host_knobs("prefill")
    res: dict = {"cpu": compare.cpu_info(), "command": " ".join(sys.argv), "rows": []}
    for qname, quant in QUANTS.items():
        for N, Kd, swiglu in SHAPES:
            calls = {v: kernel(N, Kd, swiglu, quant, K.Knobs(base.lanes, 4, 3, **kw))
                     for v, kw in variants.items()}
            ts: dict[str, list[float]] = {v: [] for v in calls}
            for _ in range(a.reps):
                for v, (call, _) in calls.items():
                    t = time.perf_counter()
                    call()
                    ts[v].append(time.perf_counter() - t)
            gops = {v: calls[v][1] / statistics.median(ts[v]) / 1e9 for v in calls}
            res["rows"].append({"quant": qname, "N": N, "K": Kd, "swiglu": swiglu, "gops": gops})
            print(f"{qname:<6} {'2x' if swiglu else ''}{N} x {Kd}: " + ", ".join(f"{v} {g:.0f}" for v, g in
                                                                             gops.items()) + " GOP/s", flush=True)
    compare.write_results(a.out, res)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
