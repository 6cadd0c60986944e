"""Lifting a normalised ONNX graph (:class:`Net`) to IR by data flow, along the residual stream.

From the token embedding, each step finds the two users of the residual value ``h``: an ``RMSNorm`` and the
``Add`` that brings the block's result back (``h + block(norm(h))``). The block is every active op between the
two: downstream of the norm and upstream of the add. Its ops say what it is (a ``Conv`` or a cached conv: the short
conv; a ``Softmax`` or ``GroupQueryAttention``: attention; a ``TopK``: the MoE; three projections and a
``Sigmoid``: the gated MLP) and the block's lifter checks its data flow and reads its weights. A norm without an
add is the final norm; the projection after it the LM head. Module scopes, node names and the export's module
tree play no part, so wrappers, symbolic axes, cache inputs and ONNX Runtime's fused ops lift alike.

Parameters get the names transformers gives them (``model.layers.3.conv.in_proj.weight``), so an ONNX import
prints the same IR as a torch import of the same model.
"""
from __future__ import annotations

from collections import Counter
from typing import Any, Iterable

import numpy as np

from ...ir.graph import Gate, Graph
from ...progress import task
from ..build import GraphBuilder
from ..patterns import short_conv_gates, short_conv_kernel, with_optional
from .fuse import _f32, fuse_all
from .net import MS, VIEWS, Net, Op, OnnxLiftError, Weight


class Block:
    """The ops of one block, with the data-flow queries the block lifters use."""

    def __init__(self, net: Net, where: str, ops: list[Op], x: str):
        self.net, self.where, self.ops, self.x = net, where, ops, x
        self.ids = {id(n) for n in ops}
        self.counts = Counter(n.op_type for n in ops)

    def fail(self, msg: str, nodes: Iterable[Any] | None = None):
        src = [s for n in (self.ops if nodes is None else nodes) for s in (n.src or [n])]
        raise OnnxLiftError(self.where, msg, src)

    def of(self, op: str) -> list[Op]:
        return [n for n in self.ops if n.op_type == op]

    def one(self, op: str) -> Op:
        ns = self.of(op)
        if len(ns) != 1:
            self.fail(f"expected one {op}, found {len(ns)}")
        return ns[0]

    def const(self, v: str) -> np.ndarray | None:
        return self.net.const(v) if self.net.is_const(v) else None

    def scalar(self, n: Op, what: str) -> float:
        cs = [self.const(i) for i in n.input if self.const(i) is not None]
        if len(cs) != 1 or cs[0].size != 1:
            self.fail(f"{what}: expected a constant scalar operand", [n])
        return _f32(cs[0])

    def producer(self, v: str) -> Op | None:
        n = self.net.prod(v)
        return n if n is not None and id(n) in self.ids else None

    def users(self, v: str) -> list[Op]:
        return [u for u in self.net.active_users(v) if id(u) in self.ids]

    def ancestors(self, v: str) -> set[int]:
        out, todo = set(), [v]
        while todo:
            n = self.producer(todo.pop())
            if n is None or id(n) in out:
                continue
            out.add(id(n))
            todo += [i for i in n.input if i]
        return out

    def descendants(self, v: str) -> set[int]:
        out, todo = set(), [v]
        while todo:
            for u in self.users(todo.pop()):
                if id(u) not in out:
                    out.add(id(u))
                    todo += [o for o in u.output if o]
        return out

    def linears(self) -> list[Op]:
        return self.of("Linear")

    def from_x(self, v: str) -> bool:
        """Whether ``v`` is the block input, through views."""
        return self.net.through_views(v, self.producer, VIEWS - {"Concat", "Split"}, 32) == self.net.canon(self.x)

    def expect(self, allowed: set[str], required: dict[str, int]) -> None:
        extra = [n for n in self.ops if n.op_type not in allowed]
        if extra:
            self.fail(f"ONNX ops outside the pattern: {', '.join(sorted({n.op_type for n in extra}))}", extra)
        for op, k in required.items():
            if self.counts.get(op, 0) != k:
                self.fail(f"expected {k} {op}, found {self.counts.get(op, 0)}")


class Lifter:
    """Walks the residual stream, lifts each block and collects parameters under transformers' names."""

    def __init__(self, net: Net, name: str, lfm3: bool = False):
        self.net, self.b, self.lfm3 = net, GraphBuilder(name), lfm3
        self.lfm3_features: set[str] = set()       # what only LFM3 has (then the names are LFM3's: a second pass)
        self.dtypes: set[str] = set()              # how the graph stores its projection weights (f32, f16, q4, q8)
        self.param_dtypes: dict[str, str] = {}     # the same per parameter (float16 ones stay 16-bit)
        self.weights: dict[str, np.ndarray] = {}
        self.kept: dict[str, tuple] = {}
        self.notes: list[str] = []
        self.embedding: tuple[str, Weight] | None = None

    def param(self, name: str, arr: np.ndarray) -> tuple[str, tuple[int, ...]]:
        arr = np.ascontiguousarray(arr, np.float32)
        self.weights[name] = arr
        return name, tuple(arr.shape)

    def linear(self, name: str, lin: Op) -> tuple[str, tuple[int, ...]]:
        """A projection weight ``[out, in]``; a quantized one lfmc keeps is remembered for the importer."""
        w = lin.weight
        self.dtypes.add(w.dtype)
        self.param_dtypes[name] = w.dtype
        if w.note:
            self.notes.append(f"{name}: {w.note}")
        if w.kept is not None:
            return self.keep(name, w.kept, (w.out_features, w.in_features))
        return self.param(name, w.dense())

    def keep(self, name: str, kept: tuple, shape: tuple[int, ...]) -> tuple[str, tuple[int, ...]]:
        """A weight kept quantized (code dtype, codes, scales, zeros): the importer stores the codes."""
        self.kept[name] = kept
        self.weights[name] = np.zeros((0,), np.float32)          # placeholder: the importer swaps the codes in
        return name, tuple(shape)

    def norm_weight(self, blk: Block | None, n: Op, size: int | None = None) -> np.ndarray:
        w = self.net.const(n.input[1]) if self.net.is_const(n.input[1]) else None
        if w is None or w.size < 2 or (size is not None and w.size != size):
            raise OnnxLiftError(blk.where if blk else "a norm", "the RMSNorm weight is not a constant vector"
                                + (f" of size {size}" if size else ""), n.src)
        return np.asarray(w, np.float32).reshape(-1)

    # ------------------------------------------------------------------ blocks
    def short_conv(self, g: Block, x: str, p: str) -> str:
        g.expect({"Linear", "Mul", "Conv", "Add"} | VIEWS, {"Conv": 1, "Split": 1, "Mul": 2})
        lin = g.linears()
        inp = [t for t in lin if g.from_x(t.input[0])]
        if len(lin) != 2 or len(inp) != 1:
            g.fail("expected an input projection of the block input and an output projection")
        in_l, out_l = inp[0], next(t for t in lin if t is not inp[0])
        split = g.one("Split")
        if len(split.output) != 3:
            g.fail(f"in_proj is split into {len(split.output)}, expected 3 (B, C, x)", [split])
        if id(split) not in g.descendants(in_l.output[0]):
            g.fail("the Split does not split in_proj", [split])
        idx = {o: i for i, o in enumerate(split.output)}
        conv = g.one("Conv")
        kern = g.const(conv.input[1])
        if kern is None:
            g.fail("the Conv kernel is not a constant", [conv])
        at = conv.attrs
        pads = list(at.get("pads", [0, 0]))
        left = pads[0] if pads else 0
        cat = g.producer(conv.input[0])
        if cat is not None and cat.op_type == "Concat":             # the cache form: conv(concat(past, Bx))
            past = [i for i in cat.input if self.net.cache_of(i) is not None]
            if len(past) != 1 or self.net.cache_of(past[0])[0] != "conv" or left != 0:
                g.fail("the conv's input is a Concat that is not [past_conv, B*x] without padding", [cat, conv])
            left = kern.shape[-1] - 1
        L = short_conv_kernel(kern.shape, at.get("group", 1), left,
                              all(s == 1 for s in at.get("strides", [1])) and
                              all(d == 1 for d in at.get("dilations", [1])), g.fail, [conv])
        conv_anc = g.ancestors(conv.input[0])
        pre = [m for m in g.of("Mul") if id(m) in conv_anc]
        post = [m for m in g.of("Mul") if id(m) not in conv_anc]
        feat = short_conv_gates(pre, post, lambda m: [self._through_views(g, i) for i in m.input], idx.get, g.fail)
        if id(post[0]) not in g.descendants(conv.output[0]):
            g.fail("expected C * conv(..) with C a chunk of in_proj", post)
        if id(out_l) not in g.descendants(post[0].output[0]):
            g.fail("the output projection does not follow C * conv(..)", [out_l])
        cb = g.const(conv.input[2]) if len(conv.input) > 2 and conv.input[2] else None
        wi, wo = in_l.weight, out_l.weight
        params = with_optional({"in_proj": self.linear(p + "in_proj.weight", in_l),
                                "conv": self.param(p + "conv.weight", kern),
                                "out_proj": self.linear(p + "out_proj.weight", out_l)},
                               {role: self.param(p + pn, arr) if arr is not None else None
                                for role, pn, arr in (("in_proj_bias", "in_proj.bias", wi.bias),
                                                      ("out_proj_bias", "out_proj.bias", wo.bias),
                                                      ("conv_bias", "conv.bias", cb))})
        return self.b.short_conv(x, params, L, feat)

    def _through_views(self, g: Block, v: str) -> str:
        """The Split output ``v`` comes from, through views (a Transpose after the Split)."""
        return self.net.through_views(v, g.producer, VIEWS - {"Split"}, 8)

    def attention(self, g: Block, x: str, p: str) -> str:
        gqa = g.of("GroupQueryAttention")
        if gqa:
            return self._attention_gqa(g, x, p, gqa)
        g.expect({"Linear", "RMSNorm", "MatMul", "Mul", "Add", "Neg", "Softmax", "IsNaN", "Where", "Div", "Sigmoid"}
                 | VIEWS,
                 {"Softmax": 1})
        sm = g.one("Softmax")
        mms = g.of("MatMul")
        m1 = [n for n in mms if id(n) in g.ancestors(sm.input[0])]
        m2 = [n for n in mms if id(n) in g.descendants(sm.output[0])]
        if len(m1) != 1 or len(m2) != 1:
            g.fail("expected one score MatMul before the Softmax and one after")
        paths = {"q": g.ancestors(m1[0].input[0]), "k": g.ancestors(m1[0].input[1]), "v": g.ancestors(m2[0].input[1])}
        roles = self._qkvo(g, paths)
        hd, norms, eps = self._qk_norms(g, paths)
        rope = self._rope_tables(g, paths["q"] | paths["k"], hd)
        window = self._check_scores(g, m1[0], sm, hd)
        if "gate" in roles:
            self._check_gate(g, roles["gate"], m2[0])
        return self._emit_attention(g, x, p, roles, norms, eps, hd, rope, window)

    def _attention_gqa(self, g: Block, x: str, p: str, gqa: list[Op]) -> str:
        g.expect({"Linear", "RMSNorm", "GroupQueryAttention", "RotaryEmbedding", "Sigmoid", "Mul"} | VIEWS,
                 {"GroupQueryAttention": 1})
        a = gqa[0]
        if len(a.input) < 3 or not a.input[1] or not a.input[2]:
            g.fail("GroupQueryAttention with packed QKV is not supported", [a])
        at = a.attrs
        paths = {"q": g.ancestors(a.input[0]), "k": g.ancestors(a.input[1]), "v": g.ancestors(a.input[2])}
        roles = self._qkvo(g, paths)
        hd, norms, eps = self._qk_norms(g, paths)
        H, KV = int(at["num_heads"]), int(at["kv_num_heads"])
        if roles["q"].weight.out_features != H * hd or roles["k"].weight.out_features != KV * hd:
            g.fail(f"GroupQueryAttention's num_heads {H} / kv_num_heads {KV} do not fit the projections", [a])
        if float(at.get("softcap", 0.0)) != 0.0 or int(at.get("smooth_softmax", 0)) or int(at.get("causal", 1)) != 1:
            g.fail("GroupQueryAttention with softcap, smooth softmax or without the causal mask is not LFM attention",
                   [a])
        lws = int(at.get("local_window_size", -1))
        window = lws if lws >= 0 else None            # ONNX Runtime's window: the keys a query sees, itself included
        scale = float(at.get("scale", 0.0)) or hd ** -0.5
        if not np.isclose(scale, hd ** -0.5, rtol=1e-5):
            g.fail(f"attention scores are scaled by {scale:g}, not 1/sqrt(head_dim) = {hd ** -0.5:g}", [a])
        rot = g.of("RotaryEmbedding")
        if at.get("do_rotary", 0):
            if rot or len(a.input) < 9 or not a.input[7]:
                g.fail("GroupQueryAttention rotates, but without cos / sin caches or after RotaryEmbedding nodes", [a])
            tabs, inter = (a.input[7], a.input[8]), int(at.get("rotary_interleaved", 0))
        else:
            on = [r for r in rot if id(r) in paths["q"] or id(r) in paths["k"]]
            if len(on) != 2 or {id(on[0]), id(on[1])} & paths["q"] == set() or \
                    {id(on[0]), id(on[1])} & paths["k"] == set():
                g.fail("expected one RotaryEmbedding on q and one on k", rot or [a])
            r = on[0]
            if any(o.input[2:4] != r.input[2:4] for o in on):
                g.fail("q and k are rotated with different tables", on)
            if int(r.attrs.get("rotary_embedding_dim", 0)) not in (0, hd):
                g.fail("partial rotary embeddings are not LFM2's", on)
            tabs, inter = (r.input[2], r.input[3]), int(r.attrs.get("interleaved", 0))
        if inter:
            g.fail("interleaved rotary pairs are not LFM2's rotate-half RoPE", rot or [a])
        cos, sin = (self.net.const(t) if self.net.is_const(t) else None for t in tabs)
        if cos is None or sin is None:
            g.fail("the rotary cos / sin caches are not constants", rot or [a])
        rope = _fit_rope(np.asarray(cos, np.float64), np.asarray(sin, np.float64), hd, g.fail,
                         1e-3 if np.asarray(cos).dtype == np.float16 else 2e-6)
        if "gate" in roles:
            self._check_gate(g, roles["gate"], a)
        return self._emit_attention(g, x, p, roles, norms, eps, hd, rope, window)

    def _qkvo(self, g: Block, paths: dict[str, set[int]]) -> dict[str, Op]:
        roles: dict[str, Op] = {}
        lin = g.linears()
        for t in lin:
            hit = [r for r, a in paths.items() if id(t) in a]
            if len(hit) > 1:
                g.fail("one projection feeds several of q, k, v", [t])
            role = hit[0] if hit else "gate" if g.from_x(t.input[0]) else "out"
            if role in roles:
                g.fail(f"two projections feed {role}", [roles[role], t])
            roles[role] = t
        if set(roles) - {"gate"} != {"q", "k", "v", "out"} or any(t.weight.bias is not None for t in roles.values()):
            g.fail(f"cannot find bias-free q, k, v and output projections (found {sorted(roles)})", lin)
        return roles

    def _qk_norms(self, g: Block, paths: dict[str, set[int]]) -> tuple[int, dict[str, np.ndarray], float]:
        norms, eps = {}, None
        for r in "qk":
            ns = [n for n in g.of("RMSNorm") if id(n) in paths[r]]
            if len(ns) != 1:
                g.fail(f"expected one RMSNorm on the {r} path, found {len(ns)}", ns or None)
            norms[r] = self.norm_weight(g, ns[0])
            eps = ns[0].attrs["eps"]
        if any(n.op_type in ("RMSNorm", "Neg", "RotaryEmbedding") for n in g.ops if id(n) in paths["v"]):
            g.fail("v is normalized or rotated; LFM2 attention leaves v alone")
        hd = norms["q"].shape[0]
        if norms["k"].shape[0] != hd:
            g.fail("q and k norms differ in size")
        return hd, norms, eps

    def _emit_attention(self, g: Block, x: str, p: str, roles: dict[str, Op], norms: dict[str, np.ndarray],
                        eps: float, hd: int, rope: tuple[float | None, int | None, float | None],
                        window: int | None) -> str:
        nq, nk = roles["q"].weight.out_features, roles["k"].weight.out_features
        if nq % hd or nk % hd or roles["v"].weight.out_features != nk:
            g.fail(f"q / k / v widths {nq} / {nk} / {roles['v'].weight.out_features} do not fit head_dim {hd}")
        theta, angles, factor = rope
        if theta is None:           # not in the tables (one rotated pair): transformers' default for the layer type
            theta = 1e4 if window is not None else 1e6
        if "gate" in roles or window is not None or angles is not None or factor is not None:
            self.lfm3_features.add("attention gate" if "gate" in roles else "sliding window" if window
                                   else "partial or scaled RoPE")
        out, qn, kn = ("o_proj", "q_norm", "k_norm") if self.lfm3 else ("out_proj", "q_layernorm", "k_layernorm")
        params = {"q_proj": self.linear(p + "q_proj.weight", roles["q"]),
                  "k_proj": self.linear(p + "k_proj.weight", roles["k"]),
                  "v_proj": self.linear(p + "v_proj.weight", roles["v"]),
                  "out_proj": self.linear(p + out + ".weight", roles["out"]),
                  "q_norm": self.param(p + qn + ".weight", norms["q"]),
                  "k_norm": self.param(p + kn + ".weight", norms["k"])}
        if "gate" in roles:
            if roles["gate"].weight.out_features != nq // hd:
                g.fail(f"the output gate has {roles['gate'].weight.out_features} outputs, not one per head "
                       f"({nq // hd})", [roles["gate"]])
            params["g_proj"] = self.linear(p + "g_proj.weight", roles["gate"])
        return self.b.attention(x, params, nq // hd, nk // hd, hd, theta, eps, window=window, rope_angles=angles,
                                rope_factor=factor)

    def _check_gate(self, g: Block, gate: Op, m2: Op) -> None:
        """sigmoid(g_proj x), one value per head, multiplied into the attention output before o_proj."""
        sig = g.users(gate.output[0])
        if len(sig) != 1 or sig[0].op_type != "Sigmoid":
            g.fail("the output gate is not sigmoid(g_proj x)", [gate] + sig)
        down = g.descendants(sig[0].output[0])
        muls = [n for n in g.of("Mul") if id(n) in down and id(n) in g.descendants(m2.output[0])]
        if not muls:
            g.fail("the output gate does not multiply the attention output", [gate, sig[0]])

    def _rope_tables(self, g: Block, qk: set[int], hd: int) -> tuple[float | None, int | None, float | None]:
        """RoPE theta from the cos / sin tables multiplied into q and k (constants, or computed from positions:
        evaluated for the probe length)."""
        tabs = []
        for n in g.ops:
            if id(n) not in qk or n.op_type != "Mul":
                continue
            for i in n.input:
                if self.net.canon(i) in self.net.active:
                    continue
                c = self.net.side(i)
                if c is not None and c.ndim >= 2 and c.shape[-1] == hd and c.size > hd:
                    t2 = np.asarray(c, np.float64).reshape(-1, hd)
                    if not any(t2.shape == t.shape and np.array_equal(t2, t) for t in tabs):
                        tabs.append(t2)
        if len(tabs) != 2:
            g.fail(f"expected a cos and a sin table of width {hd} on the q/k paths, found {len(tabs)}")
        cos = next((t for t in tabs if np.allclose(t[0], 1.0)), None)
        sin = next((t for t in tabs if t is not cos), None)
        if cos is None or sin is None or len(cos) < 2 or not np.allclose(sin[0], 0.0, atol=1e-6):
            g.fail("the rotary tables are not cos / sin from position 0 (need an export with at least 2 tokens)")
        if not (np.allclose(cos[:, :hd // 2], cos[:, hd // 2:]) and np.allclose(sin[:, :hd // 2], sin[:, hd // 2:])):
            g.fail("the rotary tables are not rotate-half tables (both halves equal)")
        return _fit_rope(cos[:, :hd // 2], sin[:, :hd // 2], hd, g.fail)

    def _check_scores(self, g: Block, m1: Op, sm: Op, hd: int) -> int | None:
        """Scale 1/sqrt(hd) (possibly split as sqrt on q and k), a causal mask (its sliding window, if the probe
        length shows one, is returned), softmax over the last axis."""
        scale = 1.0
        for a in g.ancestors(m1.input[0]) | g.ancestors(m1.input[1]):
            n = next(n for n in g.ops if id(n) == a)
            if n.op_type in ("Mul", "Div"):
                c = [g.const(i) for i in n.input if g.const(i) is not None]
                if len(c) == 1 and c[0].size == 1:
                    scale *= float(c[0].reshape(-1)[0]) ** (1 if n.op_type == "Mul" else -1)
        v = m1.output[0]
        masked, window = False, None
        while True:
            us = g.users(v)
            if len(us) != 1 or us[0] is sm:
                break
            u = us[0]
            c = [g.const(i) for i in u.input if g.const(i) is not None]
            side = [i for i in u.input if self.net.canon(i) not in self.net.active]
            if u.op_type in ("Mul", "Div") and len(c) == 1 and c[0].size == 1:
                scale *= float(c[0].reshape(-1)[0]) ** (1 if u.op_type == "Mul" else -1)
            elif u.op_type == "Add" and len(side) == 1:
                m = self.net.side(side[0])
                if m is None:
                    g.fail("cannot evaluate the attention mask", [u])
                m = np.asarray(m, np.float64)
                m = m.reshape(-1, *m.shape[-2:]) if m.ndim >= 2 else None
                if m is None or m.shape[1] != m.shape[2]:
                    g.fail("the attention mask is not a square [queries, keys] mask", [u])
                T = m.shape[1]
                allowed = m[0] > -1e30
                w = int(allowed[-1].sum())                     # keys the last query sees: the window if < T
                i, j = np.indices((T, T))
                want = (j <= i) & (j > i - w)
                if not all(np.array_equal(s > -1e30, want) and np.all(s[want] == 0) for s in m):
                    g.fail("the attention mask is not causal (nor a causal sliding window)", [u])
                window = w if w < T else None
                masked = True
            else:
                g.fail(f"unexpected {u.op_type} between the scores and the Softmax", [u])
            v = u.output[0]
        if not masked and self.net.probe_len() > 1:
            g.fail("the attention scores carry no causal mask")
        if not np.isclose(scale, hd ** -0.5, rtol=1e-5):
            g.fail(f"attention scores are scaled by {scale:g}, not 1/sqrt(head_dim) = {hd ** -0.5:g}")
        if sm.attrs.get("axis", -1) not in (-1, 3):
            g.fail("the Softmax is not over the key axis", [sm])
        return window

    def gated_mlp(self, g: Block, x: str, p: str) -> str:
        g.expect({"Linear", "Sigmoid", "Mul"} | VIEWS, {"Sigmoid": 1, "Mul": 2})
        lin = g.linears()
        sig = g.one("Sigmoid")
        w1 = [t for t in lin if self.net.canon(t.output[0]) == self.net.canon(sig.input[0])]
        w2 = [t for t in lin if not g.from_x(t.input[0])]
        w3 = [t for t in lin if t not in w1 and t not in w2]
        if len(lin) != 3 or not (len(w1) == len(w2) == len(w3) == 1) or any(t.weight.bias is not None for t in lin):
            g.fail("expected w2(silu(w1 x) * w3 x) without biases")
        silu = [m for m in g.of("Mul") if {self.net.canon(i) for i in m.input} ==
                {self.net.canon(w1[0].output[0]), self.net.canon(sig.output[0])}]
        if len(silu) != 1:
            g.fail("the gate is not silu(w1 x) = w1 x * sigmoid(w1 x)", [sig])
        return self.b.gated_mlp(x, {"w1": self.linear(p + "w1.weight", w1[0]),
                                    "w3": self.linear(p + "w3.weight", w3[0]),
                                    "w2": self.linear(p + "w2.weight", w2[0])})

    def moe(self, g: Block, x: str, p: str) -> str:
        if g.of("MoE") or g.of("QMoE"):
            return self._moe_ort(g, x, p)
        g.expect({"Linear", "MatMul", "Sigmoid", "Softmax", "TopK", "GatherElements", "GatherND", "Gather",
                  "ReduceSum", "Add", "Div", "Mul"} | VIEWS, {"TopK": 1})
        lin = g.linears()
        if len(lin) != 1 or lin[0].weight.bias is not None:
            g.fail("expected one bias-free router projection")
        rout = lin[0].output[0]
        router = lin[0].weight.dense()
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
        experts, gathers = [], {}
        for n in g.ops:
            if n.op_type in ("GatherND", "Gather"):
                c = g.const(n.input[0])
                if c is not None and c.ndim == 3 and c.shape[0] == E:
                    key = self.net.canon(n.input[0])
                    if key not in gathers:
                        experts.append(c)
                    gathers.setdefault(key, []).append(n)
        if len(experts) != 2:
            g.fail(f"expected two stacked expert weight tensors gathered by expert index, found {len(experts)} "
                   "(export with experts_implementation='batched_mm')")
        splits = g.of("Split")
        if len(splits) != 1 or len(splits[0].output) != 2:
            g.fail("expected the gate/up projection split in two", splits or None)
        split = splits[0]
        keys = list(gathers)
        gu = [i for i, key in enumerate(keys) if any(id(split) in g.descendants(n.output[0]) for n in gathers[key])]
        if len(gu) != 1:
            g.fail("cannot tell the gate/up experts from the down experts")
        down = experts[1 - gu[0]]
        sig = [n for n in g.of("Sigmoid") if n.input[0] in split.output]
        if len(sig) != 1:
            g.fail("expected silu on one half of the gate/up projection")
        gi = list(split.output).index(sig[0].input[0])
        params = {"router": self.param(p + "gate.weight", router),
                  "gate_up": self.param(p + "experts.gate_up_proj", experts[gu[0]]),
                  "down": self.param(p + "experts.down_proj", down)}
        if bias is not None:
            params["expert_bias"] = self.param(p + "expert_bias", bias)
        feat = {"router": Gate("router", act=scoring), "gate": Gate("gate_up", gi, 2, "silu"),
                "up": Gate("gate_up", 1 - gi, 2)}
        return self.b.node("moe", [x], params, {
            "num_experts": E, "top_k": int(np.asarray(k).reshape(-1)[0]), "scoring": scoring,
            "use_expert_bias": bias is not None, "norm_topk_prob": norm, "routed_scaling_factor": scale,
            "topk_norm_eps": eps}, feat)

    def _moe_ort(self, g: Block, x: str, p: str) -> str:
        """ONNX Runtime's MoE op as Liquid's LFM2-MoE exports use it: sigmoid router scores, an expert bias for the
        choice only, top-k, the chosen weights' logarithms scattered over a floor into ``router_probs`` (the op's
        softmax of them is w / sum w: normalized top-k), SwiGLU experts with interleaved (1) or concatenated (2)
        gate / up rows, an optional scale after."""
        qmoe = bool(g.of("QMoE"))
        op = "QMoE" if qmoe else "MoE"
        g.expect({"Linear", "Sigmoid", "Add", "TopK", "GatherElements", "Log", "ScatterElements", op, "Mul",
                  "Expand"} | VIEWS, {op: 1, "TopK": 1})
        moe, topk = g.one(op), g.one("TopK")
        at = moe.attrs
        fusion = int(at.get("swiglu_fusion", 0))
        if str(at.get("activation_type", "relu")) not in ("swiglu", "b'swiglu'") or fusion not in (1, 2) \
                or float(at.get("activation_alpha", 1.0)) != 1.0 or float(at.get("activation_beta", 0.0)) != 0.0 \
                or int(at.get("use_sparse_mixer", 0)) or "swiglu_limit" in at:
            g.fail("an MoE whose experts are not silu(gate) * up with fused gate / up weights", [moe])
        lin = g.linears()
        if len(lin) != 1:
            g.fail("expected one router projection", lin or [moe])
        D = lin[0].weight.in_features
        if qmoe:
            if any(moe.input[k] for k in (4, 7, 8, 9, 10, 13) if k < len(moe.input)):
                g.fail("QMoE expert biases or a third expert weight are not LFM2-MoE's", [moe])
            fc1, fc2 = (self._qmoe_weight(g, moe, w, sc, zp, D, fc) for w, sc, zp, fc in ((2, 3, 11, True),
                                                                                        (5, 6, 12, False)))
            E, F = fc1[1].shape[0], fc1[1].shape[1] // 2
        else:
            if any(i for i in list(moe.input[3:4]) + list(moe.input[5:])):
                g.fail("MoE expert biases or a third expert weight are not LFM2-MoE's", [moe])
            w1, w2 = g.const(moe.input[2]), g.const(moe.input[4])
            if w1 is None or w2 is None or w1.ndim != 3 or w2.ndim != 3 or w1.shape[1] % 2 \
                    or w2.shape[0] != w1.shape[0] or w2.shape[2] * 2 != w1.shape[1]:
                g.fail("the MoE expert weights are not constants [E, 2F, D] and [E, D, F]", [moe])
            fc1, fc2 = (None, np.asarray(w1, np.float32)), (None, np.asarray(w2, np.float32))
            E, F = w1.shape[0], w1.shape[1] // 2

        def halves(a: np.ndarray | None) -> np.ndarray | None:       # [E, 2F, ...] -> gate rows then up rows
            if a is None:
                return None
            return np.concatenate([a[:, 0::2], a[:, 1::2]], axis=1) if fusion == 1 else a
        if len(lin) != 1 or lin[0].weight.bias is not None or lin[0].weight.out_features != E:
            g.fail(f"expected one bias-free router projection to {E} experts", lin or [moe])
        sig = [u for u in g.users(lin[0].output[0]) if u.op_type == "Sigmoid"]
        sc = g.producer(moe.input[1])
        chain = sc is not None and sc.op_type == "ScatterElements" and len(sig) == 1
        if chain:
            lg = g.producer(sc.input[2])
            ge = g.producer(lg.input[0]) if lg is not None and lg.op_type == "Log" else None
            chain = (ge is not None and ge.op_type == "GatherElements" and
                     self.net.canon(ge.input[0]) == self.net.canon(sig[0].output[0]) and
                     self.net.canon(ge.input[1]) == self.net.canon(topk.output[1]) and
                     self.net.canon(sc.input[1]) == self.net.canon(topk.output[1]))
        if not chain:
            g.fail("router_probs is not log(sigmoid scores) of the top-k experts scattered over a floor (the "
                   "LFM2-MoE export)", [moe, topk])
        k = g.const(topk.input[1])
        if k is None or int(np.asarray(k).reshape(-1)[0]) != int(at.get("k", 1)):
            g.fail("TopK's k and the MoE's k differ", [topk, moe])
        bias = None
        src = self.net.canon(topk.input[0])
        if src != self.net.canon(sig[0].output[0]):
            add = g.producer(src)
            b = None
            if add is not None and add.op_type == "Add":
                cs = [g.const(i) for i in add.input if g.const(i) is not None]
                b = cs[0] if len(cs) == 1 and cs[0].size == E else None
            if b is None:
                g.fail("the top-k choice is neither the router scores nor the scores plus an expert bias", [topk])
            bias = np.asarray(b, np.float32).reshape(E)
        scale = 1.0
        for n in g.of("Mul"):
            c = [g.const(i) for i in n.input if g.const(i) is not None]
            if len(c) == 1 and c[0].size == 1 and id(n) in g.descendants(moe.output[0]):
                scale = _f32(c[0])
        gu_kept = None if fc1[0] is None else (fc1[0][0], halves(fc1[0][1]), halves(fc1[0][2]), halves(fc1[0][3]))
        params = {"router": self.param(p + "gate.weight", lin[0].weight.dense()),
                  "gate_up": self.expert_param(p + "experts.gate_up_proj", halves(fc1[1]), gu_kept),
                  "down": self.expert_param(p + "experts.down_proj", fc2[1], fc2[0])}
        if bias is not None:
            params["expert_bias"] = self.param(p + "expert_bias", bias)
        feat = {"router": Gate("router", act="sigmoid"), "gate": Gate("gate_up", 0, 2, "silu"),
                "up": Gate("gate_up", 1, 2)}
        return self.b.node("moe", [x], params, {
            "num_experts": E, "top_k": int(at.get("k", 1)), "scoring": "sigmoid", "use_expert_bias": bias is not None,
            "norm_topk_prob": True, "routed_scaling_factor": scale, "topk_norm_eps": 1e-6}, feat)

    def expert_param(self, name: str, dense: np.ndarray, kept: tuple | None) -> tuple[str, tuple[int, ...]]:
        """Stacked expert weights [E, N, K]: kept quantized (codes, scales, zeros) when given, else float32."""
        return self.param(name, dense) if kept is None else self.keep(name, kept, dense.shape)

    def _qmoe_weight(self, g: Block, moe: Op, wi: int, si: int, zi: int, D: int, first: bool):
        """((code dtype, codes, scales, zeros) or None, dequantized float32) of a QMoE expert weight:
        ``[E, N, K * bits / 8]`` bytes (4-bit: low nibble first), scales ``[E, N, K / block]`` (or ``[E, N]``),
        zero points packed like the codes (default 2^(bits-1))."""
        at = moe.attrs
        bits, bs = int(at.get("expert_weight_bits", 4)), int(at.get("block_size", 0))
        W = g.const(moe.input[wi]) if wi < len(moe.input) and moe.input[wi] else None
        S = g.const(moe.input[si]) if si < len(moe.input) and moe.input[si] else None
        Z = g.const(moe.input[zi]) if zi < len(moe.input) and moe.input[zi] else None
        if bits not in (4, 8) or W is None or S is None or W.dtype != np.uint8 or W.ndim != 3:
            g.fail(f"QMoE weights are not constant {bits}-bit uint8 blocks with scales", [moe])
        E, N = W.shape[:2]
        K = W.shape[2] * (8 // bits)
        if first and K != D:
            g.fail(f"QMoE fc1 reads {K} inputs, the block's width is {D}", [moe])
        codes = np.stack([W & 15, W >> 4], -1).reshape(E, N, K) if bits == 4 else np.asarray(W)
        S = np.asarray(S, np.float32).reshape(E, N, -1)
        G = S.shape[-1]
        if K % G or (bs and K // G != bs):
            g.fail(f"QMoE scales {list(S.shape)} do not fit {K} inputs in blocks of {bs}", [moe])
        half = 1 << (bits - 1)
        if Z is None:
            zeros = None
        else:
            z = np.asarray(Z).reshape(E, N, -1)
            zeros = (np.stack([z & 15, z >> 4], -1).reshape(E, N, -1)[..., :G] if bits == 4 and z.shape[-1] < G
                     else z[..., :G]).astype(np.float32)
            if np.all(zeros == half):
                zeros = None
        zf = np.full((E, N, G), half, np.float32) if zeros is None else zeros
        dense = ((codes.astype(np.float32).reshape(E, N, G, K // G) - zf[..., None]) * S[..., None]).reshape(E, N, K)
        if bits == 4:
            return ("u4", np.ascontiguousarray(codes.astype(np.uint8)), S, zeros), dense
        if zeros is None:
            return ("i8", (codes.astype(np.int16) - half).astype(np.int8), S, None), dense
        self.notes.append(f"QMoE 8-bit experts with zero points dequantized to float32 ({moe.name})")
        return None, dense

    # ------------------------------------------------------------------ the walk
    def kind(self, g: Block) -> str:
        ops = set(g.counts)
        if "TopK" in ops or "MoE" in ops or "QMoE" in ops:
            return "moe"
        if "Conv" in ops:
            return "conv"
        if "Softmax" in ops or "GroupQueryAttention" in ops:
            return "attention"
        if "Sigmoid" in ops and len(g.linears()) == 3:
            return "mlp"
        g.fail("no LIV operator has this pattern (not a short conv, attention, gated MLP or MoE)")

    def run(self) -> Graph:
        net, b = self.net, self.b
        embs = [n for n in net.ops if n.op_type == "Embedding"]
        if len(embs) != 1:
            raise OnnxLiftError("the embedding", f"expected one Gather of a constant table by the token ids, found "
                                f"{len(embs)}", [s for n in embs for s in n.src] or
                                [s for n in net.active_users(net.tokens) for s in n.src])
        emb = embs[0]
        table = emb.weight.dense()
        name = "model.embed_tokens.weight"
        self.param_dtypes[name] = emb.weight.dtype
        if emb.weight.note:
            self.notes.append(f"{name}: {emb.weight.note}")
        self.embedding = (name, table)
        hv = b.embedding(b.tokens, self.param(name, table))
        h = emb.output[0]
        layer, in_layer = -1, False
        bar = task("lifting ONNX blocks", sum(o.op_type == "RMSNorm" for o in net.ops), "norm")
        steps = 0
        while True:
            steps += 1
            bar.update()
            if steps > 4096:
                raise OnnxLiftError("the residual stream", "does not reach the output")
            h = net.canon(h)
            users = [u for u in net.active_users(h) if u.op_type != "Shape"]
            norms = [u for u in users if u.op_type == "RMSNorm"]
            adds = [u for u in users if u.op_type == "Add" and
                    all(net.canon(i) in net.active for i in u.input)]
            where = (f"model.layers.{layer}.feed_forward" if in_layer
                     else f"model.layers.{layer + 1} (its conv or attention block)")
            if len(norms) == 1 and len(adds) == 1 and len(users) == 2:
                norm, add = norms[0], adds[0]
                other = add.input[1] if net.canon(add.input[0]) == h else add.input[0]
                down = _downstream(net, norm.output[0])
                up = _upstream(net, other, stop=h)
                ops = [o for o in net.ops if id(o) in down and id(o) in up]
                if not ops:
                    raise OnnxLiftError(where, "the residual add does not add a block of the normalized value",
                                        add.src)
                post = net.prod(other)
                if post is not None and post.op_type == "RMSNorm" and post in ops:      # LFM3's sandwich norm
                    ops = [o for o in ops if o is not post]
                    self.lfm3_features.add("sandwich norms")
                else:
                    post = None
                g = Block(net, where, ops, norm.output[0])
                kind = self.kind(g)
                if kind in ("conv", "attention"):
                    layer += 1
                    in_layer = True
                    nname = f"model.layers.{layer}.operator_norm.weight"
                    p = f"model.layers.{layer}." + ("conv." if kind == "conv" else "self_attn.")
                else:
                    if not in_layer:
                        raise OnnxLiftError(where, "a feed-forward block before any conv or attention", ops[:1])
                    in_layer = False
                    nname = f"model.layers.{layer}.ffn_norm.weight"
                    p = f"model.layers.{layer}.feed_forward."
                g.where = p.rstrip(".")
                xv = b.rmsnorm(hv, self.param(nname, self.norm_weight(g, norm)), norm.attrs["eps"])
                yv = getattr(self, {"conv": "short_conv", "attention": "attention", "mlp": "gated_mlp",
                                    "moe": "moe"}[kind])(g, xv, p)
                if post is not None:
                    pn = "post_operator_norm" if kind in ("conv", "attention") else "post_ffn_norm"
                    yv = b.rmsnorm(yv, self.param(f"model.layers.{layer}.{pn}.weight", self.norm_weight(g, post)),
                                   post.attrs["eps"])
                # the operand order of the model's code (and of the config builder): LFM2 adds the operator's
                # output to the residual and the residual to the feed-forward's; LFM3 the block's to the residual
                hv = b.add(yv, hv) if kind in ("conv", "attention") and not self.lfm3 else b.add(hv, yv)
                h = add.output[0]
                continue
            if len(norms) == 1 and not adds and len(users) == 1:
                norm = norms[0]
                hv = b.rmsnorm(hv, self.param("model.embedding_norm.weight", self.norm_weight(None, norm)),
                               norm.attrs["eps"])
                out = self._head(norm.output[0], hv)
                bar.close()
                return b.finish(out)
            raise OnnxLiftError(where, "the residual stream should feed one RMSNorm and one residual Add (or the "
                                "final RMSNorm alone); it feeds " + (", ".join(u.op_type for u in users) or "nothing"),
                                [s for u in users for s in u.src])

    def _head(self, x: str, xv: str) -> str:
        net = self.net
        down = _downstream(net, x)
        ops = [o for o in net.ops if id(o) in down]
        lin = [o for o in ops if o.op_type == "Linear"]
        g = Block(net, "the LM head", ops, x)
        g.expect({"Linear"} | VIEWS | {"Gather"}, {"Linear": 1})
        if net.canon(net.output) not in {net.canon(o) for n in ops for o in n.output}:
            g.fail("the final norm does not lead to the logits")
        w = lin[0].weight
        if w.bias is not None:
            g.fail("the LM head has a bias")
        if w.kept is None and self.embedding is not None and w.out_features == self.embedding[1].shape[0]:
            dense = w.dense()
            if np.array_equal(dense, self.embedding[1]):
                return self.b.lm_head(xv, (self.embedding[0], tuple(dense.shape)))
        return self.b.lm_head(xv, self.linear("lm_head.weight", lin[0]))


def _downstream(net: Net, v: str) -> set[int]:
    out, todo = set(), [v]
    while todo:
        for u in net.users.get(todo.pop(), []):
            if id(u) not in out:
                out.add(id(u))
                todo += [o for o in u.output if o]
    return out


def _upstream(net: Net, v: str, stop: str) -> set[int]:
    out, todo = set(), [v]
    while todo:
        x = todo.pop()
        if net.canon(x) == stop:
            continue
        n = net.producer.get(x)
        if n is None or id(n) in out:
            continue
        out.add(id(n))
        todo += [i for i in n.input if i and i in net.active]
    return out


def _fit_rope(cos: np.ndarray, sin: np.ndarray, hd: int, fail, atol: float = 2e-6
              ) -> tuple[float | None, int | None, float | None]:
    """(theta, rotated pairs or None if all, factor or None if 1) from half-width tables ``[positions, hd / 2]`` of
    cos / sin(t * f_i): f_i = theta^(-2i/hd) / factor for the first ``angles`` pairs, 0 for the rest (LFM3's
    "proportional" RoPE; LFM2's is the whole rotation, factor 1). The round values (4 significant digits) are
    taken when they reproduce the tables to float32 precision."""
    cos, sin = cos.reshape(-1, cos.shape[-1]), sin.reshape(-1, sin.shape[-1])
    if cos.shape != sin.shape or cos.shape[-1] != hd // 2 or len(cos) < 2:
        fail(f"the rotary tables are not [positions, {hd // 2}] cos / sin tables")
    still = np.all(sin == 0, axis=0) & np.all(cos == 1, axis=0)     # pairs never rotated
    angles = int(np.argmax(still)) if still.any() else hd // 2
    if still[angles:].sum() != hd // 2 - angles or angles == 0:
        fail("the rotary tables rotate pairs that are not the first ones")
    freq = np.arctan2(sin[1, :angles], cos[1, :angles])
    if np.any(freq <= 0):
        fail("the rotary tables are not cos / sin(t * inv_freq) with positive frequencies")
    i = np.arange(angles)
    ok = np.abs(sin[1, :angles]) > 1e-2                           # frequencies the table resolves (float16 too)
    x, y = (2 * i / hd)[ok], np.log(freq[ok])
    if len(x) >= 2:                                               # log f = -log factor - x log theta
        slope, icpt = np.polyfit(x, y, 1)
        log_theta, factor = -slope, float(np.exp(-icpt))
    else:                   # one rotated pair (or none resolved): theta^0 = 1, so theta is not in the tables
        log_theta, factor = np.log(1e6), 1.0 / float(freq[0])
    P = min(len(cos), 4096)
    pos = np.arange(P)[:, None]
    tol = atol * max(1, P / 16)                  # float32 angles lose precision with the position

    def fits(theta: float, fac: float) -> bool:
        f = np.zeros(hd // 2)
        f[:angles] = 1.0 / theta ** (np.arange(0, 2 * angles, 2) / hd) / fac
        ang = pos * f[None, :]
        return bool(np.allclose(np.cos(ang), cos[:P], atol=tol) and np.allclose(np.sin(ang), sin[:P], atol=tol))

    theta = float(np.exp(log_theta))
    if angles == 1:
        theta = None        # any theta fits: the caller takes the model family's default for the layer type
    for t, f in ((float(f"{(theta or 1e6):.4g}"), float(f"{factor:.4g}")), (float(f"{(theta or 1e6):.4g}"), 1.0),
                 (theta or 1e6, factor)):
        if fits(t, f):
            return (t if theta is not None else None), (angles if angles != hd // 2 else None), (f if f != 1.0
                                                                                                 else None)
    fail("rotary frequencies are not theta^(-2i/d) / factor (other scaled RoPE variants are not supported)")


def lift_net(net: Net, name: str, lfm3: bool | None = None) -> Lifter:
    """Fuse and lift; ``lfm3`` None: LFM3's names when the graph shows an LFM3 feature (a second walk)."""
    fuse_all(net)
    lf = Lifter(net, name, bool(lfm3))
    lf.graph = lf.run()
    if lfm3 is None and lf.lfm3_features:
        lf = Lifter(net, name, True)
        lf.graph = lf.run()
    lf.notes += net.notes
    if lf.lfm3 and net.static_len() is not None and any(n.op == "attention" for n in lf.graph.nodes):
        raise OnnxLiftError("the graph", f"an LFM3 graph traced for a fixed {net.static_len()} tokens cannot show "
                            "which attention layers slide (a window of that many tokens or more looks like full "
                            "attention): export it with a dynamic sequence axis (torch.onnx.export(..., "
                            "dynamic_shapes=...))")
    return lf
