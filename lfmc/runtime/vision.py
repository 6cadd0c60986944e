"""Image preprocessing for vision-language artifacts (LFM2-VL), in Pillow and numpy: no torch, no transformers.

What transformers' ``Lfm2VlImageProcessor`` and ``Lfm2VlProcessor`` do, driven by the same settings (the
checkpoint's ``preprocessor_config.json`` / ``processor_config.json``, stored in the artifact): an image up to
about ``max_image_tokens`` x (patch x factor)^2 pixels (times ``max_pixels_tolerance``) is resized so both sides
are multiples of patch x factor with ``min_image_tokens`` to ``max_image_tokens`` image tokens; a larger one is
split into a grid of ``tile_size`` tiles (``min_tiles``..``max_tiles``, the grid whose aspect is closest) plus a
thumbnail of the single-image size. Each piece is rescaled, normalized and cut into patch x patch patches (row-
major, each patch's values ordered row, column, channel); the prompt's image placeholder becomes
``<|image_start|>``, per tile ``<|img_row_R_col_C|>`` and its image tokens, ``<|img_thumbnail|>`` and the
thumbnail's, ``<|image_end|>`` (the delimiters only where the tokenizer has them).

Untrusted images are checked before their pixels are decoded: the encoded size, the format, and the
dimensions from the header (:data:`LIMITS`); a truncated file is an error, not a partial image.
"""
from __future__ import annotations

import io
import math
import os
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from .errors import EngineError


class ImageError(EngineError):
    """An image that cannot be used (not an image, truncated, too small, too large); the message says which."""


# what an untrusted image may be: checked before decoding (the header gives the size)
LIMITS = {"max_bytes": 32 * 2**20, "max_side": 8192, "max_pixels": 33_554_432, "min_side": 4}

DEFAULTS: dict[str, Any] = {        # transformers 5.24's Lfm2VlImageProcessor class defaults
    "downsample_factor": 2, "do_image_splitting": True, "min_tiles": 2, "max_tiles": 10, "use_thumbnail": True,
    "min_image_tokens": 64, "max_image_tokens": 256, "encoder_patch_size": 16, "tile_size": 512,
    "max_pixels_tolerance": 2.0, "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
    "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "use_image_special_tokens": True,
}
SPECIAL = {"start": "<|image_start|>", "end": "<|image_end|>", "thumbnail": "<|img_thumbnail|>"}
IMAGE_MARKER = "<image>"


def load_image(src: Any, limits: dict[str, int] | None = None):
    """An RGB ``PIL.Image`` from a path, encoded bytes, a PIL image or an ``[H, W, 3]`` uint8 array; anything
    else, or an image outside ``limits`` (default :data:`LIMITS`), is an :class:`ImageError` that says what."""
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:
        raise ImageError("images need Pillow: pip install 'lfmc[vision]'") from None
    lim = LIMITS | (limits or {})
    what = "image"
    if isinstance(src, np.ndarray):
        if src.dtype != np.uint8 or src.ndim != 3 or src.shape[2] not in (3, 4):
            raise ImageError(f"an image array must be uint8 [height, width, 3 or 4], not {src.dtype} {src.shape}")
        _check_size(src.shape[1], src.shape[0], lim, "image array")
        return Image.fromarray(src[:, :, :3])
    if isinstance(src, Image.Image):
        _check_size(src.size[0], src.size[1], lim, "image")
        return src.convert("RGB")
    if isinstance(src, (str, os.PathLike)):
        what = str(src)
        try:
            size = os.path.getsize(src)
            if size > lim["max_bytes"]:
                raise ImageError(f"{what}: {size} bytes, over the {lim['max_bytes']}-byte limit for an image")
            with open(src, "rb") as f:
                src = f.read()
        except OSError as e:
            raise ImageError(f"{what}: cannot read ({e.strerror or e})") from None
    if not isinstance(src, (bytes, bytearray, memoryview)):
        raise ImageError(f"not an image: {type(src).__name__} (give a path, bytes, a PIL image or a uint8 array)")
    data = bytes(src)
    if len(data) > lim["max_bytes"]:
        raise ImageError(f"{what}: {len(data)} bytes, over the {lim['max_bytes']}-byte limit for an image")
    try:
        im = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ImageError(f"{what}: not an image in a format Pillow reads") from None
    except Image.DecompressionBombError as e:
        raise ImageError(f"{what}: over the limit ({lim['max_side']} pixels on a side, {lim['max_pixels']} in all): "
                         f"a decompression bomb ({e})") from None
    except (OSError, ValueError) as e:
        raise ImageError(f"{what}: unreadable image ({e})") from None
    _check_size(im.size[0], im.size[1], lim, what)         # from the header: nothing decoded yet
    try:
        im.load()
        return im.convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise ImageError(f"{what}: truncated or corrupt {im.format or ''} image ({e})") from None


def _check_size(w: int, h: int, lim: dict[str, int], what: str) -> None:
    if min(w, h) < lim["min_side"]:
        raise ImageError(f"{what}: {w} x {h} pixels, smaller than {lim['min_side']} pixels on a side")
    if max(w, h) > lim["max_side"] or w * h > lim["max_pixels"]:
        raise ImageError(f"{what}: {w} x {h} pixels, over the limit ({lim['max_side']} pixels on a side, "
                         f"{lim['max_pixels']} in all)")


@dataclass
class Piece:
    """One tile (or the thumbnail, or the whole resized image) as the encoder takes it."""

    patches: np.ndarray          # [height * width, patch * patch * channels] float32
    height: int                  # patch rows
    width: int                   # patch columns


@dataclass
class ProcessedImage:
    pieces: list[Piece]          # tiles row-major, then the thumbnail
    rows: int                    # tile grid (1 x 1: a single resized image)
    cols: int
    tokens_per_tile: int
    tokens_for_image: int        # the single image's (or the thumbnail's) image tokens

    @property
    def num_tokens(self) -> int:
        """Image tokens (embeddings) the image adds to the prompt."""
        return sum(p.height * p.width for p in self.pieces) // self._merge

    _merge: int = 4


class ImageProcessor:
    """LFM2-VL's resize / tile / thumbnail / normalize / patchify, from the processor settings ``config`` (the
    checkpoint's; unset fields take transformers' defaults)."""

    def __init__(self, config: dict[str, Any] | None = None):
        c = dict(DEFAULTS)
        for k, v in (config or {}).items():
            if k in DEFAULTS and v is not None:
                c[k] = v
        ints = ("downsample_factor", "min_tiles", "max_tiles", "min_image_tokens", "max_image_tokens",
                "encoder_patch_size", "tile_size")
        for k in ints:
            if not isinstance(c[k], int) or isinstance(c[k], bool) or c[k] < 1:
                raise ImageError(f"processor setting {k} must be a positive integer, not {c[k]!r}")
        if c["do_image_splitting"] and c["min_tiles"] > c["max_tiles"]:
            raise ImageError("processor setting min_tiles must not exceed max_tiles")
        if len(c["image_mean"]) != 3 or len(c["image_std"]) != 3:
            raise ImageError("processor image_mean and image_std need three values (RGB)")
        self.config = c

    def __getattr__(self, k: str) -> Any:
        try:
            return self.__dict__["config"][k]
        except KeyError:
            raise AttributeError(k) from None

    @property
    def max_num_patches(self) -> int:
        """The most patches one piece can have: what the compiled encoder must take."""
        tile = (self.tile_size // self.encoder_patch_size) ** 2 if self.do_image_splitting else 0
        return max(self.max_image_tokens * self.downsample_factor ** 2, tile)

    # --- geometry (transformers' Lfm2VlImageProcessor, step by step)
    def smart_resize(self, height: int, width: int) -> tuple[int, int]:
        """(height, width) of the single resized image: multiples of patch x factor, min..max image tokens."""
        f = self.encoder_patch_size * self.downsample_factor
        lo = self.min_image_tokens * self.encoder_patch_size ** 2 * self.downsample_factor ** 2
        hi = self.max_image_tokens * self.encoder_patch_size ** 2 * self.downsample_factor ** 2
        h = max(f, round(height / f) * f)
        w = max(f, round(width / f) * f)
        if h * w > hi:
            beta = math.sqrt(height * width / hi)
            h = max(f, math.floor(height / beta / f) * f)
            w = max(f, math.floor(width / beta / f) * f)
        elif h * w < lo:
            beta = math.sqrt(lo / (height * width))
            h = math.ceil(height * beta / f) * f
            w = math.ceil(width * beta / f) * f
        return h, w

    def too_large(self, height: int, width: int) -> bool:
        f = self.encoder_patch_size * self.downsample_factor
        h = max(self.encoder_patch_size, round(height / f) * f)
        w = max(self.encoder_patch_size, round(width / f) * f)
        return h * w > (self.max_image_tokens * self.encoder_patch_size ** 2 * self.downsample_factor ** 2
                        * self.max_pixels_tolerance)

    def grid(self, height: int, width: int) -> tuple[int, int]:
        """(cols, rows) of the tile grid whose aspect is closest to the image's (ties: the larger grid when the
        image covers more than half of it)."""
        aspect = width / height
        best, best_diff = (1, 1), float("inf")
        for r in _ratios(self.min_tiles, self.max_tiles):
            diff = abs(aspect - r[0] / r[1])
            if diff < best_diff:
                best, best_diff = r, diff
            elif diff == best_diff and width * height > 0.5 * self.tile_size ** 2 * r[0] * r[1]:
                best = r
        return best

    def process(self, image: Any) -> ProcessedImage:
        """The pieces and token counts of one image (anything :func:`load_image` takes)."""
        from PIL import Image

        im = load_image(image)
        W0, H0 = im.size
        splitting = self.do_image_splitting and not self.min_tiles == self.max_tiles == 1
        nh, nw = self.smart_resize(H0, W0)
        f = self.downsample_factor
        if splitting and self.too_large(H0, W0):
            cols, rows = self.grid(H0, W0)
            t = self.tile_size
            big = np.asarray(im.resize((t * cols, t * rows), Image.BILINEAR))
            arrays = [big[r * t:(r + 1) * t, c * t:(c + 1) * t] for r in range(rows) for c in range(cols)]
            if self.use_thumbnail and rows * cols != 1:
                arrays.append(np.asarray(im.resize((nw, nh), Image.BILINEAR)))
        else:
            rows = cols = 1
            arrays = [np.asarray(im.resize((nw, nh), Image.BILINEAR))]
        pieces = [self._patchify(a) for a in arrays]
        p = self.encoder_patch_size
        per_tile = math.ceil((self.tile_size // p) / f) ** 2
        for_image = math.ceil((nh // p) / f) * math.ceil((nw // p) / f)
        out = ProcessedImage(pieces, rows, cols, per_tile, for_image)
        out._merge = f * f
        return out

    def _patchify(self, a: np.ndarray) -> Piece:
        x = a.astype(np.float32)
        if self.do_rescale:
            x = x * np.float32(self.rescale_factor)
        if self.do_normalize:
            x = (x - np.asarray(self.image_mean, np.float32)) / np.asarray(self.image_std, np.float32)
        p = self.encoder_patch_size
        H, W, C = x.shape
        gh, gw = H // p, W // p
        x = x[:gh * p, :gw * p].reshape(gh, p, gw, p, C).transpose(0, 2, 1, 3, 4).reshape(gh * gw, p * p * C)
        return Piece(np.ascontiguousarray(x, np.float32), gh, gw)

    # --- the prompt
    def image_token_ids(self, img: ProcessedImage, image_token: int, token_id=None) -> list[int]:
        """The token ids an image's placeholder becomes. ``token_id(str) -> int | None`` looks up the delimiter
        tokens; without it, or when the tokenizer lacks one of them, the image tokens stand alone."""
        def tid(s: str) -> int | None:
            return token_id(s) if token_id is not None else None

        names = [SPECIAL["start"], SPECIAL["end"]]
        multi = img.rows > 1 or img.cols > 1
        if multi:
            names += [f"<|img_row_{r + 1}_col_{c + 1}|>" for r in range(img.rows) for c in range(img.cols)]
            if self.use_thumbnail:
                names.append(SPECIAL["thumbnail"])
        ids = {s: tid(s) for s in names}
        special = self.use_image_special_tokens and all(v is not None for v in ids.values())
        out: list[int] = [ids[SPECIAL["start"]]] if special else []
        if multi:
            for r in range(img.rows):
                for c in range(img.cols):
                    if special:
                        out.append(ids[f"<|img_row_{r + 1}_col_{c + 1}|>"])
                    out += [image_token] * img.tokens_per_tile
            if self.use_thumbnail:
                if special:
                    out.append(ids[SPECIAL["thumbnail"]])
                out += [image_token] * img.tokens_for_image
        else:
            out += [image_token] * img.tokens_for_image
        if special:
            out.append(ids[SPECIAL["end"]])
        return out


QWEN_DEFAULTS: dict[str, Any] = {   # transformers 5.24's Qwen2VLImageProcessorPil (LFM3-VL's), patch 16 as LFM3-VL's
    "patch_size": 16, "temporal_patch_size": 2, "merge_size": 2, "min_pixels": 56 * 56, "max_pixels": 28 * 28 * 1280,
    "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
    "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
}


class MergeBlockProcessor:
    """LFM3-VL's preprocessing (transformers' Qwen2VLImageProcessorPil): resize (bicubic) so both sides are
    multiples of patch x merge with min_pixels..max_pixels pixels, no tiles; CLIP mean / std; patches in
    merge-block order, each patch's values ordered channel, frame (the image repeated temporal_patch_size
    times), row, column. The prompt's placeholder becomes the image tokens alone (the chat template adds
    ``<|vision_start|>`` / ``<|vision_end|>``)."""

    def __init__(self, config: dict[str, Any] | None = None):
        c = dict(QWEN_DEFAULTS)
        cfg = dict(config or {})
        size = cfg.pop("size", None)
        if isinstance(size, dict):
            cfg.setdefault("min_pixels", size.get("shortest_edge"))
            cfg.setdefault("max_pixels", size.get("longest_edge"))
        for k, v in cfg.items():
            if k in QWEN_DEFAULTS and v is not None:
                c[k] = v
        for k in ("patch_size", "temporal_patch_size", "merge_size", "min_pixels", "max_pixels"):
            if not isinstance(c[k], int) or isinstance(c[k], bool) or c[k] < 1:
                raise ImageError(f"processor setting {k} must be a positive integer, not {c[k]!r}")
        if c["min_pixels"] > c["max_pixels"]:
            raise ImageError("processor setting min_pixels must not exceed max_pixels")
        self.config = c

    @property
    def max_num_patches(self) -> int:
        return self.config["max_pixels"] // self.config["patch_size"] ** 2

    def smart_resize(self, height: int, width: int) -> tuple[int, int]:
        c = self.config
        f = c["patch_size"] * c["merge_size"]
        if max(height, width) / min(height, width) > 200:
            raise ImageError(f"a {width} x {height} image: the aspect ratio must be under 200")
        h, w = round(height / f) * f, round(width / f) * f
        if h * w > c["max_pixels"]:
            beta = math.sqrt(height * width / c["max_pixels"])
            h = max(f, math.floor(height / beta / f) * f)
            w = max(f, math.floor(width / beta / f) * f)
        elif h * w < c["min_pixels"]:
            beta = math.sqrt(c["min_pixels"] / (height * width))
            h = math.ceil(height * beta / f) * f
            w = math.ceil(width * beta / f) * f
        return h, w

    def process(self, image: Any) -> ProcessedImage:
        from PIL import Image

        c = self.config
        im = load_image(image)
        h, w = self.smart_resize(im.size[1], im.size[0])
        x = np.asarray(im.resize((w, h), Image.BICUBIC)).transpose(2, 0, 1)
        if c["do_rescale"]:
            x = (x.astype(np.float64) * c["rescale_factor"]).astype(np.float32)
        if c["do_normalize"]:
            x = ((x - np.asarray(c["image_mean"], np.float32)[:, None, None])
                 / np.asarray(c["image_std"], np.float32)[:, None, None]).astype(np.float32)
        p, m, tp = c["patch_size"], c["merge_size"], c["temporal_patch_size"]
        gh, gw = h // p, w // p
        x = x.reshape(3, gh // m, m, p, gw // m, m, p).transpose(1, 4, 2, 5, 0, 3, 6)
        x = np.broadcast_to(x[:, :, :, :, :, None], (*x.shape[:5], tp, p, p))
        piece = Piece(np.ascontiguousarray(x.reshape(gh * gw, 3 * tp * p * p), np.float32), gh, gw)
        out = ProcessedImage([piece], 1, 1, 0, gh * gw // (m * m))
        out._merge = m * m
        return out

    def image_token_ids(self, img: ProcessedImage, image_token: int, token_id=None) -> list[int]:
        return [image_token] * img.tokens_for_image


def make_processor(layout: str, config: dict[str, Any] | None = None):
    """The preprocessing of a vision artifact by its patch layout: ``raster`` (LFM2-VL, :class:`ImageProcessor`)
    or ``merge_blocks`` (LFM3-VL, :class:`MergeBlockProcessor`)."""
    if layout == "merge_blocks":
        return MergeBlockProcessor(config)
    if layout == "raster":
        return ImageProcessor(config)
    raise ImageError(f"unknown vision patch layout {layout!r} (raster, merge_blocks)")


@lru_cache(maxsize=32)
def _ratios(lo: int, hi: int) -> list[tuple[int, int]]:
    """(cols, rows) grids with lo..hi tiles, fewest tiles first (transformers' order)."""
    r = {(w, h) for n in range(lo, hi + 1) for w in range(1, n + 1) for h in range(1, n + 1) if lo <= w * h <= hi}
    return sorted(r, key=lambda x: x[0] * x[1])
