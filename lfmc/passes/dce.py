"""canonicalize: remove nodes whose values nothing uses."""
from __future__ import annotations

import copy
from typing import Any

from ..ir.model import Model
from .base import register


@register("dce", "canonicalize")
def dce(model: Model, options: dict[str, Any]) -> Model:
    """Dead-code elimination: drop nodes whose results are not used by the outputs (and their weights)."""
    g = copy.deepcopy(model.graph)
    live = set(g.outputs)
    keep = []
    for n in reversed(g.nodes):
        if n.name in live:
            keep.append(n)
            live.update(n.inputs)
    g.nodes = list(reversed(keep))
    used = set(g.params())
    w = {k: v for k, v in model.weights.items() if k in used} if model.weights is not None else None
    return Model(g, w, model.provenance, model.tokenizer)
