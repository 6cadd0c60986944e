"""Image encode time, image-to-first-token time and the decode rate after an image: lfmc vs transformers eager.

    .venv/bin/python benchmarks/vision_encode.py                          # LFM2-VL-1.6B shape, 512x512 and 1024x768
    .venv/bin/python benchmarks/vision_encode.py --preset lfm2-vl-450m --sizes 512x512 --rounds 2

Both sides run the same seeded random weights and the same preprocessed pixels (lfmc's Pillow/numpy
preprocessing, checked against transformers' own in tests/vision/test_processor.py; transformers' LFM2-VL image
processor needs torchvision, which does not import beside this project's torch): lfmc's host artifact (f32, or
``--quant`` for the decoder; the encoder is f32) and transformers' Lfm2VlForConditionalGeneration in float32,
eager. Rounds alternate the sides; medians. Measured per image size: preprocessing (lfmc; the same for both),
encode (vision tower + projector, every tile), image-to-first-token (encode + prefill of the prompt with the image
tokens + the first sampled token), and decode tokens/s for ``--new-tokens`` tokens after it. With ``--llama-cpp``
llama.cpp's llama-mtmd-cli joins each round on the same weights (converted to F32 GGUF + an F32 ``--mmproj``
projector, benchmarks/llamacpp_peer.py) and the same image file, preprocessed by its own code: its image encode
(every slice), the image tokens' decode + the text prompt, and its decode rate, from its log. Writes JSON (benchmarks/results/vision_encode.json) with the CPU model and
its features.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _hf_model(m):
    """transformers' model on lfmc's weights (decoder names back under model.language_model), sharing their memory
    (the arrays assigned, not copied; its own initial weights freed)."""
    import torch
    from transformers import Lfm2VlConfig, Lfm2VlForConditionalGeneration

    cfg = {k: v for k, v in m.provenance["config"].items() if k != "architecture"}
    hf = Lfm2VlForConditionalGeneration(Lfm2VlConfig(**cfg)).eval()
    sd = {("model.language_model." + k[len("model."):] if k in m.graph.params() else k): torch.from_numpy(v)
          for k, v in m.weights.items()}
    sd["lm_head.weight"] = sd["model.language_model.embed_tokens.weight"]
    hf.load_state_dict(sd, strict=True, assign=True)
    return hf


def _image(h: int, w: int) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x % 256, y % 256, (x * 3 + y) % 256], -1).astype(np.uint8)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="lfm2-vl-1.6b")
    ap.add_argument("--sizes", default="512x512,1024x768", help="image sizes, width x height")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--quant", default=None, help="the decoder's quantization (lfmc compile --quant)")
    ap.add_argument("--llama-cpp", action="store_true", help="also run llama.cpp's llama-mtmd-cli (build it with "
                    "benchmarks/build_llama_cpp.sh)")
    ap.add_argument("--profile", action="store_true", help="only lfmc: seconds per kernel of one encode per size "
                    "(Engine.profile_image, median of 3), no peers")
    ap.add_argument("--out", default="benchmarks/results/vision_encode.json")
    a = ap.parse_args()

    import torch

    from lfmc.frontend import import_preset
    from lfmc.runtime import Engine
    from lfmc.targets.host import cpu_info

    import subprocess

    if a.profile:
        return _profile(a)

    tmp = Path(tempfile.mkdtemp(prefix="lfmc-vision-bench."))
    art = tmp / "vl.art"
    t = time.perf_counter()       # in its own process: compiling holds the weights and their packed copy
    subprocess.run([sys.executable, "-m", "lfmc", "compile", a.preset, "-o", str(art), "--target", "host",
                    "--max-batch", "1", "--max-context", "4096", "--prefill-chunk", "256", "--quiet"]
                   + (["--quant", a.quant] if a.quant else []), check=True)
    compile_s = time.perf_counter() - t
    m = import_preset(a.preset, weights=True, seed=0)      # the same seeded weights (compile's default seed)
    hf = _hf_model(m)
    peer = None
    if a.llama_cpp:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import llamacpp_peer as lp

        d = lp.find()
        if d is None or not (d / "bin" / "llama-mtmd-cli").exists():
            raise SystemExit("llama.cpp with llama-mtmd-cli is not built: run benchmarks/build_llama_cpp.sh")
        work = lp.DEFAULT_DIR.parent / "models"
        work.mkdir(parents=True, exist_ok=True)
        peer = (lp, d) + lp.gguf_vl(d, *lp.save_hf_vl(hf, m, work / f"{a.preset}-s0.hf"))
    eng = Engine(art)
    prompt = [1] + [eng.plan["image"]["image_token"]] + [10, 11, 12, 13]
    res: dict = {"preset": a.preset, "quant": a.quant or "f32", "compile_s": compile_s, "cpu": cpu_info(),
                 "torch_threads": torch.get_num_threads(), "sizes": {}}
    for size in a.sizes.split(","):
        W, H = (int(v) for v in size.lower().split("x"))
        img = _image(H, W)
        rows: dict[str, list[float]] = {}
        for _ in range(a.rounds):
            # lfmc
            t0 = time.perf_counter()
            ids, processed = eng.expand_images(prompt, [img])
            t1 = time.perf_counter()
            emb = eng.encode_images(processed)
            t2 = time.perf_counter()
            gen = eng.stream(ids, a.new_tokens + 1, stop=[], image_rows=emb)
            next(gen)
            t3 = time.perf_counter()
            n = sum(1 for _ in gen)
            t4 = time.perf_counter()
            rows.setdefault("lfmc_preprocess_s", []).append(t1 - t0)
            rows.setdefault("lfmc_encode_s", []).append(t2 - t1)
            rows.setdefault("lfmc_image_to_first_token_s", []).append(t3 - t1)
            rows.setdefault("lfmc_decode_tok_s", []).append(n / (t4 - t3))
            # transformers, eager, the same pixels
            inp = _hf_inputs(processed)
            ii = torch.tensor([ids])
            with torch.no_grad():
                t0 = time.perf_counter()
                hf.model.get_image_features(**inp)
                t1 = time.perf_counter()
                hf.generate(input_ids=ii, attention_mask=torch.ones_like(ii), **inp, max_new_tokens=1, do_sample=False)
                t2 = time.perf_counter()
                hf.generate(input_ids=ii, attention_mask=torch.ones_like(ii), **inp, max_new_tokens=a.new_tokens + 1,
                            min_new_tokens=a.new_tokens + 1, do_sample=False)
                t3 = time.perf_counter()
            rows.setdefault("torch_encode_s", []).append(t1 - t0)
            rows.setdefault("torch_image_to_first_token_s", []).append(t2 - t1)
            rows.setdefault("torch_decode_tok_s", []).append(a.new_tokens / ((t3 - t2) - (t2 - t1)))
            if peer is not None:           # llama.cpp on the same image file, preprocessed by its own code
                lp, d, model, mmproj = peer
                png = tmp / f"{size}.png"
                if not png.exists():
                    from PIL import Image

                    Image.fromarray(img).save(png)
                try:
                    r = lp.mtmd(d, model, mmproj, png, "Describe.", a.new_tokens + 1)
                except RuntimeError as e:      # recorded, not fatal: the other sides' figures still stand
                    res.setdefault("llama_errors", {})[size] = str(e)[-800:]
                    print(f"  llama.cpp failed on {size}: {str(e).splitlines()[-1][:200]}", flush=True)
                    r = {"encode_s": None, "prompt_eval_s": None, "n_prompt": None, "decode_tok_s": None,
                         "log_tail": ""}
                rows.setdefault("llama_encode_s", []).append(r["encode_s"])
                # llama.cpp's prompt-eval timer runs from the first prompt chunk to the last: the image's encode,
                # its tokens' decode and the template's text tokens (n_prompt) are all inside it
                rows.setdefault("llama_image_to_first_token_s", []).append(r["prompt_eval_s"])
                rows.setdefault("llama_prompt_tokens", []).append(r["n_prompt"])
                rows.setdefault("llama_decode_tok_s", []).append(r["decode_tok_s"])
                if r["log_tail"]:
                    res.setdefault("llama_log_tail", {})[size] = r["log_tail"]
        med = {k: statistics.median([x for x in v if x is not None] or [float("nan")]) for k, v in rows.items()}
        med["image_tokens"] = int(sum(p.height * p.width for x in processed for p in x.pieces) // 4)
        med["pieces"] = sum(len(x.pieces) for x in processed)
        med["encode_speedup"] = med["torch_encode_s"] / med["lfmc_encode_s"]
        med["first_token_speedup"] = med["torch_image_to_first_token_s"] / med["lfmc_image_to_first_token_s"]
        med["decode_ratio"] = med["lfmc_decode_tok_s"] / med["torch_decode_tok_s"]
        if peer is not None:
            med["encode_vs_llama"] = med["llama_encode_s"] / med["lfmc_encode_s"]
            med["first_token_vs_llama"] = med["llama_image_to_first_token_s"] / med["lfmc_image_to_first_token_s"]
            med["decode_vs_llama"] = med["lfmc_decode_tok_s"] / med["llama_decode_tok_s"]
            print(f"  llama.cpp mtmd: encode {med['llama_encode_s']:.2f} s ({med['encode_vs_llama']:.2f}x), image->first"
                  f" token {med['llama_image_to_first_token_s']:.2f} s ({med['first_token_vs_llama']:.2f}x), decode "
                  f"{med['llama_decode_tok_s']:.1f} tok/s ({med['decode_vs_llama']:.2f}x)", flush=True)
        res["sizes"][size] = med
        print(f"{a.preset} {size}: {med['pieces']} pieces, {med['image_tokens']} image tokens | encode lfmc "
              f"{med['lfmc_encode_s']:.2f} s, torch {med['torch_encode_s']:.2f} s ({med['encode_speedup']:.2f}x) | "
              f"image->first token lfmc {med['lfmc_image_to_first_token_s']:.2f} s, torch "
              f"{med['torch_image_to_first_token_s']:.2f} s ({med['first_token_speedup']:.2f}x) | decode lfmc "
              f"{med['lfmc_decode_tok_s']:.1f} tok/s, torch {med['torch_decode_tok_s']:.1f} ({med['decode_ratio']:.2f}x)"
              f" | preprocess {med['lfmc_preprocess_s'] * 1e3:.0f} ms", flush=True)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1))
    print(f"wrote {out}")


def _profile(a) -> None:
    """``--profile``: where one encode's time goes, per kernel, for each size (the lfmc artifact alone)."""
    import subprocess

    from lfmc.runtime import Engine

    art = Path(tempfile.mkdtemp(prefix="lfmc-vision-profile.")) / "vl.art"
    subprocess.run([sys.executable, "-m", "lfmc", "compile", a.preset, "-o", str(art), "--target", "host",
                    "--max-batch", "1", "--max-context", "4096", "--prefill-chunk", "256", "--quiet"], check=True)
    eng = Engine(art)
    out = {}
    for size in a.sizes.split(","):
        W, H = (int(v) for v in size.lower().split("x"))
        piece = eng.processor().process(_image(H, W)).pieces[0]
        prof = eng.profile_image(piece.patches, piece.height, piece.width)
        total = sum(prof.values())
        out[size] = {"patches": piece.height * piece.width, "total_s": total, "kernels": prof}
        print(f"{a.preset} {size} (first piece, {piece.height} x {piece.width} patches): {total:.2f} s")
        for k, v in list(prof.items())[:8]:
            print(f"  {v:7.3f} s {100 * v / total:5.1f}%  {k}")
    Path(a.out).write_text(json.dumps({"preset": a.preset, "profile": out}, indent=1))
    print(f"wrote {a.out}")


def _hf_inputs(processed) -> dict:
    import torch

    pieces = [p for x in processed for p in x.pieces]
    P = max(p.patches.shape[0] for p in pieces)
    pv = np.zeros((len(pieces), P, pieces[0].patches.shape[1]), np.float32)
    mask = np.zeros((len(pieces), P), np.int32)
    for i, p in enumerate(pieces):
        pv[i, :p.patches.shape[0]] = p.patches
        mask[i, :p.patches.shape[0]] = 1
    return {"pixel_values": torch.from_numpy(pv), "pixel_attention_mask": torch.from_numpy(mask),
            "spatial_shapes": torch.tensor([[p.height, p.width] for p in pieces])}


if __name__ == "__main__":
    main()
