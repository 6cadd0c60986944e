"""What rollback costs (issue 29): a decode step of a tracked sequence (a checkpoint of its conv state after each
call) against an untracked one, a rollback to a checkpoint, a rollback into the middle of a verify chunk (the
accepted tokens left to be fed again), the next verify of 1 + 3 tokens after each (the refeed rides in its
chunk) against feeding the accepted tokens at once in a call of their own (what rollback did before), and a
snapshot, for LFM2-350M W4A8 and f32 artifacts built by batched_decode.py.

    .venv/bin/python benchmarks/rollback_cost.py [BUILD]  # after benchmarks/batched_decode.py (or speculative.py,
                                                          # speculative_pair.py) built the artifacts in BUILD
"""
import sys, time, statistics
sys.path.insert(0, str(__import__('pathlib').Path(__file__).resolve().parents[1]))
import numpy as np
from lfmc.runtime.engine import Engine
build = sys.argv[1] if len(sys.argv) > 1 else 'build/batched'
for art in (f'{build}/lfm2-350m-q4g32a8-b16.host', f'{build}/lfm2-350m-f32-b16.host'):
    e = Engine(art, max_batch=1)
    rng = np.random.default_rng(0)
    prompt = rng.integers(3, e.vocab_size, 128).tolist()
    def run(track):
        s = e.new_sequence(); e.prefill(s, prompt)
        if track: e.track(s, 16)
        tok = 5; ts = []
        for _ in range(48):
            t = time.perf_counter(); tok = int(np.argmax(e.decode([s], [tok])[0])); ts.append(time.perf_counter() - t)
        # a verify-sized chunk then rollbacks
        r = {}
        if track:
            e.prefill(s, [7] * 8)
            t = time.perf_counter(); e.rollback(s, 8); r["rollback_to_checkpoint"] = time.perf_counter() - t
            t = time.perf_counter(); e.verify(s, [7] * 4); r["next_verify_1+3"] = time.perf_counter() - t
            e.rollback(s, 4)
            e.prefill(s, [7] * 8)
            t = time.perf_counter(); e.rollback(s, 5); r["rollback_into_chunk_3_left"] = time.perf_counter() - t
            t = time.perf_counter(); e.verify(s, [7] * 4); r["next_verify_1+3_with_the_3"] = time.perf_counter() - t
            e.rollback(s, 7)
            e.prefill(s, [7] * 8)
            e.rollback(s, 5)
            t = time.perf_counter(); e._flushed(s); r["the_3_fed_alone"] = time.perf_counter() - t
            t = time.perf_counter(); e.snapshot(s); r["snapshot"] = time.perf_counter() - t
        e.release(s)
        return statistics.median(ts), r
    for _ in range(2):
        a, _ = run(False); b, r = run(True)
    print(art.split('/')[-1], f"decode step {a*1e3:.2f} ms plain, {b*1e3:.2f} ms tracked ({(b/a-1)*100:+.1f}%)", {k: f"{v*1e3:.2f} ms" for k, v in r.items()}, flush=True)
