"""fuse: a sandwich (post-) norm into the residual add that consumes it."""
from __future__ import annotations

import copy
from typing import Any

from ..ir.model import Model
from .base import register


@register("fuse-post-norm", "fuse")
def fuse_post_norm(model: Model, options: dict[str, Any]) -> Model:
    """Mark ``rmsnorm`` nodes whose only user is a residual ``add`` (LFM3's post_operator_norm / post_ffn_norm):
    the target computes rms(y) * w and adds it into the residual in one kernel, so the normalized operator output
    is never written to memory. (``fuse-residual`` cannot fold such an add into the operator's output projection:
    the norm needs the whole row first.)"""
    g = copy.deepcopy(model.graph)
    by_name = {n.name: n for n in g.nodes}
    users = g.users()
    for n in g.nodes:
        u = users.get(n.name, [])
        if (n.op == "rmsnorm" and not n.fused and len(u) == 1 and by_name.get(u[0]) is not None
                and by_name[u[0]].op == "add" and by_name[u[0]].inputs.count(n.name) == 1):
            n.fused = {"post": u[0]}
    return model.__class__(g, model.weights, model.provenance, model.tokenizer)
