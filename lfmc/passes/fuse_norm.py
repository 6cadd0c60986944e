"""fuse: an RMSNorm into the first projection(s) of the operator that consumes it."""
from __future__ import annotations

import copy
from typing import Any

from ..ir.fusion import NORM_CONSUMERS
from ..ir.model import Model
from .base import register


@register("fuse-norm", "fuse")
def fuse_norm(model: Model, options: dict[str, Any]) -> Model:
    """Mark ``rmsnorm`` nodes whose only user is a short_conv, attention or gated_mlp: the target multiplies
    the norm weight into that operator's input projections (W' = W · diag(w)) and computes 1/rms(x) per row
    inside the projection kernel, so the normalized activations are never written to memory."""
    g = copy.deepcopy(model.graph)
    by_name = {n.name: n for n in g.nodes}
    users = g.users()
    for n in g.nodes:
        u = users.get(n.name, [])
        if n.op == "rmsnorm" and len(u) == 1 and u[0] in by_name and by_name[u[0]].op in NORM_CONSUMERS:
            n.fused = {"into": u[0]}
    return model.__class__(g, model.weights, model.provenance, model.tokenizer)
