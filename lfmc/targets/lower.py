"""IR -> kernels + kernel plan + packed parameters. Written once and shared by every target family.

The plan is plain JSON that the runtime executes without any compiler import:

- ``slabs``: activation buffers, each viewed per launch as ``[rows, cols]``; ``rows`` is a spec evaluated per
  call: ``"n"`` (rows of the call: prefill-chunk tokens or decode sequences), ``"np"`` (n rounded up to the
  entry's row tile), ``"nk"`` (n × experts per token), or an integer. The runtime sizes each slab once, for
  its largest use, so decode allocates nothing per token.
- ``state``: per-sequence-slot state, shapes with ``S`` (slots = max batch) and ``C`` (max context).
- ``params``: packed weights (the layout the kernels read), stored in ``params.safetensors``.
- ``entries``: ``prefill`` (one sequence, a chunk of tokens) and ``decode`` (one token for each of n
  sequences), each an ordered list of launches ``{"kernel": name, "args": [...]}``; an arg is one of
  ``["slab", name, rows, cols]``, ``["param", name]``, ``["state", name]``, ``["input", name, rows]``
  (int32 ``tokens`` / ``slots`` / ``pos``), ``["scalar", name]`` (``nb`` = np / row tile, ``slot``),
  ``["const", value]``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from ..ir.errors import LfmcError
from ..ir.graph import Graph, Node
from . import kernels as K

PLAN_VERSION = 1
ENTRIES = ("prefill", "decode")


@dataclass
class KernelSpec:
    """How to make one kernel: the maker and its arguments (knobs included)."""

    maker: Callable[..., Any]
    args: tuple

    def build(self, name: str):
        return self.maker(name, *self.args)


@dataclass
class Lowered:
    plan: dict[str, Any]
    kernels: dict[str, KernelSpec]
    params: dict[str, np.ndarray]


def pack_swiglu(w: np.ndarray, lanes: int) -> np.ndarray:
    """[gate; up] = [2F, K] -> [F/l, 2, K, l]: the gate and up panels of each output block side by side."""
    F2, Kd = w.shape
    F = F2 // 2
    l = K.pick_lanes(F, lanes)
    return np.ascontiguousarray(w.reshape(2, F // l, l, Kd).transpose(1, 0, 3, 2))


def pack_linear(w: np.ndarray, lanes: int) -> np.ndarray:
    """[N, K] -> [N/l, K, l]: each block of l output rows becomes one contiguous panel."""
    N, Kd = w.shape
    l = K.pick_lanes(N, lanes)
    return np.ascontiguousarray(w.reshape(N // l, l, Kd).transpose(0, 2, 1))


@dataclass
class _Lowering:
    graph: Graph
    weights: dict[str, np.ndarray]
    knobs: dict[str, K.Knobs]
    kernels: dict[str, KernelSpec] = field(default_factory=dict)
    params: dict[str, np.ndarray] = field(default_factory=dict)
    state: dict[str, dict[str, Any]] = field(default_factory=dict)
    slabs: dict[str, dict[str, Any]] = field(default_factory=dict)
    entries: dict[str, list] = field(default_factory=lambda: {e: [] for e in ENTRIES})
    node_name: str = ""

    # --- registries
    def kernel(self, key: tuple, maker: Callable[..., Any], *args) -> str:
        name = "k_" + "_".join(str(k).replace(".", "p").replace("-", "m") for k in key)
        self.kernels.setdefault(name, KernelSpec(maker, args))
        return name

    def param(self, name: str, make: Callable[[], np.ndarray]) -> list:
        if name not in self.params and self.weights is not None:
            self.params[name] = np.ascontiguousarray(make(), dtype=np.float32)
        return ["param", name]

    def w(self, n: Node, role: str) -> np.ndarray:
        return self.weights[n.params[role].name]

    def slab(self, name: str, rows: str | int, cols: int, dtype: str = "float32") -> list:
        s = self.slabs.setdefault(name, {"dtype": dtype, "uses": []})
        if s["dtype"] != dtype:
            raise LfmcError(f"internal: slab {name} used as {dtype} and {s['dtype']}")
        if [rows, cols] not in s["uses"]:
            s["uses"].append([rows, cols])
        return ["slab", name, rows, cols]

    def launch(self, entry: str, kernel: str, args: list) -> None:
        self.entries[entry].append({"kernel": kernel, "args": args, "node": self.node_name})

    def both(self, kernel: str, args: list) -> None:
        for e in ENTRIES:
            self.launch(e, kernel, args)

    # --- shared pieces
    def matmul(self, x: tuple[str, int], w_name: str, w: Callable[[], np.ndarray], N: int, Kd: int,
               out: tuple[str, int], bias: tuple[str, Callable[[], np.ndarray]] | None = None,
               entries: tuple[str, ...] = ENTRIES, rows: str | int = "np", norm: tuple[Node, Node] | None = None,
               accumulate: bool = False, swiglu: bool = False) -> None:
        """One projection launch per entry. ``norm`` = (rmsnorm node, its weight's role owner) folds an RMSNorm
        into the weights and the kernel; ``accumulate`` adds into ``out`` in place; ``swiglu``: ``w()`` returns
        [gate; up] stacked and the output is silu(gate) * up, N = its width."""
        lanes = self.knobs["decode"].lanes
        eps = None
        make = w
        if norm is not None:
            nw = norm[0].params["weight"]
            eps = norm[0].attrs["eps"]
            w_name = f"{w_name}*{nw.name}"
            make = lambda: w() * self.weights[nw.name][None, :]  # noqa: E731
        pack = (lambda: pack_swiglu(make(), lanes)) if swiglu else (lambda: pack_linear(make(), lanes))
        p = self.param(w_name, pack)
        b = [self.param(bias[0], bias[1])] if bias else []
        for e in entries:
            kn = self.knobs[e]
            key = ("mm", N, Kd, "b" if bias else "", "n" if norm else "", "a" if accumulate else "",
                   "s" if swiglu else "", kn.lanes, kn.rows, kn.cols) + ((repr(eps),) if norm else ())
            kname = self.kernel(key, K.make_matmul, N, Kd, kn, bias is not None, eps, accumulate, swiglu)
            nb = ["const", rows // kn.rows] if isinstance(rows, int) else ["scalar", "nb"]
            o = self.slab(out[0], rows, N)
            self.launch(e, kname, [self.slab(x[0], rows, Kd), p] + b + ([o] if accumulate else []) + [o, nb])

    # --- ops
    def lower(self) -> None:
        g = self.graph
        home: dict[str, str] = {}                       # IR value -> slab holding it
        last_use: dict[str, int] = {}
        index = {n.name: i for i, n in enumerate(g.nodes)}
        for i, n in enumerate(g.nodes):
            for v in n.inputs:
                last_use[v] = i
        for o in g.outputs:
            last_use[o] = len(g.nodes)
        # fusion decisions (from the fuse passes) that this lowering honours
        norm_of: dict[str, Node] = {}                   # consumer -> the rmsnorm folded into it
        acc_of: dict[str, tuple[Node, str]] = {}        # producer -> (add node, residual operand)
        for n in g.nodes:
            if n.op == "rmsnorm" and n.fused.get("into"):
                norm_of[n.fused["into"]] = n
            if n.op == "add" and n.fused.get("into"):
                other = next(v for v in n.inputs if v != n.fused["into"])
                if last_use.get(other) == index[n.name]:          # the residual dies here: update it in place
                    acc_of[n.fused["into"]] = (n, other)
        skip_add = {a.name for a, _ in acc_of.values()}
        free: list[str] = []
        live: dict[str, int] = {}                       # slab -> number of live values in it
        count = [0]

        def new_slab() -> str:
            if free:
                return free.pop()
            count[0] += 1
            return f"v{count[0] - 1}"

        for i, n in enumerate(g.nodes):
            self.node_name = n.name
            ins = [home.get(v) for v in n.inputs]
            if n.op == "rmsnorm" and n.name in {m.name for m in norm_of.values()}:
                out = ins[0]                               # folded into its consumer: no kernel, no buffer
            elif n.name in skip_add:
                out = home[next(v for v in n.inputs if v != n.fused["into"])]
            elif n.name in acc_of:
                out = home[acc_of[n.name][1]]
                getattr(self, "op_" + n.op)(n, ins, out, n.type.shape[1], norm=norm_of.get(n.name), accumulate=True)
            else:
                if n.op == "add" and last_use[n.inputs[0]] == i:
                    out = ins[0]                           # in place into the dying operand
                elif n.op == "add" and last_use[n.inputs[1]] == i:
                    out = ins[1]
                else:
                    out = new_slab()
                if n.op in ("short_conv", "attention", "gated_mlp"):
                    getattr(self, "op_" + n.op)(n, ins, out, n.type.shape[1], norm=norm_of.get(n.name))
                else:
                    getattr(self, "op_" + n.op)(n, ins, out, n.type.shape[1])
            home[n.name] = out
            live[out] = live.get(out, 0) + 1
            for v in set(n.inputs):
                if v in home and last_use[v] == i:
                    live[home[v]] -= 1
                    if live[home[v]] == 0 and home[v] != out:
                        free.append(home[v])
        self.output = home[g.outputs[0]]

    def op_embedding(self, n: Node, ins, out: str, D: int) -> None:
        V = n.params["weight"].type.shape[0]
        lanes = self.knobs["decode"].lanes
        name = "w." + n.params["weight"].name
        p = self.param(name, lambda: pack_linear(self.w(n, "weight"), lanes))
        k = self.kernel(("embed", V, D), K.make_embedding, V, D, K.pick_lanes(V, lanes))
        self.both(k, [["input", "tokens", "n"], p, self.slab(out, "n", D)])

    def op_rmsnorm(self, n: Node, ins, out: str, D: int) -> None:
        eps = n.attrs["eps"]
        k = self.kernel(("rmsnorm", D, repr(eps)), K.make_rmsnorm, D, eps, self.knobs["prefill"].parallel)
        p = self.param("w." + n.params["weight"].name, lambda: self.w(n, "weight"))
        self.both(k, [self.slab(ins[0], "n", D), p, self.slab(out, "n", D)])

    def op_add(self, n: Node, ins, out: str, D: int) -> None:
        k = self.kernel(("add", D), K.make_add, D)
        a, b = (ins[0], ins[1]) if out == ins[0] else (ins[1], ins[0])
        if out not in (a,):
            raise LfmcError(f"internal: add %{n.name} has no operand to update in place")
        self.both(k, [self.slab(a, "n", D), self.slab(b, "n", D)])

    def op_linear(self, n: Node, ins, out: str, N: int, norm: Node | None = None, accumulate: bool = False) -> None:
        Kd = n.params["weight"].type.shape[1]
        bias = None
        if "weight_bias" in n.params:
            bias = ("w." + n.params["weight_bias"].name, lambda: self.w(n, "weight_bias"))
        self.matmul((ins[0], Kd), "w." + n.params["weight"].name, lambda: self.w(n, "weight"), N, Kd,
                    (out, N), bias, accumulate=accumulate)

    def op_lm_head(self, n: Node, ins, out: str, V: int) -> None:
        D = n.params["weight"].type.shape[1]
        R = self.knobs["prefill"].rows
        k = self.kernel(("take_last", D), K.make_take_last, D)
        self.launch("prefill", k, [self.slab(ins[0], "n", D), self.slab("last", R, D)])
        name = "w." + n.params["weight"].name
        self.matmul(("last", D), name, lambda: self.w(n, "weight"), V, D, (out, V), entries=("prefill",), rows=R)
        self.matmul((ins[0], D), name, lambda: self.w(n, "weight"), V, D, (out, V), entries=("decode",))

    def op_short_conv(self, n: Node, ins, out: str, D: int, norm: Node | None = None,
                      accumulate: bool = False) -> None:
        L = n.attrs["L_cache"]
        f = n.liv.featurizer
        ib, ic, ix = f["B"].chunk, f["C"].chunk, f["x"].chunk
        pre = n.params["in_proj"].name
        bias = lambda role: ((f"w.{n.params[role].name}", lambda: self.w(n, role))  # noqa: E731
                             if role in n.params else None)
        self.matmul((ins[0], D), "w." + pre, lambda: self.w(n, "in_proj"), 3 * D, D, ("t_p", 3 * D),
                    bias("in_proj_bias"), norm=(norm, n) if norm else None)
        st = f"conv.{n.name}"
        self.state[st] = {"shape": ["S", D, max(L - 1, 1)], "dtype": "float32", "kind": "conv", "node": n.name}
        cw = self.param("w." + n.params["conv"].name, lambda: self.w(n, "conv")[:, 0, :])
        cb = (self.param("w." + n.params["conv_bias"].name, lambda: self.w(n, "conv_bias"))
              if "conv_bias" in n.params else self.param(f"zeros.{D}", lambda: np.zeros(D, np.float32)))
        kp = self.kernel(("conv_prefill", D, L, ib, ic, ix), K.make_conv_prefill, D, L, ib, ic, ix, True)
        kd = self.kernel(("conv_decode", D, L, ib, ic, ix), K.make_conv_decode, D, L, ib, ic, ix)
        base = [self.slab("t_p", "n", 3 * D), ["state", st], cw, cb, self.slab("t_y", "n", D)]
        self.launch("prefill", kp, base + [["scalar", "slot"]])
        self.launch("decode", kd, base + [["input", "slots", "n"]])
        self.matmul(("t_y", D), "w." + n.params["out_proj"].name, lambda: self.w(n, "out_proj"), D, D, (out, D),
                    bias("out_proj_bias"), accumulate=accumulate)

    def op_attention(self, n: Node, ins, out: str, D: int, norm: Node | None = None,
                     accumulate: bool = False) -> None:
        H, KV, hd = n.attrs["heads"], n.attrs["kv_heads"], n.attrs["head_dim"]
        Nq = (H + 2 * KV) * hd
        qkv = lambda: np.concatenate([self.w(n, "q_proj"), self.w(n, "k_proj"), self.w(n, "v_proj")])  # noqa: E731
        self.matmul((ins[0], D), f"w.{n.params['q_proj'].name}+kv", qkv, Nq, D, ("t_p", Nq),
                    norm=(norm, n) if norm else None)
        for s in ("k", "v"):
            self.state[f"{s}.{n.name}"] = {"shape": ["S", "C", KV, hd], "dtype": "float32", "kind": "kv",
                                           "node": n.name}
        kq = self.kernel(("qk_rope", H, KV, hd, repr(n.attrs["eps"]), repr(n.attrs["rope_theta"])), K.make_qk_rope,
                         H, KV, hd, n.attrs["eps"], n.attrs["rope_theta"])
        kn = self.knobs["prefill"]
        ka = self.kernel(("attn", H, KV, hd, kn.lanes), K.make_attention, H, KV, hd, kn.parallel, kn.lanes)
        rows = [["input", "slots", "n"], ["input", "pos", "n"]]
        self.both(kq, [self.slab("t_p", "n", Nq), self.param("w." + n.params["q_norm"].name, lambda: self.w(n, "q_norm")),
                       self.param("w." + n.params["k_norm"].name, lambda: self.w(n, "k_norm")),
                       ["state", f"k.{n.name}"], ["state", f"v.{n.name}"], self.slab("t_q", "n", H * hd)] + rows)
        self.both(ka, [self.slab("t_q", "n", H * hd), ["state", f"k.{n.name}"], ["state", f"v.{n.name}"],
                       self.slab("t_a", "n", H * hd)] + rows)
        self.matmul(("t_a", H * hd), "w." + n.params["out_proj"].name, lambda: self.w(n, "out_proj"), D, H * hd,
                    (out, D), accumulate=accumulate)

    def op_gated_mlp(self, n: Node, ins, out: str, D: int, norm: Node | None = None,
                     accumulate: bool = False) -> None:
        f = n.liv.featurizer
        F = n.params["w1"].type.shape[0]
        gate, up = f["gate"].proj, f["up"].proj
        w13 = lambda: np.concatenate([self.w(n, gate), self.w(n, up)])  # noqa: E731
        nrm = (norm, n) if norm else None
        if n.fused.get("swiglu"):
            self.matmul((ins[0], D), f"w.{n.params[gate].name}+up/swiglu", w13, F, D, ("t_a", F), norm=nrm,
                        swiglu=True)
        else:
            self.matmul((ins[0], D), f"w.{n.params[gate].name}+up", w13, 2 * F, D, ("t_p", 2 * F), norm=nrm)
            k = self.kernel(("silu_mul", F, 0), K.make_silu_mul, F, 0)
            self.both(k, [self.slab("t_p", "n", 2 * F), self.slab("t_a", "n", F)])
        self.matmul(("t_a", F), "w." + n.params["w2"].name, lambda: self.w(n, "w2"), D, F, (out, D),
                    accumulate=accumulate)

    def op_moe(self, n: Node, ins, out: str, D: int) -> None:
        a = n.attrs
        E, k = a["num_experts"], a["top_k"]
        gu_shape = n.params["gate_up"].type.shape
        F2, F = gu_shape[1], gu_shape[1] // 2
        gi = n.liv.featurizer["gate"].chunk
        self.matmul((ins[0], D), "w." + n.params["router"].name, lambda: self.w(n, "router"), E, D, ("t_r", E))
        bias = (self.param("w." + n.params["expert_bias"].name, lambda: self.w(n, "expert_bias"))
                if a["use_expert_bias"] else self.param(f"zeros.{E}", lambda: np.zeros(E, np.float32)))
        kr = self.kernel(("route", E, k, a["scoring"], int(a["use_expert_bias"]), int(a["norm_topk_prob"]),
                          repr(a["topk_norm_eps"]), repr(a["routed_scaling_factor"])), K.make_moe_route,
                         E, k, a["scoring"], a["use_expert_bias"], a["norm_topk_prob"], a["topk_norm_eps"],
                         a["routed_scaling_factor"])
        idx, wts = self.slab("t_idx", "n", k, "int32"), self.slab("t_w", "n", k)
        self.both(kr, [self.slab("t_r", "n", E), bias, idx, wts])
        lanes = self.knobs["decode"].lanes
        kn = self.knobs["prefill"]
        gu = self.param("w." + n.params["gate_up"].name,
                        lambda: np.stack([pack_linear(m, lanes) for m in self.w(n, "gate_up")]))
        dn = self.param("w." + n.params["down"].name,
                        lambda: np.stack([pack_linear(m, lanes) for m in self.w(n, "down")]))
        kg = self.kernel(("moe_gu", E, F2, D, k, kn.lanes, kn.cols), K.make_moe_gate_up, E, F2, D, k, kn)
        ks = self.kernel(("silu_mul", F, gi), K.make_silu_mul, F, gi)
        kd = self.kernel(("moe_down", E, D, F, k, kn.lanes, kn.cols), K.make_moe_down, E, D, F, k, kn)
        self.both(kg, [self.slab(ins[0], "n", D), gu, idx, self.slab("t_g", "nk", F2)])
        self.both(ks, [self.slab("t_g", "nk", F2), self.slab("t_a", "nk", F)])
        self.both(kd, [self.slab("t_a", "nk", F), dn, idx, wts, self.slab(out, "n", D)])


def lower(graph: Graph, weights: dict[str, np.ndarray] | None, knobs: dict[str, K.Knobs]) -> Lowered:
    """Kernels, plan and packed parameters for ``graph``; ``knobs`` per entry point (the target's schedules).
    Without ``weights`` only the plan is built (no packing): enough to count kernels."""
    lw = _Lowering(graph, weights, knobs)
    lw.lower()
    vocab = graph.nodes[-1].type.shape[1]
    first = graph.nodes[0]
    topk = max([n.attrs["top_k"] for n in graph.nodes if n.op == "moe"], default=1)
    plan = {
        "version": PLAN_VERSION,
        "vocab_size": vocab,
        "topk": topk,
        "row_tile": {e: knobs[e].rows for e in ENTRIES},
        "slabs": lw.slabs,
        "state": lw.state,
        "params": {k: {"shape": list(v.shape), "dtype": str(v.dtype)} for k, v in lw.params.items()},
        "entries": lw.entries,
        "logits": {"prefill": ["slab", lw.output, knobs["prefill"].rows, vocab],
                   "decode": ["slab", lw.output, "np", vocab]},
        "embedding_rows": first.params["weight"].type.shape[0] if first.op == "embedding" else vocab,
    }
    return Lowered(plan, lw.kernels, lw.params)


def kernels_per_layer(plan: dict[str, Any], graph: Graph, entry: str = "decode") -> dict[str, int]:
    """Launches per decoder layer of ``entry`` (layers from the transformers parameter names), plus 'other'."""
    layer_of: dict[str, str] = {}
    cur = "other"
    for n in graph.nodes:
        names = [p.name for p in n.params.values()]
        lay = next((nm.split(".")[2] for nm in names if nm.startswith("model.layers.")), None)
        if lay is not None:
            cur = f"layer {lay}"
        elif n.params:
            cur = "other"
        layer_of[n.name] = cur                 # adds carry no parameters: they go with the node before them
    counts: dict[str, int] = {}
    for L in plan["entries"][entry]:
        key = layer_of.get(L["node"], "other")
        counts[key] = counts.get(key, 0) + 1
    return counts
