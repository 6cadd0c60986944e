"""LFM3-VL against transformers' own Lfm3VlForConditionalGeneration on a tiny random config: its LIV vision tower
(gated 3x3 convolutions over the patch grid, bidirectional GQA with q / k RMSNorm and axial 2-D RoPE) and
projector within 1e-4 relative, greedy decoding token-exact after images of several sizes and aspect ratios
and two images in one prompt, on the interpreter, the host artifact and the opencl driver over PoCL; lfmc's
preprocessing equal to transformers' Qwen2VLImageProcessorPil (which runs here)."""
from __future__ import annotations

import numpy as np
import pytest

from lfmc.ir.interp import Interpreter
from lfmc.runtime.vision import MergeBlockProcessor

from tests.helpers import has_opencl
from tests.vision.helpers import GOLDEN_SIZES, image, pattern

IMG = 260
STEPS = 10
CFG = dict(
    vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
                       num_key_value_heads=2, patch_size=16),
    text_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                     num_key_value_heads=2, head_dim=16, vocab_size=300, sliding_window=8,
                     layer_types=["conv", "full_attention", "conv", "sliding_attention"],
                     pad_token_id=0, bos_token_id=1, eos_token_id=2),
    projector_hidden_size=48, image_token_id=IMG)
SIZES = [(90, 120), (300, 500), (300, 2400), (2000, 200)]


@pytest.fixture(scope="module")
def pair():
    import torch
    from transformers import Lfm3VlConfig, Lfm3VlForConditionalGeneration

    from lfmc.frontend.vision import vl_model

    hf = Lfm3VlForConditionalGeneration(Lfm3VlConfig(**CFG)).eval()
    m = vl_model(hf.config.to_dict(), "vl3-tiny", seed=4, std=0.25)
    sd = {("model.language_model." + k[len("model."):] if k in m.graph.params() else k): torch.from_numpy(v)
          for k, v in m.weights.items()}
    missing, unexpected = hf.load_state_dict(sd, strict=False)
    assert set(missing) <= {"lm_head.weight"} and not unexpected
    hf.tie_weights()
    return m, hf


def _hf(hf, ids, pieces):
    import torch

    pv = torch.from_numpy(np.concatenate([p.patches for p in pieces]))
    thw = torch.tensor([[1, p.height, p.width] for p in pieces])
    with torch.no_grad():
        feats = torch.cat(hf.model.get_image_features(pv, thw).pooler_output).numpy()
        out = hf.generate(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                          pixel_values=pv, image_grid_thw=thw, max_new_tokens=STEPS, do_sample=False)
    return feats, out[0, len(ids):].tolist()


def _prompt(n_tokens: list[int]) -> list[int]:
    ids = [1, 5]
    for n in n_tokens:
        ids += [IMG] * n + [7]
    return ids + [8]


@pytest.mark.parametrize("sizes", [[s] for s in SIZES] + [[SIZES[0], SIZES[1]]],
                         ids=lambda s: "+".join(f"{h}x{w}" for h, w in s))
def test_interpreter_matches_transformers(pair, sizes):
    m, hf = pair
    proc = MergeBlockProcessor({})
    pieces = [proc.process(image(h, w, seed=i)).pieces[0] for i, (h, w) in enumerate(sizes)]
    vis = Interpreter(m.vision, m.weights_of(m.vision))
    rows = np.concatenate([vis.evaluate({"patches": p.patches, "grid": np.array([p.height, p.width], np.int32)})
                           for p in pieces])
    ids = _prompt([p.height * p.width // 4 for p in pieces])
    feats, want = _hf(hf, ids, pieces)
    assert np.abs(rows - feats).max() <= 1e-4 * np.abs(feats).max()
    dec = Interpreter(m.graph, m.weights_of(m.graph))
    img = np.zeros((len(ids), rows.shape[1]), np.float32)
    img[np.asarray(ids) == IMG] = rows
    st = dec.new_state()
    lg, got = dec.run(ids, st, img), []
    for _ in range(STEPS):
        got.append(int(np.argmax(lg[-1])))
        lg = dec.run([got[-1]], st)
    assert got == want and len(set(got)) >= 4, (got, want)


@pytest.mark.parametrize("kind,target", [("host", "host"), ("opencl", "snapdragon-8gen3")])
def test_compiled_matches_transformers(pair, kind, target, tmp_path):
    from lfmc.compile import compile_model
    from lfmc.runtime import Engine

    if kind == "opencl":
        pytest.importorskip("pyopencl")
        if not has_opencl():
            pytest.skip("no OpenCL device (apt install pocl-opencl-icd)")
    m, hf = pair
    eng = Engine(compile_model(m, tmp_path / kind, target=target, max_batch=2, max_context=4096, prefill_chunk=64))
    for sizes in ([SIZES[1]], [SIZES[0], SIZES[3]]):
        pics = [image(h, w, seed=i) for i, (h, w) in enumerate(sizes)]
        pieces = [eng.processor().process(p).pieces[0] for p in pics]
        ids = _prompt([p.height * p.width // 4 for p in pieces])
        _, want = _hf(hf, ids, pieces)
        marked = [1, 5] + sum(([IMG, 7] for _ in pics), []) + [8]
        got = eng.generate(marked, max_new_tokens=STEPS, stop=[], images=pics).tokens
        assert got == want and len(set(got)) >= 4, (sizes, got, want)


@pytest.mark.parametrize("settings", [{}, {"min_pixels": 128 * 128, "max_pixels": 256 * 256},
                                      {"size": {"shortest_edge": 64 * 64, "longest_edge": 512 * 512}}])
def test_preprocessing_equals_transformers(settings):
    from PIL import Image
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    kw = dict(settings)
    if "min_pixels" in kw:
        kw = {"size": {"shortest_edge": kw.pop("min_pixels"), "longest_edge": kw.pop("max_pixels")}}
    ref = Qwen2VLImageProcessorPil(patch_size=16, **kw)
    mine = MergeBlockProcessor(settings)
    for k, (h, w) in enumerate(GOLDEN_SIZES):
        r = ref(Image.fromarray(pattern(h, w, k)), return_tensors="np")
        p = mine.process(pattern(h, w, k)).pieces[0]
        assert (1, p.height, p.width) == tuple(r["image_grid_thw"][0]), (h, w)
        assert np.abs(r["pixel_values"] - p.patches).max() <= 1e-6, (h, w)
