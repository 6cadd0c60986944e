"""Shared pieces of the vision-language tests: a tiny transformers LFM2-VL, images, and transformers' inputs
built from lfmc's preprocessing."""
from __future__ import annotations

import numpy as np

TINY = dict(
    vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                       num_patches=16, patch_size=16, vision_use_head=False),
    text_config=dict(hidden_size=64, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4,
                     num_key_value_heads=2, vocab_size=300, layer_types=["conv", "full_attention", "conv",
                                                                        "full_attention"],
                     block_multiple_of=32, eos_token_id=2, bos_token_id=1, pad_token_id=0),
    projector_hidden_size=48, image_token_id=260)
# small (upscaled to 64 tokens), mid-size, large (tiles + thumbnail), very wide (a 1 x N grid of tiles)
SIZES = [(90, 120), (300, 500), (900, 1200), (300, 2400)]


def tiny_pair(seed: int = 0, std: float = 0.25, cfg: dict | None = None):
    """(lfmc Model, transformers Lfm2VlForConditionalGeneration) with the same seeded random weights (lfmc's
    generator, N(0, std): large enough that greedy tokens vary)."""
    import torch
    from transformers import Lfm2VlConfig, Lfm2VlForConditionalGeneration

    from lfmc.frontend.vision import vl_model

    hf = Lfm2VlForConditionalGeneration(Lfm2VlConfig(**(cfg or TINY))).eval()
    m = vl_model(hf.config.to_dict(), "vl-tiny", seed=seed, std=std)
    sd = {("model.language_model." + k[len("model."):] if k in m.graph.params() else k): torch.from_numpy(v)
          for k, v in m.weights.items()}
    missing, unexpected = hf.load_state_dict(sd, strict=False)
    assert set(missing) <= {"lm_head.weight"} and not unexpected, (missing, unexpected)
    hf.tie_weights()
    return m, hf


def image(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A smooth random RGB image (uint8 [h, w, 3]): noise upsampled, so resizing keeps structure."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(2, h // 16), max(2, w // 16), 3)).astype(np.float32)
    yi = np.linspace(0, small.shape[0] - 1, h)
    xi = np.linspace(0, small.shape[1] - 1, w)
    a = small[np.round(yi).astype(int)][:, np.round(xi).astype(int)]
    return np.clip(a + rng.normal(0, 8, a.shape), 0, 255).astype(np.uint8)


def hf_inputs(pieces, max_patches: int):
    """transformers' pixel_values / pixel_attention_mask / spatial_shapes for lfmc's pieces (padded)."""
    import torch

    pv = np.zeros((len(pieces), max_patches, pieces[0].patches.shape[1]), np.float32)
    mask = np.zeros((len(pieces), max_patches), np.int32)
    for i, p in enumerate(pieces):
        pv[i, :p.patches.shape[0]] = p.patches
        mask[i, :p.patches.shape[0]] = 1
    shapes = np.array([[p.height, p.width] for p in pieces], np.int64)
    return {"pixel_values": torch.from_numpy(pv), "pixel_attention_mask": torch.from_numpy(mask),
            "spatial_shapes": torch.from_numpy(shapes)}


def pattern(h: int, w: int, k: int = 0) -> np.ndarray:
    """A deterministic RGB test image (uint8 [h, w, 3]) from a formula, the same in any environment: the
    processor goldens (make_golden.py, run beside torchvision) and the tests regenerate it instead of storing it."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    r = 127.5 + 127.5 * np.sin(x * (0.011 + 0.003 * k) + y * 0.007)
    g = 127.5 + 127.5 * np.cos(y * (0.019 + 0.002 * k) - x * 0.004)
    b = 127.5 + 127.5 * np.sin((x + y) * 0.031 + k) * np.cos(x * 0.002)
    return np.clip(np.rint(np.stack([r, g, b], -1)), 0, 255).astype(np.uint8)


# processor settings x image sizes the goldens cover (sizes in pixels, height x width)
GOLDEN_SETTINGS = {
    "default": {},
    "no-split": {"do_image_splitting": False},
    "no-thumb": {"use_thumbnail": False},
    "tokens-32-128": {"min_image_tokens": 32, "max_image_tokens": 128, "max_tiles": 6},
}
GOLDEN_SIZES = [(90, 120), (300, 500), (512, 512), (724, 724), (768, 1024), (900, 1200), (300, 2400), (2000, 200),
                (33, 47)]
