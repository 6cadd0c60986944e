"""Pilot for issue 28's batched-decode table (not the final benchmark: no llama.cpp, no roofline): aggregate decode
tokens/s at 1, 2, 4, 8, 16 sequences with the plan's 4-row decode tiles ("on") and without them ("off", every
step on the 1-row GEMVs), same artifact, 3 alternating rounds of 12 steps, medians.

    .venv/bin/python benchmarks/batched_pilot.py lfm2-350m            # f32
    .venv/bin/python benchmarks/batched_pilot.py lfm2-350m "{'quant': 'q4g32', 'act_quant': 'i8'}"
"""
import sys, numpy as np, time, statistics
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))
from lfmc.compile import compile_model, load_source
from lfmc.runtime.engine import Engine
preset = sys.argv[1]; kw = eval(sys.argv[2]) if len(sys.argv) > 2 else {}
tag = "-".join(f"{v}" for v in kw.values()) or "f32"
t=time.time()
art = compile_model(load_source(preset), f"build/bench/pilot-{preset}-{tag}.host", max_batch=16, max_context=512, **kw)
print("compile", time.time()-t, flush=True)
on = Engine(art); off = Engine(art); off._row_variants = {}
def rate(e, B, steps=12):
    seqs = [e.new_sequence() for _ in range(B)]
    toks = [int(np.argmax(e.prefill(s, [1 + i, 2, 3, 4]))) for i, s in enumerate(seqs)]
    e.decode(seqs, toks)
    ts = []
    for _ in range(steps):
        t = time.perf_counter(); L = e.decode(seqs, toks); ts.append(time.perf_counter() - t)
        toks = [int(x) for x in np.argmax(L, 1)]
    for s in seqs: e.release(s)
    return B / statistics.median(ts)
for B in (1, 2, 4, 8, 16):
    r = {"on": [], "off": []}
    for _ in range(3):
        r["on"].append(rate(on, B)); r["off"].append(rate(off, B))
    print(B, {k: round(statistics.median(v), 1) for k, v in r.items()}, flush=True)
