"""fuse: residual adds into the epilogue of the output projection that feeds them."""
from __future__ import annotations

import copy
from typing import Any

from ..ir.fusion import RESIDUAL_PRODUCERS
from ..ir.model import Model
from .base import register


@register("fuse-residual", "fuse")
def fuse_residual(model: Model, options: dict[str, Any]) -> Model:
    """Mark ``add(y, h)`` where ``y`` comes from an operator with an output projection (short_conv, attention,
    gated_mlp, linear_recurrence, linear, or the MoE expert sum) and is used only by this add: the projection
    accumulates into ``h`` in place, saving a kernel and a pass over the activations."""
    g = copy.deepcopy(model.graph)
    by_name = {n.name: n for n in g.nodes}
    users = g.users()
    for n in g.nodes:
        if n.op != "add" or n.fused:
            continue
        for cand in n.inputs:
            p = by_name.get(cand)
            if p is not None and p.op in RESIDUAL_PRODUCERS and len(users.get(cand, [])) == 1:
                n.fused = {"into": cand}
                break
    return model.__class__(g, model.weights, model.provenance, model.tokenizer)
