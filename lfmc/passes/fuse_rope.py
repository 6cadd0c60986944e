"""fuse: QK-norm and RoPE into the attention kernel."""
from __future__ import annotations

import copy
from typing import Any

from ..ir.model import Model
from .base import register


@register("fuse-rope", "fuse")
def fuse_rope(model: Model, options: dict[str, Any]) -> Model:
    """Mark attention nodes so that the per-head q/k RMSNorm, RoPE and the KV-cache write run inside the
    attention kernel, reading the QKV projection's output directly: the rotated queries never reach memory and
    a layer loses one launch."""
    g = copy.deepcopy(model.graph)
    for n in g.nodes:
        if n.op == "attention":
            n.fused = {**n.fused, "rope": True}
    return model.__class__(g, model.weights, model.provenance, model.tokenizer)
