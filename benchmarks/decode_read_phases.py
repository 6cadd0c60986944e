"""Decode against the memory read bandwidth of the same moment, phase by phase: how close a decode step, its
largest GEMV alone, and a pure read of several streams per thread come to the read-peak kernel.

    .venv/bin/python benchmarks/decode_read_phases.py --preset lfm2-350m --rounds 40
    .venv/bin/python benchmarks/decode_read_phases.py --dtype f16 --out benchmarks/results/decode-read-phases-f16.json

Why: this VM's read bandwidth flips between phases within seconds (about 35 and 60 GB/s here), and whether a
decode step keeps up with the higher phase is a different question from whether it keeps up with the lower. Each
round: the artifact's read-peak kernel (Engine.measure_read_bandwidth: each thread one stream over 128 MiB), then
``--steps`` decode steps, the largest GEMV of the step alone (the LM head), the same 128 MiB read with
``--streams`` concurrent streams per thread (as a GEMV reads its interleaved weight panels), and the read peak
again. Each figure is over the higher of the two peaks around it; rounds are split at the midpoint between the
lowest and highest peak seen into a low and a high phase, and the medians of each phase are reported.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="lfm2-350m")
    ap.add_argument("--dtype", default="f32", choices=("f32", "f16"), help="the weights' precision")
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--steps", type=int, default=8, help="decode steps per round")
    ap.add_argument("--streams", type=int, default=8, help="streams per thread of the multi-stream read")
    ap.add_argument("--build", default="build/phases")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "decode-read-phases.json")
    a = ap.parse_args()
    from compare import compiled, cpu_info, read_peak_probe, weights_bytes

    from lfmc.compile import compile_model, load_source
    from lfmc.runtime import Engine

    art = Path(a.build) / f"{a.preset}-{a.dtype}.host"
    opts = {"dtype": "f16"} if a.dtype == "f16" else {}
    compiled(art, lambda: compile_model(load_source(a.preset, seed=0), art, max_batch=1, max_context=512, **opts))
    eng = Engine(art, max_batch=1)
    prof = Engine(art, max_batch=1, one_call=False)      # kernel by kernel, to call the LM head alone
    prof.profile("decode", 1, reps=1)
    names = [k for k, _ in prof._launches("decode", 1)]
    summary = prof.launch_summary("decode", 1)
    head = max((n for n in summary if n.startswith("k_mm_")), key=lambda n: summary[n]["param_bytes"]
               / summary[n]["launches"])
    hf, hargs = next(c for n, c in zip(names, prof._calls[("decode", 1, 0)]) if n == head)
    head_bytes = summary[head]["param_bytes"] / summary[head]["launches"]
    step_bytes = weights_bytes(art)                     # every parameter once (the LM head and the embedding
                                                        # gather share one tensor)
    multi = read_peak_probe(eng.driver.num_threads, streams=a.streams)
    s = eng.new_sequence()
    tok = int(np.argmax(eng.prefill(s, [1, 2, 3])[-1]))
    rounds = []
    for _ in range(a.rounds):
        before = eng.measure_read_bandwidth(128, reps=2)
        eng._seqs[s].length = 3                           # benchmark only: every round decodes at the same depth
        t = time.perf_counter()
        for _ in range(a.steps):
            tok = int(np.argmax(eng.decode([s], [tok])[0]))
        decode = step_bytes * a.steps / (time.perf_counter() - t) / 1e9
        hf(*hargs)
        t = time.perf_counter()
        for _ in range(4):
            hf(*hargs)
        gemv = head_bytes * 4 / (time.perf_counter() - t) / 1e9
        ms = multi(reps=1)
        peak = max(before, eng.measure_read_bandwidth(128, reps=2))
        rounds.append({"peak_gbs": peak, "decode_gbs": decode, "head_gbs": gemv, "multi_gbs": ms})
        print(f"read peak {peak:5.1f} GB/s | decode {decode:5.1f} ({decode / peak:4.0%}) | {head} alone "
              f"{gemv:5.1f} ({gemv / peak:4.0%}) | {a.streams} streams a thread {ms:5.1f} ({ms / peak:4.0%})",
              flush=True)
    lo, hi = min(r["peak_gbs"] for r in rounds), max(r["peak_gbs"] for r in rounds)
    phases = {}
    for name, sel in (("low", lambda r: r["peak_gbs"] < (lo + hi) / 2),
                      ("high", lambda r: r["peak_gbs"] >= (lo + hi) / 2)):
        rs = [r for r in rounds if sel(r)]
        if rs:
            phases[name] = {"rounds": len(rs), **{k: statistics.median(r[k] for r in rs) for k in rounds[0]},
                            **{f"{k}_of_peak": statistics.median(r[k] / r["peak_gbs"] for r in rs)
                               for k in ("decode_gbs", "head_gbs", "multi_gbs")}}
            p = phases[name]
            print(f"{name} phase ({p['rounds']} rounds): read peak {p['peak_gbs']:.1f} GB/s; decode "
                  f"{p['decode_gbs_of_peak']:.0%}, {head} {p['head_gbs_of_peak']:.0%}, {a.streams}-stream read "
                  f"{p['multi_gbs_of_peak']:.0%} of it (medians)")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps({"preset": a.preset, "dtype": a.dtype, "cpu": cpu_info(), "head": head,
                                 "step_bytes": step_bytes, "streams": a.streams, "phases": phases, "rounds": rounds,
                                 "command": " ".join(sys.argv)}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
