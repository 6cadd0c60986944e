"""Speculative decoding on this CPU: what verifying k drafted tokens costs against one decode step, the speed-up
that implies at a given acceptance rate, and n-gram drafting measured end to end (with its adaptive fallback).

    .venv/bin/python benchmarks/speculative.py                                 # LFM2-350M, f32 and W4A8
    .venv/bin/python benchmarks/speculative.py --presets lfm2-350m,lfm2-1.2b --precisions q4g32a8

For each preset and precision (seeded random weights):
- cost: ``Engine.verify`` of 1 + k tokens (the last token and k drafts) against ``Engine.decode`` of one, at a
  context of 256, k = 1..8, medians of alternating repetitions;
- projection: with acceptance rate a per drafted token, a verify of k drafts yields (1 - a^(k+1)) / (1 - a)
  tokens; speed-up = that x decode time / verify time, for a = 0.5, 0.7, 0.8 (the published LFM2.5 drafters'
  range) at the best k;
- n-gram drafting end to end: tokens/s of ``Engine.generate(speculate="ngram")`` against plain greedy on an
  input-copying prompt (a 64-token passage repeated), with its acceptance; random weights do not copy their
  input, so this measures the adaptive fallback (drafting pauses when it does not pay), not a real gain.
Writes JSON (default benchmarks/results/speculative.json) with the CPU.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def shape_artifact(build: str, preset: str, prec: str) -> Path:
    """The host artifact of ``preset`` (seeded random weights) at ``prec`` whose verify cost is measured: 16
    sequences, 512 tokens of context; compiled unless the current compiler already built it."""
    import compare
    from lfmc.compile import compile_model, load_source

    quant, dtype, _, _, act = compare.PRECISIONS[prec]
    art = Path(build) / f"{preset}-{prec}-b16.host"
    return compare.compiled(art, lambda: compile_model(load_source(preset), art, max_batch=16, quant=quant,
                                                       dtype=dtype, act_quant=act, max_context=512))


def ngram(e, steps: int = 96) -> dict:
    from lfmc.bench import copying_prompt

    prompt = copying_prompt(e.vocab_size)
    res = {}
    for name, kw in (("plain", {}), ("ngram", {"speculate": "ngram"})):
        ts = []
        for _ in range(2):
            r = e.generate(prompt, steps, stop=[], **kw)
            ts.append(r.decode_tokens_per_s)
        res[name] = statistics.median(ts)
        if kw:
            res["stats"] = dict(e.last_speculation)
    res["speedup"] = res["ngram"] / res["plain"]
    return res


def main() -> int:
    import compare
    from lfmc.bench import format_verify_cost, project_speedup, verify_cost
    from lfmc.runtime import Engine

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", default="lfm2-350m")
    ap.add_argument("--precisions", default="f32,q4g32a8")
    ap.add_argument("--build", default="build/batched")
    ap.add_argument("--out", default="benchmarks/results/speculative.json")
    a = ap.parse_args()
    res: dict = {"cpu": compare.cpu_info(), "command": " ".join(sys.argv), "runs": []}
    ks = [1, 2, 3, 4, 6, 8]
    for preset in a.presets.split(","):
        for prec in a.precisions.split(","):
            e = Engine(shape_artifact(a.build, preset, prec), max_batch=1)
            c = verify_cost(e, ks)
            row = {"preset": preset, "precision": prec, "cost": c, "ngram": ngram(e),
                   "projection": {str(x): project_speedup(c, x) for x in (0.5, 0.7, 0.8)}}
            res["runs"].append(row)
            print(f"{preset} {prec}: {format_verify_cost(c)}", flush=True)
            print("  projected speed-up at acceptance " + ", ".join(
                f"{x}: {p['speedup']:.2f}x (k={p['k']})" for x, p in row["projection"].items()), flush=True)
            n = row["ngram"]
            print(f"  n-gram drafting, input-copying prompt: {n['ngram']:.1f} vs {n['plain']:.1f} tok/s plain "
                  f"({n['speedup']:.2f}x); {n['stats']}", flush=True)
            del e
    compare.write_results(a.out, res)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
