"""Code generation for the wafer: the placed model as a mesh program, and each PE's SRAM image.

The program is plain JSON that lfmc's mesh simulator (``lfmc/runtime/drivers/wafer.py``) executes once per token:

- ``roles``: the placed grids (a weight matrix on r x c PEs) and KV strips, with their tiling boundaries.
- ``values``: where each vector lives between operations: a list of segments ``[x, y, lo, hi]`` (elements lo..hi
  of the vector are in the SRAM of PE (x, y)).
- ``ops``: what the PEs do, in dependency order. Each op is an instruction of lfmc's PE instruction set, executed
  by every PE of its role on its own SRAM; data crosses between PEs only in the transfers the op names:

  ``embed``   the token's row of the (tied) table moves from its row block to row 0 of the table grid
  ``mcast``   a value is routed to the top of each column of a grid and multicast down the column
  ``gemv``    every PE of a grid multiplies its tile by its column's input block
  ``reduce``  partial sums flow east along each row, each PE adding its own (a chain), bias on the edge
  ``norm``    RMSNorm where the value lives: local sums of squares, a chain all-reduce over its PEs, scale
  ``move``    a value is routed from its PEs to the PEs of another value (XY routes)
  ``add``     elementwise add of two values on the same PEs
  ``conv``    the short conv's gating, causal taps and state on each in_proj edge PE (its channel block)
  ``recurrence`` the linear recurrence's gates and state on each in_proj edge PE
  ``swiglu``  silu(gate) * up on each edge PE
  ``attn``    per KV head: q/k norm + RoPE on the qkv edge PE, k/v stored on the PE owning the position (a
              sliding window's strip is a ring of its last ``window`` positions), q multicast along the head's KV
              strip, partial softmax per PE, (max, sum, out) combined back (scaled by the head's sigmoid gate)
  ``moe``     router scores gathered on one PE, top-k chosen, the input routed to the chosen experts' grids,
              their outputs routed back and summed with the routing weights
  ``logits``  the logits stream off the wafer to the host
- ``params``: each grid's tiles as one array [r, c, rows, cols] (zero padded), norm / conv / bias vectors by name.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ...ir.errors import LfmcError
from ...ir.graph import Graph, Node
from .place import Grid, KVStrip, Placement

PROGRAM_VERSION = 1


def _grid_dict(g: Grid) -> dict[str, Any]:
    d = g.as_dict()
    d["row_bounds"] = g.row_bounds()
    d["col_bounds"] = g.col_bounds()
    return d


def tiles(g: Grid, w: np.ndarray) -> np.ndarray:
    """W [N, K] as the grid's tiles [r, c, max rows, max cols], rows in tile order, zero padded."""
    wp = np.asarray(w, np.float32)[g.row_perm()]
    tr, cb = g.tile_rows(), g.col_bounds()
    out = np.zeros((g.r, g.c, int(tr.max()), int(np.diff(cb).max())), np.float32)
    r0 = 0
    for i in range(g.r):
        for j in range(g.c):
            out[i, j, :tr[i], :cb[j + 1] - cb[j]] = wp[r0:r0 + tr[i], cb[j]:cb[j + 1]]
        r0 += tr[i]
    return out


def gate_chunks(n: Node, gates: tuple[str, ...]) -> list[int]:
    """Which chunk of the split projection feeds each of ``gates`` (the featurizer's choice, any order)."""
    return [int(n.liv.featurizer[g].chunk) for g in gates]


def build_program(graph: Graph, placement: Placement, weights: dict[str, np.ndarray] | None, slots: int,
                  context: int, kv_dtype: str = "f32") -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The mesh program of ``graph`` on ``placement``, and its parameters (empty without weights)."""
    b = _Program(graph, placement, weights, kv_dtype)
    for n in graph.nodes:
        lower_op = getattr(b, "op_" + n.op, None)
        if lower_op is None:
            raise LfmcError(f"%{n.name}: op {n.op!r} has no lowering on the wafer target")
        lower_op(n, b.where.get(n.inputs[0]) if n.inputs else None, "%" + n.name)
        b.where[n.name] = "%" + n.name
    P = placement
    roles = [_grid_dict(r) if isinstance(r, Grid) else r.as_dict() for r in P.roles]
    prog = {"version": PROGRAM_VERSION, "machine": P.machine.as_dict(), "roles": roles, "values": b.values,
            "ops": b.ops, "slots": slots, "context": context, "vocab_size": int(graph.nodes[-1].type.shape[1]),
            "layers": {r.name: r.layer for r in P.roles}, "placement": P.summary()}
    return prog, b.params


class _Program:
    """The program being built: values (where each vector lives), ops in order, parameters; one method per IR op
    (``op_<name>(node, input value, output value)``)."""

    def __init__(self, graph: Graph, placement: Placement, weights: dict[str, np.ndarray] | None, kv_dtype: str):
        self.P, self.W, self.kv_dtype = placement, weights, kv_dtype
        self.values: dict[str, list[list[int]]] = {}
        self.ops: list[dict[str, Any]] = []
        self.params: dict[str, np.ndarray] = {}
        self.where: dict[str, str] = {}             # IR value -> program value holding it
        self.order = {n.name: i for i, n in enumerate(graph.nodes)}
        self.table_of: dict[str, Grid] = {}

    # --- shared pieces
    def param(self, n: Node, role: str) -> str:
        name = n.params[role].name
        if self.W is not None:
            self.params[name] = np.asarray(self.W[name], np.float32)
        return name

    def grid(self, name: str) -> Grid:
        g = self.P.role(name)
        assert isinstance(g, Grid)
        return g

    def apply(self, g: Grid, src: str, out: str, w: np.ndarray | None, bias: str | None = None) -> str:
        if self.W is not None and w is not None and f"{g.name}.tiles" not in self.params:
            self.params[f"{g.name}.tiles"] = tiles(g, w)
        self.ops.append({"op": "mcast", "in": src, "grid": g.name})
        self.ops.append({"op": "gemv", "grid": g.name})
        op = {"op": "reduce", "grid": g.name, "out": out}
        if bias:
            op["bias"] = bias
        self.ops.append(op)
        self.values[out] = g.out_segments()
        return out

    @staticmethod
    def per_row(g: Grid, n_chunk: int) -> list[list[int]]:
        """Segments of a vector produced on each edge PE from chunk ``n_chunk``'s split."""
        b = g.row_bounds()[n_chunk]
        return [[g.x + g.c - 1, g.y + i, b[i], b[i + 1]] for i in range(g.r) if b[i + 1] > b[i]]

    def w_of(self, n: Node, role: str) -> np.ndarray | None:
        return None if self.W is None else np.asarray(self.W[n.params[role].name], np.float32)

    def bias_of(self, n: Node, role: str) -> str | None:
        return self.param(n, role + "_bias") if role + "_bias" in n.params else None

    # --- ops
    def op_embedding(self, n: Node, src: str | None, name: str) -> None:
        g = self.grid(f"{n.name}.table")
        self.table_of[n.params["weight"].name] = g
        if self.W is not None:
            self.params[f"{g.name}.tiles"] = tiles(g, self.W[n.params["weight"].name])
        cb = g.col_bounds()
        self.values[name] = [[g.x + j, g.y, cb[j], cb[j + 1]] for j in range(g.c)]
        self.ops.append({"op": "embed", "grid": g.name, "out": name})

    def op_rmsnorm(self, n: Node, src: str, name: str) -> None:
        self.values[name] = self.values[src]
        self.ops.append({"op": "norm", "in": src, "out": name, "w": self.param(n, "weight"),
                         "eps": float(n.attrs["eps"])})

    def op_add(self, n: Node, src: str, name: str) -> None:
        a, b = (self.where[i] for i in n.inputs)
        pa, pb = (self.order.get(i.lstrip("%"), -1) for i in n.inputs)
        home, other = (a, b) if pa >= pb else (b, a)
        moved = f"{other}@{name}"
        self.values[moved] = self.values[home]
        self.ops.append({"op": "move", "in": other, "out": moved})
        self.values[name] = self.values[home]
        self.ops.append({"op": "add", "a": home, "b": moved, "out": name})

    def op_short_conv(self, n: Node, src: str, name: str) -> None:
        g1, g2 = self.grid(f"{n.name}.in_proj"), self.grid(f"{n.name}.out_proj")
        h = self.apply(g1, src, f"{name}.in", self.w_of(n, "in_proj"), self.bias_of(n, "in_proj"))
        self.values[f"{name}.z"] = self.per_row(g1, 0)
        if n.op == "short_conv":
            op = {"op": "conv", "grid": g1.name, "in": h, "out": f"{name}.z", "L": int(n.attrs["L_cache"]),
                  "w": self.param(n, "conv"), "state": n.name, "gates": gate_chunks(n, ("B", "C", "x"))}
            if "conv_bias" in n.params:
                op["bias"] = self.param(n, "conv_bias")
        else:
            op = {"op": "recurrence", "grid": g1.name, "in": h, "out": f"{name}.z", "state": n.name,
                  "gates": gate_chunks(n, ("a", "b", "c", "x"))}
        self.ops.append(op)
        self.apply(g2, f"{name}.z", name, self.w_of(n, "out_proj"), self.bias_of(n, "out_proj"))

    op_linear_recurrence = op_short_conv         # the same shape: in_proj, a gated elementwise step, out_proj

    def op_attention(self, n: Node, src: str, name: str) -> None:
        g1, kv, g2 = self.grid(f"{n.name}.qkv"), self.P.role(f"{n.name}.kv"), self.grid(f"{n.name}.out_proj")
        assert isinstance(kv, KVStrip)
        w = None
        roles = [r for r in ("q_proj", "k_proj", "v_proj", "g_proj") if r in n.params]
        if self.W is not None:
            w = np.concatenate([self.w_of(n, r) for r in roles], axis=0)
        qkv = self.apply(g1, src, f"{name}.qkv", w)
        self.values[f"{name}.o"] = self.per_row(g1, 0)
        a = n.attrs
        op = {"op": "attn", "grid": g1.name, "kv": kv.name, "in": qkv, "out": f"{name}.o",
              "heads": a["heads"], "kv_heads": a["kv_heads"], "head_dim": a["head_dim"],
              "eps": float(a["eps"]), "theta": float(a["rope_theta"]),
              "q_norm": self.param(n, "q_norm"), "k_norm": self.param(n, "k_norm"), "kv_dtype": self.kv_dtype}
        # LFM3: a sliding window (its KV strip a ring), a sigmoid gate per head, partial / scaled RoPE
        for k in ("window", "rope_angles", "rope_factor"):
            if k in a:
                op[k] = a[k]
        if "g_proj" in n.params:
            op["gated"] = True
        self.ops.append(op)
        self.apply(g2, f"{name}.o", name, self.w_of(n, "out_proj"))

    def op_gated_mlp(self, n: Node, src: str, name: str) -> None:
        g1, g2 = self.grid(f"{n.name}.w13"), self.grid(f"{n.name}.w2")
        f = n.liv.featurizer
        w = None if self.W is None else np.concatenate([self.w_of(n, f["gate"].proj), self.w_of(n, f["up"].proj)],
                                                       axis=0)
        h = self.apply(g1, src, f"{name}.h13", w)
        self.values[f"{name}.h"] = self.per_row(g1, 0)
        self.ops.append({"op": "swiglu", "grid": g1.name, "in": h, "out": f"{name}.h"})
        self.apply(g2, f"{name}.h", name, self.w_of(n, "w2"))

    def op_moe(self, n: Node, src: str, name: str) -> None:
        router = self.grid(f"{n.name}.router")
        scores = self.apply(router, src, f"{name}.scores", self.w_of(n, "router"), self.bias_of(n, "router"))
        experts = []
        for e in range(n.attrs["num_experts"]):
            gu, dn = self.grid(f"{n.name}.e{e}.gate_up"), self.grid(f"{n.name}.e{e}.down")
            if self.W is not None:
                self.params[f"{gu.name}.tiles"] = tiles(gu, self.W[n.params["gate_up"].name][e])
                self.params[f"{dn.name}.tiles"] = tiles(dn, self.W[n.params["down"].name][e])
            self.values[f"{name}.e{e}.h13"] = gu.out_segments()
            self.values[f"{name}.e{e}.h"] = self.per_row(gu, 0)
            self.values[f"{name}.e{e}.y"] = dn.out_segments()
            self.values[f"{name}.e{e}.y@"] = self.values[src]
            experts.append([gu.name, dn.name])
        self.values[name] = self.values[src]
        op = {"op": "moe", "grid": router.name, "in": src, "scores": scores, "out": name, "experts": experts,
              "top_k": n.attrs["top_k"], "scoring": n.attrs["scoring"], "norm_topk_prob": n.attrs["norm_topk_prob"],
              "scale": float(n.attrs["routed_scaling_factor"]), "eps": float(n.attrs["topk_norm_eps"]),
              "gates": gate_chunks(n, ("gate", "up"))}
        if n.attrs["use_expert_bias"]:
            op["expert_bias"] = self.param(n, "expert_bias")
        self.ops.append(op)

    def op_lm_head(self, n: Node, src: str, name: str) -> None:
        pname = n.params["weight"].name
        g = self.table_of.get(pname) or self.grid(f"{n.name}.table")
        if self.W is not None and f"{g.name}.tiles" not in self.params:
            self.params[f"{g.name}.tiles"] = tiles(g, self.W[pname])
        logits = self.apply(g, src, name, None, self.bias_of(n, "weight"))
        self.ops.append({"op": "logits", "in": logits})
