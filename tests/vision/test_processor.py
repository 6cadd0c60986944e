"""lfmc's LFM2-VL preprocessing (Pillow + numpy) against transformers' Lfm2VlImageProcessor / Lfm2VlProcessor
(torchvision), whose outputs tests/vision/make_golden.py stored: patch grids, tile grids, resized sizes and the
prompt's image tokens exactly; normalized pixels within a stated tolerance (Pillow's and torchvision's
antialiased bilinear resizes round differently: one of 255 levels at some pixels, measured 2/255 = 0.0078 in
normalized units at worst over the stored samples, 1.4e-6 on average)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lfmc.runtime.vision import ImageProcessor

from tests.vision.helpers import GOLDEN_SETTINGS, GOLDEN_SIZES, pattern

GOLDEN = Path(__file__).parent / "data" / "lfm2_vl_processor.npz"
STRIDE = 401
PX_MAX, PX_MEAN = 0.0079, 1e-3        # normalized units: one 8-bit level (2/255) at most; mean per piece
FAKE = {"<|image_start|>": 1001, "<|image_end|>": 1002, "<|img_thumbnail|>": 1003}


def _token_id(s: str) -> int:
    if s.startswith("<|img_row_"):
        r, c = s[len("<|img_row_"):-2].split("_col_")
        return 2000 + 100 * int(r) + int(c)
    return FAKE[s]


def _to_text(ids: list[int], image_token: int) -> str:
    inv = {v: k for k, v in FAKE.items()}
    out = []
    for t in ids:
        if t == image_token:
            out.append("<image>")
        elif t in inv:
            out.append(inv[t])
        else:
            out.append(f"<|img_row_{(t - 2000) // 100}_col_{(t - 2000) % 100}|>")
    return "".join(out)


@pytest.fixture(scope="module")
def golden():
    return np.load(GOLDEN)


@pytest.mark.parametrize("setting", sorted(GOLDEN_SETTINGS))
def test_matches_transformers(golden, setting):
    proc = ImageProcessor(GOLDEN_SETTINGS[setting])
    worst = 0.0
    for k, (h, w) in enumerate(GOLDEN_SIZES):
        key = f"{setting}/{h}x{w}"
        got = proc.process(pattern(h, w, k))
        shapes = golden[key + "/shapes"]
        assert [(p.height, p.width) for p in got.pieces] == [tuple(s) for s in shapes], key
        assert (got.rows, got.cols) == tuple(golden[key + "/grid"]), key
        assert _to_text(proc.image_token_ids(got, 999, _token_id), 999) == str(golden[key + "/text"]), key
        assert got.num_tokens == str(golden[key + "/text"]).count("<image>"), key
        for i, p in enumerate(got.pieces):
            flat = p.patches.reshape(-1)
            ref = golden[f"{key}/px{i}"]
            diff = np.abs(flat[::STRIDE] - ref)
            worst = max(worst, float(diff.max()))
            assert diff.max() <= PX_MAX and abs(flat.mean() - float(golden[f"{key}/mean{i}"])) <= PX_MEAN, (key, i)
    assert worst > 0 or setting != "default"          # the comparison reads real pixels (not both zero)


def test_geometry_cases():
    """The documented cases: a small image upscaled to at least 64 tokens, a 512 x 512 one as 256 tokens without
    tiles, a large one as tiles + thumbnail within 2..10 tiles."""
    proc = ImageProcessor({})
    small = proc.process(pattern(40, 60))
    assert small.rows == small.cols == 1 and 64 <= small.num_tokens <= 256
    mid = proc.process(pattern(512, 512))
    assert mid.num_tokens == 256 and len(mid.pieces) == 1
    big = proc.process(pattern(1500, 1500))
    assert 2 <= big.rows * big.cols <= 10 and len(big.pieces) == big.rows * big.cols + 1
    assert all((p.height, p.width) == (32, 32) for p in big.pieces[:-1])
