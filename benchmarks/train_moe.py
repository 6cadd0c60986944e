"""Train a small LFM2-MoE that has learned to route, for judging expert pruning (random weights route uniformly).

    .venv/bin/python benchmarks/train_moe.py --out build/moe-trained [--steps 1500]

Corpus: the docstrings of the Python standard library's own sources (read with ``ast``, nothing imported),
files sorted by path, every tenth file held out. Byte-level tokens (vocabulary 256). Model: transformers'
``Lfm2MoeForCausalLM`` (hidden 128, 4 layers: one dense, three MoE with 8 experts of width 128, top-2, expert bias,
attention at layers 1 and 3), seeded, AdamW for a fixed number of steps (deterministic on a given machine and
thread count; about 15 minutes on 2 cores at the default), so the weights can be regenerated rather than
shipped. Writes an HF checkpoint directory (config.json + model.safetensors) that ``lfmc import`` reads, the
held-out text beside it, and ``train.json`` (loss curve, routing frequencies: the check that routing is far from
uniform).
"""
from __future__ import annotations

import argparse
import ast
import json
import sys
import sysconfig
import time
from pathlib import Path

import numpy as np

CONFIG = {
    "architectures": ["Lfm2MoeForCausalLM"], "model_type": "lfm2_moe", "vocab_size": 256, "hidden_size": 128,
    "intermediate_size": 384, "moe_intermediate_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4,
    "num_key_value_heads": 2, "layer_types": ["conv", "full_attention", "conv", "full_attention"],
    "num_experts": 8, "num_experts_per_tok": 2, "num_dense_layers": 1, "use_expert_bias": True,
    "norm_topk_prob": True, "routed_scaling_factor": 1.0, "max_position_embeddings": 2048, "norm_eps": 1e-5,
    "conv_L_cache": 3, "conv_bias": False, "tie_word_embeddings": True, "rope_theta": 1000000.0,
    "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "float32",
}


def corpus() -> tuple[bytes, bytes]:
    """(train, held-out) text: standard-library docstrings, every tenth file held out."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.rglob("*.py") if "site-packages" not in p.parts and "test" not in p.parts
                   and "tests" not in p.parts and "idlelib" not in p.parts)
    train, held = [], []
    for i, f in enumerate(files):
        try:
            tree = ast.parse(f.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError, OSError):
            continue
        docs = [ast.get_docstring(n) for n in ast.walk(tree)
                if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))]
        text = "\n\n".join(d for d in docs if d)
        if text:
            (held if i % 10 == 9 else train).append(text)
    return "\n\n".join(train).encode(), "\n\n".join(held).encode()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="build/moe-trained")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    import torch
    from safetensors.torch import save_file
    from transformers import Lfm2MoeConfig, Lfm2MoeForCausalLM

    torch.manual_seed(a.seed)
    torch.set_num_threads(2)
    train, held = corpus()
    print(f"corpus: {len(train):,} training bytes, {len(held):,} held out", flush=True)
    data = torch.from_numpy(np.frombuffer(train, np.uint8).astype(np.int64))
    model = Lfm2MoeForCausalLM(Lfm2MoeConfig(**CONFIG))
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=a.lr, total_steps=a.steps, pct_start=0.05)
    g = torch.Generator().manual_seed(a.seed)
    losses = []
    t0 = time.perf_counter()
    model.train()
    for step in range(a.steps):
        idx = torch.randint(0, len(data) - a.seq - 1, (a.batch,), generator=g)
        x = torch.stack([data[i:i + a.seq] for i in idx])
        loss = model(input_ids=x, labels=x).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(float(loss))
        if step % 100 == 0 or step == a.steps - 1:
            el = time.perf_counter() - t0
            print(f"step {step}/{a.steps} loss {np.mean(losses[-100:]):.3f}  {el / 60:.1f} min "
                  f"(ETA {el / (step + 1) * (a.steps - step - 1) / 60:.1f} min)", flush=True)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(CONFIG, indent=1))
    sd = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    if CONFIG["tie_word_embeddings"]:
        sd.pop("lm_head.weight", None)
    save_file(sd, str(out / "model.safetensors"))
    (out / "heldout.txt").write_bytes(held)
    (out / "train.txt").write_bytes(train)
    # routing on held-out text: how far from uniform
    model.eval()
    counts = {}
    hooks = []
    for i, layer in enumerate(model.model.layers):
        gate = getattr(getattr(layer, "feed_forward", None), "gate", None)
        if gate is None:
            continue

        def hook(mod, inp, outp, i=i):
            logits = outp if isinstance(outp, torch.Tensor) else outp[0]
            top = torch.topk(logits.sigmoid(), CONFIG["num_experts_per_tok"], dim=-1).indices
            counts[i] = counts.get(i, 0) + torch.bincount(top.flatten(), minlength=CONFIG["num_experts"]).numpy()
        hooks.append(gate.register_forward_hook(hook))
    with torch.no_grad():
        hx = torch.from_numpy(np.frombuffer(held[:8192], np.uint8).astype(np.int64)).view(-1, 256)
        hl = model(input_ids=hx, labels=hx).loss
    freq = {str(k): (v / v.sum()).round(4).tolist() for k, v in counts.items()}
    (out / "train.json").write_text(json.dumps({"steps": a.steps, "seconds": time.perf_counter() - t0,
                                                "loss": losses, "heldout_loss": float(hl),
                                                "routing_frequency": freq, "command": " ".join(sys.argv)},
                                               indent=1))
    print(f"held-out loss {float(hl):.3f} (perplexity {np.exp(float(hl)):.2f} per byte); routing (share of picks):")
    for k, f in freq.items():
        print(f"  layer {k}: " + " ".join(f"{x:.3f}" for x in f) + f"  (uniform {1 / CONFIG['num_experts']:.3f})")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
