"""The ONNX frontend: LFM2 / LFM2-MoE ONNX graphs lifted to IR by data flow.

What it reads: ``torch.onnx.export`` graphs (static or symbolic axes, any wrapper module), the decoder graphs
onnx-community and Optimum publish (``past_conv.N`` / ``past_key_values.N.*`` cache inputs, ``present*`` outputs,
``attention_mask`` / ``position_ids``), ONNX Runtime's fused ops (``SimplifiedLayerNormalization``,
``SkipSimplifiedLayerNormalization``, ``GroupQueryAttention``, ``RotaryEmbedding``, ``GatherBlockQuantized``),
4-bit ``MatMulNBits`` (blocks of 32 with float16-exact scales kept as lfmc's q4g32, others dequantized with a
note), dynamic int8 (dequantized with a note) and float16 weights; external data files memory-mapped.

``load.py`` reads the file, ``net.py`` normalises the graph (constants, token dependence, side values, caches),
``fuse.py`` fuses norms / projections / embeddings, ``lift.py`` walks the residual stream.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ...ir.errors import LfmcError
from ...ir.graph import Graph
from ...ir.model import Model
from .lift import Lifter, lift_net
from .load import load_graph
from .net import Net, OnnxLiftError

__all__ = ["OnnxLiftError", "import_onnx", "lift_onnx"]


def _lift(mo, name: str, source: str, base: Path | None, lfm3: bool | None = None) -> Lifter:
    try:
        return lift_net(Net(mo, source, base), name, lfm3)
    except LfmcError:
        raise
    except (KeyError, IndexError, ValueError, TypeError, AttributeError) as e:
        # a graph malformed in a way no pattern check anticipated: still an error about the input, not a crash
        raise LfmcError(f"{source}: malformed ONNX graph ({type(e).__name__}: {e})") from None


def lift_onnx(mo, name: str = "model", source: str = "<onnx>",
              base: Path | None = None) -> tuple[Graph, dict[str, np.ndarray]]:
    """IR graph and float32 weights of an LFM2 / LFM2-MoE ONNX ModelProto (quantized blocks dequantized)."""
    from ...ir.quant import dequantize

    lf = _lift(mo, name, source, base)
    weights = dict(lf.weights)
    for pname, (dt, codes, scale, zero) in lf.kept.items():
        weights[pname] = dequantize(codes, scale, zero, dt)
    return lf.graph, {p: weights[p] for p in lf.graph.params()}


def import_onnx(path: str | os.PathLike, name: str | None = None) -> Model:
    """An LFM2 / LFM2-MoE ONNX file lifted to IR with its weights. ``config.json`` / ``tokenizer.json`` /
    a chat template beside the file, or one folder up (onnx-community's ``onnx/`` layout), supply token ids,
    context length, tokenizer and chat template."""
    from ...ir.quant import quantized_params, set_quantized
    from ..config import config_from_graph, read_json_object

    p = Path(path)
    mo = load_graph(p)
    side = next((d / "config.json" for d in (p.parent, p.parent.parent) if (d / "config.json").is_file()), None)
    extra: dict[str, Any] = {}
    if side is not None:
        extra = read_json_object(side)
    lfm3 = True if (extra.get("model_type") == "lfm3" or "Lfm3ForCausalLM" in (extra.get("architectures") or [])
                    or extra.get("architecture") == "Lfm3ForCausalLM") else None
    lf = _lift(mo, name or p.stem, str(p), p.parent, lfm3)
    g = lf.graph
    cfg = config_from_graph(g, extra, where=str(side) if side else None)    # before the quantized params are marked
    weights = {k: v for k, v in lf.weights.items() if k not in lf.kept}
    schemes = set()
    for n in g.nodes:
        for role, prm in list(n.params.items()):
            if prm.name in lf.kept:
                dt, codes, scale, zero = lf.kept[prm.name]
                set_quantized(n, role, quantized_params(prm.name, prm.type.shape, dt, scale.shape, zero is not None))
                schemes.add(("q8g" if dt == "i8" else "q4g") + str(prm.type.shape[-1] // scale.shape[-1])
                            + ("a" if zero is not None else ""))
    f16 = {k for k, d in lf.param_dtypes.items() if d == "f16" and k not in lf.kept}
    if f16:                                      # a float16 file: its projections stay 16-bit (as --dtype f16 does)
        from ...ir.graph import Param
        from ...ir.types import TensorType
        from ...ir.ops import SCHEMAS

        for n in g.nodes:
            for role in SCHEMAS[n.op].quant_roles or ():
                prm = n.params.get(role)
                if prm is not None and prm.name in f16 and prm.type.dtype == "f32":
                    n.params[role] = Param(prm.name, TensorType("f16", prm.type.shape))
                    weights[prm.name] = np.asarray(weights[prm.name], np.float16)
        g.attrs = {**g.attrs, "weight_dtype": "f16"}
    for pname, (dt, codes, scale, zero) in lf.kept.items():
        weights[pname], weights[pname + ".scale"] = np.ascontiguousarray(codes), np.ascontiguousarray(scale,
                                                                                                     np.float32)
        if zero is not None:
            weights[pname + ".zero"] = np.ascontiguousarray(zero, np.float32)
    if schemes:
        g.attrs = {**g.attrs, "quant": "+".join(sorted(schemes))}
    prov: dict[str, Any] = {"source": "onnx", "path": str(p.resolve()), "architecture": cfg["architecture"],
                            "config": cfg, "opset": max((o.version for o in mo.opset_import if o.domain in
                                                         ("", "ai.onnx")), default=None)}
    prov["onnx"] = {"kept": sorted(lf.kept), "converted": lf.notes, "weight_dtypes": sorted(lf.dtypes)}
    if f16:
        prov["onnx"]["hint"] = f"{len(f16)} float16 weights kept in 16 bits (float32 activations, as --dtype f16)"
    m = Model(g, {k: weights[k] for k in g.params()}, prov)
    from .. import chat_template_of

    for d in (p.parent, p.parent.parent):
        tok = d / "tokenizer.json"
        if tok.is_file():
            m.tokenizer = tok.read_text()
            chat = chat_template_of(d)
            if chat:
                m.provenance["chat"] = chat
            break
    return m
