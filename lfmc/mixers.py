"""Token-mixer arithmetic in numpy (the short convolution, rotary embeddings), written once for the two numpy
executors: the IR interpreter
(``lfmc/ir/interp.py``, the reference every target is checked against) and the simulated wafer
(``lfmc/runtime/drivers/wafer.py``). Imports nothing of lfmc, so the runtime may use it too. The compiled
kernels write the same sum in TensorIR (``lfmc/targets/kernels/conv_scan.py``) and MLIR (``targets/mlir``)."""
from __future__ import annotations

import numpy as np


def causal_conv(bx: np.ndarray, state: np.ndarray, taps: np.ndarray,
                bias: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Depthwise causal convolution of ``bx`` [T, D] (the gated input B * x) continuing ``state`` [D, L-1] (the
    previous L-1 inputs, oldest first) with ``taps`` [D, L]: the output [T, D] (+ ``bias``) and the new state
    (the last L-1 inputs; a zero-width state when L is 1)."""
    T, L = bx.shape[0], taps.shape[1]
    hist = np.concatenate([state.T, bx], axis=0)                    # [L-1+T, D]
    out = np.zeros_like(bx)
    for j in range(L):
        out += hist[j:j + T] * taps[:, j]
    if bias is not None:
        out += bias
    new = np.ascontiguousarray(hist[hist.shape[0] - (L - 1):].T) if L > 1 else state
    return out, new


def rope_inv_freq(head_dim: int, theta: float, angles: int | None = None, factor: float = 1.0) -> np.ndarray:
    """The head_dim / 2 inverse frequencies of a rotate-half rotary embedding, float32: theta^(-2i/head_dim) /
    ``factor`` for the first ``angles`` (all by default), zero for the rest (transformers' "proportional" RoPE:
    partial rotation with frequencies over the whole head, so the rotated dimensions are i and i + head_dim/2
    for i < angles, not one block)."""
    half = head_dim // 2
    angles = half if angles is None else angles
    inv = (np.float32(1.0) / (np.float32(theta) ** (np.arange(0, head_dim, 2, dtype=np.float32)
                                                    / np.float32(head_dim)))).astype(np.float32)
    inv[angles:] = 0
    return (inv / np.float32(factor)).astype(np.float32)


def rope(x: np.ndarray, pos: np.ndarray, inv_freq: np.ndarray) -> np.ndarray:
    """Rotate-half (NeoX) rotary embedding of ``x`` [T, H, hd] at absolute positions ``pos`` [T]."""
    half = x.shape[-1] // 2
    freqs = pos.astype(np.float32)[:, None] * inv_freq[None, :]
    emb = np.concatenate([freqs, freqs], axis=-1)
    cos, sin = np.cos(emb)[:, None, :], np.sin(emb)[:, None, :]
    rot = np.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos + rot * sin


def resize_weights(height: int, width: int, grid: int) -> np.ndarray:
    """The weights [height * width, grid * grid] that resize a grid x grid table of learned position embeddings
    to a height x width patch grid (row-major), as ``F.interpolate(mode="bilinear", align_corners=False,
    antialias=True)`` does (SigLIP2 NaFlex): separable triangle filters, widened when shrinking. float32."""
    def axis(size: int) -> np.ndarray:
        scale = np.float32(grid) / np.float32(size)
        support = max(scale, np.float32(1))
        center = (np.arange(size, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
        w = np.clip(1 - np.abs(np.arange(grid, dtype=np.float32)[None, :] - center[:, None]) / support, 0, None)
        return (w / w.sum(-1, keepdims=True)).astype(np.float32)

    r, c = axis(height), axis(width)
    return (r[:, None, :, None] * c[None, :, None, :]).reshape(height * width, grid * grid).astype(np.float32)


def merge_order(height: int, width: int, factor: int) -> np.ndarray:
    """Patch indices (row-major in a height x width grid) in the order a pixel unshuffle by ``factor`` reads them:
    blocks of factor x factor patches row-major, and within a block the patches row-major, so that each block's
    patches, concatenated, form one image token. int32 [height * width]."""
    if height % factor or width % factor:
        raise ValueError(f"a {height} x {width} patch grid does not split into {factor} x {factor} blocks")
    br, bc, a, b = np.meshgrid(np.arange(height // factor), np.arange(width // factor), np.arange(factor),
                               np.arange(factor), indexing="ij")
    return ((br * factor + a) * width + bc * factor + b).reshape(-1).astype(np.int32)


def gelu(x: np.ndarray, approximate: bool = True) -> np.ndarray:
    """GELU of ``x`` in float32: the tanh approximation (``gelu_pytorch_tanh``) or the exact erf form."""
    x = x.astype(np.float32)
    if approximate:
        return (np.float32(0.5) * x * (1 + np.tanh(np.float32(0.7978845608028654)
                                                   * (x + np.float32(0.044715) * x * x * x)))).astype(np.float32)
    return (np.float32(0.5) * x * (1 + _erf(x / np.float32(np.sqrt(2.0))))).astype(np.float32)


def _erf(x: np.ndarray) -> np.ndarray:
    """erf to about 1e-7 (float32 rounding), computed in float64: numpy has no erf."""
    from math import erf

    return np.vectorize(erf, otypes=[np.float64])(x.astype(np.float64)).astype(np.float32)


def merge_positions(height: int, width: int, factor: int) -> tuple[np.ndarray, np.ndarray]:
    """(row, column) in the patch grid of each patch in merge-block order (LFM3-VL's patch order)."""
    o = merge_order(height, width, factor)
    return o // width, o % width


def grid_conv(x: np.ndarray, taps: np.ndarray, height: int, width: int, factor: int) -> np.ndarray:
    """Depthwise K x K convolution, zero padded, of ``x`` [T, D] (patches in merge-block order of a height x width
    grid) with ``taps`` [D, K, K]; the output in the same order."""
    rows, cols = merge_positions(height, width, factor)
    K = taps.shape[-1]
    g = np.zeros((height + K - 1, width + K - 1, x.shape[1]), np.float32)
    g[rows + K // 2, cols + K // 2] = x
    out = np.zeros_like(x)
    for dy in range(K):
        for dx in range(K):
            out += g[rows + dy, cols + dx] * taps[:, dy, dx]
    return out


def rope_2d(x: np.ndarray, rows: np.ndarray, cols: np.ndarray, theta: float) -> np.ndarray:
    """Axial 2-D rotary embedding of ``x`` [T, H, hd] (Qwen2/3-VL's vision rotary): head_dim / 4 frequencies
    theta^(-4i/hd); the row's angles then the column's fill head_dim / 2, rotate-half pairing."""
    hd = x.shape[-1]
    q = hd // 2
    inv = (np.float32(1.0) / (np.float32(theta) ** (np.arange(0, q, 2, dtype=np.float32) / np.float32(q))))
    ang = np.concatenate([rows.astype(np.float32)[:, None] * inv, cols.astype(np.float32)[:, None] * inv], -1)
    emb = np.concatenate([ang, ang], -1)
    cos, sin = np.cos(emb)[:, None, :], np.sin(emb)[:, None, :]
    rot = np.concatenate([-x[..., hd // 2:], x[..., :hd // 2]], axis=-1)
    return (x * cos + rot * sin).astype(np.float32)
