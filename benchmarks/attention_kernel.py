"""The CPU decode attention kernel alone at long context: time per call, cache bytes read per second, and that
rate over the memory bandwidth measured in the same run (alternating: probe, kernel, probe).

One row (a decode step of one sequence) at position C - 1 of a cache of random values, LFM2-350M's attention shape
by default (16 query heads, 8 KV heads of 64), for each KV precision asked. The kernel is the one the host target
builds for decode (lfmc/targets/kernels/attention.py with the host's decode knobs: 16 lanes on AVX-512; parallel
over TVM's thread pool); this isolates it from the weights' GEMVs, whose reads dominate a whole decode step.

    .venv/bin/python benchmarks/attention_kernel.py --contexts 8192,32768 --kv f32,f16,i8

Two kernels side by side: run this script alternately from two checkouts (each importing its own lfmc), each run
appending to one file with ``--label before`` / ``--label after``.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.compare import stream_read_gbs  # noqa: E402

KV_NAMES = {"f32": "float32", "f16": "float16", "i8": "int8"}


def build(H: int, KV: int, hd: int, kv: str, window: int, lanes: int | None):
    """The attention kernel as the host target builds it for decode (its knobs: 16 lanes on AVX-512)."""
    from dataclasses import replace

    from lfmc.targets.host import host_knobs, host_target
    from lfmc.targets.kernels import make_attention
    from lfmc.tvm_env import import_tvm

    tvm = import_tvm()
    kn = host_knobs("decode")
    f = make_attention("at", H, KV, hd, replace(kn, lanes=lanes) if lanes else kn, kv=kv, window=window)
    return tvm, tvm.compile(tvm.IRModule({"at": f}), target=host_target())["at"]


def cache(C: int, KV: int, hd: int, kv: str, rng) -> np.ndarray:
    from lfmc.ir.ops import KV_SCALE_BYTES

    if kv != "int8":
        return rng.standard_normal((1, C, KV, hd)).astype(kv)
    codes = rng.integers(-127, 128, (1, C, KV, hd)).astype(np.int8)
    scale = np.full((1, C, KV, 1), 0.01, np.float32).view(np.int8)
    assert scale.shape[-1] == KV_SCALE_BYTES
    return np.concatenate([codes, scale], -1)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--contexts", default="8192,32768")
    ap.add_argument("--kv", default="f32,f16,i8", help="KV precisions (f32, f16, i8)")
    ap.add_argument("--heads", default="16,8,64", help="query heads, KV heads, head_dim")
    ap.add_argument("--window", type=int, default=0, help="sliding window (0: full attention)")
    ap.add_argument("--lanes", type=int, default=None, help="vector width (default: the host target's)")
    ap.add_argument("--reps", type=int, default=30, help="kernel calls per timing")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "attention-kernel.json")
    ap.add_argument("--label", default=None,
                    help="append this run to --out as a round named LABEL (e.g. 'before' / 'after', run alternately "
                         "from two checkouts) instead of replacing the file")
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                    help="TVM's thread pool (default: every CPU, as the cpu driver sets it; TVM alone would take half "
                         "the CPUs of an x86 machine, assuming hyper-threads)")
    a = ap.parse_args(argv)
    os.environ["TVM_NUM_THREADS"] = str(a.threads)           # read once, when TVM's pool starts: before any kernel
    from lfmc.targets.host import cpu_info

    H, KV, hd = (int(x) for x in a.heads.split(","))
    rng = np.random.default_rng(0)
    rows = []
    for kvn in a.kv.split(","):
        kv = KV_NAMES[kvn]
        tvm, f = build(H, KV, hd, kv, a.window, a.lanes)
        for C in (int(c) for c in a.contexts.split(",")):
            Kc, Vc = tvm.runtime.tensor(cache(C, KV, hd, kv, rng)), tvm.runtime.tensor(cache(C, KV, hd, kv, rng))
            q = tvm.runtime.tensor(rng.standard_normal((1, H * hd)).astype(np.float32))
            o = tvm.runtime.tensor(np.zeros((1, H * hd), np.float32))
            sl, ps = tvm.runtime.tensor(np.zeros(1, np.int32)), tvm.runtime.tensor(np.array([C - 1], np.int32))
            read = min(C, a.window or C) * 2 * Kc.numpy()[0, 0].nbytes          # K and V rows up to the position
            f(q, Kc, Vc, o, sl, ps)
            ms, bws = [], []
            for _ in range(a.rounds):
                bws.append(stream_read_gbs(0.5, reps=3))
                t = time.perf_counter()
                for _ in range(a.reps):
                    f(q, Kc, Vc, o, sl, ps)
                ms.append((time.perf_counter() - t) / a.reps * 1e3)
            m, bw = statistics.median(ms), statistics.median(bws)
            r = {"kv": kvn, "context": C, "ms": m, "gbs": read / m / 1e6, "probe_gbs": bw,
                 "of_bandwidth": read / m / 1e6 / bw, "ns_per_position": m * 1e6 / min(C, a.window or C)}
            rows.append(r)
            print(f"kv {kvn:>3} C {C:>6}: {m:6.2f} ms, cache {r['gbs']:5.1f} GB/s = {100 * r['of_bandwidth']:3.0f}% of "
                  f"the probe's {bw:.1f}; {r['ns_per_position']:.0f} ns per position", flush=True)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    doc = {"cpu": cpu_info(), "threads": a.threads, "heads": [H, KV, hd], "window": a.window}
    if a.label is None:
        doc["rows"] = rows
    else:
        prev = json.loads(a.out.read_text()) if a.out.exists() else {}
        doc["rounds"] = prev.get("rounds", []) + [{"label": a.label, "rows": rows}]
    a.out.write_text(json.dumps(doc, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
