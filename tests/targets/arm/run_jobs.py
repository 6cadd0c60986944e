"""Runs inside the emulated aarch64 Python (see qemu.py): the runtime alone (numpy, TVM's runtime, no compiler)
loads each artifact with the ``cpu`` driver and teacher-forces the given tokens. Writes OUT/i.npy (the logits
after the prompt, then after each forced token) and prints a JSON line per job (with "error" where the runtime
refused the artifact)."""
from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

from lfmc.runtime import Engine, RuntimeLoadError


def main() -> int:
    jobs = json.loads(Path(sys.argv[1]).read_text())
    out = Path(sys.argv[2])
    for i, job in enumerate(jobs):
        t = time.perf_counter()
        try:
            eng = Engine(job["artifact"])
        except RuntimeLoadError as e:                  # refused (a CPU without the artifact's features): reported
            print(json.dumps({"artifact": job["artifact"], "machine": platform.machine(), "error": str(e)}),
                  flush=True)
            continue
        seq = eng.new_sequence()
        rows = [eng.prefill(seq, job["prompt"])]
        for tok in job["forced"]:
            rows.append(eng.decode([seq], [tok])[0])
        np.save(out / f"{i}.npy", np.stack(rows).astype(np.float32))
        print(json.dumps({"artifact": job["artifact"], "machine": platform.machine(), "driver": eng.driver.name,
                          "fallbacks": sum(1 for k, v in eng._impl.items() if k != v),     # ISA variants picked
                          "seconds": round(time.perf_counter() - t, 2)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
