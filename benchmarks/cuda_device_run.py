"""The CUDA check on a lent GPU machine (PyTorch + CuPy + nvcc there, no TVM), as one prepared script.

Here (this machine, with TVM):

    .venv/bin/python benchmarks/cuda_device_run.py prepare --out build/cuda-carry

compiles lfm2-tiny, lfm2-moe-tiny, lfm2-hybrid-tiny, lfm2-350m and lfm2-1.2b for ``nvidia-h200`` *without* their
parameters (kernels, plan and manifest only: a few MiB, within the 64 MiB that travels to the device), then on
the device (``run`` tool, carrying build/cuda-carry):

    python benchmarks/cuda_device_run.py run --carry build/cuda-carry --out $OUT

regenerates every model's seeded random weights with lfmc's numpy generator, packs them with lfmc's lowering
(numpy only), loads each artifact with the ``cuda`` driver and

- tiny models: greedy tokens for 32 steps against lfmc's interpreter (checked against transformers here) -
  must be equal;
- 350M and 1.2B: decode tokens/s (CUDA graphs on and off) and prefill-512 tokens/s against PyTorch eager bf16
  and f32 on the same GPU, written to $OUT/cuda.json.

A dry run of the whole flow on this machine (OpenCL over PoCL instead of CUDA):
``prepare --target snapdragon-8gen3 --models lfm2-tiny,lfm2-moe-tiny,lfm2-hybrid-tiny --out build/dry`` then
``run --carry build/dry --device opencl --models lfm2-tiny,lfm2-moe-tiny,lfm2-hybrid-tiny``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODELS = {"lfm2-tiny": 0.25, "lfm2-moe-tiny": 0.25, "lfm2-hybrid-tiny": 0.25, "lfm2-350m": None, "lfm2-1.2b": None}
TARGET = "nvidia-h200"


def prepare(out: Path, target: str = TARGET, models: list[str] | None = None) -> None:
    from lfmc.compile import compile_model, load_source

    out.mkdir(parents=True, exist_ok=True)
    for name in models or list(MODELS):
        m = load_source(name, seed=0, init_std=MODELS[name])
        art = compile_model(m, out / name, target=target, max_batch=4, max_context=1024, prefill_chunk=512)
        (art / "params.safetensors").unlink()        # regenerated on the device from the seed
        print(f"prepared {name}: {sum(f.stat().st_size for f in art.rglob('*') if f.is_file()) / 2**20:.1f} MiB",
              flush=True)


def _reference_greedy(m, prompt, n):
    """Greedy tokens of lfmc's numpy interpreter (itself checked against transformers on this machine's CI):
    the device machine may have no transformers."""
    import numpy as np

    from lfmc.ir import Interpreter

    it = Interpreter(m.graph, m.weights)
    st = it.new_state()
    logits = it.run(np.array(prompt), st)[-1]
    out = []
    for _ in range(n):
        out.append(int(np.argmax(logits)))
        logits = it.run([out[-1]], st)[-1]
    return out


def _torch_decode_tps(cfg, weights, dtype, steps=64):
    """PyTorch eager decode tokens/s on the GPU (transformers' model), or None without transformers."""
    try:
        import torch

        from lfmc.frontend.reference import build_hf_model
    except ImportError:
        return None
    model = build_hf_model(cfg, weights).to("cuda", getattr(torch, dtype))
    ids = torch.tensor([[1] * 16], device="cuda")
    with torch.no_grad():
        out = model(ids, use_cache=True)
        pkv, tok = out.past_key_values, out.logits[:, -1:].argmax(-1)
        for i in range(steps + 8):
            if i == 8:
                torch.cuda.synchronize()
                t = time.perf_counter()
            out = model(tok, past_key_values=pkv, use_cache=True)
            pkv, tok = out.past_key_values, out.logits[:, -1:].argmax(-1)
        torch.cuda.synchronize()
    return steps / (time.perf_counter() - t)


def run(carry: Path, out: Path, device: str = "cuda", models: list[str] | None = None) -> int:
    import numpy as np

    from lfmc.compile import regenerate_params
    from lfmc.runtime import Engine

    res: dict = {"models": {}}
    ok = True
    for name in models or list(MODELS):
        art = carry / name
        t = time.perf_counter()
        regenerate_params(art)                       # lfmc.compile: numpy only
        eng = Engine(art, device=device, verify=False)
        want_hash = json.loads((art / "manifest.json").read_text())["files"]["params.safetensors"]
        import hashlib

        r_hash = hashlib.sha256((art / "params.safetensors").read_bytes()).hexdigest() == want_hash
        r: dict = {"load_s": time.perf_counter() - t, "params_identical": r_hash}
        man = eng.manifest
        if "tiny" in name:
            from lfmc.frontend import import_preset

            src = man["model"]["source"]
            m = import_preset(src["preset"], weights=True, seed=src.get("seed", 0), std=src.get("init_std"))
            prompt = np.random.default_rng(3).integers(0, eng.vocab_size, 21).tolist()
            got = eng.generate(prompt, max_new_tokens=32, stop=[]).tokens
            want = _reference_greedy(m, prompt, 32)
            r["tokens_equal"] = got == want
            ok &= got == want
        else:
            from lfmc.bench import bench_engine

            r["lfmc"] = bench_engine(eng, (512,), 64, 5)
            eng.use_graphs = False
            eng._calls.clear()
            r["lfmc_no_graphs"] = bench_engine(eng, (), 64, 5)["decode"]
            from lfmc.frontend import import_preset

            src = man["model"]["source"]
            m = import_preset(src["preset"], weights=True, seed=src.get("seed", 0), std=src.get("init_std"))
            for dt in ("float32", "bfloat16"):
                r[f"torch_{dt}_decode"] = _torch_decode_tps(man["model"]["config"], m.weights, dt)
        res["models"][name] = r
        print(name, json.dumps(r), flush=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / "cuda.json").write_text(json.dumps(res, indent=1))
    return 0 if ok else 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("--out", default="build/cuda-carry")
    p.add_argument("--target", default=TARGET, help="snapdragon-8gen3 + run --device opencl: a dry run here")
    p.add_argument("--models", default=None, help="comma-separated subset of " + ",".join(MODELS))
    p = sub.add_parser("run")
    p.add_argument("--carry", default="build/cuda-carry")
    p.add_argument("--out", default="build/cuda-out")
    p.add_argument("--device", default="cuda", help="driver (opencl: a dry run of this script on PoCL)")
    p.add_argument("--models", default=None, help="comma-separated subset of " + ",".join(MODELS))
    a = ap.parse_args()
    if a.cmd == "prepare":
        prepare(Path(a.out), a.target, a.models.split(",") if a.models else None)
        return 0
    return run(Path(a.carry), Path(a.out), a.device, a.models.split(",") if a.models else None)


if __name__ == "__main__":
    sys.exit(main())
