"""``lfmc bench``: prefill and decode throughput and peak memory of a compiled artifact, optionally against
PyTorch eager on the same weights, measured in the same run (the baseline in a child process, so that each
side's peak RSS is its own)."""
from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .sysmem import proc_kib


def peak_rss_bytes() -> int:
    """This process's peak resident memory. VmHWM, not ru_maxrss: Linux carries ru_maxrss over fork + exec, so a
    child started by a big parent would report the parent's peak."""
    kib = proc_kib("/proc/self/status", "VmHWM")
    return kib * 1024 if kib is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _median_time(fn, reps: int) -> float:
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def bench_engine(engine, prefill_lens=(128, 512), decode_steps: int = 64, reps: int = 3,
                 seed: int = 0) -> dict[str, Any]:
    """Tokens/s of prefill (each length) and of single-sequence decode, medians over ``reps``."""
    rng = np.random.default_rng(seed)
    out: dict[str, Any] = {"prefill": {}, "decode": {}}
    for T in prefill_lens:
        if T + 1 > engine.max_context:
            continue
        toks = rng.integers(0, engine.vocab_size, T).tolist()

        def run():
            s = engine.new_sequence()
            engine.prefill(s, toks)
            engine.release(s)

        run()                                                     # warm-up (builds the argument lists)
        out["prefill"][str(T)] = T / _median_time(run, reps)
    steps = min(decode_steps, engine.max_context - 17)
    s = engine.new_sequence()

    def dec():
        engine.reset(s)
        logits = engine.prefill(s, rng.integers(0, engine.vocab_size, 16).tolist())
        t = time.perf_counter()
        tok = int(np.argmax(logits))
        for _ in range(steps):
            tok = int(np.argmax(engine.decode([s], [tok])[0]))
        return time.perf_counter() - t

    dec()
    out["decode"]["1"] = steps / statistics.median(dec() for _ in range(reps))
    engine.release(s)
    out["memory"] = engine.memory_bytes() | {"peak_rss": peak_rss_bytes()}
    return out


def copying_prompt(vocab_size: int, seed: int = 1) -> list[int]:
    """An input-copying prompt of random tokens (a 64-token passage, 8 others, then the passage's first 16
    again): where prompt-lookup drafting has something to propose."""
    rng = np.random.default_rng(seed)
    passage = rng.integers(3, vocab_size, 64).tolist()
    return passage + rng.integers(3, vocab_size, 8).tolist() + passage[:16]


def verify_cost(engine, ks: Sequence[int], context: int = 256, reps: int = 7, seed: int = 0) -> dict[str, Any]:
    """What verifying k drafted tokens costs: ``Engine.verify`` of 1 + k tokens against ``Engine.decode`` of one,
    in decode steps, at a context of ``context`` (medians of alternating repetitions; each call rolled back)."""
    rng = np.random.default_rng(seed)
    context = min(context, engine.max_context - max(ks) - 2)
    s = engine.new_sequence()
    engine.prefill(s, rng.integers(3, engine.vocab_size, context).tolist())
    engine.track(s, max(ks) + 1)
    dec: list[float] = []
    ver: dict[int, list[float]] = {k: [] for k in ks}
    for _ in range(reps):
        t = time.perf_counter()
        engine.decode([s], [5])
        dec.append(time.perf_counter() - t)
        engine.rollback(s, 1)
        for k in ks:
            t = time.perf_counter()
            engine.verify(s, [5] * (k + 1))
            ver[k].append(time.perf_counter() - t)
            engine.rollback(s, k + 1)
    engine.release(s)
    d = statistics.median(dec)
    return {"context": context, "decode_s": d, "verify_s": {str(k): statistics.median(v) for k, v in ver.items()},
            "ratio": {str(k): statistics.median(v) / d for k, v in ver.items()}}


def format_verify_cost(cost: dict[str, Any]) -> str:
    """One line: the decode step and each verify's cost in decode steps."""
    return f"decode {cost['decode_s'] * 1e3:.2f} ms; verify of 1+k in decode steps: " + \
        ", ".join(f"k={k} {r:.2f}" for k, r in cost["ratio"].items())


def project_speedup(cost: dict[str, Any], rate: float, draft_step: float = 0.0) -> dict[str, float]:
    """The speed-up speculative decoding gives at acceptance ``rate`` per drafted token, from measured verify
    costs (:func:`verify_cost`) and a draft step's cost in target decode steps (0 for n-gram lookup): k drafts
    yield (1 - a^(k+1)) / (1 - a) tokens for k draft steps and one verify; the best k."""
    a = min(max(rate, 0.0), 0.999)
    best = max(((1 - a ** (int(k) + 1)) / (1 - a) / (r + int(k) * draft_step), int(k))
               for k, r in cost["ratio"].items())
    return {"speedup": best[0], "k": best[1]}


def replay_speedup(totals: dict[str, Any], cost: dict[str, Any], draft_step: float = 0.0) -> float:
    """The speed-up a measured speculative run (its counts: verify and decode calls, drafted and accepted) would
    have at another model's costs: its tokens over its calls priced in that model's decode steps (a verify of
    1 + k at the measured ratio for the nearest k at or above the run's mean draft length, a draft step at
    ``draft_step``)."""
    v, d = totals.get("verify_calls", 0), totals.get("decode_calls", 0)
    tokens = totals.get("accepted", 0) + v + d
    if not tokens:
        return 0.0
    ks = sorted(int(k) for k in cost["ratio"])
    mean = totals["drafted"] / v if v else 0.0
    k = next((k for k in ks if k >= mean - 1e-9), ks[-1])
    return tokens / (d + v * cost["ratio"][str(k)] + totals.get("drafted", 0) * draft_step)


def bench_speculation(engine, prompt: Sequence[int], speculate: Any, steps: int = 64, draft_k: int = 4,
                      reps: int = 3, temperature: float = 0.0) -> dict[str, Any]:
    """Speculative decoding end to end against plain decoding on the same prompt, alternating (medians of
    ``reps``): decode tokens/s of each, the speed-up, and what the drafts did (acceptance, calls, time drafting
    and verifying). ``speculate``: "ngram" or a draft Engine. Adaptive draft length, as users get it."""
    plain_ts, spec_ts, stats = [], [], []
    for i in range(reps + 1):                                       # the first round warms up
        kw = {"stop": [], "temperature": temperature, "seed": i}
        p = engine.generate(prompt, steps, **kw)
        q = engine.generate(prompt, steps, speculate=speculate, draft_k=draft_k, **kw)
        if i:
            plain_ts.append(p.decode_tokens_per_s)
            spec_ts.append(q.decode_tokens_per_s)
            stats.append(dict(engine.last_speculation))
    tot = {k: sum(st[k] for st in stats) for k in stats[0]}
    return {"plain_tok_s": statistics.median(plain_ts), "speculative_tok_s": statistics.median(spec_ts),
            "speedup": statistics.median(spec_ts) / statistics.median(plain_ts),
            "acceptance": tot["accepted"] / tot["drafted"] if tot["drafted"] else 0.0,
            "tokens_per_verify": (tot["accepted"] + tot["verify_calls"]) / tot["verify_calls"]
            if tot["verify_calls"] else 0.0, "totals": tot, "steps": steps, "draft_k": draft_k,
            "temperature": temperature}


def profile_engine(engine, entry: str = "decode", n: int = 1, reps: int = 7,
                   peaks: dict[str, float] | None = None, bandwidth: float | None = None) -> dict[str, Any]:
    """Where one ``entry`` call of ``n`` rows spends its time, kernel by kernel (each launch timed on its own,
    medians of ``reps``; the sum is a little above an untimed step's). Dense matmuls (kernels ``k_mm_*``, which
    read every weight once per call) also get the bytes of weights they read and the rate they read them at (in
    decode, how close each comes to the machine's memory bandwidth) and, where the plan records their work, the
    GOP/s they compute at; with ``peaks`` (:meth:`Engine.measure_peaks`) the share of their instruction family's
    peak measured on this machine (in prefill, how close each comes to what the cores can do); with ``bandwidth``
    (GB/s, :meth:`Engine.measure_read_bandwidth`) the share of it their weights are read at."""
    times = engine.profile(entry, n, reps)
    summary = engine.launch_summary(entry, n)
    arith = engine.plan.get("arith", {})
    total = sum(times.values())
    rows = []
    for k, t in times.items():
        dense = k.startswith("k_mm_")
        b = summary[k]["param_bytes"] if dense else None
        fl = summary[k].get("flops", 0)
        gf = fl / t / 1e9 if fl and t > 0 else None
        fam = arith.get(k)
        peak = (peaks or {}).get(fam)
        rows.append({"kernel": k, "launches": summary[k]["launches"], "seconds": t, "share": t / total,
                     "weight_bytes": b, "gbs": b / t / 1e9 if b and t > 0 else None,
                     "flops": fl or None, "gflops": gf, "family": fam,
                     "of_peak": gf / peak if gf and peak else None,
                     "of_bandwidth": b / t / 1e9 / bandwidth if b and t > 0 and bandwidth else None})
    mm = [r for r in rows if r["weight_bytes"]]
    mm_bytes, mm_s = sum(r["weight_bytes"] for r in mm), sum(r["seconds"] for r in mm)
    fl_rows = [r for r in rows if r["flops"]]
    fl, fl_s = sum(r["flops"] for r in fl_rows), sum(r["seconds"] for r in fl_rows)
    return {"entry": entry, "rows_per_call": n, "seconds": total,
            "launches": sum(s["launches"] for s in summary.values()), "kernels": rows,
            "matmul_weight_bytes": mm_bytes, "matmul_gbs": mm_bytes / mm_s / 1e9 if mm_s > 0 else None,
            "matmul_gflops": fl / fl_s / 1e9 if fl and fl_s > 0 else None, "peaks_gops": peaks or {},
            "read_gbs": bandwidth}


def format_profile(p: dict[str, Any], top: int = 12) -> str:
    """``profile_engine``'s result as a table."""
    head = f"{p['entry']} of {p['rows_per_call']} row(s): {p['seconds'] * 1e3:.2f} ms over {p['launches']} launches"
    if p["matmul_gbs"]:
        head += f"; dense matmuls read {p['matmul_weight_bytes'] / 1e6:.0f} MB of weights at {p['matmul_gbs']:.1f} GB/s"
    if p.get("matmul_gflops"):
        head += f", compute at {p['matmul_gflops']:.1f} GOP/s"
    lines = [head]
    if p.get("peaks_gops") or p.get("read_gbs"):
        lines.append("peaks measured here (all threads): " + ", ".join(
            [f"{k} {v:.0f} GOP/s" for k, v in sorted(p.get("peaks_gops", {}).items())]
            + ([f"memory read {p['read_gbs']:.1f} GB/s"] if p.get("read_gbs") else [])))
    lines.append(f"{'kernel':<48}{'launches':>9}{'ms':>9}{'share':>7}{'weights MB':>12}{'GB/s':>7}{'of bw':>7}"
                 f"{'GOP/s':>9}{'of peak':>14}")
    for r in p["kernels"][:top]:
        mb = f"{r['weight_bytes'] / 1e6:12.1f}{r['gbs']:7.1f}" if r["gbs"] else " " * 19
        mb += f"{r['of_bandwidth']:7.0%}" if r.get("of_bandwidth") else " " * 7
        gf = f"{r['gflops']:9.1f}" if r.get("gflops") else " " * 9
        pk = f"{r['of_peak']:>8.0%} {r['family']:<5}" if r.get("of_peak") else ""
        lines.append(f"{r['kernel'][:47]:<48}{r['launches']:>9}{r['seconds'] * 1e3:>9.3f}{r['share']:>7.0%}{mb}{gf}{pk}")
    if len(p["kernels"]) > top:
        rest = p["kernels"][top:]
        lines.append(f"{f'({len(rest)} more kernels)':<48}{sum(r['launches'] for r in rest):>9}"
                     f"{sum(r['seconds'] for r in rest) * 1e3:>9.3f}{sum(r['share'] for r in rest):>7.0%}")
    return "\n".join(lines)


def rss_bytes() -> int:
    """This process's resident memory now (what it holds for model, caches and runtime at this moment)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return 0


def bench_contexts(engine, contexts: Sequence[int], steps: int = 16, seed: int = 0) -> list[dict[str, Any]]:
    """Decode tokens/s of one sequence after a prompt of each length in ``contexts``, with the bytes it holds
    then: parameters, its state (conv / recurrent state, and the KV cache up to that context) and the process's
    resident memory."""
    rng = np.random.default_rng(seed)
    C, S = engine.max_context, engine.max_batch
    per_seq = {k: int(a.nbytes) // S for k, a in engine.state.items()}
    grows = {k for k, s in engine.plan["state"].items() if "C" in s["shape"]}
    params = sum(int(a.nbytes) for a in engine.params.values())
    rows = []
    for c in contexts:
        if c + steps + 1 > C:
            raise ValueError(f"context {c} + {steps} decode steps exceeds the engine's max context {C}")
        s = engine.new_sequence()
        try:
            logits = engine.prefill(s, rng.integers(0, engine.vocab_size, c).tolist())
            tok = int(np.argmax(logits))
            tok = int(np.argmax(engine.decode([s], [tok])[0]))          # warm-up step
            t = time.perf_counter()
            for _ in range(steps):
                tok = int(np.argmax(engine.decode([s], [tok])[0]))
            dt = time.perf_counter() - t
            held = engine.length(s)
        finally:
            engine.release(s)
        state = sum(b * held // C if k in grows else b for k, b in per_seq.items())
        rows.append({"context": c, "decode_tok_s": steps / dt, "params_bytes": params, "state_bytes": state,
                     "rss_bytes": rss_bytes()})
    return rows


def plot_contexts(rows: list[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """Decode speed and memory against context, one PNG."""
    from .plot import pyplot

    plt = pyplot()
    x = [r["context"] for r in rows]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.2))
    a1.plot(x, [r["decode_tok_s"] for r in rows], marker="o")
    a1.set_xlabel("context (tokens)")
    a1.set_ylabel("decode tokens/s (one sequence)")
    a1.set_ylim(bottom=0)
    mib = 2 ** 20
    a2.plot(x, [(r["params_bytes"] + r["state_bytes"]) / mib for r in rows], marker="o",
            label="weights + this sequence's state and KV cache")
    a2.plot(x, [r["state_bytes"] / mib for r in rows], marker="s", label="state and KV cache")
    a2.plot(x, [r["rss_bytes"] / mib for r in rows], marker="^", ls="--", label="process resident memory")
    a2.set_xlabel("context (tokens)")
    a2.set_ylabel("MiB")
    a2.set_ylim(bottom=0)
    a2.legend(fontsize=8)
    for a in (a1, a2):
        a.set_xscale("log", base=2)
        a.grid(alpha=0.3)
    fig.suptitle(title or "decode speed and memory against context")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def bench_torch(source: dict[str, Any], config: dict[str, Any], prefill_lens=(128, 512), decode_steps: int = 64,
                reps: int = 3, seed: int = 0, threads: int | None = None, dtype: str = "f32",
                compile: bool = False) -> dict[str, Any]:
    """The same measurements for transformers' model in PyTorch eager (float32, or ``dtype`` bf16 / f16), same
    weights; ``compile``: through ``torch.compile`` (inductor) instead of eager."""
    import torch

    from .frontend import import_preset
    from .frontend.reference import build_hf_model

    torch.set_num_threads(threads or len(os.sched_getaffinity(0)))
    if source.get("source") == "preset":
        m = import_preset(source["preset"], weights=True, seed=source.get("seed", 0), std=source.get("init_std"))
        model = build_hf_model(config, m.weights)
        del m
    elif source.get("source") == "hf":
        import transformers

        model = getattr(transformers, config["architecture"]).from_pretrained(source["path"], dtype=torch.float32)
        model.eval()
    else:
        raise SystemExit(f"lfmc: error: cannot rebuild the baseline from source {source.get('source')!r}")
    if dtype != "f32":
        model = model.to({"bf16": torch.bfloat16, "f16": torch.float16}[dtype])
    if compile:
        model.forward = torch.compile(model.forward)
    rng = np.random.default_rng(seed)
    vocab = int(config["vocab_size"])
    out: dict[str, Any] = {"prefill": {}, "decode": {}, "dtype": dtype, "compiled": compile}
    with torch.inference_mode():
        for T in prefill_lens:
            ids = torch.tensor([rng.integers(0, vocab, T).tolist()])
            model(ids, use_cache=True)
            out["prefill"][str(T)] = T / _median_time(lambda: model(ids, use_cache=True), reps)

        def dec():
            o = model(torch.tensor([rng.integers(0, vocab, 16).tolist()]), use_cache=True)
            cache, tok = o.cache, o.logits[0, -1].argmax().view(1, 1)
            t = time.perf_counter()
            for _ in range(decode_steps):
                o = model(tok, cache=cache, use_cache=True)
                cache, tok = o.cache, o.logits[0, -1].argmax().view(1, 1)
            return time.perf_counter() - t

        dec()
        out["decode"]["1"] = decode_steps / statistics.median(dec() for _ in range(reps))
    out["memory"] = {"peak_rss": peak_rss_bytes(),
                     "params": sum(p.numel() * p.element_size() for p in model.parameters())}
    return out


def run_child(kind: str, **kw: Any) -> dict[str, Any]:
    """Run one side of a benchmark in a child process (so that its peak RSS is its own); returns its JSON.
    kind ``lfmc``: kw has ``artifact``; kind ``torch``: kw has ``source`` and ``config``."""
    r = subprocess.run([sys.executable, "-m", "lfmc.bench", json.dumps({"kind": kind, **kw})],
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"the {kind} benchmark failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def run_torch_baseline(manifest: dict[str, Any], **kw: Any) -> dict[str, Any]:
    """bench_torch for the model an artifact was compiled from, in a child process."""
    return run_child("torch", source=manifest["model"]["source"], config=manifest["model"]["config"], **kw)


def _main(a: dict[str, Any]) -> dict[str, Any]:
    kind = a.pop("kind")
    if kind == "torch":
        return bench_torch(a.pop("source"), a.pop("config"), **a)
    from .runtime import Engine

    lens = tuple(a.get("prefill_lens", (128, 512)))
    steps = int(a.get("decode_steps", 64))
    eng = Engine(a.pop("artifact"), max_context=max(max(lens) + 1, steps + 17), max_batch=1)
    return bench_engine(eng, lens, steps, int(a.get("reps", 3)))


if __name__ == "__main__":
    print(json.dumps(_main(json.loads(sys.argv[1]))))
