"""Memory and decode speed against context length: lfmc's LFM2 / LFM3 vs a transformer of the same size in PyTorch,
and vs llama.cpp on the same model.

    .venv/bin/python benchmarks/memory_context.py                       # LFM2-350M, contexts 512 ... 32k
    .venv/bin/python benchmarks/memory_context.py --preset lfm3-1.7b --dtype f16    # LFM3-1.7B, 16-bit
    .venv/bin/python benchmarks/memory_context.py --contexts 8192,32768 --kv-dtype f16 --llama-cpp --no-torch

``--llama-cpp`` adds ``llama-bench -p 0 -n STEPS -d CONTEXT`` on the same weights (GGUF F32 / F16) with its KV
cache at lfmc's KV precision (``-ctk / -ctv``; lfmc's ``--kv-dtype i8`` against llama.cpp's q8_0 cache, with its
flash attention ``-fa on``, which a quantized V cache needs), and every lfmc row reports its efficiency: bytes read per step
(weights, plus the KV cache up to the context) / step time / the memory read bandwidth, probed just before and just
after that row's lfmc process (the higher of the two: this VM's bandwidth moves between phases within seconds), and
per sandwiched round inside the process (``--pairs``: probe, decode steps, probe, a few seconds in all; the probe
is the artifact's own read-peak kernel, Engine.measure_read_bandwidth; the median of the rounds' efficiencies,
each against the higher of its two probes).

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
            buf = eng.state[name]
            if buf.dtype == np.int8:   # int8 rows: codes, then a float32 scale in the last 4 bytes
                row = rng.integers(-127, 128, buf.shape[2:], dtype=np.int8)
                row[..., -4:] = np.full(row.shape[:-1] + (1,), 0.02, np.float32).view(np.int8)
            else:
                row = rng.standard_normal(buf.shape[2:], np.float32)
            buf[eng._seqs[s].slot, :n] = row
    tok = 1
    times = []
    for _ in range(3):
        t = time.perf_counter()
        for _ in range(steps):
            tok = int(np.argmax(eng.decode([s], [tok])[0]))
        times.append(time.perf_counter() - t)
    out = {"decode_tps": steps / statistics.median(times), "peak_rss": _rss(), "rss": _rss_now(),
           "memory": eng.memory_bytes()}
    # then (its peak recorded: the probe's buffer would count) sandwiched rounds: a bandwidth probe, `steps`
    # decode steps, a probe, so that each round's rate meets the bandwidth of the same few seconds. The probe is
    # the artifact's read-peak kernel (Engine.measure_read_bandwidth: TVM threads streaming 128 MiB as the GEMVs
    # stream their weights)
    out["paired"] = []
    for _ in range(int(a.get("pairs", 0))):
        eng._seqs[s].length = n
        before = eng.measure_read_bandwidth(128, reps=2)
        t = time.perf_counter()
        for _ in range(steps):
            tok = int(np.argmax(eng.decode([s], [tok])[0]))
        dt = time.perf_counter() - t
        out["paired"].append({"tps": steps / dt, "probe_before": before,
                              "probe_after": eng.measure_read_bandwidth(128, reps=2)})
    return out


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


LLAMA_KV = {"f32": "f32", "f16": "f16", "i8": "q8_0"}    # llama.cpp's cache type at each lfmc --kv-dtype


def _kv_bytes_per_position(art: Path) -> int:
    """Bytes of KV cache one position adds across the layers that grow one (a sliding window's ring does not)."""
    import numpy as np

    plan = json.loads((art / "manifest.json").read_text())["plan"]
    return sum(int(np.prod([d for d in s["shape"][2:]])) * np.dtype(s["dtype"]).itemsize
               for s in plan["state"].values() if s.get("kind") == "kv" and "C" in s["shape"] and "window" not in s)


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
    ap.add_argument("--kv-dtype", default=None, choices=("f32", "f16", "i8"),
                    help="lfmc's (and llama.cpp's) KV cache precision (default: that of --dtype; i8: llama.cpp's "
                         "q8_0 cache, with its flash attention)")
    ap.add_argument("--llama-cpp", nargs="?", const="", default=None, metavar="DIR",
                    help="also llama-bench at each context (built by benchmarks/build_llama_cpp.sh)")
    ap.add_argument("--llama-reps", type=int, default=1,
                    help="llama-bench repetitions per context (each fills the context first: minutes at 32k)")
    ap.add_argument("--no-torch", action="store_true", help="skip the PyTorch transformer")
    ap.add_argument("--seed", type=int, default=0, help="random weights' seed (lfmc and llama.cpp alike)")
    ap.add_argument("--contexts", default="512,2048,8192,32768")
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--pairs", type=int, default=5,
                    help="sandwiched rounds per lfmc row (probe, --steps decode steps, probe), after its timing: the "
                         "efficiency of each round against the bandwidth of the same seconds")
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
    kvd = a.kv_dtype or a.dtype
    tag = "" if (a.preset, a.dtype, kvd) == ("lfm2-350m", "f32", "f32") else \
        f"-{a.preset}-{a.dtype}" + (f"-kv{kvd}" if kvd != a.dtype else "")
    a.out = a.out or f"benchmarks/results/memory-context{tag}.json"
    art = Path(a.build) / f"{a.preset}-{a.dtype}-kv{kvd}-s{a.seed}-ctx{max(ctxs) + 3 * a.steps + 2}.host"

    def build() -> None:
        t = time.perf_counter()
        opts = {"dtype": "f16"} if a.dtype == "f16" else {}
        compile_model(load_source(a.preset, seed=a.seed), art, max_batch=1, max_context=max(ctxs) + 3 * a.steps + 2,
                      kv_dtype=kvd, **opts)
        print(f"compiled {a.preset} in {time.perf_counter() - t:.0f} s -> {art}", flush=True)

    compiled(art, build)                               # rebuilt when the compiler sources changed
    lc_dir = lc_model = None
    if a.llama_cpp is not None:
        import llamacpp_peer as llama_cpp

        lc_dir = llama_cpp.find(a.llama_cpp or None)
        if lc_dir is None:
            print("llama.cpp is not built (benchmarks/build_llama_cpp.sh): measuring without it", flush=True)
        else:
            hf = llama_cpp.save_hf(a.preset, a.seed, Path(a.build) / f"{a.preset}-s{a.seed}.hf")
            lc_model = llama_cpp.gguf(lc_dir, hf, "F16" if a.dtype == "f16" else "F32")
    from compare import stream_read_gbs, weights_bytes

    bw = stream_read_gbs()
    wbytes = weights_bytes(art)
    kv_per_pos = _kv_bytes_per_position(art)
    print(f"memory read bandwidth {bw:.1f} GB/s; weights {wbytes / 2**20:.0f} MiB, KV cache "
          f"{kv_per_pos / 1024:.1f} KiB per position ({kvd})", flush=True)
    empty = {"lfmc": run("lfmc", empty=True)["peak_rss"]}
    if not a.no_torch:
        empty["torch"] = run("torch", empty=True)["peak_rss"]
    rows = []
    for n in ctxs:
        before = stream_read_gbs(reps=3)
        lf = run("lfmc", artifact=str(art), context=n, steps=a.steps, pairs=a.pairs)
        # this VM's bandwidth flips between two phases within seconds: the row's efficiency is against the higher
        # of two probes taken just before and just after it (the conservative figure)
        lf["probe_gbs"] = max(before, stream_read_gbs(reps=3))
        lf["bytes_per_step"] = wbytes + kv_per_pos * n
        lf["efficiency"] = lf["bytes_per_step"] * lf["decode_tps"] / 1e9 / lf["probe_gbs"]
        # and per sandwiched round (probe, decode, probe within a few seconds), against the higher probe of each
        for p in lf["paired"]:
            p["efficiency"] = lf["bytes_per_step"] * p["tps"] / 1e9 / max(p["probe_before"], p["probe_after"])
        lf["efficiency_paired"] = statistics.median(p["efficiency"] for p in lf["paired"]) if lf["paired"] else None
        row = {"context": n, "lfmc": lf}
        line = (f"context {n:>6}: lfmc {lf['decode_tps']:6.1f} tok/s ({lf['efficiency']:.0%} of the "
                f"{lf['probe_gbs']:.1f} GB/s probed around it"
                + (f"; median of {len(lf['paired'])} sandwiched rounds {lf['efficiency_paired']:.0%}, each "
                   f"{min(p['efficiency'] for p in lf['paired']):.0%}-{max(p['efficiency'] for p in lf['paired']):.0%}"
                   if lf["paired"] else "") + f"), peak {lf['peak_rss'] / 2**20:7.0f} MiB")
        if lc_model is not None:
            try:
                row["llama.cpp"] = lc = llama_cpp.bench_depth(lc_dir, lc_model, n, a.steps, LLAMA_KV[kvd],
                                                              reps=a.llama_reps)
                line += f" | llama.cpp {lc['decode_tps']:6.1f} tok/s, peak {lc['peak_rss'] / 2**20:7.0f} MiB"
            except Exception as e:                     # a peer that fails is reported, not fatal
                row["llama.cpp"] = {"error": str(e)[-500:]}
                line += " | llama.cpp failed"
        if not a.no_torch:
            row["torch"] = pt = run("torch", context=n, steps=a.steps, preset=a.preset, dtype=a.dtype)
            line += f" | PyTorch transformer {pt['decode_tps']:6.1f} tok/s, peak {pt['peak_rss'] / 2**20:7.0f} MiB"
        rows.append(row)
        print(line, flush=True)
    print("\nempty processes: " + ", ".join(f"{k} {v / 2**20:.0f} MiB" for k, v in empty.items()))
    for r in rows:                                     # where lfmc's peak goes
        m, lf = r["lfmc"]["memory"], r["lfmc"]
        rest = lf["peak_rss"] - empty["lfmc"] - m["params"] - m["state"] - m["activations"]
        print(f"lfmc peak at {r['context']}: {lf['peak_rss'] / 2**20:.0f} MiB = empty process "
              f"{empty['lfmc'] / 2**20:.0f} + weights {m['params'] / 2**20:.0f} + state {m['state'] / 2**20:.0f} + "
              f"activations {m['activations'] / 2**20:.0f} + the rest (kernel libraries, Python objects; below zero "
              f"where activation pages were allocated but never touched) {rest / 2**20:.0f}")
    sides = ["lfmc"] + [k for k in ("llama.cpp", "torch") if k in rows[0]]
    print(f"{'context':>8} " + " ".join(f"{s_ + ' tok/s':>16} {s_ + ' peak':>15}" for s_ in sides)
          + f" {'lfmc/llama':>11} {'lfmc eff.':>10} {'paired':>7} {'lfmc state':>11}   (MiB)")
    def ok(r: dict, side: str) -> bool:
        return "decode_tps" in r.get(side, {})

    for r in rows:
        ratio = f"{r['lfmc']['decode_tps'] / r['llama.cpp']['decode_tps']:.2f}x" if ok(r, "llama.cpp") else "-"
        print(f"{r['context']:>8} " + " ".join(f"{r[s_]['decode_tps']:>16.1f} {r[s_]['peak_rss'] / 2**20:>15.0f}"
                                               if ok(r, s_) else f"{'failed':>16} {'-':>15}" for s_ in sides)
              + f" {ratio:>11} {r['lfmc']['efficiency']:>10.0%} {r['lfmc']['efficiency_paired'] or 0:>7.0%}"
              + f" {r['lfmc']['memory']['state'] / 2**20:>11.0f}")
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"preset": a.preset, "dtype": a.dtype, "kv_dtype": kvd, "steps": a.steps,
                               "bandwidth_gbs": bw, "weights_bytes": wbytes, "kv_bytes_per_position": kv_per_pos,
                               "empty": empty, "rows": rows, "cpu": cpu_info(),
                               "command": " ".join(sys.argv)}, indent=1) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing: no plot")
        return 0
    fig, ax = plt.subplots(1, 2, figsize=(12, 4.5))
    ts = transformer_shape(a.preset)
    grow = sum(1 for s_ in json.loads((art / "manifest.json").read_text())["plan"]["state"].values()
               if "C" in s_["shape"]) // 2
    for side, label, style in (("lfmc", f"lfmc {a.preset} ({grow} of {ts['num_hidden_layers']} layers grow a cache)",
                                "o-"),
                               ("llama.cpp", f"llama.cpp, same model ({kvd} KV)", "^-."),
                               ("torch", f"PyTorch eager, same-size transformer ({ts['num_hidden_layers']} of "
                                         f"{ts['num_hidden_layers']})", "s--")):
        if side not in rows[0]:
            continue
        # resident memory after decoding (llama-bench reports only its peak)
        good = [r for r in rows if ok(r, side)]
        ax[0].plot([r["context"] for r in good], [r[side].get("rss", r[side]["peak_rss"]) / 2**30 for r in good],
                   style, label=label)
        ax[1].plot([r["context"] for r in good], [r[side]["decode_tps"] for r in good], style, label=label)
    for i, (t, y) in enumerate((("memory", "GiB resident (RSS; llama.cpp: peak)"), ("decode speed", "tokens/s"))):
        ax[i].set_xscale("log", base=2)
        ax[i].set_xlabel("context (tokens)")
        ax[i].set_ylabel(y)
        ax[i].set_title(t)
        ax[i].grid(alpha=0.3)
    ax[0].legend(fontsize=8)
    fig.suptitle(f"memory and decode speed vs context, {'16-bit' if a.dtype == 'f16' else 'float32'} weights, "
                 f"{kvd} KV, {cpu_info()['cpus']} threads, this machine")
    fig.tight_layout()
    png = out.with_suffix(".png")
    fig.savefig(png, dpi=110)
    print(f"wrote {out}, {png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
