"""Decode speed of lfmc against llama.cpp in short runs sandwiched in time: lfmc, llama.cpp, lfmc, every round.

    .venv/bin/python benchmarks/decode_pairs.py --presets lfm2-350m,lfm2-1.2b --precisions f16 --rounds 8

Why: decode is memory-bound, and the memory bandwidth of a shared VM moves between phases within seconds (on the
2-core VM of BENCHMARKS.md the 1 GiB probe reads 30-35 GB/s in one second and 55-65 in the next). compare.py
alternates whole runs (prefill 512, then decode, then the next side, 10-60 s each), so the two sides' medians can
come from different phases: at LFM2-1.2B f16 one such run measured lfmc at 0.82x llama.cpp and 0.98x in its other
round. Here each round times lfmc's decode, then llama.cpp's, then lfmc's again (a few seconds each), and reports
lfmc's mean of the two over llama.cpp's: the ratio of one moment. The result is the median of those paired
ratios, with each side's median and the bandwidth probe before and after each round beside it.

lfmc runs in this process (the engine loaded once; ``--steps`` greedy steps after a 16-token prefill, 2 steps of
warm-up first); llama.cpp is ``llama-bench -p 0 -n STEPS -r 1 -t THREADS`` on the same seeded weights as a GGUF of
the matching type (compare.py's PRECISIONS; llama-bench warms up once itself). Artifacts and GGUF files are shared
with compare.py's ``--build`` folder. Writes JSON with the CPU model and features.
"""
from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import llamacpp_peer as llama_cpp  # noqa: E402
from compare import compiled, cpu_info, PRECISIONS, stream_read_gbs, weights_bytes, write_results  # noqa: E402


def lfmc_rate(eng, steps: int) -> float:
    """Greedy decode tokens/s of one sequence after a 16-token prompt (2 untimed steps first)."""
    s = eng.new_sequence()
    tok = int(np.argmax(eng.prefill(s, list(range(1, 17)))[-1]))
    for _ in range(2):
        tok = int(np.argmax(eng.decode([s], [tok])[0]))
    t = time.perf_counter()
    for _ in range(steps):
        tok = int(np.argmax(eng.decode([s], [tok])[0]))
    rate = steps / (time.perf_counter() - t)
    eng.release(s)
    return rate


def llama_rate(lc: Path, model: Path, steps: int, threads: int) -> float:
    """llama-bench's decode tokens/s (``-p 0 -n steps -r 1``)."""
    p = subprocess.run([str(lc / "bin" / "llama-bench"), "-m", str(model), "-p", "0", "-n", str(steps), "-r", "1",
                        "-t", str(threads), "-o", "csv"], capture_output=True, text=True)
    if p.returncode:
        raise RuntimeError(f"llama-bench failed ({p.returncode}): {p.stderr[-2000:]}")
    rows = list(csv.DictReader(p.stdout.splitlines()))
    return float(rows[-1]["avg_ts"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", default="lfm2-350m,lfm2-1.2b")
    ap.add_argument("--precisions", default="f16", help=f"of {', '.join(PRECISIONS)}")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--steps", type=int, default=32, help="decode steps per run")
    ap.add_argument("--llama-cpp", default=None, metavar="DIR",
                    help="llama.cpp build (benchmarks/build_llama_cpp.sh; default: its cache)")
    ap.add_argument("--build", default="build/compare")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="benchmarks/results/decode-pairs.json")
    a = ap.parse_args()
    bad = [p for p in a.precisions.split(",") if p not in PRECISIONS]
    if bad:
        raise SystemExit(f"unknown precision {bad[0]!r} (known: {', '.join(PRECISIONS)})")
    lc = llama_cpp.find(a.llama_cpp)
    if lc is None:
        raise SystemExit("llama.cpp is not built: run benchmarks/build_llama_cpp.sh (or pass --llama-cpp DIR)")
    from lfmc.compile import compile_model, load_source
    from lfmc.runtime.engine import Engine

    threads = len(os.sched_getaffinity(0))
    results = []
    for prec in a.precisions.split(","):
        for preset in a.presets.split(","):
            quant, dtype, _, gtype, act = PRECISIONS[prec]
            art = Path(a.build) / f"{preset}-{prec}.host"
            compiled(art, lambda: compile_model(load_source(preset, seed=a.seed), art, "host", max_batch=1,
                                                quant=quant, dtype=dtype, max_context=640, act_quant=act))
            model = llama_cpp.gguf(lc, llama_cpp.save_hf(preset, a.seed, Path(a.build) / f"{preset}-s{a.seed}.hf"),
                                   gtype)
            eng = Engine(art, max_batch=1, num_threads=threads)
            lfmc_rate(eng, 4)
            rounds = []
            for r in range(a.rounds):
                before = stream_read_gbs(reps=1)
                l1 = lfmc_rate(eng, a.steps)
                c = llama_rate(lc, model, a.steps, threads)
                l2 = lfmc_rate(eng, a.steps)
                after = stream_read_gbs(reps=1)
                rounds.append({"lfmc": [l1, l2], "llama_cpp": c, "ratio": (l1 + l2) / 2 / c,
                               "probe_gbs": [before, after]})
                print(f"{preset} {prec} round {r + 1}/{a.rounds}: lfmc {l1:.1f} / {l2:.1f}, llama.cpp {gtype} {c:.1f} "
                      f"tok/s, ratio {rounds[-1]['ratio']:.2f} (probe {before:.0f} / {after:.0f} GB/s)", flush=True)
            del eng
            wb = weights_bytes(art)
            row = {"preset": preset, "precision": prec, "gguf": gtype, "weights_bytes": wb, "rounds": rounds,
                   "lfmc_tps": statistics.median(x for r in rounds for x in r["lfmc"]),
                   "llama_cpp_tps": statistics.median(r["llama_cpp"] for r in rounds),
                   "paired_ratio": statistics.median(r["ratio"] for r in rounds)}
            row["lfmc_gbs"] = row["lfmc_tps"] * wb / 1e9
            results.append(row)
            write_results(a.out, {"cpu": cpu_info(), "threads": threads, "steps": a.steps, "results": results,
                                  "command": " ".join(sys.argv)})
    print(f"\n{'model':<12}{'prec':<8}{'lfmc tok/s':>11}{'llama.cpp':>11}{'paired ratio':>14}"
          f"{'ratios min-max':>16}{'lfmc GB/s':>11}")
    for row in results:
        rs = [r["ratio"] for r in row["rounds"]]
        print(f"{row['preset']:<12}{row['precision']:<8}{row['lfmc_tps']:>11.1f}{row['llama_cpp_tps']:>11.1f}"
              f"{row['paired_ratio']:>13.2f}x{min(rs):>9.2f}-{max(rs):.2f}{row['lfmc_gbs']:>11.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
