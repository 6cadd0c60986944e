"""fuse: the SwiGLU gate into the up-projection."""
from __future__ import annotations

import copy
from typing import Any

from ..ir.model import Model
from .base import register


@register("fuse-swiglu", "fuse")
def fuse_swiglu(model: Model, options: dict[str, Any]) -> Model:
    """Mark gated MLPs so that w1 and w3 run as one projection whose epilogue applies silu(gate) ⊙ up: the
    2F-wide gate/up activations are never written to memory."""
    g = copy.deepcopy(model.graph)
    for n in g.nodes:
        if n.op == "gated_mlp":
            n.fused = {**n.fused, "swiglu": True}
    return model.__class__(g, model.weights, model.provenance, model.tokenizer)
