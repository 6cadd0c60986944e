"""The torch frontend: torch.export a transformers LFM2 model, group aten nodes by owning module, lift by pattern.

1. ``torch.export`` the model on a short example prompt (``use_cache=False``: the IR's state is declared by
   the operators, not traced).
2. Group every aten node that depends on the token ids by the block that owns it (``nn_module_stack``): a
   block is a module below a decoder layer or below the base model (``model.layers.3.conv``,
   ``model.embed_tokens``); nodes owned by a decoder layer itself are residual adds.
3. Lift each group by the pattern of its aten ops and its data flow (which projection feeds which gate,
   which parameter normalizes which path), then build the node with :class:`GraphBuilder`.

Anything it cannot lift is a :class:`LiftError` naming the module path and the aten ops found there.
"""
from __future__ import annotations

from collections import Counter
from typing import Any, Iterable

import numpy as np

from ..ir.errors import LfmcError
from ..ir.graph import Gate, Graph
from ..progress import task
from .build import GraphBuilder
from .patterns import short_conv_gates, short_conv_kernel, with_optional


class LiftError(LfmcError):
    """A traced construct lfmc cannot lift to IR."""

    def __init__(self, where: str, msg: str, ops: Iterable[str] = ()):
        ops = sorted(set(ops))
        super().__init__(f"cannot lift module {where or '<top level>'!r}: {msg}"
                         + (f" (aten ops found: {', '.join(ops)})" if ops else ""))
        self.where, self.ops = where, ops


# Ops that only move, view or re-type data: transparent for pattern matching.
_VIEW_OPS = {"view", "reshape", "transpose", "unsqueeze", "squeeze", "expand", "contiguous", "clone", "to",
             "_to_copy", "_assert_tensor_metadata", "alias", "slice", "getitem", "type_as", "permute", "t",
             "repeat_interleave", "detach", "lift_fresh_copy"}
# Ops that return their first operand unchanged (when dtype and shape are unchanged).
_IDENTITY_OPS = {"to", "_to_copy", "alias", "contiguous", "clone", "detach", "type_as", "slice"}


def _opname(n) -> str:
    t = n.target
    if getattr(t, "__name__", None) == "getitem":
        return "getitem"
    name = getattr(t, "__name__", str(t))          # e.g. "linear.default"
    return name.split(".")[0]


class _Traced:
    """The exported program plus the lookups the lifters need."""

    def __init__(self, model, ep):
        self.model, self.ep = model, ep
        self.graph = ep.graph_module.graph
        sig = ep.graph_signature
        names = dict(sig.inputs_to_parameters) | dict(sig.inputs_to_buffers)
        canon: dict[int, str] = {}
        for n, t in list(model.named_parameters()) + list(model.named_buffers()):
            canon.setdefault(id(t), n)
        self.tensors: dict[str, Any] = {}
        self.param_name: dict[Any, str] = {}
        self.tokens = None
        for n in self.graph.nodes:
            if n.op != "placeholder":
                continue
            if n.name in names:
                fq = names[n.name]
                t = _get_tensor(model, fq)
                cname = canon.get(id(t), fq)
                self.param_name[n] = cname
                self.tensors[cname] = t
            elif self.tokens is None and n.name in sig.user_inputs:
                self.tokens = n
        if self.tokens is None:
            raise LiftError("", "the exported program has no token-id input")
        # activation set: everything that depends on the token ids
        self.active = {self.tokens}
        for n in self.graph.nodes:
            if n.op == "call_function" and any(a in self.active for a in n.all_input_nodes):
                self.active.add(n)

    def canon(self, n):
        """Follow identity ops (casts to the same dtype, aliases, full slices) to the value they pass on."""
        while n.op == "call_function" and _opname(n) in _IDENTITY_OPS and n.args and hasattr(n.args[0], "op"):
            src = n.args[0]
            v, sv = n.meta.get("val"), src.meta.get("val")
            if v is None or sv is None or tuple(v.shape) != tuple(sv.shape) or v.dtype != sv.dtype:
                break
            n = src
        return n

    def param_of(self, n) -> str | None:
        """The parameter a (possibly viewed) operand is, or None."""
        seen = 0
        while n is not None and hasattr(n, "op") and seen < 16:
            if n.op == "placeholder":
                return self.param_name.get(n)
            if n.op != "call_function" or _opname(n) not in _VIEW_OPS or not n.args:
                return None
            n, seen = n.args[0], seen + 1
        return None

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(int(d) for d in self.tensors[name].shape)


def _get_tensor(model, fq: str):
    mod, _, attr = fq.rpartition(".")
    return getattr(model.get_submodule(mod) if mod else model, attr)


class _Group:
    """The aten nodes one block owns, with the data-flow queries the pattern lifters use."""

    def __init__(self, tr: _Traced, path: str, nodes: list):
        self.tr, self.path, self.nodes = tr, path, nodes
        self.set = set(nodes)
        self.ops = Counter(_opname(n) for n in nodes)
        self.inputs: list = []
        for n in nodes:
            for a in n.all_input_nodes:
                c = tr.canon(a)
                if c not in self.set and c in tr.active and c not in self.inputs:
                    self.inputs.append(c)
        self.output = None

    def fail(self, msg: str):
        raise LiftError(self.path, msg, self.ops)

    def of(self, op: str) -> list:
        return [n for n in self.nodes if _opname(n) == op]

    def one(self, op: str):
        ns = self.of(op)
        if len(ns) != 1:
            self.fail(f"expected one {op}, found {len(ns)}")
        return ns[0]

    def structural(self) -> Counter:
        return Counter({k: v for k, v in self.ops.items() if k not in _VIEW_OPS})

    def expect_ops(self, want: dict[str, int]) -> None:
        got = self.structural()
        if got != Counter(want):
            diff = {k: (got.get(k, 0), want.get(k, 0)) for k in set(want) | set(got) if got.get(k, 0) != want.get(k, 0)}
            self.fail("aten ops do not match the pattern ("
                      + ", ".join(f"{k}: found {a}, expected {b}" for k, (a, b) in sorted(diff.items())) + ")")

    def ancestors(self, n) -> set:
        """Nodes of this group (and parameter placeholders) that ``n`` depends on, ``n`` included."""
        out, todo = set(), [n]
        while todo:
            x = todo.pop()
            if x in out:
                continue
            out.add(x)
            todo += [a for a in x.all_input_nodes if a in self.set or a.op == "placeholder"]
        return out

    def param(self, n, what: str) -> str:
        p = self.tr.param_of(n)
        if p is None:
            self.fail(f"{what} is not a parameter")
        return p

    def p(self, name: str) -> tuple[str, tuple[int, ...]]:
        return name, self.tr.shape(name)

    def linear(self, n) -> tuple[str, str | None]:
        """(weight, bias or None) of an aten.linear node."""
        w = self.param(n.args[1], "a linear weight")
        b = self.param(n.args[2], "a linear bias") if len(n.args) > 2 and n.args[2] is not None else None
        return w, b

    def scalar_add(self, nodes: Iterable) -> float:
        for n in nodes:
            if _opname(n) == "add" and isinstance(n.args[1], (int, float)):
                return float(n.args[1])
        self.fail("no epsilon (add of a constant) found")


def _block_key(model, stack: list[tuple[str, Any]]) -> tuple[str, str]:
    """('block', path) for nodes owned by an operator module, ('level', path) for container-level nodes."""
    import torch

    last = ""
    for path, _ in stack:
        if not path:
            continue
        try:
            mod = model.get_submodule(path)
        except AttributeError:
            return "block", path
        is_item = path.rsplit(".", 1)[-1].isdigit()
        is_container = any(isinstance(c, torch.nn.ModuleList) for c in mod.children())
        if not (is_item or is_container):
            return "block", path
        last = path
    return "level", last


# --------------------------------------------------------------------------------------------- lifters
def _lift_embedding(g: _Group, b: GraphBuilder, x: str) -> str:
    g.expect_ops({"embedding": 1})
    return b.embedding(x, g.p(g.param(g.one("embedding").args[0], "the embedding table")))


def _lift_rmsnorm(g: _Group, b: GraphBuilder, x: str) -> str:
    g.expect_ops({"pow": 1, "mean": 1, "add": 1, "rsqrt": 1, "mul": 2})
    if g.one("pow").args[1] != 2:
        g.fail("pow exponent is not 2")
    w = [g.tr.param_of(a) for n in g.of("mul") for a in n.args if g.tr.param_of(a)]
    if len(w) != 1:
        g.fail(f"expected one weight parameter, found {len(w)}")
    return b.rmsnorm(x, g.p(w[0]), g.scalar_add(g.nodes))


def _lift_short_conv(g: _Group, b: GraphBuilder, x: str) -> str:
    g.expect_ops({"linear": 2, "chunk": 1, "mul": 2, "conv1d": 1})
    tr = g.tr
    lin = g.of("linear")
    inp = [n for n in lin if tr.canon(n.args[0]) not in g.set]
    if len(inp) != 1:
        g.fail("cannot tell the input projection from the output projection")
    in_lin, out_lin = inp[0], next(n for n in lin if n is not inp[0])
    chunk = g.one("chunk")
    if chunk.args[1] != 3:
        g.fail(f"in_proj is chunked into {chunk.args[1]}, expected 3 (B, C, x)")
    conv = g.one("conv1d")
    idx = {n: n.args[1] for n in g.of("getitem") if n.args[0] is chunk}
    conv_anc = g.ancestors(conv.args[0])
    fail = lambda msg, at=None: g.fail(msg)  # noqa: E731
    feat = short_conv_gates([m for m in g.of("mul") if m in conv_anc], [m for m in g.of("mul") if m not in conv_anc],
                            lambda m: m.args, lambda a: idx.get(tr.canon(a)), fail)
    post = next(m for m in g.of("mul") if m not in conv_anc)
    if conv not in g.ancestors(post):
        g.fail("expected C * conv(..) with C a chunk of in_proj")
    cw = g.param(conv.args[1], "the conv kernel")
    pad = conv.args[4] if len(conv.args) > 4 else [0]
    L = short_conv_kernel(tr.shape(cw), conv.args[6] if len(conv.args) > 6 else 1, pad[0] if len(pad) == 1 else -1,
                          True, fail, [])
    wi, bi_ = g.linear(in_lin)
    wo, bo = g.linear(out_lin)
    cb = conv.args[2] if len(conv.args) > 2 else None
    params = with_optional({"in_proj": g.p(wi), "conv": g.p(cw), "out_proj": g.p(wo)}, {
        "in_proj_bias": g.p(bi_) if bi_ else None, "out_proj_bias": g.p(bo) if bo else None,
        "conv_bias": g.p(g.param(cb, "the conv bias")) if cb is not None else None})
    return b.short_conv(x, params, L, feat)


def _lift_attention(g: _Group, b: GraphBuilder, x: str) -> str:
    """LFM2 / LFM3 attention: q / k / v projections, per-head RMSNorm of q and k, rotate-half RoPE, sdpa, an
    optional sigmoid gate per head (LFM3's g_proj) and the output projection; a sliding window where the model's
    config says the layer is one (its mask is built outside the module)."""
    tr = g.tr
    sdpa = g.of("scaled_dot_product_attention")
    if len(sdpa) != 1:
        g.fail("expected one scaled_dot_product_attention (export with attn_implementation='sdpa')")
    q_arg, k_arg, v_arg = sdpa[0].args[:3]
    lin = g.of("linear")
    if len(lin) not in (4, 5) or not {"neg", "cat", "rsqrt"} <= set(g.ops):
        g.fail("expected q/k/v/out projections (and a gate), QK RMSNorm and rotate-half RoPE")
    anc = {r: g.ancestors(a) for r, a in (("q", q_arg), ("k", k_arg), ("v", v_arg))}
    sig = set(g.of("sigmoid"))
    roles: dict[str, Any] = {}
    for n in lin:
        hit = [r for r in "qkv" if n in anc[r]]
        if len(hit) > 1:
            g.fail("one projection feeds several of q, k, v")
        role = hit[0] if hit else "g" if sig & g.ancestors_users(n) else "out"
        if role in roles:
            g.fail(f"two projections look like the {role} projection")
        roles[role] = n
    if set(roles) - {"g"} != {"q", "k", "v", "out"}:
        g.fail(f"cannot find the q, k, v and output projections (found {sorted(roles)})")
    if "g" in roles and not (sig & g.ancestors(roles["out"].args[0]) and sdpa[0] in g.ancestors(roles["out"].args[0])):
        g.fail("the gate's sigmoid does not scale the attention output before the output projection")
    norms = {}
    for r in "qk":
        ws = {tr.param_of(a) for n in anc[r] if _opname(n) == "mul" for a in n.args if tr.param_of(a)}
        if len(ws) != 1:
            g.fail(f"expected one RMSNorm weight on the {r} path, found {len(ws)}")
        norms[r] = ws.pop()
    if any(_opname(n) in ("rsqrt", "neg") for n in anc["v"]):
        g.fail("v is normalized or rotated; LFM attention leaves v alone")
    eps = g.scalar_add(n for n in anc["q"] if _opname(n) == "add")
    hd = tr.shape(norms["q"])[0]
    wq, wk, wv, wo = (g.linear(roles[r])[0] for r in ("q", "k", "v", "out"))
    kind = _layer_type(g)
    rope = _rope(g, hd, kind)
    params = {"q_proj": g.p(wq), "k_proj": g.p(wk), "v_proj": g.p(wv), "out_proj": g.p(wo),
              "q_norm": g.p(norms["q"]), "k_norm": g.p(norms["k"])}
    if "g" in roles:
        params["g_proj"] = g.p(g.linear(roles["g"])[0])
    window = int(tr.model.config.sliding_window) if kind == "sliding_attention" else None
    return b.attention(x, params, tr.shape(wq)[0] // hd, tr.shape(wk)[0] // hd, hd, rope.pop("rope_theta"), eps,
                       window=window, **rope)


def _layer_type(g: _Group) -> str | None:
    """The config's layer type of the decoder layer owning this module (``model.layers.3.self_attn``)."""
    parts = g.path.split(".")
    types = getattr(g.tr.model.config, "layer_types", None)
    idx = next((int(p) for p in reversed(parts) if p.isdigit()), None)
    return types[idx] if types and idx is not None and idx < len(types) else None


def _rope(g: _Group, hd: int, kind: str | None) -> dict[str, Any]:
    """RoPE attributes from the inverse-frequency buffer feeding this attention's cos / sin: theta, and where the
    rotation is partial or scaled (LFM3's proportional RoPE) the number of rotating angles and the factor;
    checked against the formula (:func:`lfmc.mixers.rope_inv_freq`)."""
    from ..mixers import rope_inv_freq

    tr = g.tr
    bufs, todo, seen = [], [a for n in g.nodes for a in n.all_input_nodes if a not in g.set], set()
    while todo:
        n = todo.pop()
        if n in seen:
            continue
        seen.add(n)
        name = tr.param_name.get(n, "") if n.op == "placeholder" else ""
        if name.endswith("inv_freq") and "original" not in name:
            bufs.append(name)
        todo += [a for a in n.all_input_nodes if a not in tr.active]
    if len(set(bufs)) != 1:
        g.fail(f"expected one rotary inverse-frequency buffer feeding this attention, found {sorted(set(bufs))}")
    inv = tr.tensors[bufs[0]].detach().double().numpy()
    if len(inv) != hd // 2 or inv[0] <= 0:
        g.fail(f"rotary frequencies of length {len(inv)} do not fit head_dim {hd}")
    angles = int(np.count_nonzero(inv))
    factor = 1.0 / float(inv[0])
    theta = float((inv[1] * factor) ** (-hd / 2.0)) if angles > 1 else 1e4
    conf = getattr(tr.model.config, "rope_parameters", None) or {}
    if kind in conf and isinstance(conf[kind], dict):         # per layer type (LFM3)
        conf = conf[kind]
    cand = conf.get("rope_theta", getattr(tr.model.config, "rope_theta", None))
    if cand is not None and (angles <= 1 or abs(cand - theta) <= 1e-4 * abs(cand)):
        theta = float(cand)
    cf = conf.get("factor")
    if cf is not None and abs(cf - factor) <= 1e-6 * abs(cf):
        factor = float(cf)
    elif abs(factor - 1.0) <= 1e-6:
        factor = 1.0
    if not np.allclose(inv, rope_inv_freq(hd, theta, angles, factor), rtol=1e-4, atol=0):
        g.fail("rotary frequencies are not theta^(-2i/d) / factor over a prefix of the angles (other scaled RoPE "
               "variants are not supported)")
    out: dict[str, Any] = {"rope_theta": theta}
    if angles != hd // 2:
        out["rope_angles"] = angles
    if factor != 1.0:
        out["rope_factor"] = factor
    return out


def _lift_gated_mlp(g: _Group, b: GraphBuilder, x: str) -> str:
    g.expect_ops({"linear": 3, "silu": 1, "mul": 1})
    silu = g.one("silu")
    lin = g.of("linear")
    w1 = [n for n in lin if n is silu.args[0]]
    w2 = [n for n in lin if g.tr.canon(n.args[0]) in g.set]
    w3 = [n for n in lin if n not in w1 and n not in w2]
    if not (len(w1) == len(w2) == len(w3) == 1):
        g.fail("expected w2(silu(w1 x) * w3 x)")
    return b.gated_mlp(x, {r: g.p(g.linear(n[0])[0]) for r, n in (("w1", w1), ("w3", w3), ("w2", w2))})


def _lift_moe(g: _Group, b: GraphBuilder, x: str) -> str:
    tr = g.tr
    s = g.structural()
    lin = g.of("linear")
    if len(lin) != 1 or s.get("topk") != 1:
        g.fail("expected a router linear and a top-k")
    scoring = "sigmoid" if s.get("sigmoid") else "softmax" if s.get("softmax") else None
    if scoring is None:
        g.fail("router scores are neither sigmoid nor softmax")
    router = g.linear(lin[0])[0]
    E = tr.shape(router)[0]
    topk = g.one("topk")
    bias = None
    for n in g.of("add"):
        for a in n.args:
            pn = tr.param_of(a) if hasattr(a, "op") else None
            if pn and tr.shape(pn) == (E,):
                bias = pn
    norm = s.get("div", 0) >= 1 and s.get("sum", 0) >= 2
    eps = 1e-6
    if norm:
        eps = g.scalar_add(n for n in g.of("add") if any(_opname(a) == "sum" for a in n.all_input_nodes))
    scale = 1.0
    for n in g.of("mul"):
        if isinstance(n.args[1], (int, float)):
            scale = float(n.args[1])
    experts = [tr.param_of(n.args[0]) for n in g.of("index") if tr.param_of(n.args[0])]
    if len(experts) != 2 or s.get("bmm") != 2:
        g.fail("expected stacked expert weights used through batched matmuls "
               "(export with experts_implementation='batched_mm')")
    chunk = g.one("chunk")
    gu = [e for e in experts if any(chunk in g.ancestors_users(n) for n in g.of("index")
                                    if tr.param_of(n.args[0]) == e)]
    if len(gu) != 1 or chunk.args[1] != 2:
        g.fail("expected the gate/up projection chunked in two")
    silu = g.one("silu")
    gi = next(n.args[1] for n in g.of("getitem") if n.args[0] is chunk and n is silu.args[0])
    down = next(e for e in experts if e != gu[0])
    params = {"router": g.p(router), "gate_up": g.p(gu[0]), "down": g.p(down)}
    if bias:
        params["expert_bias"] = g.p(bias)
    feat = {"router": Gate("router", act=scoring), "gate": Gate("gate_up", gi, 2, "silu"),
            "up": Gate("gate_up", 1 - gi, 2)}
    return b.node("moe", [x], params, {
        "num_experts": E, "top_k": int(topk.args[1]), "scoring": scoring, "use_expert_bias": bias is not None,
        "norm_topk_prob": bool(norm), "routed_scaling_factor": scale, "topk_norm_eps": eps}, feat)


def _lift_recurrence(g: _Group, b: GraphBuilder, x: str) -> str:
    """A diagonal linear recurrence: in_proj chunked in 4; sigmoid on one chunk (the decay a), the product of
    two (b * x), the last (c) gating the scanned state; then out_proj. The scan itself is the unrolled loop."""
    tr = g.tr
    s = g.structural()
    chunk = g.one("chunk")
    lin = g.of("linear")
    if chunk.args[1] != 4 or len(lin) != 2 or s.get("sigmoid") != 1:
        g.fail("expected in_proj chunked in 4, one sigmoid and an output projection")
    if set(s) - {"linear", "chunk", "sigmoid", "mul", "add", "stack", "zeros_like", "select", "cat"}:
        g.fail("aten ops beyond a gated linear recurrence")
    idx = {n: n.args[1] for n in g.of("getitem") if n.args[0] is chunk}
    sig = g.one("sigmoid")
    ai = idx.get(tr.canon(sig.args[0]))
    pre = [m for m in g.of("mul") if all(tr.canon(a) in idx for a in m.args if hasattr(a, "op"))
           and len([a for a in m.args if hasattr(a, "op")]) == 2]
    if ai is None or len(pre) != 1:
        g.fail("expected sigmoid(a) and one product b * x of in_proj chunks")
    bi, xi = (idx[tr.canon(a)] for a in pre[0].args)
    rest = sorted(set(range(4)) - {ai, bi, xi})
    if len(rest) != 1:
        g.fail("the four in_proj chunks are not a, b, c, x")
    inp = [n for n in lin if tr.canon(n.args[0]) not in g.set]
    if len(inp) != 1:
        g.fail("cannot tell the input projection from the output projection")
    out = next(n for n in lin if n is not inp[0])
    wi, bi_ = g.linear(inp[0])
    wo, bo = g.linear(out)
    params = {"in_proj": g.p(wi), "out_proj": g.p(wo)}
    if bi_:
        params["in_proj_bias"] = g.p(bi_)
    if bo:
        params["out_proj_bias"] = g.p(bo)
    feat = {"a": Gate("in_proj", ai, 4, "sigmoid"), "b": Gate("in_proj", bi, 4), "c": Gate("in_proj", rest[0], 4),
            "x": Gate("in_proj", xi, 4)}
    return b.node("linear_recurrence", [x], params, None, feat)


def _lift_linear(g: _Group, b: GraphBuilder, x: str, is_output: bool) -> str:
    g.expect_ops({"linear": 1})
    w, bias = g.linear(g.one("linear"))
    if is_output and bias is None:
        return b.lm_head(x, g.p(w))
    params = {"weight": g.p(w)} | ({"weight_bias": g.p(bias)} if bias else {})
    return b.node("linear", [x], params)


def _ancestors_users(self: _Group, n) -> set:
    """Nodes of this group reachable from ``n`` (its descendants), ``n`` included."""
    out, todo = set(), [n]
    while todo:
        y = todo.pop()
        if y in out:
            continue
        out.add(y)
        todo += [u for u in y.users if u in self.set]
    return out


_Group.ancestors_users = _ancestors_users


def _lift_group(g: _Group, b: GraphBuilder, x: str, is_output: bool) -> str:
    ops = set(g.structural())
    if "embedding" in ops:
        return _lift_embedding(g, b, x)
    if "topk" in ops:
        return _lift_moe(g, b, x)
    if "conv1d" in ops or "convolution" in ops:
        return _lift_short_conv(g, b, x)
    if "scaled_dot_product_attention" in ops or "softmax" in ops:
        return _lift_attention(g, b, x)
    if "sigmoid" in ops and "chunk" in ops and g.ops.get("linear") == 2:
        return _lift_recurrence(g, b, x)
    if "silu" in ops and g.ops.get("linear") == 3:
        return _lift_gated_mlp(g, b, x)
    if "rsqrt" in ops and "linear" not in ops:
        return _lift_rmsnorm(g, b, x)
    if ops == {"linear"}:
        return _lift_linear(g, b, x, is_output)
    g.fail("no LIV or ordinary op has this pattern")


# ---------------------------------------------------------------------------------------------- driver
def export(model, example_len: int = 8):
    """torch.export ``model`` (a transformers causal LM) on a random prompt, without a cache."""
    import torch

    if hasattr(model, "set_experts_implementation") and getattr(model.config, "num_experts", None):
        model.set_experts_implementation("batched_mm")
    model.eval()
    vocab = int(getattr(model.config, "vocab_size", 2))
    ids = torch.randint(0, vocab, (1, example_len), generator=torch.Generator().manual_seed(0))
    try:
        with torch.no_grad():
            return torch.export.export(model, (ids,), kwargs={"use_cache": False}, strict=False)
    except Exception as e:
        raise LfmcError(f"torch.export failed for {type(model).__name__}: {type(e).__name__}: {e}") from e


def lift(model, name: str = "model", example_len: int = 8) -> tuple[Graph, dict[str, np.ndarray]]:
    """IR graph and float32 weights of a transformers LFM2 / LFM2-MoE model object."""
    with task("tracing with torch.export", 1, "graph") as bar:
        tr = _Traced(model, export(model, example_len))
        bar.update()
    items: list[tuple[str, Any]] = []            # ("group", _Group) or ("node", fx node), in order of last node
    groups: dict[str, list] = {}
    order: list[tuple[str, Any]] = []
    for n in tr.graph.nodes:
        if n.op != "call_function" or n not in tr.active:
            continue
        kind, path = _block_key(model, list((n.meta.get("nn_module_stack") or {}).values()))
        if kind == "block":
            if path not in groups:
                groups[path] = []
                order.append(("group", path))
            groups[path].append(n)
        elif tr.canon(n) is n and _opname(n) not in ("_assert_tensor_metadata",):
            order.append(("node", n))
    pos = {n: i for i, n in enumerate(tr.graph.nodes)}
    for kind, it in order:
        if kind == "group":
            items.append(("group", _Group(tr, it, groups[it])))
        else:
            items.append(("node", it))
    items.sort(key=lambda kv: pos[kv[1].nodes[-1]] if kv[0] == "group" else pos[kv[1]])
    out_node = tr.canon(next(n for n in tr.graph.nodes if n.op == "output").args[0][0])

    b = GraphBuilder(name)
    value: dict[Any, str] = {tr.tokens: b.tokens}

    def val(n, where: str) -> str:
        c = tr.canon(n)
        if c not in value:
            raise LiftError(where, f"operand {c.name} is not produced by any lifted op")
        return value[c]

    bar = task("lifting modules", len(items), "module")
    for kind, it in items:
        bar.update()
        if kind == "node":
            if _opname(it) != "add" or len(it.all_input_nodes) != 2:
                where = list((it.meta.get("nn_module_stack") or {}).values())
                raise LiftError(where[-1][0] if where else "", f"unexpected {_opname(it)} between operators",
                                [_opname(it)])
            value[it] = b.add(*(val(a, "residual add") for a in it.args))
            continue
        g: _Group = it
        last = g.nodes[-1]
        for n in g.nodes:
            leaks = [u for u in n.users if u not in g.set and (u in tr.active or u.op == "output")]
            if leaks and n is not last and tr.canon(n) in g.set and tr.canon(n) is not tr.canon(last):
                g.fail(f"more than one value leaves the module ({n.name} is used by {leaks[0].name})")
        if len(g.inputs) != 1:
            g.fail(f"expected one activation input, found {len(g.inputs)}")
        src = tr.canon(last)
        value[src] = _lift_group(g, b, val(g.inputs[0], g.path), src is out_node)
        value[last] = value[src]
    graph = b.finish(val(out_node, "output"))
    bar.close()
    weights = {n: tr.tensors[n].detach().float().contiguous().numpy().copy() for n in graph.params()}
    return graph, weights
