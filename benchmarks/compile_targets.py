"""Compile presets for every target profile: wall time, artifact files and sizes, as JSON and a table.

    .venv/bin/python benchmarks/compile_targets.py --presets lfm2-tiny,lfm2-350m [--targets all]

Each compile runs in this process one after another, with the profile's default weight quantization (as
`lfmc compile --target T` does); the device-code cache is turned off so that every figure is a cold compile. Artifacts go to build/targets/ and are deleted after measuring unless --keep.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", default="lfm2-tiny,lfm2-350m")
    ap.add_argument("--targets", default="all")
    ap.add_argument("--build", default="build/targets")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "compile-targets.json"))
    a = ap.parse_args()
    os.environ["LFMC_CACHE"] = ""
    from lfmc.compile import compile_model, load_source
    from lfmc.targets.profiles import PRESETS

    targets = list(PRESETS) if a.targets == "all" else a.targets.split(",")
    rows = []
    for preset in a.presets.split(","):
        m = load_source(preset, seed=0, init_std=0.25 if "tiny" in preset else None)
        for t in targets:
            out = Path(a.build) / f"{preset}.{t.replace(':', '-')}"
            shutil.rmtree(out, ignore_errors=True)
            t0 = time.perf_counter()
            try:
                compile_model(m, out, target=t, max_batch=1, max_context=2048, quant=PRESETS[t].quant)
                dt = time.perf_counter() - t0
                man = json.loads((out / "manifest.json").read_text())
                files = sorted(man["files"])
                kernels = [f for f in files if f.startswith("kernels/")]
                size = sum((out / f).stat().st_size for f in kernels)
                row = {"preset": preset, "target": t, "ok": True, "seconds": round(dt, 1), "kernel_files": len(kernels),
                       "kernel_bytes": size, "files": files[:3] + (["..."] if len(files) > 3 else []),
                       "quant": man["quant"]}
            except Exception as e:                 # noqa: BLE001
                row = {"preset": preset, "target": t, "ok": False, "seconds": round(time.perf_counter() - t0, 1),
                       "error": f"{type(e).__name__}: {str(e)[:300]}"}
            rows.append(row)
            print(f"{preset:<12} {t:<22} {'ok' if row['ok'] else 'FAILED':<7} {row['seconds']:>7.1f} s  "
                  + (f"{row['kernel_files']:>4} kernel files {row['kernel_bytes'] / 2**20:7.2f} MiB  weights "
                     f"{row['quant']}" if row["ok"] else row["error"]), flush=True)
            if not a.keep:
                shutil.rmtree(out, ignore_errors=True)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                                       "rows": rows, "command": " ".join(sys.argv)}, indent=1))
    print(f"wrote {a.out}")
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
