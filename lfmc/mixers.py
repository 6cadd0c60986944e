"""The short convolution's arithmetic in numpy, written once for the two numpy executors: the IR interpreter
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
