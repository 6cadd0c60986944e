"""Write tests/vision/data/lfm2_vl_processor.npz: what transformers' Lfm2VlImageProcessor and Lfm2VlProcessor
make of the test images (tests/vision/helpers.py GOLDEN_SIZES x GOLDEN_SETTINGS, images from ``pattern``).

transformers' LFM2-VL image processor imports torchvision, which does not import beside the project's
torch 2.13.0, so this runs once in a separate environment and its small output is committed:

    python3 -m venv /tmp/tv && /tmp/tv/bin/pip install torch==2.14.1 torchvision==0.29.1 transformers==5.24.0 pillow
    PYTHONPATH=. /tmp/tv/bin/python tests/vision/make_golden.py

(on aarch64 torch==2.9.1 torchvision==0.24.1, see ../.library/env). Stored per case: the pieces' patch grids
(spatial_shapes), the tile grid, the resized size, the prompt replacement text, and a strided sample of the
normalized pixels of each piece (every 401st value) with its mean.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from tests.vision.helpers import GOLDEN_SETTINGS, GOLDEN_SIZES, pattern

STRIDE = 401


def main() -> None:
    import torch
    import transformers
    from PIL import Image
    from transformers import Lfm2VlImageProcessor
    from transformers.models.lfm2_vl.processing_lfm2_vl import Lfm2VlProcessor

    out: dict[str, np.ndarray] = {"meta.transformers": np.array(transformers.__version__),
                                  "meta.torch": np.array(torch.__version__)}
    for sname, settings in GOLDEN_SETTINGS.items():
        proc = Lfm2VlImageProcessor(**settings)
        stub = Lfm2VlProcessor.__new__(Lfm2VlProcessor)       # its token-layout methods, without a tokenizer
        for a, v in dict(image_processor=proc, image_token="<image>", image_start_token="<|image_start|>",
                         image_end_token="<|image_end|>", image_thumbnail_token="<|img_thumbnail|>").items():
            object.__setattr__(stub, a, v)
        for k, (h, w) in enumerate(GOLDEN_SIZES):
            key = f"{sname}/{h}x{w}"
            r = proc(Image.fromarray(pattern(h, w, k)), return_row_col_info=True, return_tensors="pt")
            shapes = r["spatial_shapes"].numpy()
            pv = r["pixel_values"].numpy()
            rows, cols = int(r["image_rows"][0]), int(r["image_cols"][0])
            size = list(r["image_sizes"][0])
            per_tile, for_image = stub._get_image_num_tokens( size, **settings)
            text = stub._build_image_tokens(rows, cols, per_tile, for_image,
                                                       settings.get("use_thumbnail", proc.use_thumbnail), True)
            out[key + "/shapes"] = shapes
            out[key + "/grid"] = np.array([rows, cols])
            out[key + "/size"] = np.array(size)
            out[key + "/text"] = np.array(text)
            for i, (ph, pw) in enumerate(shapes):
                flat = pv[i, :ph * pw].reshape(-1)
                out[f"{key}/px{i}"] = flat[::STRIDE].astype(np.float32)
                out[f"{key}/mean{i}"] = np.array(flat.mean(), np.float64)
    dst = Path(__file__).parent / "data" / "lfm2_vl_processor.npz"
    np.savez_compressed(dst, **out)
    print(f"wrote {dst} ({dst.stat().st_size} bytes, {len(out)} arrays)")


if __name__ == "__main__":
    main()
