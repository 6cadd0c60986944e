"""Weight-only quantization in the IR: how a quantized weight is stored and what it means.

A weight role ``R`` of a node is quantized when the node also has ``R_scale`` (and, for asymmetric int4,
``R_zero``) parameters. ``R`` then holds integer codes; its value is, with ``g = K / G`` (group size) for
``R_scale`` of shape ``[..., N, G]``:

- ``i8`` codes: ``W = q * scale`` (``G = 1``: per output channel; else per group, float16 values like int4's:
  GGUF's Q8_0 is ``i8`` with groups of 32),
- ``u4`` codes 0..15 without a zero: ``W = (q - 8) * scale`` (symmetric),
- ``u4`` codes with ``R_zero`` [..., N, G]: ``W = (q - zero) * scale`` (asymmetric).

int4 scales are float16 values held in float32 (as llama.cpp's Q4_0 keeps them): a target may store them in 16
bits without changing what the weights mean.

In a weights file ``u4`` codes are stored one per byte (uint8); targets pack them as they like.
"""
from __future__ import annotations

import numpy as np

QUANT_DTYPES = ("i8", "u4")
STORAGE = {"i4": "int8", "u4": "uint8"}          # numpy storage of sub-byte IR dtypes


def storage_dtype(ir_dtype: str) -> str:
    from .types import DTYPES

    return STORAGE.get(ir_dtype, DTYPES[ir_dtype])


def quantized_params(name: str, shape: tuple[int, ...], code_dtype: str, scale_shape: tuple[int, ...],
                     zero: bool = False) -> tuple:
    """The IR params of a quantized weight named ``name``: (codes, scale, zero or None), named as every producer
    (the quantize pass, the GGUF importer) and consumer (interpreter, targets) expects: ``name``, ``name.scale``,
    ``name.zero``."""
    from .graph import Param
    from .types import TensorType

    if code_dtype not in QUANT_DTYPES:
        raise ValueError(f"unknown code dtype {code_dtype!r} (known: {', '.join(QUANT_DTYPES)})")
    return (Param(name, TensorType(code_dtype, tuple(shape))),
            Param(name + ".scale", TensorType("f32", tuple(scale_shape))),
            Param(name + ".zero", TensorType("f32", tuple(scale_shape))) if zero else None)


def set_quantized(node, role: str, params: tuple) -> None:
    """Point ``node``'s weight ``role`` at quantized params (from :func:`quantized_params`)."""
    qp, sp, zp = params
    node.params[role], node.params[role + "_scale"] = qp, sp
    if zp is not None:
        node.params[role + "_zero"] = zp


def dequantize(q: np.ndarray, scale: np.ndarray, zero: np.ndarray | None, ir_dtype: str) -> np.ndarray:
    """The float32 weight a quantized one stands for."""
    G = scale.shape[-1]
    K = q.shape[-1]
    qf = q.astype(np.float32)
    if ir_dtype == "u4":
        qf = qf - (np.float32(8) if zero is None else np.repeat(zero, K // G, axis=-1))
    return qf * np.repeat(scale, K // G, axis=-1)


def _f16_up(s: np.ndarray) -> np.ndarray:
    """The smallest positive float16 value >= s (float32): int4 scales that 16 bits hold exactly; rounding up
    keeps every weight of the group inside the code range."""
    s = np.asarray(s, np.float32)
    h = s.astype(np.float16)
    h = np.where(h.astype(np.float32) < s, np.nextafter(h, np.float16(np.inf)), h)
    return np.maximum(h, np.float16(2.0 ** -24)).astype(np.float32)


def quantize(w: np.ndarray, bits: int, group: int | None, asym: bool = False
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(codes, scale, zero or None) of float weight ``w`` [..., N, K]; round to nearest.

    bits 8: symmetric per channel (``group`` None) or per group (float16 scales); bits 4: groups of ``group``
    along K, scales float16 values (symmetric: see :func:`_q4_symmetric`; the scale may be negative)."""
    K = w.shape[-1]
    g = group or K
    if K % g:
        raise ValueError(f"group size {g} does not divide the input width {K}")
    wg = w.reshape(*w.shape[:-1], K // g, g).astype(np.float32)
    if bits == 8:
        amax = np.abs(wg).max(-1)
        scale = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
        if group is not None:           # grouped int8 keeps float16 scales, as GGUF's Q8_0 does
            scale = _f16_up(scale)
        q = np.clip(np.rint(wg / scale[..., None]), -127, 127).astype(np.int8)
        return q.reshape(w.shape), scale, None
    if bits != 4:
        raise ValueError(f"unsupported bit width {bits}")
    if asym:
        lo, hi = wg.min(-1), wg.max(-1)
        scale = _f16_up(np.where(hi > lo, (hi - lo) / 15.0, 1.0))
        zero = np.clip(np.rint(-lo / scale), 0, 15).astype(np.float32)
        q = np.clip(np.rint(wg / scale[..., None]) + zero[..., None], 0, 15).astype(np.uint8)
        return q.reshape(w.shape), scale, zero
    q = np.empty(wg.shape, np.uint8)
    scale = np.empty(wg.shape[:-1], np.float32)
    flat_w, flat_q, flat_s = wg.reshape(-1, g), q.reshape(-1, g), scale.reshape(-1)
    step = max(1, (1 << 22) // g)                       # groups a pass: bounded temporaries on big weights
    for a in range(0, len(flat_w), step):
        flat_q[a:a + step], flat_s[a:a + step] = _q4_symmetric(flat_w[a:a + step])
    return q.reshape(w.shape), scale, None


# the code-range stretches tried per group: the extreme value maps to -(8 + t) (t = 0 is GGUF's Q4_0)
_Q4_STRETCH = np.arange(-0.5, 0.51, 0.1, dtype=np.float32)


def _q4_symmetric(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Codes (uint8, ``q + 8``) and float16-valued scales of groups ``x`` [n, g] with all 16 levels -8..7.

    As llama.cpp's Q4_0, the value of largest magnitude ``m`` (with its sign) anchors the range at -8, so the
    scale is negative when ``m`` is positive; as its K-quants, a few stretches of that range are tried and each
    group keeps the codes whose least-squares scale leaves the smallest squared error. Never worse than Q4_0 on
    a group (its codes are among those tried, with a scale at least as good)."""
    idx = np.abs(x).argmax(-1)
    m = np.take_along_axis(x, idx[:, None], -1)[:, 0]
    m = np.where(m == 0, np.float32(1), m)
    best_err = np.full(len(x), np.inf, np.float32)
    best_q = np.zeros(x.shape, np.int8)
    best_d = np.ones(len(x), np.float32)
    for t in _Q4_STRETCH:
        iscale = -(np.float32(8) + t) / m
        q = np.clip(np.rint(x * iscale[:, None]), -8, 7)
        qq = (q * q).sum(-1)
        d = np.where(qq > 0, (x * q).sum(-1) / np.where(qq > 0, qq, 1), np.float32(1)).astype(np.float32)
        d = d.astype(np.float16).astype(np.float32)      # the scale as it is stored
        d = np.where(d == 0, np.float32(2.0 ** -24), d)
        err = ((x - d[:, None] * q) ** 2).sum(-1)
        better = err < best_err
        best_err = np.where(better, err, best_err)
        best_q[better] = q[better].astype(np.int8)
        best_d = np.where(better, d, best_d)
    return (best_q + 8).astype(np.uint8), best_d


# --- bf16 activations (a node's ``act_dtype`` attribute "bf16")
#
# A node with ``act_dtype = "bf16"`` feeds its bf16 projections the input x rounded to bf16 (round half to even);
# the products of two bf16 values are exact in float32 and are summed in float32 (PyTorch's bf16 CPU matmuls).

def round_bf16(x: np.ndarray) -> np.ndarray:
    """x rounded to the nearest bf16 (half to even), as float32: what the bf16-activation kernels multiply."""
    import ml_dtypes

    return np.asarray(x, np.float32).astype(ml_dtypes.bfloat16).astype(np.float32)


# --- int8 activations (a node's ``act_quant`` attribute: the group size)
#
# A node with ``act_quant = g`` feeds its quantized projections the input x quantized per group of g along K
# (the last group may be short): d = max|x| / 127, q = round-half-even(x * (127 / max|x|)) in [-127, 127], the
# projection sees q * d. Integer kernels multiply the codes q by the weight codes and scale once per group.

ACT_GROUP = 32          # the group size lfmc uses (passes/quantize_act.py) and its integer kernels take


def quantize_activations(x: np.ndarray, group: int) -> tuple[np.ndarray, np.ndarray]:
    """(int8 codes [..., K], float32 scales [..., ceil(K / group)]) of x, as the kernels compute them."""
    x = np.asarray(x, np.float32)
    K = x.shape[-1]
    G = -(-K // group)
    xp = np.zeros((*x.shape[:-1], G * group), np.float32)
    xp[..., :K] = x
    xb = xp.reshape(*x.shape[:-1], G, group)
    amax = np.abs(xb).max(-1)
    with np.errstate(divide="ignore"):
        inv = np.where(amax > 0, np.float32(127) / amax, np.float32(0)).astype(np.float32)
    q = np.rint(xb * inv[..., None]).astype(np.int8)
    return q.reshape(*x.shape[:-1], G * group)[..., :K], (amax / np.float32(127)).astype(np.float32)


def fake_quantize_activations(x: np.ndarray, group: int) -> np.ndarray:
    """x as an int8-activation projection sees it: codes times their group's scale (float32)."""
    q, d = quantize_activations(x, group)
    K = q.shape[-1]
    return (q.astype(np.float32) * np.repeat(d, group, axis=-1)[..., :K]).astype(np.float32)
