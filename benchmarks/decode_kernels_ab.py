"""Each decode kernel's time in several artifacts of one model, alternating, split by the read-peak phase: which
GEMV a layout or tile change speeds up or slows down, and in which bandwidth phase.

    .venv/bin/python benchmarks/decode_kernels_ab.py new=build/a.host old=build/b.host --rounds 24

Each round: the read-peak kernel (Engine.measure_read_bandwidth), one ``Engine.profile("decode", 1)`` of every
artifact (each kernel launch timed alone, synced, summed per kernel over the step's layers; the artifacts' order
rotating from round to round), the read peak again. Rounds whose higher peak is below ``--split`` GB/s are the low
phase, the others the high phase (this VM: about 35 and 60 GB/s). Per phase: the median milliseconds of the
largest kernels and of the whole step, and each artifact's paired ratio (median over rounds of the first
artifact's time over its). Kernels are matched by name with the tile columns and panel suffix masked
(``k_mm_N_K_..._16_1_C``), so artifacts that differ in those still line up. The artifacts are timed as fresh
copies (compare.fresh_copies; ``--as-they-are``: in place, to see what their page-cache history does). Writes JSON
with the CPU.
"""
from __future__ import annotations

import argparse
import collections
import re
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def kind(name: str) -> str:
    """A kernel's name with its decode tile columns and panel / one-thread suffixes masked."""
    return re.sub(r"_p\d+$|_1t$", "", re.sub(r"_(\d+)_1_\d+(?=_|$)", r"_\1_1_C", name))


def main() -> int:
    import compare

    from lfmc.runtime import Engine

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("artifacts", nargs="+", metavar="NAME=ARTIFACT", help="the first is the baseline of the ratios")
    ap.add_argument("--rounds", type=int, default=24)
    ap.add_argument("--split", type=float, default=45.0, help="GB/s between the low and the high phase")
    ap.add_argument("--top", type=int, default=6, help="kernels listed (the baseline's largest)")
    ap.add_argument("--copies", type=Path, default=Path("build/decode-kernels-ab"), help="where the fresh copies go")
    ap.add_argument("--as-they-are", action="store_true", help="time the artifacts in place, not fresh copies")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "decode-kernels-ab.json")
    a = ap.parse_args()
    arts = {n: Path(p) for n, p in (s.split("=", 1) for s in a.artifacts)}
    if not a.as_they_are:
        arts = compare.fresh_copies(arts, a.copies)
    engs = {n: Engine(p, max_batch=1) for n, p in arts.items()}
    names = list(engs)
    probe = engs[names[0]]
    rounds = []
    for r in range(a.rounds):
        row: dict = {"peak": probe.measure_read_bandwidth(128, reps=2)}
        for n in names[r % len(names):] + names[:r % len(names)]:
            per: dict[str, float] = collections.defaultdict(float)
            for k, v in engs[n].profile("decode", 1, reps=1).items():
                per[kind(k)] += v
            row[n] = dict(per)
        row["peak"] = max(row["peak"], probe.measure_read_bandwidth(128, reps=2))
        rounds.append(row)
    base, phases = names[0], {}
    for ph, sel in (("low", lambda r: r["peak"] < a.split), ("high", lambda r: r["peak"] >= a.split)):
        rs = [r for r in rounds if sel(r)]
        if not rs:
            continue
        print(f"{ph} phase: {len(rs)} rounds, read peak {statistics.median(r['peak'] for r in rs):.1f} GB/s")
        top = sorted(rs[0][base], key=lambda k: -rs[0][base][k])[:a.top]
        out = {}
        for k in top + ["step"]:
            def t(r, n, k=k):
                return sum(r[n].values()) if k == "step" else r[n].get(k, float("nan"))
            out[k] = {n: {"ms": 1e3 * statistics.median(t(r, n) for r in rs),
                          "ratio": statistics.median(t(r, base) / t(r, n) for r in rs)} for n in names}
            print(f"  {k[:44]:44s} " + " | ".join(
                f"{n} {out[k][n]['ms']:6.2f} ms" + (f" ({out[k][n]['ratio']:.3f}x)" if n != base else "")
                for n in names), flush=True)
        phases[ph] = {"rounds": len(rs), "peak_gbs": statistics.median(r["peak"] for r in rs), "kernels": out}
    compare.write_results(a.out, {"artifacts": {n: str(p) for n, p in arts.items()}, "copies": not a.as_they_are,
                                  "cpu": compare.cpu_info(), "phases": phases, "rounds": rounds,
                                  "command": " ".join(sys.argv)})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
