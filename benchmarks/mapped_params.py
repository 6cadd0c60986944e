"""Weights mapped from params.safetensors against weights read into private memory: resident memory (peak,
anonymous, file-backed), load time, and two processes running one artifact side by side (their proportional set
size, which splits shared pages between them).

Each measurement is a fresh process: ``Engine(ART, map_params=...)``, a 64-token prefill and 8 decode steps, then
/proc/self/status (VmHWM, RssAnon, RssFile); for the pair, two such processes hold their engines while
/proc/PID/smaps_rollup is read. Alternates read / mapped ``--rounds`` times.

    .venv/bin/python benchmarks/mapped_params.py build/compare/lfm2-350m-q4g32.host
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import json, sys, time
t = time.perf_counter()
import numpy as np
from lfmc.runtime import Engine
eng = Engine(sys.argv[1], max_batch=1, map_params=sys.argv[2] == "1")
load = time.perf_counter() - t
s = eng.new_sequence()
tok = int(np.argmax(eng.prefill(s, list(range(64)))))
for _ in range(8):
    tok = int(np.argmax(eng.decode([s], [tok])[0]))
st = dict(l.split(":", 1) for l in open("/proc/self/status").read().splitlines() if ":" in l)
kib = lambda k: int(st[k].split()[0])
print(json.dumps({"load_s": load, "hwm_kib": kib("VmHWM"), "anon_kib": kib("RssAnon"), "file_kib": kib("RssFile")}),
      flush=True)
if sys.argv[3] == "hold":
    sys.stdin.read()                                   # keep the engine until the parent closes stdin
"""


def one(art: str, mapped: bool) -> dict:
    r = subprocess.run([sys.executable, "-c", CHILD, art, "1" if mapped else "0", "exit"], capture_output=True,
                       text=True, check=True)
    return json.loads(r.stdout.splitlines()[-1])


def pair(art: str, mapped: bool) -> int:
    """Pss (KiB) of two processes holding engines on ``art`` at once, summed."""
    ps = [subprocess.Popen([sys.executable, "-c", CHILD, art, "1" if mapped else "0", "hold"], stdin=subprocess.PIPE,
                           stdout=subprocess.PIPE, text=True) for _ in range(2)]
    try:
        for p in ps:
            p.stdout.readline()
        total = 0
        for p in ps:
            for line in open(f"/proc/{p.pid}/smaps_rollup"):
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
        return total
    finally:
        for p in ps:
            p.stdin.close()
            p.wait()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("artifact")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "mapped-params.json")
    a = ap.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from lfmc.targets.host import cpu_info

    rows = []
    for _ in range(a.rounds):
        for mapped in (False, True):
            r = one(a.artifact, mapped) | {"mapped": mapped, "pair_pss_kib": pair(a.artifact, mapped)}
            rows.append(r)
            print(f"{'mapped' if mapped else 'read  '}: peak {r['hwm_kib'] >> 10} MiB, anonymous {r['anon_kib'] >> 10}, "
                  f"file {r['file_kib'] >> 10}, load {r['load_s']:.2f} s; two processes: Pss {r['pair_pss_kib'] >> 10} MiB",
                  flush=True)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps({"artifact": a.artifact, "cpu": cpu_info(), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
