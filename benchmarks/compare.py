"""lfmc vs PyTorch (eager, optionally torch.compile) vs llama.cpp on this CPU, every precision, one command.

    .venv/bin/python benchmarks/compare.py --llama-cpp                        # 350M and 1.2B, f32 / 16-bit / q8 / q4
    .venv/bin/python benchmarks/compare.py --presets lfm2-350m --precisions q8,q4g32 --rounds 3 --llama-cpp
    .venv/bin/python benchmarks/compare.py --presets lfm3-1.7b,lfm2-1.2b --precisions f32,f16,q8,q4g32,q8a8,q4g32a8 \
        --torch-for f32,f16                                    # LFM3 against LFM2 in one run

For each preset and precision: lfmc's host artifact (seeded random weights), transformers in PyTorch on the same
weights (float32 for f32 / q8 / q4; bf16 for the 16-bit row, which lfmc runs as ``--dtype f16``), and, with
``--llama-cpp``, llama-bench on the same weights converted to the matching GGUF type (F32, F16, Q8_0, Q4_0 with
``--repack 0``; see benchmarks/llamacpp_peer.py); with it, the Q8_0 / Q4_0 rows also run lfmc on the very GGUF
that llama.cpp runs (``lfmc import x.gguf``: the blocks kept as q8g32 / q4g32; side ``lfmc Q4_0 file``). ``q8a8`` / ``q4g32a8`` compile lfmc with ``--act-quant i8``
(int8 activations, integer dot products), the like-for-like peer of llama.cpp's Q8_0 / Q4_0, whose CPU dot
products quantize the activations to 8 bits as well. Sides alternate within each round, each in its own process;
medians over ``--rounds``. Measured: prefill of 512 tokens (tokens/s), time to first token of a 512-token prompt
(= 512 / prefill rate), decode tokens/s (one sequence), peak RSS. Memory read bandwidth is measured in the same
run (two threads streaming a 1 GiB buffer) and gives each precision's decode limit: bandwidth / bytes read per
token, the weights (the LM head included) plus the state a decode step reads (conv state, each sliding window's
ring, the full layers' KV cache at the mean context of the decode measurement). Decode efficiency = those bytes
per step / step time / the bandwidth. Prints a table with every figure as a ratio to llama.cpp and to that limit;
writes JSON (benchmarks/results/compare.json) with the CPU model and its features. An artifact already in
``--build`` is reused only when the current compiler sources compiled it (``compiled``: a stamp of their digest).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import llamacpp_peer as llama_cpp  # noqa: E402
from lfmc.bench import run_child  # noqa: E402
from lfmc.compile import compile_model, load_source  # noqa: E402

PRECISIONS = {  # name -> (lfmc quant, lfmc dtype, torch dtype, GGUF type, lfmc activations)
    "f32": (None, "f32", "f32", "F32", None),
    "f16": (None, "f16", "bf16", "F16", None),
    "bf16": (None, "bf16", "bf16", "BF16", None),
    "q8": ("q8", "f32", "f32", "Q8_0", None),
    "q4g32": ("q4g32", "f32", "f32", "Q4_0", None),
    # int8 activations as well (llama.cpp's Q8_0 / Q4_0 CPU paths quantize activations to 8 bits too)
    "q8a8": ("q8", "f32", "f32", "Q8_0", "i8"),
    "q4g32a8": ("q4g32", "f32", "f32", "Q4_0", "i8"),
    # bf16 weights and activations (vdpbf16ps where the CPU has AVX512-BF16), against PyTorch bf16 and llama.cpp F16
    "bf16a16": (None, "bf16", "bf16", "F16", "bf16"),
}


def stream_read_gbs(gib: float = 1.0, threads: int = 2, reps: int = 7) -> float:
    """Memory read bandwidth: ``threads`` threads each taking the dot product of their share of a ``gib`` GiB
    float32 buffer with itself (BLAS, vectorized, the GIL released); the best of ``reps``."""
    a = np.ones(int(gib * 2**30) // 4, np.float32)
    parts = np.array_split(a, threads)

    def once() -> float:
        ts = [threading.Thread(target=np.dot, args=(p, p)) for p in parts]
        t = time.perf_counter()
        for th in ts:
            th.start()
        for th in ts:
            th.join()
        return a.nbytes / (time.perf_counter() - t) / 1e9

    once()
    return max(once() for _ in range(reps))


def read_peak_probe(threads: int, mib: int = 128, streams: int = 1):
    """A memory read probe with the read-peak kernel every CPU artifact carries (lfmc/targets/kernels/peak.py
    make_read_peak, built here for this host: each thread reads its share of a ``mib`` MiB buffer as ``streams``
    streams). Returns ``probe(reps=2)``: GB/s, the best of ``reps`` timed reads after one untimed."""
    from lfmc.runtime.drivers.host import HostMemory
    from lfmc.targets.host import host_knobs, host_target
    from lfmc.targets.kernels import make_read_peak
    from lfmc.targets.knobs import PEAK_ACCS
    from lfmc.tvm_env import import_tvm

    tvm, kn = import_tvm(), host_knobs("decode")
    f = tvm.compile(tvm.IRModule({"rp": make_read_peak("rp", kn, streams)}), target=host_target())["rp"]
    unit = threads * streams * PEAK_ACCS
    n = (mib << 20) // (4 * kn.lanes) // unit * unit
    buf = HostMemory().alloc((n, kn.lanes), "float32")
    buf[...] = 1.0
    x, out = tvm.runtime.from_dlpack(buf), tvm.runtime.tensor(np.zeros((threads, PEAK_ACCS, kn.lanes), np.float32))

    def probe(reps: int = 2) -> float:
        f(x, out, threads)
        best = float("inf")
        for _ in range(reps):
            t = time.perf_counter()
            f(x, out, threads)
            best = min(best, time.perf_counter() - t)
        return buf.nbytes / best / 1e9

    return probe


def fresh_copies(arts: dict[str, Path], into: Path) -> dict[str, Path]:
    """Each artifact copied anew under ``into`` (replacing an earlier copy), for A/B runs of artifacts: their
    weights are mapped from the page cache, and how a file's pages were cached (the size of the folios that back
    them, how many are PMD-mapped) moved one artifact's decode by up to 1.22x against a byte-identical copy of it
    (BENCHMARKS.md, "Where an artifact's pages lie"). Copies written the same way, one after the other, compare
    the kernels rather than the page cache's history."""
    import shutil

    out = {}
    for n, art in arts.items():
        dst = Path(into) / f"{n}.host"
        shutil.rmtree(dst, ignore_errors=True)
        shutil.copytree(art, dst)
        out[n] = dst
    return out


def weights_bytes(art: Path) -> int:
    plan = json.loads((art / "manifest.json").read_text())["plan"]
    return sum(int(np.prod(s["shape"])) * np.dtype(s["dtype"]).itemsize for s in plan["params"].values())


def state_read_bytes(art: Path, context: int) -> int:
    """Bytes of state one sequence's decode step reads at ``context``: conv / recurrence state whole, a sliding
    window's ring up to its window, a KV cache up to the context."""
    total = 0
    for s in json.loads((art / "manifest.json").read_text())["plan"]["state"].values():
        rest = [d for d in s["shape"][1:] if isinstance(d, int)]
        rows = min(context, s["window"]) if "window" in s else context if "C" in s["shape"] else 1
        total += rows * int(np.prod(rest)) * np.dtype(s["dtype"]).itemsize
    return total


def compiler_digest() -> str:
    """A digest of lfmc's compiler sources (everything but the runtime): what an artifact in a benchmark's build
    folder was compiled by."""
    import hashlib

    root = Path(__file__).resolve().parents[1] / "lfmc"
    h = hashlib.sha256()
    for f in sorted(p for p in root.rglob("*.py") if "runtime" not in p.relative_to(root).parts):
        h.update(str(f.relative_to(root)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def compiled(art: Path, build) -> Path:
    """``art``, compiled by ``build()`` unless it is there already and was compiled by the current compiler
    sources (a stamp beside its manifest): a benchmark never measures an artifact of older kernels."""
    stamp = Path(art) / ".lfmc-compiler"
    digest = compiler_digest()
    if not ((Path(art) / "manifest.json").exists() and stamp.exists() and stamp.read_text() == digest):
        build()
        stamp.write_text(digest)
    return Path(art)


def write_results(path: str | Path, res: dict) -> Path:
    """A benchmark's results as JSON at ``path`` (its folder made), announced on stdout."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1))
    print(f"wrote {out}")
    return out


def cpu_info() -> dict:
    from lfmc.targets.host import cpu_info as info

    return info()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", default="lfm2-350m,lfm2-1.2b")
    ap.add_argument("--precisions", default="f32,f16,q8,q4g32", help=f"of {', '.join(PRECISIONS)}")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--reps", type=int, default=3, help="repetitions inside each run (median)")
    ap.add_argument("--prefill", type=int, default=512)
    ap.add_argument("--decode-steps", type=int, default=64)
    ap.add_argument("--torch-compile", action="store_true", help="also PyTorch through torch.compile (inductor)")
    ap.add_argument("--no-torch", action="store_true", help="skip PyTorch (llama.cpp and lfmc only)")
    ap.add_argument("--torch-for", default=None, metavar="PRECISIONS",
                    help="run PyTorch only for these precisions (it runs float32 for q8 / q4 rows anyway)")
    ap.add_argument("--llama-cpp", nargs="?", const="", default=None, metavar="DIR",
                    help="also llama-bench (built by benchmarks/build_llama_cpp.sh; DIR defaults to its cache)")
    ap.add_argument("--target", default="host",
                    help="lfmc's compile target: host, or an x86 ISA level this CPU runs (x86-64-v3: AVX2 only, to "
                         "compare with a llama.cpp built for AVX2: --llama-cpp DIR)")
    ap.add_argument("--build", default="build/compare")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="benchmarks/results/compare.json")
    a = ap.parse_args()
    bad = [p for p in a.precisions.split(",") if p not in PRECISIONS]
    if bad:
        raise SystemExit(f"unknown precision {bad[0]!r} (known: {', '.join(PRECISIONS)})")
    lc_dir = llama_cpp.find(a.llama_cpp or None) if a.llama_cpp is not None else None
    if a.llama_cpp is not None and lc_dir is None:
        print("llama.cpp is not built (benchmarks/build_llama_cpp.sh): measuring without it", flush=True)
    bw = stream_read_gbs()
    print(f"memory read bandwidth: {bw:.1f} GB/s (2 threads, 1 GiB), {os.cpu_count()} CPUs", flush=True)
    kw = {"prefill_lens": [a.prefill], "decode_steps": a.decode_steps, "reps": a.reps}
    results = []
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:                       # after every row: a crash or a kill keeps what was measured
        out.write_text(json.dumps({"bandwidth_gbs": bw, "cpus": os.cpu_count(), "cpu": cpu_info(), "target": a.target,
                                   "prefill": a.prefill, "rounds": a.rounds, "results": results,
                                   "command": " ".join(sys.argv)}, indent=1))

    # precision-major: the models of one precision are measured next to each other
    for prec in a.precisions.split(","):
        for preset in a.presets.split(","):
            quant, dtype, tdtype, gtype, act = PRECISIONS[prec]
            art = Path(a.build) / f"{preset}-{prec}.{a.target}"
            def build(preset=preset, art=art, quant=quant, dtype=dtype, act=act, prec=prec) -> None:
                t = time.perf_counter()
                compile_model(load_source(preset, seed=a.seed), art, a.target, max_batch=1, quant=quant, dtype=dtype,
                              max_context=a.prefill + a.decode_steps + 64, act_quant=act)
                print(f"compiled {preset} {prec} in {time.perf_counter() - t:.0f} s", flush=True)

            compiled(art, build)
            man = json.loads((art / "manifest.json").read_text())
            sides = {"lfmc": lambda: run_child("lfmc", artifact=str(art), **kw)}
            if not a.no_torch and (a.torch_for is None or prec in a.torch_for.split(",")):
                sides[f"torch {tdtype}"] = lambda: run_child("torch", source=man["model"]["source"],
                                                             config=man["model"]["config"], dtype=tdtype, **kw)
                if a.torch_compile:
                    sides[f"torch.compile {tdtype}"] = lambda: run_child(
                        "torch", source=man["model"]["source"], config=man["model"]["config"], dtype=tdtype,
                        compile=True, **kw)
            if lc_dir is not None:
                hf = llama_cpp.save_hf(preset, a.seed, Path(a.build) / f"{preset}-s{a.seed}.hf")
                model = llama_cpp.gguf(lc_dir, hf, gtype)
                sides[f"llama.cpp {gtype}"] = lambda: llama_cpp.bench(lc_dir, model, prefill=a.prefill,
                                                                      decode=a.decode_steps, reps=a.reps)
                if gtype in ("Q8_0", "Q4_0"):
                    # lfmc on the very file llama.cpp runs: its Q8_0 / Q4_0 blocks kept (q8g32 / q4g32)
                    gart = Path(a.build) / f"{preset}-{prec}-gguf.{a.target}"
                    from lfmc.frontend.gguf import import_gguf

                    compiled(gart, lambda: compile_model(import_gguf(model), gart, a.target, max_batch=1,
                                                         act_quant=act, max_context=a.prefill + a.decode_steps + 64))
                    sides[f"lfmc {gtype} file"] = lambda: run_child("lfmc", artifact=str(gart), **kw)
            runs: dict[str, list] = {k: [] for k in sides}
            for r in range(a.rounds):
                for name, fn in sides.items():
                    try:
                        runs[name].append(fn())
                    except Exception as e:                     # a peer that fails is reported, not fatal
                        runs[name].append({"error": str(e)[-500:]})
                print(f"{preset} {prec} round {r + 1}/{a.rounds}: " + ", ".join(
                    f"{k} {v[-1]['decode']['1']:.1f}" if "decode" in v[-1] else f"{k} failed"
                    for k, v in runs.items()) + " decode tok/s", flush=True)
            wb = weights_bytes(art)
            sb = state_read_bytes(art, 16 + a.decode_steps // 2)      # bench_engine decodes after 16 tokens
            row = {"preset": preset, "precision": prec, "weights_bytes": wb, "state_read_bytes": sb,
                   "decode_limit": bw * 1e9 / (wb + sb), "sides": {}}
            for name, rs in runs.items():
                ok = [x for x in rs if "decode" in x]
                if not ok:
                    row["sides"][name] = {"error": rs[-1].get("error")}
                    continue
                pre = statistics.median(x["prefill"][str(a.prefill)] for x in ok)
                row["sides"][name] = {
                    "prefill_tps": pre, "ttft_s": a.prefill / pre,
                    "decode_tps": statistics.median(x["decode"]["1"] for x in ok),
                    "peak_rss": statistics.median(x["memory"]["peak_rss"] for x in ok
                                                  if x["memory"].get("peak_rss")) if any(
                        x["memory"].get("peak_rss") for x in ok) else None,
                    "rounds": len(ok)}
            results.append(row)
            save()
    print(f"\nmedians of {a.rounds} alternating rounds; prefill {a.prefill} tokens; decode one sequence; "
          f"memory bandwidth {bw:.1f} GB/s")
    hdr = (f"{'model':<10}{'prec':<9}{'system':<22}{'prefill tok/s':>14}{'TTFT s':>8}{'decode tok/s':>13}"
           f"{'peak MiB':>9}{'decode/llama':>13}{'prefill/llama':>14}{'efficiency':>11}")
    print(hdr)
    for row in results:
        lc = next((v for k, v in row["sides"].items() if k.startswith("llama.cpp") and "decode_tps" in v), None)
        for name, v in row["sides"].items():
            if "error" in v:
                print(f"{row['preset'][5:]:<10}{row['precision']:<9}{name:<22} failed: {v['error'][:60]}")
                continue
            r_dec = f"{v['decode_tps'] / lc['decode_tps']:.2f}" if lc else "-"
            r_pre = f"{v['prefill_tps'] / lc['prefill_tps']:.2f}" if lc else "-"
            rss = f"{v['peak_rss'] / 2**20:.0f}" if v["peak_rss"] else "-"
            print(f"{row['preset'][5:]:<10}{row['precision']:<9}{name:<22}{v['prefill_tps']:>14.1f}{v['ttft_s']:>8.2f}"
                  f"{v['decode_tps']:>13.1f}{rss:>9}{r_dec:>13}{r_pre:>14}"
                  f"{v['decode_tps'] / row['decode_limit']:>13.0%}")
        print(f"{'':<16}read per token: weights {row['weights_bytes'] / 1e6:.0f} MB + state "
              f"{row['state_read_bytes'] / 1e6:.1f} MB -> decode limit {row['decode_limit']:.1f} tok/s")
    by = {(r["preset"], r["precision"]): r["sides"].get("lfmc", {}) for r in results}
    presets = list(dict.fromkeys(r["preset"] for r in results))
    if len(presets) > 1:                     # decode efficiency of each model at each precision, side by side
        print(f"\nlfmc decode efficiency (bytes read per step / step time / bandwidth): " + ", ".join(presets))
        for prec in dict.fromkeys(r["precision"] for r in results):
            eff = [by.get((p, prec), {}).get("decode_tps") for p in presets]
            lim = [next(r["decode_limit"] for r in results if (r["preset"], r["precision"]) == (p, prec)) for p in presets]
            print(f"  {prec:<9}" + "  ".join(f"{e / li:6.0%}" if e else "     -" for e, li in zip(eff, lim)))
    save()
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
