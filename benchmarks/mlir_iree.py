"""A second, independent path: the linalg form of `lfmc export-mlir` compiled by IREE (llvm-cpu) against lfmc's
host artifact and the interpreter, on the same seeded random weights.

    .venv/bin/python benchmarks/mlir_iree.py --preset lfm2-350m --prefill 128 --reps 3

Prints, for each path, the compile time, prefill tokens/s (median of --reps, alternating the two compiled paths)
and the largest difference of the last token's logits from the interpreter's (relative to the logit scale);
writes JSON (default benchmarks/results/mlir-iree-PRESET.json). Both paths use the machine's threads.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lfmc.compile import compile_model, load_source  # noqa: E402
from lfmc.ir.interp import Interpreter  # noqa: E402
from lfmc.runtime import Engine  # noqa: E402
from lfmc.targets.mlir import IreeForward, compile_iree, export_mlir  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="lfm2-350m")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--prefill", type=int, default=128, help="prompt length")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--build", default="build/bench")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    m = load_source(a.preset, seed=a.seed)
    vocab = int(next(n for n in m.graph.nodes if n.op == "embedding").params["weight"].type.shape[0])
    toks = np.random.default_rng(a.seed).integers(0, vocab, a.prefill)

    t = time.perf_counter()
    it = Interpreter(m.graph, m.weights)
    ref = it.run(toks, it.new_state())[-1]
    interp_s = time.perf_counter() - t
    scale = max(1.0, float(np.abs(ref).max()))
    print(f"interpreter: {a.prefill} tokens in {interp_s:.1f} s", flush=True)

    t = time.perf_counter()
    art = Path(a.build) / f"{a.preset}.mlir-peer.host"
    compile_model(m, art, max_batch=1)
    lfmc_compile = time.perf_counter() - t
    eng = Engine(art)
    print(f"lfmc host artifact compiled in {lfmc_compile:.1f} s", flush=True)

    t = time.perf_counter()
    text = export_mlir(m.graph, "linalg")
    fwd = IreeForward(compile_iree(text), m.graph, m.weights)
    iree_compile = time.perf_counter() - t
    print(f"linalg form ({text.count('linalg.generic')} linalg.generic) compiled by IREE in {iree_compile:.1f} s",
          flush=True)

    def run_lfmc() -> np.ndarray:
        seq = eng.new_sequence()
        try:
            return np.asarray(eng.prefill(seq, toks.tolist()))
        finally:
            eng.release(seq)

    def run_iree() -> np.ndarray:
        return fwd(toks)[-1]

    times: dict[str, list[float]] = {"lfmc": [], "iree": []}
    diffs: dict[str, float] = {}
    for _ in range(a.reps):
        for name, fn in (("lfmc", run_lfmc), ("iree", run_iree)):
            t = time.perf_counter()
            out = fn()
            times[name].append(time.perf_counter() - t)
            diffs[name] = max(diffs.get(name, 0.0), float(np.abs(out - ref).max()) / scale)
    rows = {name: {"compile_s": round(c, 1), "prefill_tok_s": round(a.prefill / statistics.median(times[name]), 1),
                   "max_rel_diff_vs_interpreter": diffs[name]}
            for name, c in (("lfmc", lfmc_compile), ("iree", iree_compile))}
    print(f"\n{a.preset}, prefill {a.prefill} tokens, median of {a.reps}")
    print(f"{'path':8} {'compile s':>10} {'prefill tok/s':>14} {'max |diff| / scale':>20}")
    for name, r in rows.items():
        print(f"{name:8} {r['compile_s']:>10} {r['prefill_tok_s']:>14} {r['max_rel_diff_vs_interpreter']:>20.2e}")
    ratio = rows["lfmc"]["prefill_tok_s"] / rows["iree"]["prefill_tok_s"]
    print(f"lfmc / IREE prefill: {ratio:.2f}x")
    out = Path(a.out or Path(__file__).parent / "results" / f"mlir-iree-{a.preset}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"preset": a.preset, "seed": a.seed, "prefill": a.prefill, "reps": a.reps,
                               "machine": platform.processor() or platform.machine(), "rows": rows,
                               "lfmc_over_iree_prefill": ratio, "times_s": times}, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
