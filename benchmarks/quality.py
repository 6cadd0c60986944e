"""Quantization quality on trained weights: lfmc's formats against llama.cpp's, perplexity and KL divergence on
held-out text, each system against its own float base, identical token ids over identical windows.

    .venv/bin/python benchmarks/train_lfm2.py --out build/trained/lfm2-stdlib       # once: about 20 minutes
    benchmarks/build_llama_cpp.sh                                                     # once: about 15 minutes
    .venv/bin/python benchmarks/quality.py --model build/trained/lfm2-stdlib         # about 15 minutes

The windows are llama-perplexity's: the text's token ids (BOS first when the vocabulary adds one) cut into
``--chunks`` chunks of ``--ctx`` tokens, each chunk's first token replaced by BOS, and the second half of each
chunk scored (the logits at positions ctx/2 .. ctx-2 predict the next token). lfmc computes them with its compiled
host artifact (the chunk's first half in one prefill, then one decode step per position, several chunks batched);
llama.cpp with ``llama-perplexity -c CTX --chunks N`` (its base: F16, ``--kl-divergence-base``; each quantized
file with ``--kl-divergence``). Before anything is scored, llama.cpp's own tokenizer (llama_cpp in the peer's
environment, on the F32 GGUF) must give exactly lfmc's ids for the whole text.

lfmc's rows: its base (f32) and every precision it compiles (f16, bf16, q8, q8g32, q4g32, W8A8 = q8 / q8g32 with
int8 activations, W4A8 = q4g32 with int8 activations, float32 weights with the KV cache in f16 or int8), and the
artifacts imported from llama.cpp's own Q8_0, Q4_0 and Q4_K_M files (``lfmc import x.gguf``: Q8_0 / Q4_0 blocks
kept bit for bit, Q4_K_M dequantized). KL is KL(base || row) per scored position, averaged. llama.cpp's KV-cache row
runs its F16 file with ``-ctk q8_0 -ctv q8_0 -fa on`` against its F16 base. Writes ``--out`` (JSON with every
figure and the CPU) and prints the pairs the issue asks about.
"""
from __future__ import annotations

import argparse
import json
import math
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import llamacpp_peer as llama_cpp  # noqa: E402

# lfmc rows: name -> (source: "hf" or a GGUF type, compile options)
LFMC_ROWS = {
    "f32": ("hf", {}),
    "f16": ("hf", {"dtype": "f16"}),
    "bf16": ("hf", {"dtype": "bf16"}),
    "q8": ("hf", {"quant": "q8"}),
    "q8g32": ("hf", {"quant": "q8g32"}),
    "q4g32": ("hf", {"quant": "q4g32"}),
    "W8A8 (q8)": ("hf", {"quant": "q8", "act_quant": "i8"}),
    "W8A8 (q8g32)": ("hf", {"quant": "q8g32", "act_quant": "i8"}),
    "W4A8 (q4g32)": ("hf", {"quant": "q4g32", "act_quant": "i8"}),
    "GGUF Q8_0 (kept)": ("Q8_0", {}),
    "GGUF Q8_0 (kept) + A8": ("Q8_0", {"act_quant": "i8"}),
    "GGUF Q4_0 (kept)": ("Q4_0", {}),
    "GGUF Q4_0 (kept) + A8": ("Q4_0", {"act_quant": "i8"}),
    "GGUF Q4_K_M (dequantized)": ("Q4_K_M", {}),
    "GGUF Q4_K_M -> q4g32": ("Q4_K_M", {"quant": "q4g32"}),
    # the KV cache stored narrow (--kv-dtype), the weights float32
    "f32 + KV f16": ("hf", {"kv_dtype": "f16"}),
    "f32 + KV i8": ("hf", {"kv_dtype": "i8"}),
}
LLAMA_TYPES = ["F16", "Q8_0", "Q4_0", "Q4_K_M"]
# llama.cpp rows with its KV cache quantized: name -> (GGUF type, llama-perplexity arguments), against the F16 base
# (whose KV cache is f16, llama.cpp's default); a quantized V cache needs flash attention
LLAMA_KV_ROWS = {"F16 + KV q8_0": ("F16", ["-ctk", "q8_0", "-ctv", "q8_0", "-fa", "on"])}
# the pairs the table is about: (lfmc row, llama.cpp type)
PAIRS = [("q8g32", "Q8_0"), ("GGUF Q8_0 (kept)", "Q8_0"), ("q4g32", "Q4_0"), ("GGUF Q4_0 (kept)", "Q4_0"),
         ("W4A8 (q4g32)", "Q4_0"), ("GGUF Q4_0 (kept) + A8", "Q4_0"), ("GGUF Q4_K_M (dequantized)", "Q4_K_M"),
         ("GGUF Q4_K_M -> q4g32", "Q4_K_M"), ("f32 + KV i8", "F16 + KV q8_0")]


def windows(ids: list[int], ctx: int, chunks: int, bos: int | None) -> list[list[int]]:
    """llama-perplexity's chunks: ``chunks`` windows of ``ctx`` ids, the first of each replaced by BOS."""
    n = min(chunks, len(ids) // ctx)
    out = []
    for c in range(n):
        w = list(ids[c * ctx:(c + 1) * ctx])
        if bos is not None:
            w[0] = bos
        out.append(w)
    return out


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def score_lfmc(art: Path, wins: list[list[int]], batch: int) -> np.ndarray:
    """Log-probabilities [chunks, ctx - 1 - ctx/2, vocab] at the scored positions, from the compiled artifact."""
    from lfmc.runtime import Engine

    eng = Engine(art)
    ctx = len(wins[0])
    first = ctx // 2
    out = []
    for b in range(0, len(wins), batch):
        group = wins[b:b + batch]
        seqs = [eng.new_sequence() for _ in group]
        rows = [[eng.prefill(s, w[:first + 1])] for s, w in zip(seqs, group)]
        for j in range(first + 1, ctx - 1):
            lg = eng.decode(seqs, [w[j] for w in group])
            for r, row in zip(rows, lg):
                r.append(row)
        for s in seqs:
            eng.release(s)
        out.extend(log_softmax(np.stack(r)) for r in rows)
    return np.stack(out)


def nll_ppl(lp: np.ndarray, wins: list[list[int]]) -> tuple[float, float]:
    """(mean NLL, perplexity) of the scored positions' next tokens."""
    first = len(wins[0]) // 2
    tgt = np.array([w[first + 1:] for w in wins])
    nll = -np.take_along_axis(lp, tgt[..., None], -1)[..., 0]
    return float(nll.mean()), float(math.exp(nll.mean()))


def ln_ratio(base: np.ndarray, lp: np.ndarray, wins: list[list[int]]) -> tuple[float, float]:
    """ln(PPL(row) / PPL(base)) and its standard error over the scored positions (llama-perplexity's statistic)."""
    first = len(wins[0]) // 2
    tgt = np.array([w[first + 1:] for w in wins])[..., None]
    d = (np.take_along_axis(base, tgt, -1) - np.take_along_axis(lp, tgt, -1)).reshape(-1)
    return float(d.mean()), float(d.std(ddof=1) / np.sqrt(len(d)))


def kl(base: np.ndarray, lp: np.ndarray) -> float:
    """Mean over positions of KL(base || row)."""
    return float((np.exp(base) * (base - lp)).sum(-1).mean())


def same_top(base: np.ndarray, lp: np.ndarray) -> float:
    return float((base.argmax(-1) == lp.argmax(-1)).mean())


def llama_tokenize(d: Path, gguf: Path, text: Path) -> list[int]:
    """llama.cpp's ids for the text (its tokenizer, through llama_cpp in the peer's environment), BOS as it adds."""
    code = ("import json, sys, llama_cpp; m = llama_cpp.Llama(model_path=sys.argv[1], vocab_only=True, "
            "verbose=False); print(json.dumps(m.tokenize(open(sys.argv[2], 'rb').read(), add_bos=True)))")
    r = subprocess.run([str(d / "venv" / "bin" / "python"), "-c", code, str(gguf), str(text)], capture_output=True,
                       text=True)
    if r.returncode != 0:
        raise RuntimeError(f"llama_cpp tokenize failed: {r.stderr[-2000:]}")
    return json.loads(r.stdout)


def llama_perplexity(d: Path, gguf: Path, text: Path, ctx: int, chunks: int, base: Path, kl_mode: bool,
                     threads: int, extra: list[str] = ()) -> dict:
    cmd = [str(d / "bin" / "llama-perplexity"), "-m", str(gguf), "-f", str(text), "-c", str(ctx), "--chunks",
           str(chunks), "-t", str(threads), "--kl-divergence-base", str(base), *extra]
    if kl_mode:
        cmd.append("--kl-divergence")
    r = subprocess.run(cmd, capture_output=True, text=True)
    log = r.stdout + r.stderr
    if r.returncode != 0:
        raise RuntimeError(f"llama-perplexity failed ({r.returncode}): {log[-3000:]}")
    num = r"([-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)"

    def grab(label: str, err: bool = False) -> float | None:
        m = re.search(re.escape(label) + r"\s*:\s*" + num + r"(?:\s*±\s*" + num + ")?", log)
        return None if not m else (float(m.group(2)) if m.group(2) else None) if err else float(m.group(1))

    if not kl_mode:
        m = re.search(r"Final estimate: PPL = " + num, log)
        return {"ppl": float(m.group(1)) if m else None, "log_tail": log[-1500:]}
    return {"ppl": grab("Mean PPL(Q)"), "ppl_base": grab("Mean PPL(base)"), "kl": grab("Mean    KLD"),
            "ln_ratio": grab("Mean ln(PPL(Q)/PPL(base))"), "ln_ratio_err": grab("Mean ln(PPL(Q)/PPL(base))", True),
            "same_top_pct": grab("Same top p"), "log_tail": log[-1500:]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="an HF checkpoint from benchmarks/train_lfm2.py (with heldout.txt)")
    ap.add_argument("--llama-cpp", default=None, help="llama.cpp build (default $LFMC_LLAMA_CPP_DIR or ~/.cache/...)")
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--chunks", type=int, default=40)
    ap.add_argument("--batch", type=int, default=8, help="chunks lfmc decodes side by side")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rows", default=None, help="comma-separated lfmc rows (default: all)")
    ap.add_argument("--work", default="build/quality")
    ap.add_argument("--out", default="benchmarks/results/quality.json")
    a = ap.parse_args()
    from lfmc.compile import compile_model
    from lfmc.frontend import import_hf_dir
    from lfmc.frontend.gguf import import_gguf
    from lfmc.targets.host import cpu_info

    model = Path(a.model)
    text = model / "heldout.txt"
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    d = llama_cpp.find(a.llama_cpp)
    if d is None:
        print("llama.cpp is not built: run benchmarks/build_llama_cpp.sh first", file=sys.stderr)
        return 2
    ggufs = {t: llama_cpp.gguf(d, model, t) for t in ["F32"] + LLAMA_TYPES}
    hf = import_hf_dir(model)
    from tokenizers import Tokenizer

    ours = Tokenizer.from_str(hf.tokenizer).encode(text.read_text(encoding="utf-8")).ids
    theirs = llama_tokenize(d, ggufs["F32"], text)
    bos = hf.provenance["config"].get("bos_token_id")
    add_bos = bool(theirs) and theirs[0] == bos and (not ours or ours[0] != bos)
    ids = ([bos] if add_bos else []) + ours
    if ids != theirs:
        k = next((i for i, (x, y) in enumerate(zip(ids, theirs)) if x != y), min(len(ids), len(theirs)))
        raise SystemExit(f"lfmc and llama.cpp tokenize the held-out text differently: first difference at id {k} "
                         f"(lfmc {ids[k:k + 8]}, llama.cpp {theirs[k:k + 8]}; lengths {len(ids)} / {len(theirs)})")
    wins = windows(ids, a.ctx, a.chunks, bos if add_bos else None)
    print(f"{len(ids)} tokens (same ids in both), {len(wins)} chunks of {a.ctx}, {len(wins) * (a.ctx - 1 - a.ctx // 2)}"
          f" scored positions; BOS {'added' if add_bos else 'not added'}", flush=True)
    results: dict = {"cpu": cpu_info(), "model": str(model), "ctx": a.ctx, "chunks": len(wins),
                     "scored": len(wins) * (a.ctx - 1 - a.ctx // 2), "lfmc": {}, "llama.cpp": {},
                     "command": " ".join(sys.argv), "train_log": json.loads((model / "train_log.json").read_text())
                     if (model / "train_log.json").exists() else None}
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        out.write_text(json.dumps({k: v for k, v in results.items()}, indent=1))

    # llama.cpp: its F16 base, then each quantized file against it
    base_file = work / "llama-f16.kld"
    r = llama_perplexity(d, ggufs["F16"], text, a.ctx, len(wins), base_file, False, a.threads)
    results["llama.cpp"]["F16"] = r
    print(f"llama.cpp F16: PPL {r['ppl']}", flush=True)
    for t in LLAMA_TYPES[1:]:
        r = llama_perplexity(d, ggufs[t], text, a.ctx, len(wins), base_file, True, a.threads)
        results["llama.cpp"][t] = r
        print(f"llama.cpp {t}: PPL {r['ppl']}, KL {r['kl']}, same top {r['same_top_pct']}%", flush=True)
        save()
    for name, (t, extra) in LLAMA_KV_ROWS.items():
        r = llama_perplexity(d, ggufs[t], text, a.ctx, len(wins), base_file, True, a.threads, extra)
        results["llama.cpp"][name] = r
        print(f"llama.cpp {name}: PPL {r['ppl']}, KL {r['kl']}, same top {r['same_top_pct']}%", flush=True)
        save()
    # lfmc: its f32 base, then every row against it
    rows = a.rows.split(",") if a.rows else list(LFMC_ROWS)
    if "f32" not in rows:
        rows = ["f32"] + rows
    sources: dict = {"hf": hf}
    base = None
    for name in rows:
        src, opts = LFMC_ROWS[name]
        if src not in sources:
            sources[src] = import_gguf(ggufs[src])
        t0 = time.perf_counter()
        art = compile_model(sources[src], work / ("lfmc-" + re.sub(r"[^A-Za-z0-9]+", "-", name)), max_batch=a.batch,
                            max_context=a.ctx, prefill_chunk=a.ctx, **opts)
        lp = score_lfmc(art, wins, a.batch)
        nll, ppl = nll_ppl(lp, wins)
        if base is None:
            base = lp
        lr, lre = ln_ratio(base, lp, wins)
        row = {"ppl": ppl, "nll": nll, "kl": kl(base, lp), "same_top_pct": 100 * same_top(base, lp),
               "ln_ratio": lr, "ln_ratio_err": lre,
               "options": opts, "source": src, "seconds": round(time.perf_counter() - t0, 1)}
        if src != "hf":
            row["gguf"] = sources[src].provenance["gguf"]
        results["lfmc"][name] = row
        print(f"lfmc {name}: PPL {ppl:.4f}, KL {row['kl']:.6f}, same top {row['same_top_pct']:.2f}% "
              f"({row['seconds']} s)", flush=True)
        save()
    lb, cb = results["lfmc"]["f32"]["ppl"], results["llama.cpp"]["F16"]["ppl"]
    print(f"\nbases: lfmc f32 PPL {lb:.4f}; llama.cpp F16 PPL {cb:.4f}")
    print(f"{'lfmc row':<28}{'dPPL %':>16}{'KL':>10}   {'llama.cpp':<8}{'dPPL %':>16}{'KL':>10}   no worse?")
    pairs = []
    for ours_name, t in PAIRS:
        if ours_name not in results["lfmc"]:
            continue
        o, c = results["lfmc"][ours_name], results["llama.cpp"][t]
        od, cd = 100 * (o["ppl"] / lb - 1), 100 * (c["ppl"] / cb - 1)
        oe, ce = 100 * o["ln_ratio_err"], 100 * (c.get("ln_ratio_err") or 0.0)
        strict = od <= cd + 1e-9 and o["kl"] <= c["kl"] + 1e-12
        # within noise: the dPPL difference under two standard errors of the two estimates together
        noise = o["kl"] <= c["kl"] + 1e-12 and od <= cd + 2 * float(np.hypot(oe, ce))
        pairs.append({"lfmc": ours_name, "llama.cpp": t, "lfmc_dppl_pct": od, "lfmc_dppl_err_pct": oe,
                      "llama_dppl_pct": cd, "llama_dppl_err_pct": ce, "lfmc_kl": o["kl"], "llama_kl": c["kl"],
                      "no_worse": strict, "no_worse_within_noise": noise})
        verdict = "yes" if strict else "within noise" if noise else "NO"
        print(f"{ours_name:<28}{od:>8.3f} ±{oe:>6.3f}{o['kl']:>10.5f}   {t:<8}{cd:>8.3f} ±{ce:>6.3f}{c['kl']:>10.5f}"
              f"   {verdict}")
    results["pairs"] = pairs
    act = {}
    for a8, w in (("W8A8 (q8)", "q8"), ("W8A8 (q8g32)", "q8g32"), ("W4A8 (q4g32)", "q4g32")):
        if a8 in results["lfmc"] and w in results["lfmc"]:
            act[a8] = 100 * (results["lfmc"][a8]["ppl"] / results["lfmc"][w]["ppl"] - 1)
            print(f"{a8}: PPL {act[a8]:+.3f}% against weight-only {w} (goal: within 1%)")
    results["int8_activation_cost_pct"] = act
    save()
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
