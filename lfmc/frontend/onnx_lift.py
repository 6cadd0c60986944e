"""The ONNX frontend: lift an LFM2 / LFM2-MoE exported by ``torch.onnx.export`` (the dynamo exporter) to IR.

The dynamo exporter records, on every node, the module path it came from (``pkg.torch.onnx.name_scopes``).
Lifting mirrors the torch frontend:

1. Fold constants: initializers, ``Constant`` nodes and the view ops the exporter leaves on weights
   (``Transpose`` of a tied embedding, ``Unsqueeze`` of a conv kernel).
2. Group every node that depends on the token ids by the block that owns it (a module below a decoder layer
   or below the base model, e.g. ``model.layers.3.conv``); nodes owned by a decoder layer itself are residual
   adds. Nodes the exporter's optimizer created without a scope (a ``Split``) join their producer's block.
3. Lift each group by the pattern of its ONNX ops and its data flow, then build the node with
   :class:`GraphBuilder`. Parameters get the names transformers gives them (block path + role), so an
   ONNX import prints the same IR as a torch import of the same model.

Anything else is an :class:`OnnxLiftError` naming the module and its ONNX nodes.
"""
from __future__ import annotations

import ast
import json
import os
from collections import Counter
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from ..ir.errors import LfmcError
from ..ir.graph import Gate, Graph
from ..ir.model import Model
from ..progress import task
from .build import GraphBuilder
from .patterns import short_conv_gates, short_conv_kernel, with_optional

SCOPES = "pkg.torch.onnx.name_scopes"
_MAX_LISTED = 12


class OnnxLiftError(LfmcError):
    """An ONNX subgraph lfmc cannot lift to IR; names the module and its nodes."""

    def __init__(self, where: str, msg: str, nodes: Iterable[Any] = ()):
        nodes = list(nodes)
        listed = ", ".join(f"{n.name or '<unnamed>'} ({n.op_type})" for n in nodes[:_MAX_LISTED])
        if len(nodes) > _MAX_LISTED:
            listed += f", and {len(nodes) - _MAX_LISTED} more"
        super().__init__(f"cannot lift module {where or '<top level>'!r}: {msg}"
                         + (f" (ONNX nodes: {listed})" if listed else ""))
        self.where, self.nodes = where, [n.name for n in nodes]


def _f32(v: Any) -> float:
    """A float32 constant as the shortest decimal that round-trips (9.99999997e-07 -> 1e-06)."""
    return float(str(np.float32(np.asarray(v).reshape(-1)[0])))


# ------------------------------------------------------------------------------------ constant folding
def _attrs(node) -> dict[str, Any]:
    import onnx

    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _fold(node, args: list[np.ndarray]) -> list[np.ndarray] | None:
    """Outputs of a node whose inputs are all constant, for the few ops exporters leave on weights."""
    import onnx.numpy_helper as nh

    op, at = node.op_type, _attrs(node)
    if op == "Constant":
        if "value" in at:
            return [nh.to_array(at["value"])]
        for k, conv in (("value_float", np.float32), ("value_int", np.int64)):
            if k in at:
                return [np.asarray(at[k], conv)]
        for k, conv in (("value_floats", np.float32), ("value_ints", np.int64)):
            if k in at:
                return [np.asarray(list(at[k]), conv)]
        return None
    if op == "Identity":
        return [args[0]]
    if op == "Transpose":
        return [np.transpose(args[0], at.get("perm"))]
    if op in ("Unsqueeze", "Squeeze"):
        axes = [int(a) for a in (args[1] if len(args) > 1 else at.get("axes", []))]
        if op == "Unsqueeze":
            out = args[0]
            for a in sorted(a % (out.ndim + len(axes)) for a in axes):
                out = np.expand_dims(out, a)
            return [out]
        return [np.squeeze(args[0], tuple(axes) if axes else None)]
    if op == "Reshape":
        shape = [int(s) for s in args[1]]
        shape = [args[0].shape[i] if s == 0 and not at.get("allowzero") else s for i, s in enumerate(shape)]
        return [args[0].reshape(shape)]
    if op == "Cast":
        from onnx import helper

        return [args[0].astype(helper.tensor_dtype_to_np_dtype(at["to"]))]
    return None


class _Onnx:
    """The ONNX graph with constants folded, producers, users, activity (depends on the ids) and scopes."""

    def __init__(self, mo, source: str):
        import onnx.numpy_helper as nh

        self.source = source
        g = mo.graph
        self.consts: dict[str, np.ndarray] = {}
        for i in g.initializer:
            try:
                self.consts[i.name] = nh.to_array(i)
            except Exception as e:                     # noqa: BLE001  truncated / undefined tensors
                raise LfmcError(f"{source}: initializer {i.name!r} is unreadable ({type(e).__name__}: {e})") from None
        init = set(self.consts)
        ids = [i.name for i in g.input if i.name not in init]
        if len(ids) != 1:
            raise LfmcError(f"{source}: expected one graph input (the token ids), found {ids}")
        self.tokens = ids[0]
        if len(g.output) < 1:
            raise LfmcError(f"{source}: the graph has no output")
        self.output = g.output[0].name
        self.nodes = []
        for n in g.node:
            if n.domain not in ("", "ai.onnx"):
                raise OnnxLiftError(self._scope_path(n), f"operator domain {n.domain!r} is not standard ONNX", [n])
            if all(i == "" or i in self.consts for i in n.input) and not any(i == self.tokens for i in n.input):
                try:
                    outs = _fold(n, [self.consts[i] for i in n.input if i])
                except Exception:                      # noqa: BLE001  an unfoldable constant stays a node
                    outs = None
                if outs is not None and len(outs) == len(n.output):
                    self.consts.update(zip(n.output, outs))
                    continue
            self.nodes.append(n)
        self.producer = {o: n for n in self.nodes for o in n.output}
        self.users: dict[str, list] = {}
        for n in self.nodes:
            for i in n.input:
                self.users.setdefault(i, []).append(n)
        active = {self.tokens}
        self.active_nodes = []
        for n in self.nodes:
            if any(i in active for i in n.input):
                active.update(n.output)
                self.active_nodes.append(n)
        self.active = active
        if self.output not in active:
            raise LfmcError(f"{source}: the output {self.output!r} does not depend on the token ids")
        self._paths = self._module_paths()

    # ------------------------------------------------------------------ scopes
    @staticmethod
    def _scopes(n) -> list[str] | None:
        for p in n.metadata_props:
            if p.key == SCOPES:
                try:
                    v = ast.literal_eval(p.value)
                except (ValueError, SyntaxError):
                    return None
                return [str(s) for s in v] if isinstance(v, list) else None
        return None

    def _scope_path(self, n) -> str:
        s = self._scopes(n)
        return s[-2] if s and len(s) > 1 else ""

    def _module_paths(self) -> dict[str, list[str]]:
        """Module path list of every active node; scope-less nodes take their producer's (or user's)."""
        paths: dict[str, list[str]] = {}
        scoped = 0
        for n in self.active_nodes:
            s = self._scopes(n)
            if s is not None:
                scoped += 1
                paths[id(n)] = s[:-1]
                continue
            src = next((self.producer[i] for i in n.input if i in self.producer and id(self.producer[i]) in paths),
                       None)
            if src is not None:
                paths[id(n)] = paths[id(src)]
        if not scoped:
            raise LfmcError(f"{self.source}: the ONNX nodes carry no module scopes ({SCOPES}): lfmc lifts models "
                            "exported by torch.onnx.export(model, ..., dynamo=True) from transformers' "
                            "Lfm2ForCausalLM / Lfm2MoeForCausalLM")
        for n in reversed(self.active_nodes):          # scope-less nodes feeding only scoped ones
            if id(n) not in paths:
                u = next((u for o in n.output for u in self.users.get(o, []) if id(u) in paths), None)
                if u is None:
                    raise OnnxLiftError("", "a node has no module scope and no scoped neighbour", [n])
                paths[id(n)] = paths[id(u)]
        return paths

    def block_key(self, n, all_paths: set[str]) -> tuple[str, str]:
        """('block', path) for a node owned by an operator module, ('level', path) for a container-level one."""
        last = ""
        for p in self._paths[id(n)]:
            if not p:
                continue
            is_item = p.rsplit(".", 1)[-1].isdigit()
            is_container = any(q.startswith(p + ".") and q[len(p) + 1:].count(".") == 1
                               and q.rsplit(".", 1)[-1].isdigit() for q in all_paths)
            if not (is_item or is_container):
                return "block", p
            last = p
        return "level", last

    def canon(self, v: str) -> str:
        """Follow Identity / same-type Cast nodes to the value they pass on."""
        while v in self.producer and self.producer[v].op_type == "Identity":
            v = self.producer[v].input[0]
        return v


class _Group:
    """The ONNX nodes one block owns, with the data-flow queries the pattern lifters use."""

    def __init__(self, ox: _Onnx, path: str, nodes: list):
        self.ox, self.path, self.nodes = ox, path, nodes
        self.ids = {id(n) for n in nodes}
        self.made = {o for n in nodes for o in n.output}
        self.ops = Counter(n.op_type for n in nodes)
        self.inputs: list[str] = []
        for n in nodes:
            for i in n.input:
                c = ox.canon(i)
                if c and c not in self.made and c in ox.active and c not in self.inputs:
                    self.inputs.append(c)

    def fail(self, msg: str, nodes: Iterable[Any] | None = None):
        raise OnnxLiftError(self.path, msg, self.nodes if nodes is None else nodes)

    def of(self, op: str) -> list:
        return [n for n in self.nodes if n.op_type == op]

    def one(self, op: str):
        ns = self.of(op)
        if len(ns) != 1:
            self.fail(f"expected one {op}, found {len(ns)}")
        return ns[0]

    def const(self, v: str) -> np.ndarray | None:
        return self.ox.consts.get(v)

    def scalar(self, n, what: str) -> float:
        """The constant scalar operand of a binary node."""
        cs = [self.const(i) for i in n.input if self.const(i) is not None]
        if len(cs) != 1 or cs[0].size != 1:
            self.fail(f"{what}: expected a constant scalar operand", [n])
        return _f32(cs[0])

    def producer(self, v: str):
        n = self.ox.producer.get(self.ox.canon(v))
        return n if n is not None and id(n) in self.ids else None

    def users(self, v: str) -> list:
        return [u for u in self.ox.users.get(v, []) if id(u) in self.ids]

    def ancestors(self, v: str) -> set[int]:
        """ids of this group's nodes ``v`` depends on."""
        out, todo = set(), [v]
        while todo:
            n = self.producer(todo.pop())
            if n is None or id(n) in out:
                continue
            out.add(id(n))
            todo += list(n.input)
        return out

    def descendants(self, v: str) -> set[int]:
        out, todo = set(), [v]
        while todo:
            for u in self.users(todo.pop()):
                if id(u) not in out:
                    out.add(id(u))
                    todo += list(u.output)
        return out

    def linears(self) -> list[tuple[Any, np.ndarray, np.ndarray | None, str]]:
        """(node, weight [out, in], bias or None, output value) of each MatMul / Gemm with a constant 2-D weight."""
        out = []
        for n in self.nodes:
            if n.op_type not in ("MatMul", "Gemm"):
                continue
            w = self.const(n.input[1])
            if w is None or w.ndim != 2:
                continue
            at = _attrs(n)
            if n.op_type == "Gemm":
                if at.get("transA", 0) or at.get("alpha", 1.0) != 1.0 or at.get("beta", 1.0) != 1.0:
                    self.fail("a Gemm with transA / alpha / beta is not a linear layer", [n])
                w = w if at.get("transB", 0) else w.T
                b = self.const(n.input[2]) if len(n.input) > 2 and n.input[2] else None
            else:
                w, b = w.T, None
            res = n.output[0]
            us = self.users(res)
            if b is None and len(us) == 1 and us[0].op_type == "Add":
                other = [self.const(i) for i in us[0].input if i != res]
                if len(other) == 1 and other[0] is not None and other[0].shape == (w.shape[0],):
                    b, res = other[0], us[0].output[0]
            out.append((n, np.ascontiguousarray(w, np.float32), None if b is None else b.astype(np.float32), res))
        return out

    def expect(self, allowed: set[str], required: dict[str, int]) -> None:
        extra = [n for n in self.nodes if n.op_type not in allowed]
        if extra:
            self.fail(f"ONNX ops outside the pattern: {', '.join(sorted({n.op_type for n in extra}))}", extra)
        for op, k in required.items():
            if self.ops.get(op, 0) != k:
                self.fail(f"expected {k} {op}, found {self.ops.get(op, 0)}")


_VIEWS = {"Reshape", "Transpose", "Unsqueeze", "Squeeze", "Expand", "Identity", "Cast", "Slice", "Concat", "Split"}


class _Lifter:
    """Walks the groups, lifts each and collects parameters under transformers' names."""

    def __init__(self, ox: _Onnx, name: str):
        self.ox, self.b = ox, GraphBuilder(name)
        self.weights: dict[str, np.ndarray] = {}
        self.embedding: tuple[str, np.ndarray] | None = None

    def param(self, name: str, arr: np.ndarray) -> tuple[str, tuple[int, ...]]:
        arr = np.ascontiguousarray(arr, np.float32)
        self.weights[name] = arr
        return name, tuple(arr.shape)

    # ----------------------------------------------------------------- lifters
    def embedding_(self, g: _Group, x: str) -> str:
        g.expect({"Gather"} | _VIEWS, {"Gather": 1})
        n = g.one("Gather")
        table = g.const(n.input[0])
        if table is None or table.ndim != 2 or _attrs(n).get("axis", 0) != 0:
            g.fail("the embedding is not a Gather from a constant [vocab, hidden] table")
        name = g.path + ".weight"
        self.embedding = (name, table)
        return self.b.embedding(x, self.param(name, table))

    def rmsnorm_(self, g: _Group, x: str) -> str:
        g.expect({"Pow", "ReduceMean", "Add", "Sqrt", "Reciprocal", "Rsqrt", "Div", "Mul", "Cast"},
                 {"Pow": 1, "ReduceMean": 1, "Add": 1})
        if g.scalar(g.one("Pow"), "the square") != 2.0:
            g.fail("the Pow exponent is not 2")
        eps = g.scalar(g.one("Add"), "epsilon")
        ws = [g.const(i) for m in g.of("Mul") for i in m.input if g.const(i) is not None]
        if len(ws) != 1 or ws[0].ndim != 1:
            g.fail(f"expected one 1-D weight multiplying the normalized value, found {len(ws)}")
        return self.b.rmsnorm(x, self.param(g.path + ".weight", ws[0]), eps)

    def short_conv_(self, g: _Group, x: str) -> str:
        g.expect({"MatMul", "Gemm", "Add", "Mul", "Conv"} | _VIEWS, {"Conv": 1, "Split": 1, "Mul": 2})
        lin = g.linears()
        inp = [t for t in lin if g.ox.canon(t[0].input[0]) == g.inputs[0]]
        if len(lin) != 2 or len(inp) != 1:
            g.fail("expected an input projection of the block input and an output projection")
        (in_n, wi, bi, in_out), (out_n, wo, bo, _) = inp[0], next(t for t in lin if t is not inp[0])
        split = g.one("Split")
        if len(split.output) != 3:
            g.fail(f"in_proj is split into {len(split.output)}, expected 3 (B, C, x)", [split])
        if id(split) not in g.descendants(in_out):
            g.fail("the Split does not split in_proj", [split])
        idx = {o: i for i, o in enumerate(split.output)}
        conv = g.one("Conv")
        kern = g.const(conv.input[1])
        if kern is None:
            g.fail("the Conv kernel is not a constant", [conv])
        at = _attrs(conv)
        pads = list(at.get("pads", [0, 0]))
        L = short_conv_kernel(kern.shape, at.get("group", 1), pads[0] if pads else 0,
                              all(s == 1 for s in at.get("strides", [1])) and all(d == 1 for d in at.get("dilations", [1])),
                              g.fail, [conv])
        conv_anc = g.ancestors(conv.input[0])
        pre = [m for m in g.of("Mul") if id(m) in conv_anc]
        post = [m for m in g.of("Mul") if id(m) not in conv_anc]
        feat = short_conv_gates(pre, post, lambda m: m.input, idx.get, g.fail)
        if id(post[0]) not in g.descendants(conv.output[0]):
            g.fail("expected C * conv(..) with C a chunk of in_proj", post)
        if id(out_n) not in g.descendants(post[0].output[0]):
            g.fail("the output projection does not follow C * conv(..)", [out_n])
        p = g.path + "."
        cb = g.const(conv.input[2]) if len(conv.input) > 2 and conv.input[2] else None
        params = with_optional({"in_proj": self.param(p + "in_proj.weight", wi),
                                "conv": self.param(p + "conv.weight", kern),
                                "out_proj": self.param(p + "out_proj.weight", wo)},
                               {role: self.param(p + pn, arr) if arr is not None else None
                                for role, pn, arr in (("in_proj_bias", "in_proj.bias", bi),
                                                      ("out_proj_bias", "out_proj.bias", bo),
                                                      ("conv_bias", "conv.bias", cb))})
        return self.b.short_conv(x, params, L, feat)

    def attention_(self, g: _Group, x: str) -> str:
        g.expect({"MatMul", "Mul", "Add", "Neg", "Softmax", "IsNaN", "Where", "Pow", "ReduceMean", "Sqrt",
                  "Reciprocal", "Rsqrt", "Div"} | _VIEWS, {"Softmax": 1})
        sm = g.one("Softmax")
        lin = g.linears()
        mms = [n for n in g.of("MatMul") if all(g.const(i) is None for i in n.input)]
        m1 = [n for n in mms if id(n) in g.ancestors(sm.input[0])]
        m2 = [n for n in mms if id(n) in g.descendants(sm.output[0])]
        if len(lin) != 4 or len(m1) != 1 or len(m2) != 1:
            g.fail("expected q/k/v/out projections, one score MatMul before the Softmax and one after")
        paths = {"q": g.ancestors(m1[0].input[0]), "k": g.ancestors(m1[0].input[1]), "v": g.ancestors(m2[0].input[1])}
        roles: dict[str, tuple] = {}
        for t in lin:
            hit = [r for r, a in paths.items() if id(t[0]) in a]
            if len(hit) > 1:
                g.fail("one projection feeds several of q, k, v", [t[0]])
            roles[hit[0] if hit else "out"] = t
        if set(roles) != {"q", "k", "v", "out"} or any(t[2] is not None for t in roles.values()):
            g.fail(f"cannot find bias-free q, k, v and output projections (found {sorted(roles)})",
                   [t[0] for t in lin])
        byid = {id(n): n for n in g.nodes}
        norms, eps = {}, None
        for r in "qk":
            ws = [g.const(i) for j in paths[r] if byid[j].op_type == "Mul" for i in byid[j].input
                  if g.const(i) is not None and g.const(i).ndim == 1 and g.const(i).size > 1]
            if len(ws) != 1:
                g.fail(f"expected one RMSNorm weight on the {r} path, found {len(ws)}")
            norms[r] = ws[0]
            adds = [byid[j] for j in paths[r] if byid[j].op_type == "ReduceMean"]
            if len(adds) != 1:
                g.fail(f"expected one RMSNorm on the {r} path")
            e = [g.scalar(u, "epsilon") for u in g.users(adds[0].output[0]) if u.op_type == "Add"]
            if len(e) != 1:
                g.fail(f"no epsilon after the {r} RMSNorm's mean")
            eps = e[0]
        if any(byid[j].op_type in ("Neg", "ReduceMean") for j in paths["v"]):
            g.fail("v is normalized or rotated; LFM2 attention leaves v alone")
        hd = norms["q"].shape[0]
        if norms["k"].shape[0] != hd:
            g.fail("q and k norms differ in size")
        theta = self._rope_theta(g, paths["q"] | paths["k"], hd)
        self._check_scores(g, m1[0], sm, hd)
        wq, wk, wv, wo = (roles[r][1] for r in ("q", "k", "v", "out"))
        p = g.path + "."
        return self.b.attention(x, {"q_proj": self.param(p + "q_proj.weight", wq),
                                    "k_proj": self.param(p + "k_proj.weight", wk),
                                    "v_proj": self.param(p + "v_proj.weight", wv),
                                    "out_proj": self.param(p + "out_proj.weight", wo),
                                    "q_norm": self.param(p + "q_layernorm.weight", norms["q"]),
                                    "k_norm": self.param(p + "k_layernorm.weight", norms["k"])},
                                wq.shape[0] // hd, wk.shape[0] // hd, hd, theta, eps)

    @staticmethod
    def _rope_theta(g: _Group, qk: set[int], hd: int) -> float:
        """RoPE theta from the exported cos / sin tables ([.., T, hd], positions 0..T-1): each must be
        cos / sin(t * theta^(-2i/hd)) for some theta; the round value (4 significant digits) is taken when it
        reproduces the tables to float32 precision."""
        byid = {id(n): n for n in g.nodes}
        tabs = []
        for j in qk:
            n = byid[j]
            if n.op_type != "Mul":
                continue
            for i in n.input:
                c = g.const(i)
                if c is not None and c.ndim >= 2 and c.shape[-1] == hd and c.size > hd:
                    t2 = c.reshape(-1, hd).astype(np.float64)
                    if not any(t2.shape == t.shape and np.array_equal(t2, t) for t in tabs):
                        tabs.append(t2)
        if len(tabs) != 2:
            g.fail(f"expected a cos and a sin table of width {hd} on the q/k paths, found {len(tabs)}")
        cos = next((t for t in tabs if np.allclose(t[0], 1.0)), None)
        sin = next((t for t in tabs if t is not cos), None)
        if cos is None or sin is None or len(cos) < 2 or not np.allclose(sin[0], 0.0, atol=1e-6):
            g.fail("the rotary tables are not cos / sin from position 0 (need an export with at least 2 tokens)")
        freq = np.arctan2(sin[1, : hd // 2], cos[1, : hd // 2])
        i = np.arange(hd // 2)
        if freq[0] <= 0 or np.any(freq <= 0):
            g.fail("the rotary tables are not cos / sin(t * inv_freq) with positive frequencies")
        # log freq_i = -(2i/hd) log theta: least squares over i > 0
        sel = i[1:]
        log_theta = -np.sum(np.log(freq[sel]) * (2 * sel / hd)) / np.sum((2 * sel / hd) ** 2) if len(sel) else np.log(1e4)
        pos = np.arange(len(cos))[:, None]

        def fits(theta: float) -> bool:
            ang = pos * (1.0 / theta ** (np.arange(0, hd, 2) / hd))[None, :]
            ang = np.concatenate([ang, ang], axis=1)
            return bool(np.allclose(np.cos(ang), cos, atol=2e-6) and np.allclose(np.sin(ang), sin, atol=2e-6))

        theta = float(np.exp(log_theta))
        nice = float(f"{theta:.4g}")
        if fits(nice):
            return nice
        if fits(theta):
            return theta
        g.fail("rotary frequencies are not theta^(-2i/d) (scaled RoPE variants are not supported)")

    @staticmethod
    def _check_scores(g: _Group, m1, sm, hd: int) -> None:
        """Scale 1/sqrt(hd) (possibly split as sqrt on q and k), a causal mask, softmax over the last axis."""
        scale = 1.0
        for a in g.ancestors(m1.input[0]) | g.ancestors(m1.input[1]):
            n = next(n for n in g.nodes if id(n) == a)
            if n.op_type in ("Mul", "Div"):
                c = [g.const(i) for i in n.input if g.const(i) is not None]
                if len(c) == 1 and c[0].size == 1:
                    scale *= float(c[0].reshape(-1)[0]) ** (1 if n.op_type == "Mul" else -1)
        v = m1.output[0]
        while True:
            us = g.users(v)
            if len(us) != 1 or us[0] is sm:
                break
            u = us[0]
            c = [g.const(i) for i in u.input if g.const(i) is not None]
            if u.op_type in ("Mul", "Div") and len(c) == 1 and c[0].size == 1:
                scale *= float(c[0].reshape(-1)[0]) ** (1 if u.op_type == "Mul" else -1)
            elif u.op_type == "Add" and len(c) == 1:
                m = c[0].reshape(c[0].shape[-2:]) if c[0].ndim >= 2 else None
                if m is None or m.shape[0] != m.shape[1] or not (
                        np.all(np.tril(m) == 0) and np.all(m[np.triu_indices(len(m), 1)] < -1e30)):
                    g.fail("the attention mask is not causal", [u])
            else:
                g.fail(f"unexpected {u.op_type} between the scores and the Softmax", [u])
            v = u.output[0]
        if not np.isclose(scale, hd ** -0.5, rtol=1e-5):
            g.fail(f"attention scores are scaled by {scale:g}, not 1/sqrt(head_dim) = {hd ** -0.5:g}")
        if _attrs(sm).get("axis", -1) not in (-1, 3):
            g.fail("the Softmax is not over the key axis", [sm])

    def gated_mlp_(self, g: _Group, x: str) -> str:
        g.expect({"MatMul", "Gemm", "Sigmoid", "Mul"} | _VIEWS, {"Sigmoid": 1, "Mul": 2})
        lin = g.linears()
        sig = g.one("Sigmoid")
        w1 = [t for t in lin if g.ox.canon(t[3]) == g.ox.canon(sig.input[0])]
        w2 = [t for t in lin if g.ox.canon(t[0].input[0]) != g.inputs[0]]
        w3 = [t for t in lin if t not in w1 and t not in w2]
        if len(lin) != 3 or not (len(w1) == len(w2) == len(w3) == 1) or any(t[2] is not None for t in lin):
            g.fail("expected w2(silu(w1 x) * w3 x) without biases")
        silu = [m for m in g.of("Mul") if set(m.input) == {w1[0][3], sig.output[0]}]
        if len(silu) != 1:
            g.fail("the gate is not silu(w1 x) = w1 x * sigmoid(w1 x)", [sig])
        p = g.path + "."
        return self.b.gated_mlp(x, {"w1": self.param(p + "w1.weight", w1[0][1]),
                                    "w3": self.param(p + "w3.weight", w3[0][1]),
                                    "w2": self.param(p + "w2.weight", w2[0][1])})

    def moe_(self, g: _Group, x: str) -> str:
        g.expect({"MatMul", "Gemm", "Sigmoid", "Softmax", "TopK", "GatherElements", "GatherND", "Gather",
                  "ReduceSum", "Add", "Div", "Mul"} | _VIEWS, {"TopK": 1})
        lin = g.linears()
        if len(lin) != 1 or lin[0][2] is not None:
            g.fail("expected one bias-free router projection")
        rn, router, _, rout = lin[0]
        E = router.shape[0]
        score = [u for u in g.users(rout) if u.op_type in ("Sigmoid", "Softmax")]
        if len(score) != 1:
            g.fail("router scores are neither sigmoid nor softmax")
        scoring = "sigmoid" if score[0].op_type == "Sigmoid" else "softmax"
        topk = g.one("TopK")
        k = g.const(topk.input[1])
        if k is None:
            g.fail("top-k is not a constant", [topk])
        bias = None
        for n in g.of("Add"):
            cs = [g.const(i) for i in n.input if g.const(i) is not None]
            if len(cs) == 1 and cs[0].shape == (E,) and id(topk) in g.descendants(n.output[0]):
                bias = cs[0]
        norm = bool(g.of("Div")) and bool(g.of("ReduceSum"))
        eps = 1e-6
        if norm:
            sums = [n for n in g.of("ReduceSum") if id(n) in g.ancestors(g.of("Div")[0].input[1])]
            add = [u for s in sums for u in g.users(s.output[0]) if u.op_type == "Add"]
            if len(add) == 1:
                eps = g.scalar(add[0], "the top-k normalization epsilon")
        scale = 1.0
        for n in g.of("Mul"):
            c = [g.const(i) for i in n.input if g.const(i) is not None]
            if len(c) == 1 and c[0].size == 1:
                scale = _f32(c[0])
        experts = []
        for n in g.nodes:
            if n.op_type in ("GatherND", "Gather"):
                c = g.const(n.input[0])
                if c is not None and c.ndim == 3 and c.shape[0] == E and not any(c is e for e in experts):
                    experts.append(c)
        if len(experts) != 2:
            g.fail(f"expected two stacked expert weight tensors gathered by expert index, found {len(experts)} "
                   "(export with experts_implementation='batched_mm')")
        splits = g.of("Split")
        if len(splits) != 1 or len(splits[0].output) != 2:
            g.fail("expected the gate/up projection split in two", splits or None)
        split = splits[0]
        gu = [e for e in experts if any(id(split) in g.descendants(n.output[0]) for n in g.nodes
                                         if n.op_type in ("GatherND", "Gather") and g.const(n.input[0]) is e)]
        if len(gu) != 1:
            g.fail("cannot tell the gate/up experts from the down experts")
        down = next(e for e in experts if e is not gu[0])
        sig = [n for n in g.of("Sigmoid") if n.input[0] in split.output]
        if len(sig) != 1:
            g.fail("expected silu on one half of the gate/up projection")
        gi = list(split.output).index(sig[0].input[0])
        p = g.path + "."
        params = {"router": self.param(p + "gate.weight", router),
                  "gate_up": self.param(p + "experts.gate_up_proj", gu[0]),
                  "down": self.param(p + "experts.down_proj", down)}
        if bias is not None:
            params["expert_bias"] = self.param(p + "expert_bias", bias)
        feat = {"router": Gate("router", act=scoring), "gate": Gate("gate_up", gi, 2, "silu"),
                "up": Gate("gate_up", 1 - gi, 2)}
        return self.b.node("moe", [x], params, {
            "num_experts": E, "top_k": int(np.asarray(k).reshape(-1)[0]), "scoring": scoring,
            "use_expert_bias": bias is not None, "norm_topk_prob": norm, "routed_scaling_factor": scale,
            "topk_norm_eps": eps}, feat)

    def linear_(self, g: _Group, x: str, is_output: bool) -> str:
        g.expect({"MatMul", "Gemm", "Add"} | _VIEWS, {})
        lin = g.linears()
        if len(lin) != 1:
            g.fail(f"expected one linear layer, found {len(lin)}")
        _, w, bias, _ = lin[0]
        if is_output and bias is None:
            if self.embedding is not None and np.array_equal(self.embedding[1], w):
                return self.b.lm_head(x, (self.embedding[0], tuple(w.shape)))
            return self.b.lm_head(x, self.param(g.path + ".weight", w))
        params = {"weight": self.param(g.path + ".weight", w)}
        if bias is not None:
            params["weight_bias"] = self.param(g.path + ".bias", bias)
        return self.b.node("linear", [x], params)

    def lift_group(self, g: _Group, x: str, is_output: bool) -> str:
        ops = set(g.ops)
        if "Gather" in ops and "TopK" not in ops and len(g.nodes) <= 3:
            return self.embedding_(g, x)
        if "TopK" in ops:
            return self.moe_(g, x)
        if "Conv" in ops:
            return self.short_conv_(g, x)
        if "Softmax" in ops:
            return self.attention_(g, x)
        if "Sigmoid" in ops and len(g.linears()) == 3:
            return self.gated_mlp_(g, x)
        if "ReduceMean" in ops and not g.linears():
            return self.rmsnorm_(g, x)
        if {"MatMul", "Gemm"} & ops and len(g.linears()) == 1 and ops <= {"MatMul", "Gemm", "Add"} | _VIEWS:
            return self.linear_(g, x, is_output)
        g.fail("no LIV or ordinary op has this pattern")


def lift_onnx(mo, name: str = "model", source: str = "<onnx>") -> tuple[Graph, dict[str, np.ndarray]]:
    """IR graph and float32 weights of an ONNX ModelProto exported from an LFM2 / LFM2-MoE."""
    try:
        return _lift(mo, name, source)
    except LfmcError:
        raise
    except (KeyError, IndexError, ValueError, TypeError, AttributeError) as e:
        # a graph malformed in a way no pattern check anticipated: still an error about the input, not a crash
        raise LfmcError(f"{source}: malformed ONNX graph ({type(e).__name__}: {e})") from None


def _lift(mo, name: str, source: str) -> tuple[Graph, dict[str, np.ndarray]]:
    ox = _Onnx(mo, source)
    all_paths = {p for ps in ox._paths.values() for p in ps}
    groups: dict[str, list] = {}
    items: list[tuple[str, Any]] = []
    for n in ox.active_nodes:
        kind, path = ox.block_key(n, all_paths)
        if kind == "block":
            if path not in groups:
                groups[path] = []
                items.append(("group", path))
            groups[path].append(n)
        elif n.op_type != "Identity":
            items.append(("node", n))
    pos = {id(n): i for i, n in enumerate(ox.active_nodes)}
    resolved = [("group", _Group(ox, it, groups[it])) if k == "group" else (k, it) for k, it in items]
    resolved.sort(key=lambda kv: pos[id(kv[1].nodes[-1])] if kv[0] == "group" else pos[id(kv[1])])
    out = ox.canon(ox.output)
    lf = _Lifter(ox, name)
    value: dict[str, str] = {ox.tokens: lf.b.tokens}

    def val(v: str, where: str, node=None) -> str:
        c = ox.canon(v)
        if c not in value:
            raise OnnxLiftError(where, f"operand {c!r} is not produced by any lifted op", [node] if node else [])
        return value[c]

    bar = task("lifting ONNX modules", len(resolved), "module")
    for kind, it in resolved:
        bar.update()
        if kind == "node":
            acts = [i for i in it.input if ox.canon(i) in ox.active]
            if it.op_type != "Add" or len(acts) != 2:
                raise OnnxLiftError(ox._paths[id(it)][-1] if ox._paths[id(it)] else "",
                                    f"unexpected {it.op_type} between operators", [it])
            value[it.output[0]] = lf.b.add(*(val(a, "residual add", it) for a in acts))
            continue
        g: _Group = it
        leaving = [o for n in g.nodes for o in n.output
                   if o == ox.output or any(id(u) not in g.ids and o in ox.active for u in ox.users.get(o, []))]
        if len(set(leaving)) != 1:
            g.fail(f"expected one value to leave the module, found {len(set(leaving))}")
        if len(g.inputs) != 1:
            g.fail(f"expected one activation input, found {len(g.inputs)}")
        value[leaving[0]] = lf.lift_group(g, val(g.inputs[0], g.path), ox.canon(leaving[0]) == out)
    graph = lf.b.finish(val(out, "output"))
    bar.close()
    return graph, {p: lf.weights[p] for p in graph.params()}


def import_onnx(path: str | os.PathLike, name: str | None = None) -> Model:
    """An ONNX file exported from transformers' LFM2 / LFM2-MoE, lifted to IR with its weights. A
    ``config.json`` / ``tokenizer.json`` beside the file supply token ids, context length and tokenizer."""
    import onnx

    from .config import config_from_graph

    p = Path(path)
    if not p.is_file():
        raise LfmcError(f"{p}: no such ONNX file")
    try:
        mo = onnx.load(str(p))
    except Exception as e:                                      # noqa: BLE001  protobuf / external-data errors
        raise LfmcError(f"{p}: not a readable ONNX model ({type(e).__name__}: {e})") from None
    graph, weights = lift_onnx(mo, name or p.stem, str(p))
    side = p.parent / "config.json"
    extra: dict[str, Any] = {}
    if side.is_file():
        try:
            extra = json.loads(side.read_text())
        except ValueError as e:
            raise LfmcError(f"{side}: not valid JSON ({e})") from None
    cfg = config_from_graph(graph, extra, where=str(side) if side.is_file() else None)
    m = Model(graph, weights, {"source": "onnx", "path": str(p.resolve()), "architecture": cfg["architecture"],
                               "config": cfg, "opset": max((o.version for o in mo.opset_import if o.domain in
                                                            ("", "ai.onnx")), default=None)})
    tok = p.parent / "tokenizer.json"
    if tok.is_file():
        m.tokenizer = tok.read_text()
    from . import chat_template_of

    chat = chat_template_of(p.parent)
    if chat:
        m.provenance["chat"] = chat
    return m
