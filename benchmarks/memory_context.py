"""Memory and decode speed against context length: lfmc's LFM2 / LFM3 vs a transformer of the same size in PyTorch.

    .venv/bin/python benchmarks/memory_context.py                       # LFM2-350M, contexts 512 ... 32k
    .venv/bin/python benchmarks/memory_context.py --preset lfm3-1.7b --dtype f16    # LFM3-1.7B, 16-bit

LFM3-1.7B keeps a growing KV cache in its 6 full-attention layers only: its 5 sliding-window layers keep a ring of
their window (constant, like the 13 conv layers' state). Its same-size transformer has hidden 2048, 24 layers,
16 / 4 heads of 128, FFN 7680, vocabulary 128,000, tied embeddings, a cache in all 24 layers. ``--dtype f16``
compiles lfmc with f16 weights and an f16 KV cache and runs PyTorch in bfloat16 (2 bytes a number on both sides).

LFM2 carries a KV cache in 6 of its 16 layers (the other 10 keep 2 x hidden numbers of conv state); a transformer
of the same shape (Llama: hidden 1024, 16 layers, 16 / 8 heads, FFN 4608, vocabulary 65536, tied embeddings) keeps
one in all 16. For each context N, in a fresh process per side: a cache of N positions (lfmc: the engine sized for
N + steps, the sequence advanced to N over a zero cache; PyTorch: a DynamicCache of N random positions; the work
per step is the same as over real history), then ``--steps`` greedy decode steps: tokens/s (median of 3) and the
process's peak RSS. The empty process (Python + numpy + TVM runtime; Python + torch) is measured too, so the
model's own memory is peak minus that. Prints a table, writes JSON and a PNG (benchmarks/results/memory-context.*).
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _rss() -> int:
    from lfmc.bench import peak_rss_bytes

    return peak_rss_bytes()


def _rss_now() -> int:
    from lfmc.bench import rss_bytes

    return rss_bytes()


def child_lfmc(a: dict) -> dict:
    import numpy as np

    if a.get("empty"):
        from lfmc.runtime.drivers import get_driver

        get_driver("cpu")                                 # imports numpy and the TVM runtime, as an engine would
        return {"peak_rss": _rss(), "rss": _rss_now()}
    from lfmc.runtime import Engine

    n, steps = int(a["context"]), int(a["steps"])
    eng = Engine(a["artifact"], max_batch=1, max_context=n + 3 * steps + 2)
    s = eng.new_sequence()
    eng.prefill(s, [1])
    eng._seqs[s].length = n            # benchmark only: advance to N over a synthetic history; same work per step
    rng = np.random.default_rng(0)
    for name, spec in eng.plan["state"].items():
        if spec["kind"] == "kv":       # write the history, so that its pages are resident as after a real prefill
            eng.state[name][eng._seqs[s].slot, :n] = rng.standard_normal(eng.state[name].shape[2:], np.float32)
    tok = 1
    times = []
    for _ in range(3):
        t = time.perf_counter()
        for _ in range(steps):
            tok = int(np.argmax(eng.decode([s], [tok])[0]))
        times.append(time.perf_counter() - t)
    return {"decode_tps": steps / statistics.median(times), "peak_rss": _rss(), "rss": _rss_now(),
            "memory": eng.memory_bytes()}


def cpu_info() -> dict:
    from lfmc.targets.host import cpu_info as info

    return info()


def transformer_shape(preset: str) -> dict:
    """The Llama config of the same size as ``preset``: its hidden size, layers, heads, head_dim, SwiGLU width
    and vocabulary, every layer attention."""
    from lfmc.frontend.config import dense_ff_width
    from lfmc.frontend.presets import preset as get

    p = get(preset)
    c = p["config"]
    hd = c.get("head_dim") or c["hidden_size"] // c["num_attention_heads"]
    ff = c["intermediate_size"] if p["architecture"] == "Lfm3ForCausalLM" else dense_ff_width(c)
    return {"vocab_size": c["vocab_size"], "hidden_size": c["hidden_size"], "intermediate_size": ff,
            "num_hidden_layers": c["num_hidden_layers"], "num_attention_heads": c["num_attention_heads"],
            "num_key_value_heads": c["num_key_value_heads"], "head_dim": hd, "max_position_embeddings": 65536,
            "rope_theta": 1e6, "tie_word_embeddings": True, "rms_norm_eps": 1e-5}


def child_torch(a: dict) -> dict:
    import torch

    if a.get("empty"):
        return {"peak_rss": _rss(), "rss": _rss_now()}
    from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    torch.set_num_threads(int(a.get("threads") or torch.get_num_threads()))
    dt = torch.bfloat16 if a.get("dtype") == "f16" else torch.float32
    torch.set_default_dtype(dt)
    cfg = LlamaConfig(**transformer_shape(a["preset"]))
    model = LlamaForCausalLM(cfg).eval()
    n, steps = int(a["context"]), int(a["steps"])
    params = sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        cache = DynamicCache()
        for layer in range(cfg.num_hidden_layers):
            k = torch.randn(1, cfg.num_key_value_heads, n, cfg.head_dim, dtype=dt)
            cache.update(k, torch.randn_like(k), layer)
        tok = torch.tensor([[1]])
        times = []
        pos = n
        for _ in range(3):
            t = time.perf_counter()
            for _ in range(steps):
                out = model(tok, past_key_values=cache, use_cache=True, position_ids=torch.tensor([[pos]]))
                tok = out.logits[:, -1:].argmax(-1)
                pos += 1
            times.append(time.perf_counter() - t)
    return {"decode_tps": steps / statistics.median(times), "peak_rss": _rss(), "rss": _rss_now(),
            "parameters": params}


def run(kind: str, **kw) -> dict:
    r = subprocess.run([sys.executable, __file__, "--child", json.dumps({"kind": kind, **kw})],
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{kind} child failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="lfm2-350m")
    ap.add_argument("--dtype", default="f32", choices=("f32", "f16"),
                    help="f16: lfmc f16 weights and KV cache, PyTorch bfloat16")
    ap.add_argument("--contexts", default="512,2048,8192,32768")
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--build", default="build/memctx")
    ap.add_argument("--out", default=None, help="default benchmarks/results/memory-context[-PRESET-DTYPE].json")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        c = json.loads(a.child)
        print(json.dumps(child_lfmc(c) if c.pop("kind") == "lfmc" else child_torch(c)))
        return 0
    from lfmc.compile import compile_model, load_source

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from compare import compiled

    ctxs = [int(x) for x in a.contexts.split(",")]
    tag = "" if (a.preset, a.dtype) == ("lfm2-350m", "f32") else f"-{a.preset}-{a.dtype}"
    a.out = a.out or f"benchmarks/results/memory-context{tag}.json"
    art = Path(a.build) / f"{a.preset}-{a.dtype}-ctx{max(ctxs) + 3 * a.steps + 2}.host"

    def build() -> None:
        t = time.perf_counter()
        opts = {"dtype": "f16", "kv_dtype": "f16"} if a.dtype == "f16" else {}
        compile_model(load_source(a.preset), art, max_batch=1, max_context=max(ctxs) + 3 * a.steps + 2, **opts)
        print(f"compiled {a.preset} in {time.perf_counter() - t:.0f} s -> {art}", flush=True)

    compiled(art, build)                               # rebuilt when the compiler sources changed
    empty = {"lfmc": run("lfmc", empty=True)["peak_rss"], "torch": run("torch", empty=True)["peak_rss"]}
    rows = []
    for n in ctxs:
        lf = run("lfmc", artifact=str(art), context=n, steps=a.steps)
        pt = run("torch", context=n, steps=a.steps, preset=a.preset, dtype=a.dtype)
        rows.append({"context": n, "lfmc": lf, "torch": pt})
        print(f"context {n:>6}: lfmc {lf['decode_tps']:6.1f} tok/s, peak {lf['peak_rss'] / 2**20:7.0f} MiB | "
              f"PyTorch transformer {pt['decode_tps']:6.1f} tok/s, peak {pt['peak_rss'] / 2**20:7.0f} MiB", flush=True)
    print(f"\nempty processes: lfmc runtime {empty['lfmc'] / 2**20:.0f} MiB, torch {empty['torch'] / 2**20:.0f} MiB")
    print(f"{'context':>8} {'lfmc tok/s':>11} {'torch tok/s':>12} {'lfmc peak':>10} {'torch peak':>11} "
          f"{'lfmc RSS':>9} {'torch RSS':>10} {'lfmc state':>11}   (MiB; RSS = resident after decoding)")
    for r in rows:
        lf, pt = r["lfmc"], r["torch"]
        print(f"{r['context']:>8} {lf['decode_tps']:>11.1f} {pt['decode_tps']:>12.1f} {lf['peak_rss'] / 2**20:>10.0f} "
              f"{pt['peak_rss'] / 2**20:>11.0f} {lf['rss'] / 2**20:>9.0f} {pt['rss'] / 2**20:>10.0f} "
              f"{lf['memory']['state'] / 2**20:>11.0f}")
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"preset": a.preset, "dtype": a.dtype, "steps": a.steps, "empty": empty, "rows": rows,
                               "cpu": cpu_info(),
                               "command": " ".join(sys.argv)}, indent=1) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing: no plot")
        return 0
    fig, ax = plt.subplots(1, 2, figsize=(12, 4.5))
    xs = [r["context"] for r in rows]
    ts = transformer_shape(a.preset)
    grow = sum(1 for s_ in json.loads((art / "manifest.json").read_text())["plan"]["state"].values()
               if "C" in s_["shape"]) // 2
    for side, label, style in (("lfmc", f"lfmc {a.preset} ({grow} of {ts['num_hidden_layers']} layers grow a cache)",
                                "o-"),
                               ("torch", f"PyTorch eager, same-size transformer ({ts['num_hidden_layers']} of "
                                         f"{ts['num_hidden_layers']})", "s--")):
        ax[0].plot(xs, [r[side]["rss"] / 2**30 for r in rows], style, label=label)
        ax[1].plot(xs, [r[side]["decode_tps"] for r in rows], style, label=label)
    for i, (t, y) in enumerate((("memory", "GiB resident after decoding (RSS)"), ("decode speed", "tokens/s"))):
        ax[i].set_xscale("log", base=2)
        ax[i].set_xlabel("context (tokens)")
        ax[i].set_ylabel(y)
        ax[i].set_title(t)
        ax[i].grid(alpha=0.3)
    ax[0].legend(fontsize=8)
    fig.suptitle(f"memory and decode speed vs context, {'16-bit' if a.dtype == 'f16' else 'float32'}, "
                 f"{cpu_info()['cpus']} threads, this machine")
    fig.tight_layout()
    png = out.with_suffix(".png")
    fig.savefig(png, dpi=110)
    print(f"wrote {out}, {png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
