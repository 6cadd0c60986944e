"""GraphBuilder: the one place where frontends create IR nodes.

The config builder (presets, no torch) and the torch lifter (torch.export) both call these methods, so a model
imported either way prints the same IR text.
"""
from __future__ import annotations

from typing import Any

from ..ir.graph import LIV, Gate, Graph, Node, Param
from ..ir.ops import LIV_MIXING, schema
from ..ir.types import TensorType, f32
from ..ir.verify import expected_featurizer


class GraphBuilder:
    def __init__(self, name: str, attrs: dict[str, Any] | None = None,
                 inputs: list[tuple[str, TensorType]] | None = None):
        """``inputs``: the graph's inputs (default: token ids ``tokens`` i64[T])."""
        self.g = Graph(name, list(inputs or [("tokens", TensorType("i64", ("T",)))]), [], [], dict(attrs or {}))
        self._types: dict[str, TensorType] = dict(self.g.inputs)

    @property
    def tokens(self) -> str:
        return "tokens"

    def node(self, op: str, inputs: list[str], params: dict[str, tuple[str, tuple[int, ...]]],
             attrs: dict[str, Any] | None = None, featurizer: dict[str, Gate] | None = None) -> str:
        """Add ``op``; ``params`` maps role -> (parameter name, shape). Returns the new value's name."""
        sch = schema(op)
        n = Node(str(len(self.g.nodes)), op, list(inputs), f32("T", 0), dict(attrs or {}),
                 {r: Param(name, TensorType("f32", tuple(int(d) for d in shape))) for r, (name, shape) in params.items()})
        if sch.liv_class is not None:
            n.liv = LIV(sch.liv_class, LIV_MIXING[op], dict(featurizer or expected_featurizer(n)))
        n.type, n.state = sch.infer(n, [self._types[i] for i in inputs])
        self.g.nodes.append(n)
        self._types[n.name] = n.type
        return n.name

    # one method per op, with the arguments a model author would name
    def embedding(self, tokens: str, weight: tuple[str, tuple]) -> str:
        return self.node("embedding", [tokens], {"weight": weight})

    def rmsnorm(self, x: str, weight: tuple[str, tuple], eps: float) -> str:
        return self.node("rmsnorm", [x], {"weight": weight}, {"eps": float(eps)})

    def add(self, a: str, b: str) -> str:
        return self.node("add", [a, b], {})

    def lm_head(self, x: str, weight: tuple[str, tuple]) -> str:
        return self.node("lm_head", [x], {"weight": weight})

    def short_conv(self, x: str, params: dict[str, tuple[str, tuple]], L_cache: int,
                   featurizer: dict[str, Gate] | None = None) -> str:
        return self.node("short_conv", [x], params, {"L_cache": int(L_cache)}, featurizer)

    def attention(self, x: str, params: dict[str, tuple[str, tuple]], heads: int, kv_heads: int, head_dim: int,
                  rope_theta: float, eps: float, *, window: int | None = None, rope_angles: int | None = None,
                  rope_factor: float | None = None) -> str:
        """Attention; ``window``: sliding (a ring of keys); ``rope_angles`` / ``rope_factor``: partial or scaled
        RoPE; a ``g_proj`` param: the per-head output gate. Unset options are left out of the IR."""
        attrs = {"heads": int(heads), "kv_heads": int(kv_heads), "head_dim": int(head_dim),
                 "rope_theta": float(rope_theta), "eps": float(eps)}
        for k, v in (("window", window), ("rope_angles", rope_angles)):
            if v is not None:
                attrs[k] = int(v)
        if rope_factor is not None:
            attrs["rope_factor"] = float(rope_factor)
        return self.node("attention", [x], params, attrs)

    def gated_mlp(self, x: str, params: dict[str, tuple[str, tuple]]) -> str:
        return self.node("gated_mlp", [x], params)

    def moe(self, x: str, params: dict[str, tuple[str, tuple]], *, num_experts: int, top_k: int, scoring: str,
            use_expert_bias: bool, norm_topk_prob: bool, routed_scaling_factor: float,
            topk_norm_eps: float = 1e-6) -> str:
        return self.node("moe", [x], params, {
            "num_experts": int(num_experts), "top_k": int(top_k), "scoring": scoring,
            "use_expert_bias": bool(use_expert_bias), "norm_topk_prob": bool(norm_topk_prob),
            "routed_scaling_factor": float(routed_scaling_factor), "topk_norm_eps": float(topk_norm_eps)})

    def finish(self, output: str) -> Graph:
        self.g.outputs = [output]
        return self.g
