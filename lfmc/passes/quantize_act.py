"""quantize-activations: int8 activations for int8 / int4 weights (W8A8, W4A8), as llama.cpp's Q8_0 / Q4_0 do;
bf16 activations for bf16 weights (as PyTorch's bf16 matmuls compute)."""
from __future__ import annotations

import copy
from typing import Any

from ..ir.errors import LfmcError
from ..ir.model import Model
from ..ir.quant import ACT_GROUP
from .base import register
from .quantize import ROLES

GROUP = ACT_GROUP       # inputs per activation scale: one AVX2 register of int8 codes
KINDS = ("i8", "bf16")


def act_quant_option(value: str | None) -> str | None:
    """The ``act_quant`` option normalized: None / "none" / "f32" = float activations, "i8" = int8, "bf16"."""
    if value in (None, "", "none", "f32"):
        return None
    if value not in KINDS:
        raise LfmcError(f"unknown activation quantization {value!r} (known: none, {', '.join(KINDS)})")
    return value


def eligible(n) -> bool:
    """Whether every projection weight of ``n`` is int8 or int4 (grouped ones in groups of a multiple of 32): the
    integer kernels take the node's input once for all its projections."""
    roles = [r for r in ROLES.get(n.op, ()) if r in n.params]
    if n.op in ("moe", "embedding") or not roles:
        return False
    for r in roles:
        p = n.params[r]
        if p.type.dtype not in ("i8", "u4") or r + "_scale" not in n.params:
            return False
        K, G = p.type.shape[-1], n.params[r + "_scale"].type.shape[-1]
        if G > 1 and (K // G) % GROUP:              # groups (int4; grouped int8) must be multiples of 32
            return False
    return True


def eligible_bf16(n) -> bool:
    """Whether every projection weight of ``n`` is bf16 (MoE experts, the embedding table and the LM head, which
    reads the tied table in its own layout and one row per prefill, keep float activations)."""
    roles = [r for r in ROLES.get(n.op, ()) if r in n.params]
    if n.op in ("moe", "embedding", "lm_head") or not roles:
        return False
    return all(n.params[r].type.dtype == "bf16" for r in roles)


@register("quantize-activations", "quantize")
def quantize_activations(model: Model, options: dict[str, Any]) -> Model:
    """With ``options["act_quant"] = "i8"``, mark the nodes whose projections are all int8 / int4 (after
    ``quantize``) with ``act_quant = 32``: their inputs are quantized to int8 per group of 32 (scale = max|x| / 127)
    and multiplied by the weight codes in integers; the interpreter quantizes the same way. MoE experts and nodes
    with float or 16-bit weights keep float activations; the nodes left out are listed in the graph's
    ``act_quant_skipped`` attribute."""
    kind = act_quant_option(options.get("act_quant"))
    if kind is None:
        return model
    if kind == "bf16":
        return _bf16_activations(model)
    if not model.graph.attrs.get("quant"):
        raise LfmcError("int8 activations need int8 or int4 weights: give a weight quantization too "
                        "(--quant q8 or q4g32)")
    return _mark(model, eligible, {"act_quant": GROUP}, f"i8g{GROUP}")


def _bf16_activations(model: Model) -> Model:
    """Mark the nodes whose projections are all bf16 (after ``cast-weights``) with ``act_dtype = "bf16"``: their
    inputs are rounded to bf16 and the exact products summed in float32; the interpreter rounds the same way."""
    if model.graph.attrs.get("weight_dtype") != "bf16":
        raise LfmcError("bf16 activations need bf16 weights: compile with --dtype bf16 too")
    return _mark(model, eligible_bf16, {"act_dtype": "bf16"}, "bf16")


def _mark(model: Model, ok, attrs: dict[str, Any], kind: str) -> Model:
    """``model`` with ``attrs`` on the projecting nodes (not the embedding) that ``ok`` accepts, the graph's
    ``act_quant`` = ``kind`` and the others listed in its ``act_quant_skipped``."""
    g = copy.deepcopy(model.graph)
    skipped = []
    for n in g.nodes:
        if n.op not in ROLES or n.op == "embedding":
            continue
        if ok(n):
            n.attrs = {**n.attrs, **attrs}
        else:
            skipped.append(n.name)
    g.attrs = {**g.attrs, "act_quant": kind}
    if skipped:
        g.attrs["act_quant_skipped"] = skipped
    return Model(g, model.weights, model.provenance, model.tokenizer)
