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
