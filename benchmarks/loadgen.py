"""Load generator for ``lfmc serve``: what users put on a server, through the official openai client, streaming.

    .venv/bin/python benchmarks/loadgen.py                               # all three scenarios, LFM2-350M W4A8
    .venv/bin/python benchmarks/loadgen.py --scenarios mixed --concurrency 1,8 --duration 20

Scenarios (each against one ``lfmc serve`` process started here on a loopback port, ``--max-batch 16``):

- ``mixed``: at each concurrency (1, 2, 4, 8, 16) that many clients, for ``--duration`` seconds each, send
  requests one after another: prompt lengths log-uniform over 16-2,000 tokens, 16-128 tokens to generate, a tenth
  of them disconnecting after a few tokens (closing the stream). Reports aggregate generated tokens/s, time to
  first token and inter-token latency (p50 / p99) as the clients see them, and requests that failed.
- ``arrivals``: 8 streams decode while 2,000-token prompts arrive one after another (each generating 4 tokens):
  the chunked prefill's test. Reports the running streams' inter-token latency p50 / p99 (goal: p99 at most 3x
  p50), the share of engine steps that carried prefill (from ``/metrics``; the scenario wants at least 20%) and
  the arriving prompts' time to first token.
- ``rate``: the server's decode rate against the engine's at the same concurrency: C clients with 128-token
  prompts generating 128 tokens each, all at once; the server's rate counts the tokens all C streams receive
  while every one of them is decoding (prefill excluded, as llama-batched-bench's S_TG does); the engine's is
  ``benchmarks/batched_decode.py``'s measurement (``Engine.decode`` in a loop, same artifact), in its own
  process. Alternating, medians of ``--rounds``. Goal: the server at least 85% of the engine.

Random-weight presets have no tokenizer, so prompts are token ids and every request asks for ``logprobs: 0``
(one streamed chunk per token, which is how the client counts tokens) and ``logit_bias`` -100 on the end token
(so that requests run to their length). Writes JSON (default benchmarks/results/loadgen.json) with the CPU.
"""
from __future__ import annotations

import argparse
import json
import re
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


CONTEXT = 2304          # the served artifact's context: 2,000-token prompts and the streams beside them


def pct(xs: list[float], q: float) -> float | None:
    return float(np.percentile(xs, q)) if xs else None


class Server:
    """A server process on a free loopback port (``lfmc serve ART`` by default, or ``cmd`` given the port), and an
    openai client for it."""

    def __init__(self, art: Path, max_batch: int, *extra: str, cmd=None, vocab: int | None = None,
                 eos: int | None = None):
        import httpx
        import openai

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        argv = cmd(port) if cmd else [sys.executable, "-m", "lfmc", "serve", str(art), "--port", str(port),
                                      "--model-name", "m", "--max-batch", str(max_batch), "--max-queue", "256", *extra]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(1200):
            if self.proc.poll() is not None:
                raise RuntimeError(f"{argv[0]} exited with {self.proc.returncode}")
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        else:
            raise RuntimeError("the server did not come up in 4 minutes")
        self.http = httpx
        self.client = openai.OpenAI(base_url=self.url + "/v1", api_key="-", max_retries=0, timeout=600)
        info = self.client.models.list().data[0].model_extra if cmd is None else {}
        self.vocab = int(vocab or info.get("vocab_size") or 256)
        self.eos = eos if cmd is not None else info.get("eos_token_id")
        # logprobs asked with every request: one entry per streamed token is how tokens are counted (lfmc gives
        # the sampled token's with 0; llama-server gives entries only for 1 or more)
        self.logprobs = 0 if cmd is None else 1

    def steps(self) -> dict[str, float]:
        """Engine steps so far by kind (decode, mixed, prefill), from /metrics."""
        text = self.http.get(self.url + "/metrics", timeout=10).text
        return {m.group(1): float(m.group(2)) for m in re.finditer(r'lfmc_steps_total\{kind="(\w+)"\} (\S+)', text)}

    def stream(self, ids: list[int], max_tokens: int, stop_after: int | None = None,
               halt: threading.Event | None = None) -> dict:
        """One streamed completion: the arrival time of each token; ``stop_after`` tokens (or ``halt`` set): the
        client closes the stream (a disconnect)."""
        t0 = time.perf_counter()
        times: list[float] = []
        bias = {str(self.eos): -100} if self.eos is not None else None
        try:
            s = self.client.completions.create(model="m", prompt=ids, max_tokens=max_tokens, temperature=0,
                                               stream=True, logprobs=self.logprobs, logit_bias=bias)
            for chunk in s:
                if not chunk.choices:
                    continue
                lp = chunk.choices[0].logprobs
                # tokens of the chunk: its log-probability entries (a random-weight preset has no text); lfmc
                # sends OpenAI's legacy completions shape (tokens), llama-server a chat-style content list
                n = 0 if lp is None else len(lp.tokens or []) or len((lp.model_extra or {}).get("content") or [])
                now = time.perf_counter()
                times += [now] * n
                if (stop_after is not None and len(times) >= stop_after) or (halt is not None and halt.is_set()):
                    s.close()
                    break
        except Exception as e:                          # noqa: BLE001  reported, not fatal
            return {"start": t0, "times": times, "error": f"{type(e).__name__}: {e}"[:300]}
        return {"start": t0, "times": times, "closed": stop_after is not None or (halt is not None and halt.is_set())}

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def ms(x: float | None) -> str:
    return f"{x * 1e3:.0f}" if x is not None else "-"


def sec(x: float | None) -> str:
    return f"{x:.2f}" if x is not None else "-"


def latency(recs: list[dict]) -> dict:
    """TTFT and inter-token gaps of requests (disconnected ones count up to where they left)."""
    ttft = [r["times"][0] - r["start"] for r in recs if r["times"]]
    itl = [b - a for r in recs for a, b in zip(r["times"], r["times"][1:])]
    return {"ttft_p50": pct(ttft, 50), "ttft_p99": pct(ttft, 99), "itl_p50": pct(itl, 50), "itl_p99": pct(itl, 99)}


# ----------------------------------------------------------------------------------------------- scenarios
def mixed(srv: Server, conc: int, duration: float, seed: int) -> dict:
    recs: list[dict] = []
    lock = threading.Lock()
    t_end = time.perf_counter() + duration

    def client(i: int) -> None:
        rng = np.random.default_rng(seed * 1000 + i)
        while time.perf_counter() < t_end:
            n = int(np.exp(rng.uniform(np.log(16), np.log(2000))))
            gen = int(rng.integers(16, 129))
            leave = int(rng.integers(1, 8)) if rng.random() < 0.1 else None
            r = srv.stream(rng.integers(3, srv.vocab, n).tolist(), gen, leave)
            r["prompt"] = n
            with lock:
                recs.append(r)

    t0 = time.perf_counter()
    ths = [threading.Thread(target=client, args=(i,)) for i in range(conc)]
    for t in ths:
        t.start()
    for t in ths:
        t.join()
    wall = time.perf_counter() - t0
    toks = sum(len(r["times"]) for r in recs)
    return {"concurrency": conc, "requests": len(recs), "errors": sum("error" in r for r in recs),
            "disconnected": sum(bool(r.get("closed")) for r in recs), "tokens": toks, "wall_s": wall,
            "tok_s": toks / wall, "prompt_tokens": sum(r["prompt"] for r in recs), **latency(recs),
            "first_error": next((r["error"] for r in recs if "error" in r), None)}


def arrivals(srv: Server, streams: int, n_arrivals: int, prompt: int, seed: int, ctx: int) -> dict:
    rng = np.random.default_rng(seed)
    halt = threading.Event()
    run: list[dict] = [{} for _ in range(streams)]

    def runner(i: int) -> None:
        run[i] = srv.stream(rng.integers(3, srv.vocab, 32).tolist(), ctx - 64, halt=halt)

    ths = [threading.Thread(target=runner, args=(i,)) for i in range(streams)]
    for t in ths:
        t.start()
    time.sleep(3.0)                             # the streams are decoding (checked below: tokens before t0)
    before = srv.steps()
    t0 = time.perf_counter()
    arr = [srv.stream(rng.integers(3, srv.vocab, prompt).tolist(), 4) for _ in range(n_arrivals)]
    t1 = time.perf_counter()
    after = srv.steps()
    halt.set()
    for t in ths:
        t.join()
    late = [i for i, r in enumerate(run) if not r.get("times") or r["times"][0] > t0]
    if late:
        raise RuntimeError(f"streams {late} had not started decoding when the arrivals began "
                           f"({next((r['error'] for r in run if 'error' in r), 'no error')})")
    gaps = [b - a for r in run for a, b in zip(r.get("times", []), r.get("times", [])[1:]) if t0 <= a and b <= t1]
    d = {k: after.get(k, 0) - before.get(k, 0) for k in ("decode", "mixed", "prefill")}
    total = sum(d.values())
    ttft = [r["times"][0] - r["start"] for r in arr if r["times"]]
    return {"streams": streams, "arrivals": n_arrivals, "prompt": prompt, "window_s": t1 - t0,
            "itl_p50": pct(gaps, 50), "itl_p99": pct(gaps, 99), "itl_max": max(gaps) if gaps else None,
            "p99_over_p50": pct(gaps, 99) / pct(gaps, 50) if gaps else None, "steps": d,
            "prefill_step_share": (d["mixed"] + d["prefill"]) / total if total else None,
            "arrival_ttft_s": ttft, "errors": [r["error"] for r in run + arr if "error" in r]}


def serve_rate(srv: Server, conc: int, npp: int, ntg: int, seed: int) -> float:
    rng = np.random.default_rng(seed)
    recs: list[dict] = [{} for _ in range(conc)]

    def one(i: int) -> None:
        recs[i] = srv.stream(rng.integers(3, srv.vocab, npp).tolist(), ntg)

    ths = [threading.Thread(target=one, args=(i,)) for i in range(conc)]
    for t in ths:
        t.start()
    for t in ths:
        t.join()
    bad = [r["error"] for r in recs if "error" in r]
    if bad:
        raise RuntimeError(bad[0])
    lo = max(r["times"][0] for r in recs)        # every stream has its first token
    hi = min(r["times"][-1] for r in recs)       # ... and none has finished
    n = sum(sum(1 for t in r["times"] if lo < t <= hi) for r in recs)
    return n / (hi - lo)


# ------------------------------------------------------------------------------------------------- driver
def serve_artifact(build: str, preset: str, precision: str, seed: int) -> Path:
    """The served artifact of the load benchmarks (this one and prefix_cache.py): ``preset`` at ``precision``
    (compare.py's names), 16 sequences, CONTEXT tokens; compiled once into ``build``."""
    import compare
    from lfmc.compile import compile_model, load_source

    quant, dtype, _, _, act = compare.PRECISIONS[precision]
    art = Path(build) / f"{preset}-{precision}-serve.host"
    def build() -> None:
        t = time.perf_counter()
        compile_model(load_source(preset, seed=seed), art, max_batch=16, quant=quant, dtype=dtype, act_quant=act,
                      max_context=CONTEXT)
        print(f"compiled {preset} {precision} in {time.perf_counter() - t:.0f} s", flush=True)

    return compare.compiled(art, build)                # rebuilt when the compiler sources changed


def main() -> int:
    import compare
    from batched_decode import run_lfmc

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="lfm2-350m")
    ap.add_argument("--precision", default="q4g32a8", help=f"of {', '.join(compare.PRECISIONS)}")
    ap.add_argument("--scenarios", default="mixed,arrivals,rate", help="of lfmc serve ('' for none: "
                    "--llama-server alone)")
    ap.add_argument("--concurrency", default="1,2,4,8,16")
    ap.add_argument("--duration", type=float, default=30.0, help="seconds per concurrency in the mixed scenario")
    ap.add_argument("--arrivals", type=int, default=3, help="2,000-token prompts arriving in the arrivals scenario")
    ap.add_argument("--rate-concurrency", default="8", help="concurrencies of the rate scenario")
    ap.add_argument("--rounds", type=int, default=2, help="alternating rounds of the rate scenario")
    ap.add_argument("--serve-args", default="", help="extra lfmc serve arguments, e.g. '--prefill-budget 64'")
    ap.add_argument("--llama-server", action="store_true",
                    help="also the mixed scenario against llama-server -np 8 (benchmarks/build_llama_cpp.sh builds it) on "
                         "the same weights at the matching GGUF type, concurrencies up to 8 (logprobs 1 to count "
                         "its tokens)")
    ap.add_argument("--build", default="build/batched")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="benchmarks/results/loadgen.json")
    a = ap.parse_args()
    art = serve_artifact(a.build, a.preset, a.precision, a.seed)
    scen = [x for x in a.scenarios.split(",") if x]
    res: dict = {"preset": a.preset, "precision": a.precision, "cpu": compare.cpu_info(), "command": " ".join(sys.argv)}
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        out.write_text(json.dumps(res, indent=1))

    srv = Server(art, 16, *a.serve_args.split()) if scen else None
    try:
        if srv is not None:
            srv.stream([5, 6, 7], 4)                                           # warm-up
        if "mixed" in scen:
            res["mixed"] = []
            for c in map(int, a.concurrency.split(",")):
                r = mixed(srv, c, a.duration, a.seed)
                res["mixed"].append(r)
                save()
                print(f"mixed c={c}: {r['tok_s']:.1f} tok/s, {r['requests']} requests ({r['disconnected']} left, "
                      f"{r['errors']} failed), TTFT p50/p99 {sec(r['ttft_p50'])}/{sec(r['ttft_p99'])} s, ITL p50/p99 "
                      f"{ms(r['itl_p50'])}/{ms(r['itl_p99'])} ms", flush=True)
        if "arrivals" in scen:
            r = res["arrivals"] = arrivals(srv, 8, a.arrivals, 2000, a.seed, CONTEXT)
            save()
            print(f"arrivals: running streams' ITL p50 {r['itl_p50'] * 1e3:.0f} ms, p99 {r['itl_p99'] * 1e3:.0f} ms "
                  f"({r['p99_over_p50']:.2f}x), steps with prefill {r['prefill_step_share']:.0%}, arriving 2,000-token "
                  f"prompts' TTFT {', '.join(f'{x:.1f}' for x in r['arrival_ttft_s'])} s", flush=True)
        if "rate" in scen:
            res["rate"] = []
            for c in map(int, a.rate_concurrency.split(",")):
                sr, er = [], []
                for k in range(a.rounds):
                    sr.append(serve_rate(srv, c, 128, 128, a.seed + k))
                    er.append(run_lfmc(art, [c], 128, 128, a.seed + k, profile=False)["decode"][str(c)])
                row = {"concurrency": c, "serve_tok_s": statistics.median(sr), "engine_tok_s": statistics.median(er),
                       "serve_runs": sr, "engine_runs": er}
                row["ratio"] = row["serve_tok_s"] / row["engine_tok_s"]
                res["rate"].append(row)
                save()
                print(f"rate c={c}: serve {row['serve_tok_s']:.1f} tok/s, engine {row['engine_tok_s']:.1f} tok/s: "
                      f"{row['ratio']:.0%}", flush=True)
    finally:
        if srv is not None:
            srv.close()
    if a.llama_server:
        import llamacpp_peer as llama_cpp

        d = llama_cpp.find()
        if d is None or not (d / "bin" / "llama-server").exists():
            raise SystemExit("llama-server is not built: run benchmarks/build_llama_cpp.sh")
        gtype = compare.PRECISIONS[a.precision][3]
        model = llama_cpp.gguf(d, llama_cpp.save_hf(a.preset, a.seed, Path(a.build) / f"{a.preset}-s{a.seed}.hf"), gtype)
        from lfmc.runtime.engine import Engine

        e = Engine(art)
        vocab, eos = e.vocab_size, e.eos_token_id
        del e
        ls = Server(art, 8, cmd=lambda port: [str(d / "bin" / "llama-server"), "-m", str(model), "--port", str(port),
                                              "-np", "8", "-c", str(8 * CONTEXT), "-t", "2", "--no-repack", "-cb"],
                    vocab=vocab, eos=eos)
        try:
            ls.stream([5, 6, 7], 4)
            res["llama_server"] = {"gguf": gtype, "mixed": []}
            for c in [c for c in map(int, a.concurrency.split(",")) if c <= 8]:
                r = mixed(ls, c, a.duration, a.seed)
                res["llama_server"]["mixed"].append(r)
                save()
                print(f"llama-server {gtype} mixed c={c}: {r['tok_s']:.1f} tok/s, {r['requests']} requests "
                      f"({r['errors']} failed), TTFT p50/p99 {sec(r['ttft_p50'])}/{sec(r['ttft_p99'])} s, ITL p50/p99 "
                      f"{ms(r['itl_p50'])}/{ms(r['itl_p99'])} ms", flush=True)
        finally:
            ls.close()
    save()
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
