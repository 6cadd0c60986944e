"""Prefix cache: time to first token on a cached 2,000-token prefix, memory per cached token, and the prompt
tokens a chat workload prefills with and without the cache. Issue 29's benchmark.

    .venv/bin/python benchmarks/prefix_cache.py                     # LFM2-350M W4A8, 3 rounds
    .venv/bin/python benchmarks/prefix_cache.py --precision f32 --rounds 2

Against two ``lfmc serve`` processes on the same artifact, one with the default cache and one with
``--prefix-cache-bytes 0``, through the official openai client (streaming; time to first token as the client
sees it):

- TTFT: request A sends a 1,990-token prompt and generates 10 tokens, so the cache holds its state at 1,999
  tokens, off the 64-token block boundaries; request B then sends A's prompt and answer plus 50 new tokens. B's
  time to first token with the cache (it prefills 51 tokens) against the cold server's (2,050 tokens), fresh
  random prompts each round, medians.
- Memory per cached token: the cache's bytes over the tokens it holds after A (in-process, same artifact).
- A chat workload: 8 clients, each a conversation of 4 turns (a 200-token system prompt, 50-token messages,
  32-token answers); each turn sends the whole history. Prompt tokens prefilled (``/metrics``) and wall time,
  with and without the cache.

Writes JSON (default benchmarks/results/prefix-cache.json) with the CPU.
"""
from __future__ import annotations

import argparse
import re
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def prefilled(srv) -> float:
    text = srv.http.get(srv.url + "/metrics", timeout=10).text
    m = re.search(r"^lfmc_prefill_tokens_total (\S+)", text, re.M)
    return float(m.group(1)) if m else 0.0


def bias(srv) -> dict | None:
    return {str(srv.eos): -100} if srv.eos is not None else None


def ttft(srv, prompt: list[int], max_tokens: int) -> float:
    """Seconds to the first streamed token (one chunk per token: logprobs 0, as benchmarks/loadgen.py)."""
    t0 = time.perf_counter()
    for ch in srv.client.completions.create(model="m", prompt=prompt, max_tokens=max_tokens, temperature=0,
                                            stream=True, logprobs=0, logit_bias=bias(srv)):
        if ch.choices and ch.choices[0].logprobs is not None and ch.choices[0].logprobs.tokens:
            return time.perf_counter() - t0
    raise RuntimeError("no token came back")


def answer(srv, prompt: list[int], max_tokens: int) -> list[int]:
    r = srv.client.completions.create(model="m", prompt=prompt, max_tokens=max_tokens, temperature=0,
                                      logit_bias=bias(srv))
    return [int(t) for t in r.choices[0].model_extra["tokens"]]


def chat(srv, clients: int, turns: int, seed: int) -> float:
    """8 growing conversations at once; wall seconds."""
    def one(i: int) -> None:
        rng = np.random.default_rng(seed * 100 + i)
        hist = rng.integers(3, srv.vocab, 200).tolist()
        for _ in range(turns):
            hist += rng.integers(3, srv.vocab, 50).tolist()
            hist += answer(srv, hist, 32)

    t = time.perf_counter()
    ths = [threading.Thread(target=one, args=(i,)) for i in range(clients)]
    for th in ths:
        th.start()
    for th in ths:
        th.join()
    return time.perf_counter() - t


def main() -> int:
    import compare
    from loadgen import Server, serve_artifact

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="lfm2-350m")
    ap.add_argument("--precision", default="q4g32a8", help=f"of {', '.join(compare.PRECISIONS)}")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--build", default="build/batched")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="benchmarks/results/prefix-cache.json")
    a = ap.parse_args()
    art = serve_artifact(a.build, a.preset, a.precision, a.seed)
    res: dict = {"preset": a.preset, "precision": a.precision, "cpu": compare.cpu_info(), "command": " ".join(sys.argv)}

    # memory per cached token, in-process
    from lfmc.runtime import Engine
    from lfmc.runtime.prefix_cache import PrefixCache

    e = Engine(art, max_batch=1)
    pc = PrefixCache(e, 1 << 34)
    s = e.new_sequence()
    toks = np.random.default_rng(a.seed).integers(3, e.vocab_size, 1999).tolist()
    for i in range(0, 1999, 64):                    # as the server stores a prompt: every block, then its end
        e.prefill(s, toks[i:min(i + 64, 1999)])
        pc.store(s, toks[:e.length(s)])
    info = pc.info()
    res["memory"] = {"bytes": info["bytes"], "tokens": info["tokens"], "bytes_per_token": info["bytes"] / info["tokens"],
                     "snapshot_bytes_at_1999": e.snapshot(s).nbytes}
    print(f"prefix cache: {info['bytes'] / 2**20:.1f} MiB for {info['tokens']} tokens = "
          f"{info['bytes'] / info['tokens'] / 1024:.1f} KiB per token", flush=True)
    del e, pc

    warm, cold = Server(art, 16), Server(art, 16, "--prefix-cache-bytes", "0")
    try:
        for srv in (warm, cold):
            srv.stream([5, 6, 7], 4)
        rng = np.random.default_rng(a.seed + 1)
        t_warm, t_cold = [], []
        for r in range(a.rounds):
            base = rng.integers(3, warm.vocab, 1990).tolist()
            new = rng.integers(3, warm.vocab, 50).tolist()
            ans = answer(warm, base, 10)                              # A: cached at 1,999 tokens
            t_warm.append(ttft(warm, base + ans + new, 4))
            t_cold.append(ttft(cold, base + ans + new, 4))
            print(f"round {r + 1}: TTFT cached {t_warm[-1]:.3f} s, cold {t_cold[-1]:.3f} s", flush=True)
        res["ttft"] = {"cached_s": statistics.median(t_warm), "cold_s": statistics.median(t_cold),
                       "runs_cached": t_warm, "runs_cold": t_cold}
        res["ttft"]["speedup"] = res["ttft"]["cold_s"] / res["ttft"]["cached_s"]
        res["chat"] = {}
        for name, srv in (("cached", warm), ("cold", cold)):
            p0 = prefilled(srv)
            wall = chat(srv, 8, 4, a.seed)
            res["chat"][name] = {"prefilled_tokens": prefilled(srv) - p0, "wall_s": wall}
            print(f"chat {name}: {res['chat'][name]['prefilled_tokens']:.0f} prompt tokens prefilled, {wall:.1f} s",
                  flush=True)
    finally:
        warm.close()
        cold.close()
    t = res["ttft"]
    print(f"\nTTFT of 50 new tokens after a cached 2,000-token prefix: {t['cached_s']:.3f} s cached vs "
          f"{t['cold_s']:.3f} s cold ({t['speedup']:.1f}x)")
    compare.write_results(a.out, res)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
