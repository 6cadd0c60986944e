"""Aggregate decode tokens/s of several sequences stepping together, lfmc against llama.cpp's batched-bench, with
each batch size's step time set against its roofline. Issue 28's table.

    .venv/bin/python benchmarks/batched_decode.py                                  # 350M: f32, q8a8, q4g32a8
    .venv/bin/python benchmarks/batched_decode.py --precisions f32 --rounds 3 --batches 1,8

The work is llama-batched-bench's (``-c 4096 -b 2048 -ub 512 -npp 128 -ntg 128 -npl 1,2,4,8,16 -t 2``, its S_TG):
every sequence gets a 128-token prompt (prefilled, not timed), then the sequences decode 128 tokens together,
greedily; aggregate tokens/s = sequences x 128 / decode time. lfmc runs the same seeded random weights as the
GGUF llama.cpp runs (benchmarks/llamacpp_peer.py): f32 against F32, ``q8a8`` (``--quant q8 --act-quant i8``)
against Q8_0 and ``q4g32a8`` (``--quant q4g32 --act-quant i8``) against Q4_0 (llama.cpp's CPU dot products
quantize activations to 8 bits too; ``--repack 0``), ``f16`` against F16. Each side runs in its own process, the
two alternating in every round; medians over ``--rounds``.

Roofline per batch size B: a decode step reads every weight once and each sequence's state (conv state, KV cache
at the mean context of the run), and computes B x the model's matmul FLOPs per token; its floor is
max(bytes / measured memory bandwidth, FLOPs / the kernels' measured peak), where the bandwidth is two threads
streaming 1 GiB (compare.py's probe) and the peak is the rate the artifact's own matmul kernels compute at in a
128-token prefill (``lfmc bench --profile``'s GFLOP/s, int8 operations for the a8 precisions). "of roof" = that
floor / the measured step time. Writes JSON (default benchmarks/results/batched-decode.json) with the CPU model
and its features; prints the table that BENCHMARKS.md quotes.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


# ------------------------------------------------------------------------------------ worker (lfmc, one process)
def work(art: str, batches: list[int], npp: int, ntg: int, seed: int, profile: bool) -> dict:
    """Aggregate decode tokens/s of lfmc at each batch size (prefill excluded), and, with ``profile``, the
    artifact's matmul rate in a 128-row prefill and its decode FLOPs per token."""
    import numpy as np

    from lfmc.bench import profile_engine
    from lfmc.runtime.engine import Engine

    e = Engine(art)
    rng = np.random.default_rng(seed)
    out: dict = {"decode": {}}
    for B in batches:
        warm = [e.new_sequence() for _ in range(B)]          # builds this batch size's argument tables
        toks = [int(np.argmax(e.prefill(s, [1 + i, 2, 3]))) for i, s in enumerate(warm)]
        for _ in range(2):
            toks = [int(x) for x in np.argmax(e.decode(warm, toks), axis=1)]
        for s in warm:
            e.release(s)
        seqs = [e.new_sequence() for _ in range(B)]
        try:
            toks = [int(np.argmax(e.prefill(s, rng.integers(0, e.vocab_size, npp).tolist()))) for s in seqs]
            t = time.perf_counter()
            for _ in range(ntg):
                toks = [int(x) for x in np.argmax(e.decode(seqs, toks), axis=1)]
            out["decode"][str(B)] = B * ntg / (time.perf_counter() - t)
        finally:
            for s in seqs:
                e.release(s)
    if profile:
        p = profile_engine(e, "prefill", min(128, e.prefill_chunk), reps=5)
        out["matmul_gflops"] = p["matmul_gflops"]
        out["decode_flops_per_token"] = sum(v.get("flops", 0) for v in e.launch_summary("decode", 1).values())
    return out


def run_lfmc(art: Path, batches: list[int], npp: int, ntg: int, seed: int, profile: bool) -> dict:
    arg = json.dumps({"art": str(art), "batches": batches, "npp": npp, "ntg": ntg, "seed": seed, "profile": profile})
    r = subprocess.run([sys.executable, __file__, "--worker", arg], capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(f"lfmc worker failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------------- driver
def main() -> int:
    import compare
    import llamacpp_peer as llama_cpp
    from lfmc.compile import compile_model, load_source

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="lfm2-350m")
    ap.add_argument("--precisions", default="f32,q8a8,q4g32a8", help=f"of {', '.join(compare.PRECISIONS)}")
    ap.add_argument("--batches", default="1,2,4,8,16")
    ap.add_argument("--npp", type=int, default=128, help="prompt tokens per sequence (prefilled, not timed)")
    ap.add_argument("--ntg", type=int, default=128, help="tokens each sequence generates (timed)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--llama-cpp", default="", metavar="DIR", help="llama.cpp build (default: its cache)")
    ap.add_argument("--no-llama-cpp", action="store_true", help="lfmc alone")
    ap.add_argument("--build", default="build/batched")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="benchmarks/results/batched-decode.json")
    a = ap.parse_args()
    precs = a.precisions.split(",")
    bad = [p for p in precs if p not in compare.PRECISIONS]
    if bad:
        raise SystemExit(f"unknown precision {bad[0]!r} (known: {', '.join(compare.PRECISIONS)})")
    batches = [int(b) for b in a.batches.split(",")]
    lc = None if a.no_llama_cpp else llama_cpp.find(a.llama_cpp or None)
    if lc is None and not a.no_llama_cpp:
        raise SystemExit("llama.cpp is not built: run benchmarks/build_llama_cpp.sh (or pass --no-llama-cpp)")
    bw = compare.stream_read_gbs()
    print(f"memory read bandwidth: {bw:.1f} GB/s (2 threads, 1 GiB)", flush=True)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    results: list[dict] = []

    def save() -> None:                                # after every precision: a kill keeps what was measured
        out.write_text(json.dumps({"bandwidth_gbs": bw, "cpu": compare.cpu_info(), "npp": a.npp, "ntg": a.ntg,
                                   "rounds": a.rounds, "results": results, "command": " ".join(sys.argv)},
                                  indent=1))

    for prec in precs:
        quant, dtype, _, gtype, act = compare.PRECISIONS[prec]
        art = Path(a.build) / f"{a.preset}-{prec}-b{max(batches)}.host"
        def build(art=art, quant=quant, dtype=dtype, act=act, prec=prec) -> None:
            t = time.perf_counter()
            compile_model(load_source(a.preset, seed=a.seed), art, max_batch=max(batches), quant=quant, dtype=dtype,
                          act_quant=act, max_context=a.npp + a.ntg + 16)
            print(f"compiled {a.preset} {prec} in {time.perf_counter() - t:.0f} s", flush=True)

        compare.compiled(art, build)                   # rebuilt when the compiler sources changed
        model = None
        if lc is not None:
            hf = llama_cpp.save_hf(a.preset, a.seed, Path(a.build) / f"{a.preset}-s{a.seed}.hf")
            model = llama_cpp.gguf(lc, hf, gtype)
        runs: dict[str, list[dict]] = {"lfmc": [], "llama.cpp": []}
        prof: dict = {}
        for r in range(a.rounds):
            got = run_lfmc(art, batches, a.npp, a.ntg, a.seed + r, profile=(r == 0))
            prof = prof or {k: got.pop(k) for k in ("matmul_gflops", "decode_flops_per_token")}
            runs["lfmc"].append({int(k): v for k, v in got["decode"].items()})
            if model is not None:
                runs["llama.cpp"].append(llama_cpp.batched_bench(lc, model, npp=a.npp, ntg=a.ntg, npl=tuple(batches)))
            print(f"{prec} round {r + 1}/{a.rounds}: " + "; ".join(
                f"{k} " + " ".join(f"{b}:{v[-1].get(b, float('nan')):.1f}" for b in batches)
                for k, v in runs.items() if v) + " tok/s", flush=True)
        wb = compare.weights_bytes(art)
        sb = compare.state_read_bytes(art, a.npp + a.ntg // 2)
        rows = []
        for B in batches:
            med = {k: statistics.median(x[B] for x in v if B in x) if any(B in x for x in v) else None
                   for k, v in runs.items()}
            t_bw = (wb + B * sb) / (bw * 1e9)
            t_fl = B * prof["decode_flops_per_token"] / (prof["matmul_gflops"] * 1e9) if prof["matmul_gflops"] else 0.0
            roof = max(t_bw, t_fl)
            step = B / med["lfmc"]
            rows.append({"batch": B, "lfmc_tok_s": med["lfmc"], "llama_cpp_tok_s": med["llama.cpp"],
                         "step_s": step, "roof_s": roof, "bound": "memory" if t_bw >= t_fl else "compute",
                         "of_roof": roof / step})
        results.append({"precision": prec, "gguf": gtype, "weights_bytes": wb, "state_read_bytes": sb,
                        "matmul_gflops": prof["matmul_gflops"], "decode_flops_per_token": prof["decode_flops_per_token"],
                        "rows": rows, "runs": {k: [{str(b): t for b, t in x.items()} for x in v]
                                               for k, v in runs.items()}})
        save()

    print(f"\n{a.preset}: {a.npp} prompt + {a.ntg} generated tokens per sequence, decode only; medians of "
          f"{a.rounds} alternating rounds; memory bandwidth {bw:.1f} GB/s")
    print(f"{'prec':<9}{'seqs':>5}{'lfmc tok/s':>11}{'x single':>9}{'llama.cpp':>10}{'lfmc/llama':>11}"
          f"{'step ms':>9}{'roof ms':>9}{'bound':>8}{'of roof':>8}")
    for res in results:
        one = res["rows"][0]["lfmc_tok_s"] if res["rows"][0]["batch"] == 1 else None
        for row in res["rows"]:
            ll = row["llama_cpp_tok_s"]
            print(f"{res['precision']:<9}{row['batch']:>5}{row['lfmc_tok_s']:>11.1f}"
                  f"{(row['lfmc_tok_s'] / one if one else float('nan')):>9.2f}"
                  f"{(ll or float('nan')):>10.1f}{(row['lfmc_tok_s'] / ll if ll else float('nan')):>11.2f}"
                  f"{row['step_s'] * 1e3:>9.1f}{row['roof_s'] * 1e3:>9.1f}{row['bound']:>8}{row['of_roof']:>8.0%}")
        print(f"{'':<9}weights {res['weights_bytes'] / 1e6:.0f} MB, state {res['state_read_bytes'] / 1e6:.2f} MB "
              f"per sequence, {res['decode_flops_per_token'] / 1e9:.2f} GFLOP per token, matmul peak "
              f"{res['matmul_gflops']:.0f} GFLOP/s")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        print(json.dumps(work(**json.loads(sys.argv[2]))))
        raise SystemExit(0)
    raise SystemExit(main())
