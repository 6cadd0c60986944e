"""Host (CPU) artifact vs PyTorch eager (and llama.cpp) on the same random weights: prefill and decode
tokens/s, peak RSS.

    .venv/bin/python benchmarks/host_vs_torch.py --preset lfm2-350m --rounds 3 [--quant q8] [--llama-cpp]

Compiles the preset (seeded random weights) once, then alternates lfmc, PyTorch (float32) and, with --llama-cpp,
llama-bench on the same weights converted to the matching GGUF type (see benchmarks/llamacpp_peer.py), each in its own
process, for --rounds rounds; reports medians and ratios and writes JSON (default benchmarks/results/).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import llamacpp_peer as llama_cpp  # noqa: E402
from lfmc.bench import run_child  # noqa: E402
from lfmc.compile import compile_model, load_source  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="lfm2-350m")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quant", default=None, help="lfmc weight quantization (q8, q4g32, ...); PyTorch stays float32")
    ap.add_argument("--dtype", default="f32", choices=["f32", "f16", "bf16"], help="lfmc weight storage")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--reps", type=int, default=3, help="repetitions inside each run (median)")
    ap.add_argument("--prefill", default="128,512")
    ap.add_argument("--decode-steps", type=int, default=64)
    ap.add_argument("--build", default="build/bench", help="where the artifact is compiled")
    ap.add_argument("--llama-cpp", nargs="?", const="", default=None, metavar="DIR",
                    help="also run llama-bench (built by benchmarks/build_llama_cpp.sh; DIR defaults to its cache)")
    ap.add_argument("--out", default=None, help="JSON output (default benchmarks/results/host-PRESET.json)")
    a = ap.parse_args()
    lens = [int(x) for x in a.prefill.split(",")]
    tag = a.preset + (f"-{a.quant}" if a.quant else "") + (f"-{a.dtype}" if a.dtype != "f32" else "")
    art = Path(a.build) / f"{tag}.host"
    t = time.perf_counter()
    m = load_source(a.preset, seed=a.seed)
    compile_model(m, art, max_batch=1, quant=a.quant, dtype=a.dtype)
    weights_bytes = sum(int(np.prod(s["shape"])) * np.dtype(s["dtype"]).itemsize
                        for s in json.loads((art / "manifest.json").read_text())["plan"]["params"].values())
    del m
    compile_s = time.perf_counter() - t
    print(f"compiled {a.preset} in {compile_s:.1f} s -> {art}", flush=True)
    manifest = json.loads((art / "manifest.json").read_text())
    kw = {"prefill_lens": lens, "decode_steps": a.decode_steps, "reps": a.reps}
    runs: dict[str, list] = {"lfmc": [], "torch": []}
    sides = ["lfmc", "torch"]
    lc_model = lc_dir = None
    if a.llama_cpp is not None:
        lc_dir = llama_cpp.find(a.llama_cpp or None)
        gtype = llama_cpp.TYPE_OF.get(a.quant or a.dtype)
        if lc_dir is None:
            print("llama.cpp is not built (benchmarks/build_llama_cpp.sh): measuring without it", flush=True)
        elif gtype is None:
            print(f"no GGUF type matches {a.quant}: measuring without llama.cpp", flush=True)
        else:
            hf = llama_cpp.save_hf(a.preset, a.seed, Path(a.build) / f"{a.preset}-s{a.seed}.hf")
            lc_model = llama_cpp.gguf(lc_dir, hf, gtype)
            sides.append("llama.cpp")
            runs["llama.cpp"] = []
            print(f"llama.cpp: {lc_model.name} ({gtype}, --repack 0)", flush=True)
    for r in range(a.rounds):
        runs["lfmc"].append(run_child("lfmc", artifact=str(art), **kw))
        runs["torch"].append(run_child("torch", source=manifest["model"]["source"],
                                       config=manifest["model"]["config"], **kw))
        if lc_model is not None:
            runs["llama.cpp"].append(llama_cpp.bench(lc_dir, lc_model, prefill=max(lens), decode=a.decode_steps,
                                                     reps=a.reps))
        print(f"round {r + 1}/{a.rounds}: " + ", ".join(f"{k} decode {runs[k][-1]['decode']['1']:.1f} tok/s"
                                                        for k in sides), flush=True)

    def med(side: str, *path: str) -> float | None:
        vals = []
        for run in runs[side]:
            v = run
            for p in path:
                v = v.get(p) if isinstance(v, dict) else None
            if v is not None:
                vals.append(v)
        return statistics.median(vals) if vals else None

    rows = [(f"prefill {T} tok/s", ("prefill", str(T))) for T in lens] + [("decode tok/s", ("decode", "1")),
                                                                          ("peak RSS MiB", ("memory", "peak_rss"))]
    table = {}
    lc = "llama.cpp" in runs
    print(f"\n{a.preset} lfmc {a.quant or a.dtype} vs torch float32" + (f" and llama.cpp {lc_model.name}" if lc else "")
          + f", {os.cpu_count()} threads, medians of {a.rounds} alternating rounds")
    print(f"{'':<20}{'lfmc':>10}{'torch':>10}" + (f"{'llama.cpp':>11}" if lc else "") + f"{'lfmc/torch':>12}"
          + (f"{'lfmc/llama':>12}" if lc else ""))
    fmt = lambda v: f"{v:.1f}" if v is not None else "-"  # noqa: E731
    for name, path in rows:
        vals = {k: med(k, *path) for k in sides}
        if "RSS" in name:
            vals = {k: v / 2**20 if v is not None else None for k, v in vals.items()}
        x, y = vals["lfmc"], vals["torch"]
        table[name] = {**vals, "ratio": x / y}
        line = f"{name:<20}{fmt(x):>10}{fmt(y):>10}"
        if lc:
            z = vals["llama.cpp"]
            table[name]["ratio_llama_cpp"] = x / z if z else None
            line += f"{fmt(z):>11}"
        line += f"{x / y:>12.2f}"
        if lc:
            line += f"{x / z:>12.2f}" if z else f"{'-':>12}"
        print(line)
    state = runs["lfmc"][0]["memory"]["state"]
    budget = (weights_bytes + state) * 1.25
    print(f"lfmc peak RSS {med('lfmc', 'memory', 'peak_rss') / 2**20:.0f} MiB vs weights + caches + 25% = "
          f"{budget / 2**20:.0f} MiB")
    out = Path(a.out or Path(__file__).parent / "results" / f"host-{tag}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"preset": a.preset, "quant": a.quant or "f32", "dtype": a.dtype, "seed": a.seed, "machine": platform.processor() or platform.machine(),
                               "cpus": os.cpu_count(), "features": manifest["target"]["features"],
                               "compile_s": compile_s, "weights_bytes": weights_bytes, "table": table,
                               "runs": runs, "command": " ".join(sys.argv)}, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
