"""Tuned vs untuned vs PyTorch eager on this CPU, in one run.

    .venv/bin/python benchmarks/tune_host.py --preset lfm2-350m --time-budget 30 --rounds 3

Runs ``lfmc tune`` on the preset with a bounded budget (the database is kept in --db, so a rerun resumes or, when
finished, reuses it; --skip-tune uses it as it is), compiles the preset twice (default schedules, and with
``--tuned``), then alternates lfmc untuned, lfmc tuned and PyTorch eager (float32, same seeded weights), each in its
own process, for --rounds rounds. Prints medians and ratios and writes JSON (default benchmarks/results/).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lfmc.bench import run_child  # noqa: E402
from lfmc.compile import compile_model, load_source  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="lfm2-350m")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quant", default=None, help="weight quantization for tune and compile (default float32)")
    ap.add_argument("--time-budget", type=float, default=30.0, help="tuning minutes (default 30)")
    ap.add_argument("--trials", type=int, default=1000, help="tuning trials cap (the time budget usually ends it)")
    ap.add_argument("--db", default="build/tune-db", help="tuning database root (kept between runs)")
    ap.add_argument("--skip-tune", action="store_true", help="use --db as it is")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--prefill", default="128,512")
    ap.add_argument("--decode-steps", type=int, default=64)
    ap.add_argument("--build", default="build/bench-tune")
    ap.add_argument("--out", default=None, help="JSON output (default benchmarks/results/tune-host-PRESET.json)")
    a = ap.parse_args()
    lens = [int(x) for x in a.prefill.split(",")]
    tag = a.preset + (f"-{a.quant}" if a.quant else "")
    qarg = ["--quant", a.quant] if a.quant else []
    tune_report = None
    if not a.skip_tune:
        t = time.perf_counter()
        cmd = [sys.executable, "-m", "lfmc.cli", "tune", a.preset, "--db", a.db, "--trials", str(a.trials),
               "--time-budget", str(a.time_budget), "--seed", str(a.seed), "--json", *qarg]
        print("running: lfmc " + " ".join(cmd[3:]), flush=True)
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            print(r.stderr[-3000:], file=sys.stderr)
            return 1
        tune_report = json.loads(r.stdout)
        tune_report["wall_s"] = time.perf_counter() - t
        print(f"tuned {tune_report['trials']} trials in {tune_report['seconds'] / 60:.1f} min "
              f"({tune_report['stopped']})", flush=True)
        for x in tune_report["tasks"]:
            print(f"  {x['name'][:60]:<61}{x['entry']:<8} share {x['share'] * 100:4.0f}%  trials {x['trials']:>4}  "
                  f"default {x['default_s'] * 1e6:9.1f} us  best {x['best_s'] * 1e6:9.1f} us  "
                  f"{x['speedup']:.2f}x", flush=True)
    arts = {"untuned": Path(a.build) / f"{tag}.host", "tuned": Path(a.build) / f"{tag}.host-tuned"}
    m = load_source(a.preset, seed=a.seed)
    logs: list[str] = []
    compile_model(m, arts["untuned"], max_batch=1, quant=a.quant)
    compile_model(m, arts["tuned"], max_batch=1, quant=a.quant, tuned=a.db, log=logs.append)
    del m
    tuning = json.loads((arts["tuned"] / "manifest.json").read_text())["tuning"]
    print(next(s for s in logs if s.startswith("tuned kernels")), flush=True)
    manifest = json.loads((arts["untuned"] / "manifest.json").read_text())
    kw = {"prefill_lens": lens, "decode_steps": a.decode_steps, "reps": a.reps}
    sides = ["untuned", "tuned", "torch"]
    runs: dict[str, list] = {k: [] for k in sides}
    for r_ in range(a.rounds):
        runs["untuned"].append(run_child("lfmc", artifact=str(arts["untuned"]), **kw))
        runs["tuned"].append(run_child("lfmc", artifact=str(arts["tuned"]), **kw))
        runs["torch"].append(run_child("torch", source=manifest["model"]["source"],
                                       config=manifest["model"]["config"], **kw))
        print(f"round {r_ + 1}/{a.rounds}: " + ", ".join(f"{k} decode {runs[k][-1]['decode']['1']:.1f} tok/s"
                                                         for k in sides), flush=True)

    def med(side: str, *path: str) -> float:
        vals = []
        for run in runs[side]:
            v = run
            for p in path:
                v = v[p]
            vals.append(v)
        return statistics.median(vals)

    rows = [(f"prefill {T} tok/s", ("prefill", str(T))) for T in lens] + [("decode tok/s", ("decode", "1"))]
    table = {}
    print(f"\n{a.preset} {a.quant or 'f32'}: lfmc default schedules vs tuned ({tuning['tuned']} of {tuning['tasks']} "
          f"kernels tuned) vs torch float32, {os.cpu_count()} threads, medians of {a.rounds} alternating rounds")
    print(f"{'':<20}{'untuned':>10}{'tuned':>10}{'torch':>10}{'tuned/untuned':>15}{'tuned/torch':>13}")
    for name, path in rows:
        v = {k: med(k, *path) for k in sides}
        table[name] = {**v, "tuned_vs_untuned": v["tuned"] / v["untuned"], "tuned_vs_torch": v["tuned"] / v["torch"]}
        print(f"{name:<20}{v['untuned']:>10.1f}{v['tuned']:>10.1f}{v['torch']:>10.1f}"
              f"{v['tuned'] / v['untuned']:>15.2f}{v['tuned'] / v['torch']:>13.2f}")
    out = Path(a.out or Path(__file__).parent / "results" / f"tune-host-{tag}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"preset": a.preset, "quant": a.quant or "f32", "seed": a.seed,
                               "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                               "features": manifest["target"]["features"], "tuning": tuning, "tune": tune_report,
                               "table": table, "runs": runs, "command": " ".join(sys.argv)}, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
