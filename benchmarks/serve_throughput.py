"""Batched serving throughput: N clients at once against the same N requests one at a time, through `lfmc serve`
and the official openai client, on one artifact.

    .venv/bin/python benchmarks/serve_throughput.py --preset lfm2-350m --clients 8 --max-tokens 32 --rounds 3

Compiles the preset (seeded random weights; --max-batch sequences per decode step) unless --artifact is given,
starts the server on a free loopback port, then alternates, --rounds times: the requests sequentially (each waits
for the previous), and all of them concurrently. Reports generated tokens/s of each (medians), the ratio, and
whether every concurrent answer equals its sequential one (greedy); writes JSON (default
benchmarks/results/serve-PRESET.json).
"""
from __future__ import annotations

import argparse
import json
import platform
import socket
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="lfm2-350m")
    ap.add_argument("--artifact", default=None, help="an existing artifact instead of compiling the preset")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--build", default="build/bench")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    import httpx
    import openai

    art = Path(a.artifact) if a.artifact else Path(a.build) / f"{a.preset}.serve.host"
    if not a.artifact:
        from lfmc.compile import compile_model, load_source

        t = time.perf_counter()
        compile_model(load_source(a.preset), art, max_batch=a.max_batch, max_context=1024)
        print(f"compiled {a.preset} in {time.perf_counter() - t:.1f} s -> {art}", flush=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "lfmc", "serve", str(art), "--port", str(port),
                             "--model-name", "m", "--max-batch", str(a.max_batch)])
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(600):
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        client = openai.OpenAI(base_url=url + "/v1", api_key="-", max_retries=0, timeout=600)
        import numpy as np

        vocab = client.models.list().data[0].model_extra.get("vocab_size") or 256
        rng = np.random.default_rng(0)                # token-id prompts: presets with random weights have no tokenizer
        prompts = [rng.integers(3, vocab, 8 + 4 * i).tolist() for i in range(a.clients)]

        def one(p: list[int]) -> list[int]:
            r = client.completions.create(model="m", prompt=p, max_tokens=a.max_tokens, temperature=0)
            return r.choices[0].model_extra["tokens"]

        one(prompts[0])                                                    # warm up
        seq_s, conc_s, same = [], [], True
        for _ in range(a.rounds):
            t = time.perf_counter()
            alone = [one(p) for p in prompts]
            seq_s.append(time.perf_counter() - t)
            t = time.perf_counter()
            with ThreadPoolExecutor(a.clients) as ex:
                together = list(ex.map(one, prompts))
            conc_s.append(time.perf_counter() - t)
            same &= together == alone
            ntok = sum(len(x) for x in alone)
            print(f"  one at a time {ntok / seq_s[-1]:7.1f} tok/s   {a.clients} at once {ntok / conc_s[-1]:7.1f} tok/s",
                  flush=True)
        ntok = sum(len(x) for x in alone)
        seq_tps, conc_tps = ntok / statistics.median(seq_s), ntok / statistics.median(conc_s)
    finally:
        proc.terminate()
        proc.wait(30)
    print(f"\n{a.preset}: {a.clients} requests x {a.max_tokens} tokens, max batch {a.max_batch}, median of {a.rounds}")
    print(f"one at a time: {seq_tps:.1f} tok/s; concurrent: {conc_tps:.1f} tok/s; {conc_tps / seq_tps:.2f}x; "
          f"answers {'identical' if same else 'DIFFER'}")
    out = Path(a.out or Path(__file__).parent / "results" / f"serve-{a.preset}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"preset": a.preset, "clients": a.clients, "max_tokens": a.max_tokens,
                               "max_batch": a.max_batch, "rounds": a.rounds, "sequential_s": seq_s,
                               "concurrent_s": conc_s, "sequential_tok_s": seq_tps, "concurrent_tok_s": conc_tps,
                               "speedup": conc_tps / seq_tps, "identical": same,
                               "machine": platform.processor() or platform.machine()}, indent=1))
    print(f"wrote {out}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
