"""Where the server's rate goes (issue 28, BENCHMARKS.md "Load on lfmc serve"): the batcher alone (in-process, no
HTTP) against Engine.decode at 4 and 8 sequences, with and without per-token log-probabilities, on the served
LFM2-350M W4A8 artifact that benchmarks/loadgen.py builds.

    .venv/bin/python benchmarks/batcher_rate.py
"""
import sys, time, threading
sys.path.insert(0, str(__import__('pathlib').Path(__file__).resolve().parents[1]))
import numpy as np
from lfmc.runtime.engine import Engine
from lfmc.runtime.batcher import Batcher, Request
e = Engine('build/batched/lfm2-350m-q4g32a8-serve.host')
def run(c, logprobs):
    b = Batcher(e)
    rng = np.random.default_rng(0)
    times = [[] for _ in range(c)]; done = threading.Semaphore(0)
    def sink(i):
        def f(ev):
            if ev[0] == "token": times[i].append(time.perf_counter())
            elif ev[0] == "done": done.release()
        return f
    for i in range(c):
        b.submit(Request(rng.integers(3, e.vocab_size, 128).tolist(), 128, sink(i), logprobs=logprobs, logit_bias={e.eos_token_id: -100.0} if e.eos_token_id is not None else {}))
    for _ in range(c): done.acquire()
    b.close()
    lo = max(t[0] for t in times); hi = min(t[-1] for t in times)
    return sum(sum(1 for x in t if lo < x <= hi) for t in times) / (hi - lo)
def eng(c):
    seqs = [e.new_sequence() for _ in range(c)]
    toks = [int(np.argmax(e.prefill(s, [1+i, 2, 3]))) for i, s in enumerate(seqs)]
    t = time.perf_counter()
    for _ in range(64): toks = [int(x) for x in np.argmax(e.decode(seqs, toks), axis=1)]
    r = c * 64 / (time.perf_counter() - t)
    for s in seqs: e.release(s)
    return r
for c in (4, 8):
    print(c, "engine", [round(eng(c),1) for _ in range(2)], "batcher", [round(run(c, None),1) for _ in range(2)], "batcher+logprobs", [round(run(c, 0),1) for _ in range(2)], flush=True)
