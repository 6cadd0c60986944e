"""Expert pruning judged on a model that routes: held-out perplexity and top-1 agreement vs weight bytes.

    .venv/bin/python benchmarks/train_moe.py --out build/moe-trained      # once (about 10 minutes)
    .venv/bin/python benchmarks/moe_pruning.py --model build/moe-trained

Imports the trained checkpoint with lfmc, calibrates it on training text (``lfmc calibrate``'s statistics), then
for each number of kept experts per MoE layer prunes with frequency-based, mass-based and random selection (random:
the mean of three seeds), with frequency selection plus merging, and with the same bytes as a budget that the
pass spreads over the layers by routing mass (layers get different counts), and runs the reference interpreter on held-out
text: perplexity per byte, and how often the pruned model's top-1 next byte equals the unpruned model's. Prints a
table, writes JSON and a PNG plot (default benchmarks/results/moe-pruning.{json,png}).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lfmc.frontend import import_source  # noqa: E402
from lfmc.ir.interp import Interpreter  # noqa: E402
from lfmc.passes.calibrate import calibrate  # noqa: E402
from lfmc.passes.prune_experts import prune_experts, weight_bytes  # noqa: E402


def evaluate(model, seqs: list[np.ndarray], ref_top1: list[np.ndarray] | None = None) -> dict:
    """Perplexity per byte over ``seqs`` and, given the unpruned model's argmaxes, top-1 agreement."""
    it = Interpreter(model.graph, model.weights)
    nll, n, agree, tops = 0.0, 0, 0, []
    for i, s in enumerate(seqs):
        logits = it.run(s[:-1], it.new_state()).astype(np.float64)
        logz = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
        nll += float((logz - logits[np.arange(len(s) - 1), s[1:]]).sum())
        n += len(s) - 1
        top = logits.argmax(-1)
        tops.append(top)
        if ref_top1 is not None:
            agree += int((top == ref_top1[i]).sum())
    return {"perplexity": float(np.exp(nll / n)), "top1_agreement": agree / n if ref_top1 is not None else 1.0,
            "tops": tops}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="build/moe-trained")
    ap.add_argument("--keep", default="8,6,4,3,2", help="experts kept per MoE layer")
    ap.add_argument("--calib-tokens", type=int, default=16384)
    ap.add_argument("--eval-tokens", type=int, default=8192)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--out", default=None, help="JSON output (default benchmarks/results/moe-pruning.json)")
    a = ap.parse_args()
    root = Path(a.model)
    model = import_source(str(root))
    train = np.frombuffer((root / "train.txt").read_bytes(), np.uint8).astype(np.int64)
    held = np.frombuffer((root / "heldout.txt").read_bytes(), np.uint8).astype(np.int64)[: a.eval_tokens + 1]
    rng = np.random.default_rng(0)
    starts = np.sort(rng.integers(0, len(train) - a.seq, a.calib_tokens // a.seq))
    cal = calibrate(model, np.concatenate([train[s:s + a.seq] for s in starts]), a.seq)
    print(f"calibrated on {cal['tokens']} training bytes; routing (share of picks per expert):")
    skew = {}
    for name, st in cal["layers"].items():
        f = np.asarray(st["frequency"]) / sum(st["frequency"])
        skew[name] = float(f.max() / max(f.min(), 1e-12))
        print(f"  %{name}: " + " ".join(f"{x:.3f}" for x in f) + f"   max/min {skew[name]:.1f}")
    seqs = [held[i:i + a.seq + 1] for i in range(0, len(held) - a.seq, a.seq)]
    full = evaluate(model, seqs)
    full_bytes = sum(weight_bytes(model.graph).values())
    print(f"unpruned: perplexity {full['perplexity']:.3f} per byte, {full_bytes / 1e6:.2f} MB of weights")
    rows = []
    methods = [("frequency", {"select": "frequency"}), ("mass", {"select": "mass"}),
               ("merge (frequency)", {"select": "frequency", "merge": True}), ("random", {"select": "random"}),
               ("mass, per-layer counts", {"select": "mass", "budget": True})]
    E = max(n.attrs["num_experts"] for n in model.graph.nodes if n.op == "moe")
    for k in [int(x) for x in a.keep.split(",")]:
        for label, opts in methods:
            seeds = (0, 1, 2) if label == "random" else (0,)
            res = []
            for sd in seeds:
                o = dict(opts)
                if o.pop("budget", False):          # the same bytes as k per layer, spread by routing mass
                    uniform = prune_experts.run(model, {"experts_keep": k, "calibration": cal["layers"]})
                    o["max_weight_bytes"] = sum(weight_bytes(uniform.graph).values())
                else:
                    o["experts_keep"] = k
                pm = prune_experts.run(model, {"calibration": cal["layers"], "seed": sd, **o})
                r = evaluate(pm, seqs, full["tops"])
                r["bytes"] = sum(weight_bytes(pm.graph).values())
                res.append(r)
            counts = [n.attrs["num_experts"] for n in pm.graph.nodes if n.op == "moe"]
            row = {"keep": k, "method": label, "bytes": res[0]["bytes"], "counts": counts,
                   "perplexity": float(np.mean([r["perplexity"] for r in res])),
                   "top1_agreement": float(np.mean([r["top1_agreement"] for r in res]))}
            rows.append(row)
            print(f"keep {k}/{E}  {label:<22} {row['bytes'] / 1e6:6.2f} MB  perplexity {row['perplexity']:.3f}  "
                  f"top-1 agreement {row['top1_agreement']:.3f}  experts per layer {counts}", flush=True)
    out = Path(a.out or Path(__file__).parent / "results" / "moe-pruning.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"model": str(root), "calibration_tokens": cal["tokens"], "eval_tokens": len(held) - 1,
                               "routing_max_over_min": skew, "unpruned": {"perplexity": full["perplexity"],
                                                                          "bytes": full_bytes},
                               "rows": rows, "command": " ".join(sys.argv)}, indent=1))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    for label, _ in methods:
        pts = [r for r in rows if r["method"] == label]
        xs = [r["bytes"] / 1e6 for r in pts]
        ax[0].plot(xs, [r["perplexity"] for r in pts], "o-", label=label)
        ax[1].plot(xs, [r["top1_agreement"] for r in pts], "o-", label=label)
    ax[0].axhline(full["perplexity"], color="gray", ls="--", label="unpruned")
    ax[0].set(xlabel="weight MB (float32)", ylabel="held-out perplexity per byte", title="perplexity vs weights")
    ax[1].set(xlabel="weight MB (float32)", ylabel="top-1 agreement with unpruned", title="agreement vs weights")
    for x in ax:
        x.grid(alpha=0.3)
        x.legend()
    fig.tight_layout()
    png = out.with_suffix(".png")
    fig.savefig(png, dpi=110)
    print(f"wrote {out} and {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
