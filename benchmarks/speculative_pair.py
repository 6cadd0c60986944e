"""Speculative decoding with a trained target / draft pair: the acceptance rate measured on held-out text, the
speed-up measured end to end, and the speed-up projected for the LFM2-350M and 1.2B shapes from that acceptance
and the verify cost measured at those shapes (random weights).

    .venv/bin/python benchmarks/train_lfm2.py --out build/trained/lfm2-stdlib                  # the target
    .venv/bin/python benchmarks/train_lfm2.py --out build/trained/lfm2-stdlib-draft --minutes 7 \\
        --hidden 128 --ff 256 --layers C,A,C --heads 2 --kv-heads 1                        # the draft, ~1/8
    .venv/bin/python benchmarks/speculative_pair.py --shapes lfm2-350m:f32,lfm2-350m:q4g32a8,lfm2-1.2b:q4g32a8

The pair: byte-level LFM2s trained by the same script on the same corpus (Python's standard library), read as HF
checkpoints (``lfmc import``) and compiled for the host at each ``--precisions``. Prompts: ``--prompts`` passages
of held-out code (``heldout.txt``, 400 bytes from the start of a line, seeded offsets); ``--steps`` tokens each.
Measured, alternating the methods within each round (medians over ``--rounds`` of tokens/s summed over the
prompts): plain greedy decoding; the draft model at fixed k = ``--k`` and with the adaptive draft length (what
users get); n-gram lookup (adaptive). Acceptance: accepted / drafted drafts at fixed k, greedy and sampled
(temperature 0.8, top-p 0.95). Costs: ``Engine.verify`` of 1 + k tokens in target decode steps, and a draft
decode step in target decode steps.

Projection at a shape, from the verify cost measured there: the pair's fixed-k runs replayed at that shape's
prices (their tokens over their calls: each verify at the shape's cost for that draft length, each plain step
one decode step, each draft step c target steps) and, for the draft model, the formula (1 - a^(k+1)) / (1 - a)
tokens per verify and k draft steps at the pair's greedy acceptance a, at the best k. c = the draft's share of
the bytes a step reads (``--draft-share``, default 0.1: a draft a tenth of the target's size, decode at the
bandwidth limit); 0 for n-gram lookup. The formula with the pair's own costs is printed beside its measured
speed-up, as a check of the model.
Writes JSON (default benchmarks/results/speculative_pair.json) with the CPU.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def prompts_from(heldout: Path, n: int, size: int = 400, seed: int = 0) -> list[bytes]:
    """``n`` passages of held-out text, each starting at a line start (seeded offsets)."""
    text = heldout.read_bytes()
    rng = np.random.default_rng(seed)
    out = []
    for off in sorted(rng.integers(0, len(text) - 4 * size, n)):
        start = text.index(b"\n", int(off)) + 1
        out.append(text[start:start + size])
    return out


def run_methods(t, methods: dict, prompts: list[list[int]], steps: int, rounds: int) -> dict:
    """Tokens/s of each method (sum over prompts; medians over rounds, methods alternating) and drafting counts."""
    rates: dict[str, list[float]] = {m: [] for m in methods}
    stats: dict[str, dict] = {}
    for rnd in range(rounds + 1):                              # round 0 warms up
        order = list(methods) if rnd % 2 else list(reversed(methods))
        for m in order:
            toks = secs = 0.0
            tot: dict[str, float] = {}
            for p in prompts:
                r = t.generate(p, steps, stop=[], **methods[m])
                toks += len(r.tokens) - 1
                secs += r.decode_s
                for k, v in (getattr(t, "last_speculation", None) or {}).items() if methods[m] else ():
                    tot[k] = tot.get(k, 0) + v
            if rnd:
                rates[m].append(toks / secs)
                stats[m] = tot
    plain = statistics.median(rates["plain"])
    out = {}
    for m in methods:
        st = stats.get(m, {})
        out[m] = {"tok_s": statistics.median(rates[m]), "speedup": statistics.median(rates[m]) / plain,
                  "acceptance": st["accepted"] / st["drafted"] if st.get("drafted") else None,
                  "tokens_per_verify": (st["accepted"] + st["verify_calls"]) / st["verify_calls"]
                  if st.get("verify_calls") else None, "totals": st}
    return out


def acceptance(t, d, prompts: list[list[int]], steps: int, k: int, **sampling) -> float:
    acc = drafted = 0
    for i, p in enumerate(prompts):
        t.generate(p, steps, stop=[], speculate=d, draft_k=k, adaptive=False, seed=i, **sampling)
        acc += t.last_speculation["accepted"]
        drafted += t.last_speculation["drafted"]
    return acc / drafted


def main() -> int:
    import compare
    from speculative import shape_artifact

    from lfmc.bench import format_verify_cost, project_speedup, replay_speedup, verify_cost
    from lfmc.compile import compile_model, load_source
    from lfmc.runtime import Engine

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", default="build/trained/lfm2-stdlib")
    ap.add_argument("--draft", default="build/trained/lfm2-stdlib-draft")
    ap.add_argument("--precisions", default="f32,q4g32a8")
    ap.add_argument("--prompts", type=int, default=6)
    ap.add_argument("--steps", type=int, default=96)
    ap.add_argument("--k", type=int, default=4, help="the fixed draft length measured (default 4)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--shapes", default="lfm2-350m:f32,lfm2-350m:q4g32a8",
                    help="PRESET:PRECISION list whose verify cost gives the projection (random weights)")
    ap.add_argument("--draft-share", type=float, default=0.1, help="a draft step in target steps at those shapes")
    ap.add_argument("--build", default="build/batched")
    ap.add_argument("--out", default="benchmarks/results/speculative_pair.json")
    a = ap.parse_args()
    tdir, ddir = Path(a.target), Path(a.draft)
    for d in (tdir, ddir):
        if not (d / "config.json").is_file():
            print(f"{d}: no HF checkpoint; train it first (see this script's docstring)", file=sys.stderr)
            return 2
    logs = {n: json.loads((d / "train_log.json").read_text()) for n, d in (("target", tdir), ("draft", ddir))}
    res: dict = {"cpu": compare.cpu_info(), "command": " ".join(sys.argv),
                 "models": {n: {"parameters": lg.get("parameters"), "heldout_loss": lg.get("heldout_loss"),
                                "config": {k: lg.get("args", {}).get(k) for k in ("hidden", "ff", "layers")}}
                            for n, lg in logs.items()}, "pair": [], "shapes": []}
    texts = prompts_from(tdir / "heldout.txt", a.prompts)
    ks = sorted({1, 2, 3, 4, 6, a.k})
    rate0 = None
    for prec in a.precisions.split(","):
        quant, dtype, _, _, act = compare.PRECISIONS[prec]
        arts = {}
        for name, src in (("target", tdir), ("draft", ddir)):
            arts[name] = Path(a.build) / f"trained-{src.name}-{prec}.host"
            compare.compiled(arts[name], lambda: compile_model(load_source(str(src)), arts[name], max_batch=4,
                                                               quant=quant, dtype=dtype, act_quant=act,
                                                               max_context=1024))
        t, d = Engine(arts["target"], max_batch=2), Engine(arts["draft"], max_batch=2)
        prompts = [t.encode(x.decode("utf-8", "replace")) for x in texts]
        c_t = verify_cost(t, ks)
        c_d = verify_cost(d, [1])["decode_s"] / c_t["decode_s"]
        a_greedy = acceptance(t, d, prompts, a.steps, a.k)
        a_sampled = acceptance(t, d, prompts, a.steps, a.k, temperature=0.8, top_p=0.95)
        methods = {"plain": {}, f"draft k={a.k}": {"speculate": d, "draft_k": a.k, "adaptive": False},
                   "draft adaptive": {"speculate": d, "draft_k": 6},
                   f"ngram k={a.k}": {"speculate": "ngram", "draft_k": a.k, "adaptive": False},
                   "ngram adaptive": {"speculate": "ngram"}}
        m = run_methods(t, methods, prompts, a.steps, a.rounds)
        row = {"precision": prec, "verify_cost": c_t, "draft_step": c_d, "acceptance_greedy": a_greedy,
               "acceptance_sampled": a_sampled, "measured": m,
               "model_check": {"projected_at_k": ((1 - a_greedy ** (a.k + 1)) / (1 - a_greedy) if a_greedy < 1
                                                  else a.k + 1.0) / (c_t["ratio"][str(a.k)] + a.k * c_d),
                               "measured_at_k": m[f"draft k={a.k}"]["speedup"]}}
        res["pair"].append(row)
        rate0 = rate0 or {"draft": a_greedy, "draft_run": m[f"draft k={a.k}"]["totals"],
                          "ngram_run": m[f"ngram k={a.k}"]["totals"]}
        print(f"pair {prec}: {format_verify_cost(c_t)}; a draft step {c_d:.2f} target steps", flush=True)
        print(f"  acceptance at k={a.k}: greedy {a_greedy:.2f}, sampled (T 0.8, top-p 0.95) {a_sampled:.2f}; "
              f"model predicts {row['model_check']['projected_at_k']:.2f}x at k={a.k}", flush=True)
        for name, x in m.items():
            extra = f", acceptance {x['acceptance']:.2f}, {x['tokens_per_verify']:.2f} tokens/verify" \
                if x["acceptance"] is not None else ""
            print(f"  {name:<16} {x['tok_s']:8.1f} tokens/s  {x['speedup']:.2f}x{extra}", flush=True)
        del t, d
    for shape in filter(None, a.shapes.split(",")):
        preset, prec = shape.split(":")
        e = Engine(shape_artifact(a.build, preset, prec), max_batch=1)
        c = verify_cost(e, ks)
        proj = {"draft_formula": project_speedup(c, rate0["draft"], a.draft_share),
                "draft_replay": replay_speedup(rate0["draft_run"], c, a.draft_share),
                "ngram_replay": replay_speedup(rate0["ngram_run"], c, 0.0)}
        res["shapes"].append({"preset": preset, "precision": prec, "verify_cost": c, "draft_share": a.draft_share,
                              "projected": proj})
        print(f"{preset} {prec}: {format_verify_cost(c)}\n  projected: draft model (acceptance "
              f"{rate0['draft']:.2f}, a draft step {a.draft_share} of a target step) {proj['draft_replay']:.2f}x "
              f"replaying the pair's k={a.k} run ({proj['draft_formula']['speedup']:.2f}x by the formula at its "
              f"best k={proj['draft_formula']['k']}); n-gram {proj['ngram_replay']:.2f}x replaying its k={a.k} run",
              flush=True)
        del e
    compare.write_results(a.out, res)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
