"""Decode and prefill with the weights' panels interleaved (one read stream per panel group) against the same
model packed panel after panel (the layout before), or against an artifact of an earlier commit, in one process,
alternating, against the read peak of the moment.

    .venv/bin/python benchmarks/gemv_panels.py --preset lfm2-350m --dtype f16 --rounds 20
    .venv/bin/python benchmarks/gemv_panels.py --dtype q8 --out benchmarks/results/gemv-panels-q8.json
    git worktree add /tmp/base REV && (cd /tmp/base && /work/main/.venv/bin/python -c "from lfmc.compile import *;
        compile_model(load_source('lfm2-350m', seed=0), '/tmp/base.host', max_batch=1, max_context=1024)")
    .venv/bin/python benchmarks/gemv_panels.py --before /tmp/base.host          # this tree against REV's

Why: a decode GEMV reads its whole weight from memory every step, each thread ``cols`` panels of 16 outputs at
once. Stored panel after panel those are 8 concurrent read streams per thread; interleaved per input row
(lfmc/targets/knobs.gemv_panels) they are fewer, which reads closer to the bandwidth in this VM's higher-bandwidth
phase (BENCHMARKS.md, "Decode against the read peak, phase by phase"); the prefill tiles read the same layout, so
the prefill is timed too. The "before" artifact is compiled with ``gemv_panels`` replaced by 1, nothing else
changed (so with ``--dtype f32``, whose weights lfmc no longer interleaves, the two are the same), unless
``--before`` names one (the same preset, precision and seed, compiled by other sources). Each
round: the read peak, ``--steps`` decode steps of each artifact (order alternating), the read peak; rounds are
split into a low and a high phase at the midpoint of the peaks seen. Then ``--prefill-rounds`` prefills of
``--prompt`` tokens, alternating. Both artifacts are timed as fresh copies (compare.fresh_copies: an artifact's
page-cache history moves its decode by as much as a layout does).
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


def build(preset: str, dtype: str, out: Path, before: Path | None = None) -> dict[str, Path]:
    """The two artifacts: "panels" (as lfmc compiles) and "before" (``before``, else gemv_panels patched to 1)."""
    from compare import compiled

    import lfmc.targets.knobs as KN
    from lfmc.compile import compile_model, load_source

    opts = {"f16": {"dtype": "f16"}, "q8": {"quant": "q8"}}.get(dtype, {})
    arts, orig = {}, KN.gemv_panels
    try:
        for name, fn in (("panels", orig), ("before", lambda *a, **k: 1))[:1 if before else 2]:
            KN.gemv_panels = fn
            art = out / f"{preset}-{dtype}-{name}.host"
            compiled(art, lambda: compile_model(load_source(preset, seed=0), art, max_batch=1, max_context=1024,
                                                **opts))
            arts[name] = art
    finally:
        KN.gemv_panels = orig
    if before:
        if not (before / "manifest.json").is_file():
            raise SystemExit(f"--before {before}: not an lfmc artifact (no manifest.json)")
        arts["before"] = before
    return arts


def decode_rounds(engs: dict, step_bytes: int, rounds: int, steps: int) -> list[dict]:
    """Alternating decode rounds sandwiched by the read peak: GB/s of weights each, and the peak."""
    seqs = {}
    for n, e in engs.items():
        s = e.new_sequence()
        seqs[n] = (s, int(np.argmax(e.prefill(s, [1, 2, 3])[-1])))
    out = []
    probe = engs["panels"]
    for r in range(rounds):
        before = probe.measure_read_bandwidth(128, reps=2)
        row = {}
        for n in (("panels", "before") if r % 2 == 0 else ("before", "panels")):
            e, (s, tok) = engs[n], seqs[n]
            e._seqs[s].length = 3                        # benchmark only: every round decodes at the same depth
            tok = int(np.argmax(e.decode([s], [tok])[0]))
            t = time.perf_counter()
            for _ in range(steps):
                tok = int(np.argmax(e.decode([s], [tok])[0]))
            row[n] = step_bytes * steps / (time.perf_counter() - t) / 1e9
        row["peak"] = max(before, probe.measure_read_bandwidth(128, reps=2))
        out.append(row)
        print(f"read peak {row['peak']:5.1f} GB/s | before {row['before']:5.1f} ({row['before'] / row['peak']:4.0%}) "
              f"| panels {row['panels']:5.1f} ({row['panels'] / row['peak']:4.0%}) | "
              f"{row['panels'] / row['before']:.3f}x", flush=True)
    return out


def phases(rounds: list[dict]) -> dict:
    """Medians per bandwidth phase: "low" and "high" when the peaks seen differ by more than 30%, else "all"
    (every round in one phase)."""
    lo, hi = min(r["peak"] for r in rounds), max(r["peak"] for r in rounds)
    res = {}
    split = (("low", lambda r: r["peak"] < (lo + hi) / 2), ("high", lambda r: r["peak"] >= (lo + hi) / 2))
    for name, sel in split if hi > 1.3 * lo else (("all", lambda r: True),):
        rs = [r for r in rounds if sel(r)]
        if rs:
            res[name] = {"rounds": len(rs), "peak_gbs": statistics.median(r["peak"] for r in rs),
                         "before_of_peak": statistics.median(r["before"] / r["peak"] for r in rs),
                         "panels_of_peak": statistics.median(r["panels"] / r["peak"] for r in rs),
                         "ratio": statistics.median(r["panels"] / r["before"] for r in rs)}
    return res


def prefill_rounds(engs: dict, prompt: int, rounds: int) -> dict:
    toks = [1 + i % 1000 for i in range(prompt)]
    rates: dict[str, list[float]] = {n: [] for n in engs}
    for r in range(rounds):
        for n in (("panels", "before") if r % 2 == 0 else ("before", "panels")):
            e = engs[n]
            s = e.new_sequence()
            t = time.perf_counter()
            e.prefill(s, toks)
            rates[n].append(prompt / (time.perf_counter() - t))
            e.release(s)
    return {"tok_s": {n: statistics.median(v) for n, v in rates.items()},
            "ratio": statistics.median(a / b for a, b in zip(rates["panels"], rates["before"]))}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="lfm2-350m")
    ap.add_argument("--dtype", default="f32", choices=("f32", "f16", "q8"),
                    help="the weights' precision (q8: int8 with a scale per channel)")
    ap.add_argument("--rounds", type=int, default=20, help="decode rounds")
    ap.add_argument("--steps", type=int, default=8, help="decode steps per artifact and round")
    ap.add_argument("--prompt", type=int, default=256, help="prefill length")
    ap.add_argument("--prefill-rounds", type=int, default=8)
    ap.add_argument("--build", type=Path, default=Path("build/gemv-panels"))
    ap.add_argument("--before", type=Path, default=None, metavar="ARTIFACT",
                    help="the baseline: an artifact of the same model compiled by other sources (default: this "
                         "tree with gemv_panels patched to 1)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "gemv-panels.json")
    a = ap.parse_args()
    from compare import cpu_info, fresh_copies, weights_bytes

    from lfmc.runtime import Engine

    arts = fresh_copies(build(a.preset, a.dtype, a.build, a.before), a.build / "fresh")
    engs = {n: Engine(art, max_batch=1) for n, art in arts.items()}
    rounds = decode_rounds(engs, weights_bytes(arts["panels"]), a.rounds, a.steps)
    ph = phases(rounds)
    for n, e in engs.items():
        e.release(next(iter(e._seqs)))                  # the decode rounds' sequence: the prefills take its slot
    for name, p in ph.items():
        print(f"decode, {name} phase ({p['rounds']} rounds, read peak {p['peak_gbs']:.1f} GB/s): before "
              f"{p['before_of_peak']:.0%}, panels {p['panels_of_peak']:.0%} of it; panels / before "
              f"{p['ratio']:.3f}x (medians)")
    pre = prefill_rounds(engs, a.prompt, a.prefill_rounds)
    print(f"prefill {a.prompt} tokens: before {pre['tok_s']['before']:.1f}, panels {pre['tok_s']['panels']:.1f} "
          f"tok/s; panels / before {pre['ratio']:.3f}x (median of {a.prefill_rounds} paired rounds)")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps({"preset": a.preset, "dtype": a.dtype, "cpu": cpu_info(), "decode_phases": ph,
                                 "before": str(a.before) if a.before else "gemv_panels patched to 1",
                                 "decode_rounds": rounds, "prefill": pre, "command": " ".join(sys.argv)},
                                indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
