"""The float / 16-bit matmul kernel alone at a prefill's rows: register tiles (rows x vector columns) and weight
layouts (panel after panel, or P panels interleaved per input row) against one baseline, alternating, medians.

    .venv/bin/python benchmarks/matmul_tiles.py                                  # f32 and f16, LFM2-350M's shapes
    .venv/bin/python benchmarks/matmul_tiles.py --dtypes f16 --variants 4x3,4x4,4x4p4,6x4p4 --rows 240

A variant is ``RxC`` (a tile of R rows x C vectors of 16 / 8 outputs, ``Knobs.rows`` / ``cols``; for SwiGLU C
counts both halves) with an optional ``pP``: the weight packed with P panels interleaved per input row, P / 2 per
SwiGLU half (``make_matmul(panels=P)``; a tile narrower than P reads the group in K blocks, one at least P wide
whole groups); the first variant is the baseline the others are divided by. Shapes: the conv in-projection (3072 x 1024), the
attention / conv out-projection (1024 x 1024), the MLP's fused gate + up (2 x 4608 x 1024, SwiGLU) and its down
projection (1024 x 4608). Every variant's output is checked against the baseline's. Writes JSON with the CPU.
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

SHAPES = [(3072, 1024, False), (1024, 1024, False), (4608, 1024, True), (1024, 4608, False)]


def parse_variant(v: str) -> tuple[int, int, int]:
    """``RxC[pP]`` -> (rows, cols, panels)."""
    tile, _, p = v.partition("p")
    r, c = tile.split("x")
    return int(r), int(c), int(p or 1)


def kernel(N: int, Kd: int, swiglu: bool, dtype: str, rows: int, cols: int, panels: int, m: int, w: np.ndarray,
           x: np.ndarray):
    """The compiled matmul of this tile and layout over ``w`` (its rows padded to a multiple of ``rows``):
    (call, output)."""
    import tvm

    from lfmc.targets import kernels as K
    from lfmc.targets.host import host_knobs, host_target
    from lfmc.targets.lower import pack_weight

    kn = dataclasses.replace(host_knobs("prefill"), rows=rows, cols=cols)
    panels = max(1, panels // 2) if swiglu else panels
    quant = None if dtype == "f32" else (dtype,)
    f = K.make_matmul("m", N, Kd, kn, swiglu=swiglu, quant=quant, panels=panels)
    fn = tvm.compile(tvm.IRModule({"m": f}), target=host_target())["m"]
    packed, _ = pack_weight(w, None, None, quant, kn.lanes, swiglu, panels)
    mp = -(-m // rows) * rows
    xs = np.zeros((mp, Kd), np.float32)
    xs[:m] = x
    y = tvm.runtime.tensor(np.zeros((mp, N), np.float32))
    args = [tvm.runtime.tensor(xs), tvm.runtime.tensor(packed), y, mp // rows]
    fn(*args)
    return (lambda: fn(*args)), y.numpy()[:m]


def main() -> int:
    import compare

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dtypes", default="f32,f16", help="weights: of f32, f16")
    ap.add_argument("--variants", default="4x3,4x4,4x4p4,6x4p4", help="RxC[pP], the first the baseline")
    ap.add_argument("--rows", type=int, default=240, help="the prefill's rows (padded per tile)")
    ap.add_argument("--reps", type=int, default=20, help="alternating repetitions (medians)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "matmul-tiles.json")
    a = ap.parse_args()
    variants = [v for v in a.variants.split(",") if v]
    rng = np.random.default_rng(0)
    res = []
    for dtype in a.dtypes.split(","):
        for N, Kd, swiglu in SHAPES:
            w = rng.standard_normal((2 * N if swiglu else N, Kd)).astype(np.float16 if dtype != "f32" else np.float32)
            x = rng.standard_normal((a.rows, Kd)).astype(np.float32)
            calls, ref = {}, None
            for v in variants:
                calls[v], y = kernel(N, Kd, swiglu, dtype, *parse_variant(v), a.rows, w, x)
                if ref is None:
                    ref = y
                np.testing.assert_allclose(y, ref, rtol=1e-3, atol=1e-3, err_msg=f"{v} at {N}x{Kd}")
            ts: dict[str, list[float]] = {v: [] for v in variants}
            for r in range(a.reps):
                for v in (variants if r % 2 == 0 else variants[::-1]):
                    t = time.perf_counter()
                    calls[v]()
                    ts[v].append(time.perf_counter() - t)
            gflops = 2 * a.rows * (2 if swiglu else 1) * N * Kd / 1e9
            row = {"dtype": dtype, "N": N, "K": Kd, "swiglu": swiglu,
                   "ms": {v: 1e3 * statistics.median(t) for v, t in ts.items()},
                   "gflop_s": {v: gflops / statistics.median(t) for v, t in ts.items()},
                   "ratio": {v: statistics.median(ts[variants[0]]) / statistics.median(t) for v, t in ts.items()}}
            res.append(row)
            print(f"{dtype} {'2 x ' if swiglu else ''}{N} x {Kd}: " + ", ".join(
                f"{v} {row['gflop_s'][v]:.0f} GFLOP/s ({row['ratio'][v]:.3f}x)" for v in variants), flush=True)
    compare.write_results(a.out, {"rows": a.rows, "variants": variants, "cpu": compare.cpu_info(), "results": res,
                                  "command": " ".join(sys.argv)})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
