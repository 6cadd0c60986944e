"""prune-experts: keep K experts per MoE layer so that a model fits a device's weight budget.

Options (all optional; the pass does nothing without ``experts_keep`` or ``max_weight_bytes``):

- ``experts_keep``: K for every MoE layer (an int), or ``{layer node name: K}``;
- ``max_weight_bytes``: a budget for all weights in the storage the target will use (``quant`` / ``dtype``
  options, see :func:`weight_bytes`); the largest uniform K that fits is chosen (with calibration, layers get
  different counts: experts are added where they carry the most routing mass);
- ``calibration``: ``{layer node name: {"frequency": [E], "mass": [E], "output_norm": [E]}}`` from
  ``lfmc calibrate``; ``select``: which of those ranks the experts (default ``mass`` with calibration; without
  it ``router``, the router row norm plus the expert bias, a weight-only proxy); ``random`` is a baseline
  (``seed``);
- ``merge``: fold each dropped expert into its most similar kept one (cosine of the gate/up weights), weighted
  by calibration frequency (equal weights without calibration).

The router is sliced with the experts (rows of ``router``, entries of ``expert_bias``), so top-k only ever sees
kept experts; ``top_k`` stays. Every pruned node gets a ``pruned`` attribute: the kept expert ids, the original
count, the selection and why (the budget or the K asked for); ``lfmc show`` prints it. Config-only models are
pruned in their types alone, which is what planning (``lfmc compile --plan-only``) needs.
"""
from __future__ import annotations

import copy
from dataclasses import replace
from typing import Any

import numpy as np

from ..ir.errors import LfmcError
from ..ir.graph import Graph, Node
from ..ir.model import Model
from ..ir.types import TensorType
from .base import register

SELECT = ("mass", "frequency", "output_norm", "router", "random")


def bytes_per_weight(quant: str | None, dtype: str = "f32", K: int = 1) -> float:
    """Storage bytes per element of a projection weight with input width ``K`` under ``quant`` / ``dtype``."""
    if quant and quant not in ("f32", "none"):
        from .quantize import parse_scheme

        bits, group, asym = parse_scheme(quant)
        if bits == 8:
            return 1.0 + 4.0 / (group or K)
        return 0.5 + (8.0 if asym else 4.0) / group
    return {"f32": 4.0, "f16": 2.0, "bf16": 2.0}[dtype]


def weight_bytes(g: Graph, quant: str | None = None, dtype: str = "f32",
                 quant_head: str = "auto") -> dict[str, float]:
    """Bytes of every parameter (tied ones once) as a target would store them: projections quantized or cast
    (a 4-bit scheme's embedding / LM head in 8-bit groups unless ``quant_head`` is "same"), norms, biases and
    routers float32. Keys: parameter names."""
    from .quantize import HEAD_OPS, ROLES, parse_scheme

    head_q = quant
    if quant and quant != "q8" and quant_head == "auto":
        bits, group, _ = parse_scheme(quant)
        head_q = f"q8g{group}" if bits == 4 else quant
    out: dict[str, float] = {}
    for n in g.nodes:
        proj = set(ROLES.get(n.op, ()))
        for role, p in n.params.items():
            if p.name in out:
                continue
            numel = p.type.numel()
            if role in proj and p.type.dtype == "f32":
                q = head_q if n.op in HEAD_OPS else quant
                out[p.name] = numel * bytes_per_weight(q, dtype, int(p.type.shape[-1]))
            else:
                out[p.name] = float(p.type.nbytes())
    return out


def expert_bytes(n: Node, quant: str | None, dtype: str) -> float:
    """Bytes one expert of MoE node ``n`` takes: its gate/up and down weights, its router row and bias entry
    (float32), all of which pruning removes with it."""
    gu, dn = n.params["gate_up"].type.shape, n.params["down"].type.shape
    router = n.params["router"].type.shape[1] * 4 + (4 if "expert_bias" in n.params else 0)
    return (gu[1] * gu[2] * bytes_per_weight(quant, dtype, int(gu[2]))
            + dn[1] * dn[2] * bytes_per_weight(quant, dtype, int(dn[2])) + router)


def plan_counts(g: Graph, budget: float, quant: str | None = None, dtype: str = "f32",
                calibration: dict[str, Any] | None = None) -> dict[str, int]:
    """Experts to keep per MoE layer so that all weights fit ``budget`` bytes. Raises when even ``top_k``
    experts per layer do not fit (the least pruning can go to)."""
    moes = [n for n in g.nodes if n.op == "moe"]
    if not moes:
        raise LfmcError("the model has no MoE layers to prune")
    wb = weight_bytes(g, quant, dtype)
    per = {n.name: expert_bytes(n, quant, dtype) for n in moes}
    fixed = sum(wb.values()) - sum(per[n.name] * n.attrs["num_experts"] for n in moes)
    budget = budget * (1 + 1e-9)                  # byte sums computed two ways differ by rounding
    floor = {n.name: n.attrs["top_k"] for n in moes}
    least = fixed + sum(per[k] * floor[k] for k in per)
    if least > budget:
        raise LfmcError(f"the weights cannot fit {budget / 1e9:.2f} GB even pruned to top_k experts per layer: "
                        f"{least / 1e9:.2f} GB ({fixed / 1e9:.2f} GB outside the experts)")
    if not calibration:
        k = max(floor.values())
        while k < max(n.attrs["num_experts"] for n in moes) and \
                fixed + sum(per[n.name] * min(k + 1, n.attrs["num_experts"]) for n in moes) <= budget:
            k += 1
        return {n.name: max(floor[n.name], min(k, n.attrs["num_experts"])) for n in moes}
    # greedy on routing mass: the next expert goes where it adds the most mass per byte
    counts = dict(floor)
    ranked = {n.name: np.sort(np.asarray(calibration[n.name]["mass"], np.float64))[::-1] for n in moes}
    total = fixed + sum(per[k] * counts[k] for k in counts)
    while True:
        best, gain = None, -1.0
        for n in moes:
            c = counts[n.name]
            if c < n.attrs["num_experts"] and total + per[n.name] <= budget:
                g_ = ranked[n.name][c] / per[n.name]
                if g_ > gain:
                    best, gain = n.name, g_
        if best is None:
            return counts
        counts[best] += 1
        total += per[best]


def _scores(n: Node, weights: dict[str, np.ndarray] | None, cal: dict[str, Any] | None, select: str,
            rng: np.random.Generator) -> np.ndarray:
    E = n.attrs["num_experts"]
    if select == "random":
        return rng.random(E)
    if select == "router":
        if weights is None:                     # config-only: all alike; keep the first ones
            return -np.arange(E, dtype=np.float64)
        r = np.linalg.norm(weights[n.params["router"].name], axis=1)
        if "expert_bias" in n.params:
            r = r + weights[n.params["expert_bias"].name]
        return r
    if cal is None:
        raise LfmcError(f"%{n.name}: selecting experts by {select} needs calibration statistics "
                        "(lfmc calibrate), or select=router")
    return np.asarray(cal[select], np.float64)


@register("prune-experts", "prune")
def prune_experts(model: Model, options: dict[str, Any]) -> Model:
    """Keep K experts per MoE layer (by calibration mass / frequency / output norm, a router proxy, or random),
    slicing the router and expert bias with them; K from experts_keep or a weight budget; optional merging."""
    keep_opt, budget = options.get("experts_keep"), options.get("max_weight_bytes")
    if keep_opt is None and budget is None:
        return model
    g = copy.deepcopy(model.graph)
    cal = options.get("calibration")
    select = options.get("select") or ("mass" if cal else "router")
    if select not in SELECT:
        raise LfmcError(f"unknown expert selection {select!r} (known: {', '.join(SELECT)})")
    moes = [n for n in g.nodes if n.op == "moe"]
    if not moes:
        raise LfmcError("expert pruning asked for, but the model has no MoE layers")
    if budget is not None:
        counts = plan_counts(g, float(budget), options.get("quant"), options.get("dtype", "f32"), cal)
        why = f"weight budget {float(budget) / 1e9:.3g} GB"
    elif isinstance(keep_opt, dict):
        counts, why = {k: int(v) for k, v in keep_opt.items()}, "experts_keep per layer"
    else:
        counts, why = {n.name: int(keep_opt) for n in moes}, f"experts_keep {int(keep_opt)}"
    w = dict(model.weights) if model.weights is not None else None
    rng = np.random.default_rng(int(options.get("seed", 0)))
    for n in moes:
        E, k = n.attrs["num_experts"], n.attrs["top_k"]
        K = counts.get(n.name, E)
        if not k <= K <= E:
            raise LfmcError(f"%{n.name}: cannot keep {K} experts (the layer has {E} and routes to top {k})")
        if K == E:
            continue
        c = cal.get(n.name) if cal else None
        order = np.argsort(-_scores(n, w, c, select, rng), kind="stable")
        kept = np.sort(order[:K])
        dropped = np.sort(order[K:])
        if w is not None:
            _slice(n, w, kept, dropped, c, bool(options.get("merge")))
        for role in ("router", "gate_up", "down", "expert_bias"):
            if role in n.params:
                p = n.params[role]
                n.params[role] = replace(p, type=TensorType(p.type.dtype, (K,) + tuple(p.type.shape[1:])))
        n.attrs["num_experts"] = int(K)
        n.attrs["pruned"] = {"kept": [int(i) for i in kept], "of": int(E), "select": select, "why": why,
                             "merged": bool(options.get("merge"))}
    return Model(g, w, model.provenance, model.tokenizer)


def _slice(n: Node, w: dict[str, np.ndarray], kept: np.ndarray, dropped: np.ndarray, cal: dict[str, Any] | None,
           merge: bool) -> None:
    """Slice (and with ``merge``, fold dropped experts into) node ``n``'s expert-indexed weights in ``w``."""
    names = {r: n.params[r].name for r in ("router", "gate_up", "down", "expert_bias") if r in n.params}
    gu, dn = w[names["gate_up"]].astype(np.float32), w[names["down"]].astype(np.float32)
    if merge and len(dropped):
        freq = np.asarray(cal["frequency"], np.float64) if cal else np.ones(len(gu))
        flat = gu.reshape(len(gu), -1)
        unit = flat / (np.linalg.norm(flat, axis=1, keepdims=True) + 1e-12)
        sim = unit[dropped] @ unit[kept].T                       # [dropped, kept]
        into = kept[np.argmax(sim, axis=1)]
        gu_new, dn_new = gu.copy(), dn.copy()
        for e in kept:
            group = np.concatenate([[e], dropped[into == e]])
            wts = freq[group] / max(freq[group].sum(), 1e-12) if freq[group].sum() > 0 else \
                np.full(len(group), 1.0 / len(group))
            gu_new[e] = np.tensordot(wts, gu[group], axes=1)
            dn_new[e] = np.tensordot(wts, dn[group], axes=1)
        gu, dn = gu_new, dn_new
    w[names["gate_up"]] = np.ascontiguousarray(gu[kept])
    w[names["down"]] = np.ascontiguousarray(dn[kept])
    w[names["router"]] = np.ascontiguousarray(w[names["router"]][kept])
    if "expert_bias" in names:
        w[names["expert_bias"]] = np.ascontiguousarray(w[names["expert_bias"]][kept])
