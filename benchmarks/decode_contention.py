"""A busy Python thread beside Engine.decode (issue 28, BENCHMARKS.md "Load on lfmc serve"): the step time of 8
sequences alone and with a thread spinning in Python, on the W4A8 artifact benchmarks/batched_decode.py builds;
shows that the engine's parallel kernels wait for their slowest thread.

    .venv/bin/python benchmarks/decode_contention.py
"""
import sys, time, threading, numpy as np
sys.path.insert(0, str(__import__('pathlib').Path(__file__).resolve().parents[1]))
from lfmc.runtime.engine import Engine
e = Engine('build/batched/lfm2-350m-q4g32a8-b16.host')
seqs = [e.new_sequence() for _ in range(8)]
toks = [int(np.argmax(e.prefill(s, [1 + i, 2, 3]))) for i, s in enumerate(seqs)]
for _ in range(3): e.decode(seqs, toks)
cnt = [0]; stop = [False]
def spin():
    while not stop[0]: cnt[0] += 1
t = time.perf_counter()
for _ in range(20): e.decode(seqs, toks)
base = (time.perf_counter() - t) / 20
th = threading.Thread(target=spin); th.start()
time.sleep(0.05); c0 = cnt[0]
t = time.perf_counter()
for _ in range(20): e.decode(seqs, toks)
dt = (time.perf_counter() - t) / 20
c1 = cnt[0]; stop[0] = True; th.join()
# spin rate alone
cnt[0]=0; stop[0]=False; th = threading.Thread(target=spin); th.start(); time.sleep(0.5); stop[0]=True; th.join()
print(f"decode alone {base*1e3:.1f} ms, with a spinning thread {dt*1e3:.1f} ms; spins during decode {(c1-c0)/(20*dt):.0f}/s vs alone {cnt[0]/0.5:.0f}/s")
