"""quantize: weight-only int8 / int4 quantization of dense projections (see lfmc/ir/quant.py)."""
from __future__ import annotations

import copy
import re
from typing import Any

import numpy as np

from ..ir.errors import LfmcError
from ..ir.graph import Param
from ..ir.model import Model
from ..ir.ops import KV_DTYPES, kv_state_type, SCHEMAS
from ..ir.quant import quantize, quantized_params, set_quantized
from ..ir.types import TensorType
from ..progress import task
from .base import register

# the weight roles quantized per op (the MoE router stays float32: it is small and decides the routing)
HEAD_OPS = ("embedding", "lm_head")
ROLES = {name: s.quant_roles for name, s in SCHEMAS.items() if s.quant_roles}   # the op schemas' trait
SCHEMES = ("q8 (int8 per channel), q8gG (int8, groups of G along the input), q4gG (int4, symmetric, groups of G), "
           "q4gGa (asymmetric)")


def parse_scheme(scheme: str) -> tuple[int, int | None, bool]:
    """'q8' -> (8, None, False); 'q8g32' -> (8, 32, False); 'q4g32' -> (4, 32, False); 'q4g64a' -> (4, 64, True)."""
    if scheme == "q8":
        return 8, None, False
    m = re.fullmatch(r"q([48])g(\d+)(a?)", scheme or "")
    if not m or int(m.group(2)) < 2 or int(m.group(2)) % 2 or (m.group(1) == "8" and m.group(3)):
        raise LfmcError(f"unknown quantization {scheme!r} (known: {SCHEMES})")
    return int(m.group(1)), int(m.group(2)), bool(m.group(3))


@register("quantize", "quantize")
def quantize_weights(model: Model, options: dict[str, Any]) -> Model:
    """Replace the projection weights (dense, MoE experts, the embedding / LM head) by integer codes and scales, as
    ``options["quant"]`` says (q8, q4g32, q4g64a, ...; with a 4-bit scheme the embedding / LM head in 8-bit groups
    unless ``options["quant_head"]`` is "same"): the interpreter runs them dequantized, targets fuse the
    dequantization into their GEMV / GEMM kernels. A weight whose input width the group does not divide stays
    float32 (listed in the graph's ``quant_skipped`` attribute)."""
    scheme = options.get("quant")
    if not scheme or scheme == "f32":
        return model
    if model.weights is None:
        raise LfmcError("quantization needs weights (the model was imported config-only)")
    bits, group, asym = parse_scheme(scheme)
    g = copy.deepcopy(model.graph)
    w = dict(model.weights)
    done: dict[str, tuple[Param, Param, Param | None]] = {}
    skipped: list[str] = []
    # a 4-bit scheme keeps the token embedding / LM head in 8-bit groups unless asked otherwise: the table that
    # makes the logits loses the most from 4 bits (llama.cpp's Q4_0 / Q4_K files keep it at 6 bits)
    head8 = bits == 4 and options.get("quant_head", "auto") == "auto"
    with task(f"quantizing weights ({scheme})", len(g.nodes), "node") as bar:
        for n in g.nodes:
            bar.update()
            if head8 and n.op in HEAD_OPS:
                _quantize_node(n, w, done, skipped, 8, group, False)
            else:
                _quantize_node(n, w, done, skipped, bits, group, asym)
    g.attrs = {**g.attrs, "quant": scheme}
    if skipped:
        g.attrs["quant_skipped"] = sorted(set(skipped))
    return Model(g, {k: np.ascontiguousarray(v) for k, v in w.items()}, model.provenance, model.tokenizer)


def _quantize_node(n, w: dict[str, np.ndarray], done: dict, skipped: list[str], bits: int, group: int | None,
                   asym: bool) -> None:
    """Quantize ``n``'s projection weights in ``w`` (each weight once, shared by every node using it)."""
    for role in ROLES.get(n.op, ()):
        p = n.params.get(role)                      # an optional projection (an attention's gate) may be absent
        if p is None or p.type.dtype not in ("f32", "f16", "bf16"):     # 16-bit: an imported float16 file
            continue
        if p.name not in done:
            K = p.type.shape[-1]
            if group is not None and K % group:
                skipped.append(p.name)
                continue
            codes, scale, zero = quantize(np.asarray(w[p.name], np.float32), bits, group, asym)
            done[p.name] = qps = quantized_params(p.name, p.type.shape, "i8" if bits == 8 else "u4", scale.shape,
                                                  zero is not None)
            w[p.name], w[qps[1].name] = codes, scale
            if zero is not None:
                w[qps[2].name] = zero
        set_quantized(n, role, done[p.name])


@register("cast-kv", "quantize")
def cast_kv(model: Model, options: dict[str, Any]) -> Model:
    """Store the KV cache in float16 (``options["kv_dtype"]`` f16) or int8 (i8: each position's key and value of
    each head as int8 codes with a float32 scale, absmax / 127): the state that grows with context takes half or
    about a quarter of the memory and bandwidth; attention still computes in float32."""
    kvd = options.get("kv_dtype") or "f32"
    if kvd not in KV_DTYPES:
        raise LfmcError(f"unknown KV-cache dtype {kvd!r} (known: {', '.join(KV_DTYPES)})")
    if kvd == "f32":
        return model
    g = copy.deepcopy(model.graph)
    for n in g.nodes:
        if n.op == "attention":
            n.attrs = {**n.attrs, "kv_dtype": kvd}
            n.state = {k: kv_state_type(kvd, t.shape[0], n.attrs["kv_heads"], n.attrs["head_dim"])
                       for k, t in n.state.items()}
    return Model(g, model.weights, model.provenance, model.tokenizer)


@register("cast-weights", "quantize")
def cast_weights(model: Model, options: dict[str, Any]) -> Model:
    """Store the same weights as ``quantize`` in 16 bits when ``options["dtype"]`` is f16 or bf16 (weights
    only: activations and accumulation stay float32). Weights already quantized are left alone."""
    dtype = options.get("dtype") or "f32"
    if dtype == "f32":
        return model
    if dtype not in ("f16", "bf16"):
        raise LfmcError(f"unknown weight dtype {dtype!r} (known: f32, f16, bf16)")
    if model.weights is None:
        raise LfmcError("casting weights needs weights (the model was imported config-only)")
    import ml_dtypes

    npdt = np.float16 if dtype == "f16" else ml_dtypes.bfloat16
    g = copy.deepcopy(model.graph)
    w = dict(model.weights)
    for n in g.nodes:
        for role in ROLES.get(n.op, ()):
            p = n.params.get(role)
            if p is not None and p.type.dtype == "f32":
                if w[p.name].dtype == np.float32:
                    w[p.name] = w[p.name].astype(npdt)
                n.params[role] = Param(p.name, TensorType(dtype, p.type.shape))
    g.attrs = {**g.attrs, "weight_dtype": dtype}
    return Model(g, w, model.provenance, model.tokenizer)
