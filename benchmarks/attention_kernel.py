"""The CPU decode attention kernel alone at long context: time per call, cache bytes read per second, and that
rate over the memory bandwidth measured in the same run (alternating: probe, kernel, probe; the probe is the
read-peak kernel every CPU artifact carries, lfmc/targets/kernels/peak.make_read_peak).

One row (a decode step of one sequence) at position C - 1 of a cache of random values, LFM2-350M's attention shape
by default (16 query heads, 8 KV heads of 64), for each KV precision asked. The kernel is the one the host target
builds for decode (lfmc/targets/kernels/attention.py with the host's decode knobs: 16 lanes on AVX-512; parallel
over TVM's thread pool); this isolates it from the weights' GEMVs, whose reads dominate a whole decode step.

    .venv/bin/python benchmarks/attention_kernel.py --contexts 8192,32768 --kv f32,f16,i8
    .venv/bin/python benchmarks/attention_kernel.py --contexts 32768 --kv f32,f16,i8 --pages 4k,huge  # page sizes
    .venv/bin/python benchmarks/attention_kernel.py --contexts 32768 --prefetch-bytes 0,65536     # V prefetch or not

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


from benchmarks.compare import read_peak_probe  # noqa: E402

KV_NAMES = {"f32": "float32", "f16": "float16", "i8": "int8"}


def build(H: int, KV: int, hd: int, kv: str, window: int, lanes: int | None, prefetch_bytes: int = -1):
    """The attention kernel as the host target builds it for decode (its knobs: 16 lanes on AVX-512), with its
    V-block prefetch limit set to ``prefetch_bytes`` (-1: as it is)."""
    from dataclasses import replace

    from lfmc.targets.host import host_knobs, host_target
    from lfmc.targets.kernels import attention, make_attention
    from lfmc.tvm_env import import_tvm

    tvm = import_tvm()
    kn = host_knobs("decode")
    keep = attention.ATT_PREFETCH_BYTES
    attention.ATT_PREFETCH_BYTES = keep if prefetch_bytes < 0 else prefetch_bytes
    try:
        f = make_attention("at", H, KV, hd, replace(kn, lanes=lanes) if lanes else kn, kv=kv, window=window)
    finally:
        attention.ATT_PREFETCH_BYTES = keep
    return tvm, tvm.compile(tvm.IRModule({"at": f}), target=host_target())["at"]


def cache(C: int, KV: int, hd: int, kv: str, rng) -> np.ndarray:
    from lfmc.ir.ops import KV_SCALE_BYTES

    if kv != "int8":
        return rng.standard_normal((1, C, KV, hd)).astype(kv)
    codes = rng.integers(-127, 128, (1, C, KV, hd)).astype(np.int8)
    scale = np.full((1, C, KV, 1), 0.01, np.float32).view(np.int8)
    assert scale.shape[-1] == KV_SCALE_BYTES
    return np.concatenate([codes, scale], -1)


def place(a: np.ndarray, pages: str) -> np.ndarray:
    """``a`` copied into a host buffer as the cpu driver allocates its KV caches (``huge``: transparent huge
    pages) or into 4 KiB pages (``4k``: a mapping advised MADV_NOHUGEPAGE; numpy itself would advise huge pages
    for an array of 4 MiB or more)."""
    import mmap

    from lfmc.runtime.drivers import host

    if pages == "huge":
        m = host._huge_pages(a.nbytes)
        if m is None:
            raise SystemExit("this OS offers no transparent huge pages (MADV_HUGEPAGE)")
    else:
        m = mmap.mmap(-1, a.nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        if hasattr(mmap, "MADV_NOHUGEPAGE"):
            m.madvise(mmap.MADV_NOHUGEPAGE)
    out = np.frombuffer(m, a.dtype, a.size).reshape(a.shape)
    out[...] = a
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--contexts", default="8192,32768")
    ap.add_argument("--kv", default="f32,f16,i8", help="KV precisions (f32, f16, i8)")
    ap.add_argument("--heads", default="16,8,64", help="query heads, KV heads, head_dim")
    ap.add_argument("--window", type=int, default=0, help="sliding window (0: full attention)")
    ap.add_argument("--lanes", type=int, default=None, help="vector width (default: the host target's)")
    ap.add_argument("--pages", default="huge",
                    help="the caches' pages: huge (transparent huge pages, as the cpu driver allocates them), 4k, "
                         "or both (4k,huge: alternating within each round)")
    ap.add_argument("--prefetch-bytes", default="-1",
                    help="kernels whose V-block prefetch limit is each of these (ATT_PREFETCH_BYTES; -1: the "
                         "kernel's own, 0: no prefetch, 65536: f32 rows too), alternating within each round")
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
    pages = a.pages.split(",")
    prefetch = [int(x) for x in a.prefetch_bytes.split(",")]
    rng = np.random.default_rng(0)
    rows = []
    setups = [(pg, pf) for pf in prefetch for pg in pages]   # each round times every setup in turn
    probe = read_peak_probe(a.threads)
    for kvn in a.kv.split(","):
        kv = KV_NAMES[kvn]
        kernels = {pf: build(H, KV, hd, kv, a.window, a.lanes, pf) for pf in prefetch}
        tvm = next(iter(kernels.values()))[0]
        for C in (int(c) for c in a.contexts.split(",")):
            Kh, Vh = cache(C, KV, hd, kv, rng), cache(C, KV, hd, kv, rng)
            args = {pg: (tvm.runtime.from_dlpack(place(Kh, pg)), tvm.runtime.from_dlpack(place(Vh, pg)))
                    for pg in pages}
            q = tvm.runtime.tensor(rng.standard_normal((1, H * hd)).astype(np.float32))
            o = tvm.runtime.tensor(np.zeros((1, H * hd), np.float32))
            sl, ps = tvm.runtime.tensor(np.zeros(1, np.int32)), tvm.runtime.tensor(np.array([C - 1], np.int32))
            read = min(C, a.window or C) * 2 * Kh[0, 0].nbytes          # K and V rows up to the position
            for pg, pf in setups:
                kernels[pf][1](q, *args[pg], o, sl, ps)
            ms, bws = {su: [] for su in setups}, []
            for _ in range(a.rounds):                       # probe, then each setup's kernel in turn
                bws.append(probe())
                for pg, pf in setups:
                    f, (k, v) = kernels[pf][1], args[pg]
                    t = time.perf_counter()
                    for _ in range(a.reps):
                        f(q, k, v, o, sl, ps)
                    ms[pg, pf].append((time.perf_counter() - t) / a.reps * 1e3)
            bw = statistics.median(bws)
            for su in setups:
                m = statistics.median(ms[su])
                paired = statistics.median(x / y for x, y in zip(ms[setups[0]], ms[su]))
                r = {"kv": kvn, "context": C, "pages": su[0], "prefetch_bytes": su[1], "ms": m,
                     "gbs": read / m / 1e6, "probe_gbs": bw, "of_bandwidth": read / m / 1e6 / bw,
                     "ns_per_position": m * 1e6 / min(C, a.window or C), "rounds_ms": ms[su],
                     "speed_vs_first_paired": paired}
                rows.append(r)
                print(f"kv {kvn:>3} C {C:>6} {su[0]:>4} pages, prefetch {su[1] if su[1] >= 0 else 'default'}: "
                      f"{m:6.2f} ms, cache {r['gbs']:5.1f} GB/s = {100 * r['of_bandwidth']:3.0f}% of the probe's "
                      f"{bw:.1f}; {r['ns_per_position']:.0f} ns per position; {paired:.2f}x the first setup "
                      f"(median of paired rounds)", flush=True)
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
