"""Per-step overhead of decode: step wall time minus the sum of its kernels' times, and decode tokens/s, for three
ways of running the same model, measured in one run (alternating rounds, medians):

- ``before``: lfmc as it was at ``--before-rev`` (default d940a3a, the commit before the one-call step and
  single-thread small kernels), from a git worktree: its compiler built the artifact, its runtime calls each
  kernel from Python;
- ``per-kernel``: today's artifact, kernels called one by one from Python (``Engine(one_call=False)``, the
  profiling path);
- ``one-call``: today's artifact, each step one native call through the artifact's step runner (the default).

    .venv/bin/python benchmarks/step_overhead.py --presets lfm2-tiny,lfm2-350m --rounds 5

lfm2-350m is compiled at W4A8 (``--quant q4g32 --act-quant i8``), lfm2-tiny at f32. Decode tokens/s is of a batch
(``--batches``) of sequences stepping together, sampling greedily on the host (the ``Engine.decode`` + argmax loop
a server runs). Each measurement runs in a fresh process (the two lfmc versions cannot share one), variants
alternating within each round. The kernel sum comes from ``Engine.profile`` (each launch timed alone from Python,
so it includes about a microsecond of call cost per kernel: the overhead figures are, if anything, low). Writes
JSON (default benchmarks/results/step-overhead.json) with the CPU model and flags.
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
PRECISION = {"lfm2-tiny": {}, "lfm2-350m": {"quant": "q4g32", "act_quant": "i8"}}
VARIANTS = ("before", "per-kernel", "one-call")


# ------------------------------------------------------------------------------------ worker (one lfmc version)
def work_compile(root: str, preset: str, out: str) -> None:
    sys.path.insert(0, root)
    from lfmc.compile import compile_model, load_source

    compile_model(load_source(preset), out, **dict(PRECISION.get(preset, {}), max_batch=16, max_context=512))


def decode_step(engine, batch: int, steps: int) -> float:
    """Seconds per decode step of ``batch`` sequences (median over ``steps``), greedy sampling included."""
    import numpy as np

    seqs = [engine.new_sequence() for _ in range(batch)]
    try:
        toks = [int(np.argmax(engine.prefill(s, [1 + i, 2, 3, 4]))) for i, s in enumerate(seqs)]
        ts = []
        for _ in range(steps):
            t = time.perf_counter()
            logits = engine.decode(seqs, toks)
            toks = [int(x) for x in np.argmax(logits, axis=1)]
            ts.append(time.perf_counter() - t)
        return statistics.median(ts)
    finally:
        for s in seqs:
            engine.release(s)


def work_measure(root: str, art: str, variant: str, batch: int, steps: int) -> None:
    sys.path.insert(0, root)
    from lfmc.runtime.engine import Engine

    e = Engine(art, one_call=False) if variant == "per-kernel" else Engine(art)
    if variant == "one-call" and getattr(e, "_runner", None) is None:
        raise SystemExit("the artifact has no step runner (no C compiler when it was built?)")
    decode_step(e, batch, 4)                                   # warm-up: builds the step's argument tables
    step = decode_step(e, batch, steps)
    kernels = sum(e.profile("decode", batch, reps=15).values())
    print(json.dumps({"step_s": step, "kernels_s": kernels}))


# ------------------------------------------------------------------------------------------------- driver
def run_worker(*args: str) -> dict:
    r = subprocess.run([sys.executable, __file__, "--worker", *args], capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"worker {args} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1]) if r.stdout.strip() else {}


def before_tree(rev: str, build: Path) -> Path:
    """A git worktree of ``rev`` (made once, reused)."""
    path = (build / f"lfmc-{rev}").resolve()
    if not (path / "lfmc").is_dir():
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(path), rev], check=True,
                       capture_output=True)
    return path


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        kind, *rest = sys.argv[2:]
        if kind == "compile":
            work_compile(*rest)
        else:
            root, art, variant, batch, steps = rest
            work_measure(root, art, variant, int(batch), int(steps))
        return 0
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", default="lfm2-tiny,lfm2-350m")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=64, help="decode steps per measurement (tiny); an eighth for larger")
    ap.add_argument("--before-rev", default="d940a3a")
    ap.add_argument("--build", default="build/bench")
    ap.add_argument("--out", default="benchmarks/results/step-overhead.json")
    a = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from lfmc.targets.host import cpu_info

    build = Path(a.build).resolve()
    roots = {"before": str(before_tree(a.before_rev, build)), "now": str(ROOT)}
    results = []
    for preset in a.presets.split(","):
        arts = {}
        for version, root in roots.items():
            arts[version] = str(build / f"step-{preset}.{version}")
            if not Path(arts[version], "manifest.json").exists():
                print(f"compiling {preset} with lfmc {version} ...", flush=True)
                run_worker("compile", root, preset, arts[version])
        steps = a.steps if preset == "lfm2-tiny" else max(8, a.steps // 8)
        for B in map(int, a.batches.split(",")):
            got: dict[str, list[dict]] = {v: [] for v in VARIANTS}
            for _ in range(a.rounds):
                for v in VARIANTS:
                    version = "before" if v == "before" else "now"
                    got[v].append(run_worker("measure", roots[version], arts[version], v, str(B), str(steps)))
            row: dict = {"preset": preset, "precision": PRECISION.get(preset) or "f32", "batch": B}
            for v in VARIANTS:
                s = statistics.median(g["step_s"] for g in got[v])
                k = statistics.median(g["kernels_s"] for g in got[v])
                row[v] = {"step_us": s * 1e6, "kernels_us": k * 1e6, "overhead_us": (s - k) * 1e6,
                          "overhead_share": (s - k) / s, "tokens_per_s": B / s,
                          "step_us_rounds": [g["step_s"] * 1e6 for g in got[v]]}
            row["one_call_vs_before"] = row["one-call"]["tokens_per_s"] / row["before"]["tokens_per_s"]
            row["one_call_vs_per_kernel"] = row["one-call"]["tokens_per_s"] / row["per-kernel"]["tokens_per_s"]
            results.append(row)
            print(f"{preset} batch {B}: " + "; ".join(
                f"{v} {row[v]['step_us']:.0f} us/step ({row[v]['tokens_per_s']:.0f} tok/s, kernels "
                f"{row[v]['kernels_us']:.0f} us, overhead {row[v]['overhead_share']:.0%})" for v in VARIANTS)
                + f"; one-call / before {row['one_call_vs_before']:.2f}x, / per-kernel "
                f"{row['one_call_vs_per_kernel']:.2f}x", flush=True)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"cpu": cpu_info(), "rounds": a.rounds, "before_rev": a.before_rev,
                               "results": results}, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
