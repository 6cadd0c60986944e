"""The IR lowered to ``func`` / ``linalg`` / ``arith`` / ``math`` / ``tensor`` on tensors (MLIR text).

``@forward(%tokens: tensor<?xi64>, %params...) -> tensor<?xVxf32>`` computes the logits of a whole sequence from
an empty state (a prefill), the same function as the interpreter's first ``run``. The sequence length is dynamic;
everything else is static. Each IR op becomes a few ``linalg.generic`` ops:

- projections: a generic contracting the input's last axis with the weight's (``x @ W^T``);
- featurizer gates: ``tensor.extract_slice`` of the projection's chunk, then the gate's activation;
- the short convolution: the gated input padded with ``L-1`` zero rows (``tensor.pad``), then a generic over
  ``(t, d, k)`` reading row ``t + k``;
- attention: RoPE reads the partner element with ``tensor.extract`` (``(j + hd/2) mod hd``) at the op's
  frequencies (partial / scaled RoPE: zeros past ``rope_angles``), scores over ``(h, t, u, j)`` with the KV
  head ``h floordiv (H / KV)`` in the indexing map, a causal (and, with a window, banded) masked softmax, each
  head's output times its sigmoid gate when the op has one;
- MoE: every expert computed densely; an expert's routing weight is its score where fewer than ``top_k``
  experts outrank it (a comparison count, ties to the lower index, as a stable sort), else 0.

The text is parsed and verified by the MLIR bindings before it is returned (see ``lfmc.targets.mlir``).
"""
from __future__ import annotations

import numpy as np

from ...ir.errors import LfmcError
from ...ir.graph import Gate, Graph, Node
from ...mixers import rope_inv_freq
from .dialect import tensor_type

_SUPPORTED = ("embedding", "rmsnorm", "add", "linear", "lm_head", "short_conv", "attention", "gated_mlp", "moe")


def _ty(shape: tuple, elt: str = "f32") -> str:
    dims = "x".join("?" if d is None else str(int(d)) for d in shape)
    return f"tensor<{dims + 'x' if dims else ''}{elt}>"


def _map(n: int, res: list[str]) -> str:
    dims = ", ".join(f"d{i}" for i in range(n))
    return f"affine_map<({dims}) -> ({', '.join(res)})>"


def _f(v: float) -> str:
    """An f32 literal MLIR parses exactly (hex bit pattern)."""
    return f"0x{np.float32(v).view(np.uint32):08X}"


class _V:
    """A tensor value: SSA name and static shape (None = the dynamic sequence length)."""

    def __init__(self, name: str, shape: tuple, elt: str = "f32"):
        self.name, self.shape, self.elt = name, tuple(shape), elt

    @property
    def ty(self) -> str:
        return _ty(self.shape, self.elt)


class _Emitter:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.k = 0
        self.consts: dict[str, str] = {}

    def fresh(self, p: str = "v") -> str:
        self.k += 1
        return f"%{p}{self.k}"

    def emit(self, s: str) -> None:
        self.lines.append("    " + s)

    def cst(self, v: float) -> str:
        key = _f(v)
        if key not in self.consts:
            name = self.fresh("cst")
            self.emit(f"{name} = arith.constant {key} : f32")
            self.consts[key] = name
        return self.consts[key]

    def init(self, shape: tuple, fill: float | None = 0.0) -> _V:
        e = self.fresh("e")
        dyn = ", ".join("%T" for d in shape if d is None)
        self.emit(f"{e} = tensor.empty({dyn}) : {_ty(shape)}")
        if fill is None:
            return _V(e, shape)
        f = self.fresh("f")
        self.emit(f"{f} = linalg.fill ins({self.cst(fill)} : f32) outs({e} : {_ty(shape)}) -> {_ty(shape)}")
        return _V(f, shape)

    def generic(self, ins: list[tuple[_V, list[str]]], out: _V, out_map: list[str], iters: list[str],
                body) -> _V:
        """``body(args, acc) -> (lines, result)``: args are the scalar names of ``ins``, acc the output's."""
        n = len(iters)
        maps = [_map(n, m) for _, m in ins] + [_map(n, out_map)]
        args = [self.fresh("a") for _ in ins]
        acc = self.fresh("acc")
        lines, res = body(args, acc)
        r = self.fresh("g")
        ins_s = ", ".join(v.name for v, _ in ins)
        ins_t = ", ".join(v.ty for v, _ in ins)
        self.emit(f"{r} = linalg.generic {{indexing_maps = [{', '.join(maps)}], iterator_types = "
                  f"[{', '.join(repr(i).replace(chr(39), chr(34)) for i in iters)}]}}"
                  + (f" ins({ins_s} : {ins_t})" if ins else "") + f" outs({out.name} : {out.ty}) {{")
        blk = ", ".join(f"{a}: {e}" for a, e in zip(args + [acc], [v.elt for v, _ in ins] + ["f32"]))
        self.emit(f"^bb0({blk}):")
        for ln in lines:
            self.emit("  " + ln)
        self.emit(f"  linalg.yield {res} : f32")
        self.emit(f"}} -> {out.ty}")
        return _V(r, out.shape)

    # ------------------------------------------------------------------ building blocks
    def binary(self, a: _V, b: _V, op: str) -> _V:
        """Elementwise ``a op b`` (same shapes)."""
        d = [f"d{i}" for i in range(len(a.shape))]

        def body(x, acc):
            r = self.fresh()
            return [f"{r} = arith.{op} {x[0]}, {x[1]} : f32"], r

        return self.generic([(a, d), (b, d)], self.init(a.shape, None), d, ["parallel"] * len(d), body)

    def unary(self, a: _V, act: str) -> _V:
        if act == "identity":
            return a
        d = [f"d{i}" for i in range(len(a.shape))]
        if act == "softmax":
            return self.softmax(a)

        def body(x, acc):
            lines, r = self.act_lines(x[0], act)
            return lines, r

        return self.generic([(a, d)], self.init(a.shape, None), d, ["parallel"] * len(d), body)

    def act_lines(self, x: str, act: str) -> tuple[list[str], str]:
        one = self.cst(1.0)
        n, e, den = self.fresh(), self.fresh(), self.fresh()
        lines = [f"{n} = arith.negf {x} : f32", f"{e} = math.exp {n} : f32", f"{den} = arith.addf {one}, {e} : f32"]
        r = self.fresh()
        if act == "sigmoid":
            return lines + [f"{r} = arith.divf {one}, {den} : f32"], r
        if act == "silu":
            return lines + [f"{r} = arith.divf {x}, {den} : f32"], r
        raise LfmcError(f"--lower linalg: activation {act!r} is not supported")

    def softmax(self, a: _V) -> _V:
        """Softmax over the last axis."""
        r = len(a.shape)
        d = [f"d{i}" for i in range(r)]
        lead = d[:-1]
        red = ["parallel"] * (r - 1) + ["reduction"]
        mx = self.generic([(a, d)], self.init(a.shape[:-1], -np.inf), lead, red,
                          lambda x, acc: ([f"{(m := self.fresh())} = arith.maximumf {acc}, {x[0]} : f32"], m))

        def expb(x, acc):
            s, e = self.fresh(), self.fresh()
            return [f"{s} = arith.subf {x[0]}, {x[1]} : f32", f"{e} = math.exp {s} : f32"], e

        ex = self.generic([(a, d), (mx, lead)], self.init(a.shape, None), d, ["parallel"] * r, expb)
        sm = self.generic([(ex, d)], self.init(a.shape[:-1], 0.0), lead, red,
                          lambda x, acc: ([f"{(s := self.fresh())} = arith.addf {acc}, {x[0]} : f32"], s))
        return self.generic([(ex, d), (sm, lead)], self.init(a.shape, None), d, ["parallel"] * r,
                            lambda x, acc: ([f"{(q := self.fresh())} = arith.divf {x[0]}, {x[1]} : f32"], q))

    def matmul_t(self, x: _V, w: _V) -> _V:
        """``x [.., I] @ w[O, I]^T -> [.., O]``."""
        r = len(x.shape)
        lead = [f"d{i}" for i in range(r - 1)]
        o, i = f"d{r - 1}", f"d{r}"

        def body(a, acc):
            m, s = self.fresh(), self.fresh()
            return [f"{m} = arith.mulf {a[0]}, {a[1]} : f32", f"{s} = arith.addf {acc}, {m} : f32"], s

        return self.generic([(x, lead + [i]), (w, [o, i])], self.init(x.shape[:-1] + (w.shape[0],)), lead + [o],
                            ["parallel"] * r + ["reduction"], body)

    def bias(self, y: _V, b: _V) -> _V:
        d = [f"d{i}" for i in range(len(y.shape))]
        return self.generic([(y, d), (b, d[-1:])], self.init(y.shape, None), d, ["parallel"] * len(d),
                            lambda x, acc: ([f"{(s := self.fresh())} = arith.addf {x[0]}, {x[1]} : f32"], s))

    def slice_last(self, y: _V, off: int, size: int) -> _V:
        r = len(y.shape)
        out = _V(self.fresh("s"), y.shape[:-1] + (size,))
        offs = ", ".join(["0"] * (r - 1) + [str(off)])
        sizes = ", ".join(["%T" if d is None else str(d) for d in y.shape[:-1]] + [str(size)])
        self.emit(f"{out.name} = tensor.extract_slice {y.name}[{offs}] [{sizes}] [{', '.join(['1'] * r)}] : "
                  f"{y.ty} to {out.ty}")
        return out

    def rmsnorm(self, x: _V, w: _V, eps: float) -> _V:
        r = len(x.shape)
        d = [f"d{i}" for i in range(r)]
        D = x.shape[-1]

        def sq(a, acc):
            m, s = self.fresh(), self.fresh()
            return [f"{m} = arith.mulf {a[0]}, {a[0]} : f32", f"{s} = arith.addf {acc}, {m} : f32"], s

        ss = self.generic([(x, d)], self.init(x.shape[:-1]), d[:-1], ["parallel"] * (r - 1) + ["reduction"], sq)
        inv_d, e = self.cst(1.0 / D), self.cst(eps)

        def norm(a, acc):
            m, v, q, y, z = (self.fresh() for _ in range(5))
            return [f"{m} = arith.mulf {a[1]}, {inv_d} : f32", f"{v} = arith.addf {m}, {e} : f32",
                    f"{q} = math.sqrt {v} : f32", f"{y} = arith.divf {a[0]}, {q} : f32",
                    f"{z} = arith.mulf {a[2]}, {y} : f32"], z

        return self.generic([(x, d), (ss, d[:-1]), (w, d[-1:])], self.init(x.shape, None), d, ["parallel"] * r, norm)


class _Lowering:
    def __init__(self, g: Graph):
        self.g, self.em = g, _Emitter()
        self.params: dict[str, _V] = {}

    def p(self, n: Node, role: str) -> _V:
        return self.params[n.params[role].name]

    def proj(self, n: Node, role: str, x: _V) -> _V:
        y = self.em.matmul_t(x, self.p(n, role))
        b = n.params.get(role + "_bias")
        return self.em.bias(y, self.params[b.name]) if b is not None else y

    def gate(self, n: Node, name: str, projected: dict[str, _V]) -> _V:
        g: Gate = n.liv.featurizer[name]
        y = projected[g.proj]
        w = y.shape[-1] // g.chunks
        part = y if g.chunks == 1 else self.em.slice_last(y, g.chunk * w, w)
        return self.em.unary(part, g.act)

    # ------------------------------------------------------------------ ops
    def embedding(self, n: Node, x: _V) -> _V:
        em, w = self.em, self.p(n, "weight")

        def body(a, acc):
            i, j, v = em.fresh(), em.fresh(), em.fresh()
            return [f"{i} = arith.index_cast {a[0]} : i64 to index", f"{j} = linalg.index 1 : index",
                    f"{v} = tensor.extract {w.name}[{i}, {j}] : {w.ty}"], v

        return em.generic([(x, ["d0"])], em.init((None, w.shape[1]), None), ["d0", "d1"], ["parallel"] * 2, body)

    def short_conv(self, n: Node, x: _V) -> _V:
        em = self.em
        L = int(n.attrs["L_cache"])
        proj = {"in_proj": self.proj(n, "in_proj", x)}
        bx = em.binary(self.gate(n, "B", proj), self.gate(n, "x", proj), "mulf")
        D = bx.shape[1]
        pad = _V(em.fresh("pad"), (None, D))
        i, j = em.fresh("i"), em.fresh("j")
        em.emit(f"{pad.name} = tensor.pad {bx.name} low[{L - 1}, 0] high[0, 0] {{")
        em.emit(f"^bb0({i}: index, {j}: index):")
        em.emit(f"  tensor.yield {em.cst(0.0)} : f32")
        em.emit(f"}} : {bx.ty} to {pad.ty}")
        w = self.p(n, "conv")

        def body(a, acc):
            m, s = em.fresh(), em.fresh()
            return [f"{m} = arith.mulf {a[0]}, {a[1]} : f32", f"{s} = arith.addf {acc}, {m} : f32"], s

        conv = em.generic([(pad, ["d0 + d2", "d1"]), (w, ["d1", "0", "d2"])], em.init((None, D)), ["d0", "d1"],
                          ["parallel", "parallel", "reduction"], body)
        if "conv_bias" in n.params:
            conv = em.bias(conv, self.p(n, "conv_bias"))
        y = em.binary(self.gate(n, "C", proj), conv, "mulf")
        return self.proj(n, "out_proj", y)

    def attention(self, n: Node, x: _V) -> _V:
        em = self.em
        H, KV, hd = (int(n.attrs[k]) for k in ("heads", "kv_heads", "head_dim"))
        grp = H // KV
        eps = float(n.attrs["eps"])
        inv = rope_inv_freq(hd, n.attrs["rope_theta"], n.attrs.get("rope_angles"), n.attrs.get("rope_factor", 1.0))
        window = n.attrs.get("window")
        invf = em.fresh("invf")
        em.emit(f"{invf} = arith.constant dense<[{', '.join(_f(v) for v in inv)}]> : {_ty((hd // 2,))}")

        def heads(v: _V, h: int) -> _V:
            out = _V(em.fresh("h"), (None, h, hd))
            em.emit(f"{out.name} = tensor.expand_shape {v.name} [[0], [1, 2]] output_shape [%T, {h}, {hd}] : "
                    f"{v.ty} into {out.ty}")
            return out

        def rope(v: _V) -> _V:
            """x * cos(t f_j) + sign_j * x[(j + hd/2) mod hd] * sin(t f_j), sign -1 for the first half."""
            half, full = em.fresh("c"), em.fresh("c")
            em.emit(f"{half} = arith.constant {hd // 2} : index")
            em.emit(f"{full} = arith.constant {hd} : index")

            def body(a, acc):
                t, hh, j, jm, jp, jq, ti, tf, fr, ang, c, s, xp, xs, neg, lt, sgn, y0, y = (em.fresh() for _ in range(19))
                return [f"{t} = linalg.index 0 : index", f"{hh} = linalg.index 1 : index",
                        f"{j} = linalg.index 2 : index",
                        f"{jm} = arith.remui {j}, {half} : index", f"{jp} = arith.addi {j}, {half} : index",
                        f"{jq} = arith.remui {jp}, {full} : index",
                        f"{ti} = arith.index_cast {t} : index to i64", f"{tf} = arith.sitofp {ti} : i64 to f32",
                        f"{fr} = tensor.extract {invf}[{jm}] : {_ty((hd // 2,))}",
                        f"{ang} = arith.mulf {tf}, {fr} : f32", f"{c} = math.cos {ang} : f32",
                        f"{s} = math.sin {ang} : f32", f"{xp} = tensor.extract {v.name}[{t}, {hh}, {jq}] : {v.ty}",
                        f"{xs} = arith.mulf {xp}, {s} : f32", f"{neg} = arith.negf {xs} : f32",
                        f"{lt} = arith.cmpi ult, {j}, {half} : index",
                        f"{sgn} = arith.select {lt}, {neg}, {xs} : f32",
                        f"{y0} = arith.mulf {a[0]}, {c} : f32", f"{y} = arith.addf {y0}, {sgn} : f32"], y

            d = ["d0", "d1", "d2"]
            return em.generic([(v, d)], em.init(v.shape, None), d, ["parallel"] * 3, body)

        q = rope(em.rmsnorm(heads(self.proj(n, "q_proj", x), H), self.p(n, "q_norm"), eps))
        k = rope(em.rmsnorm(heads(self.proj(n, "k_proj", x), KV), self.p(n, "k_norm"), eps))
        v = heads(self.proj(n, "v_proj", x), KV)
        scale = em.cst(hd ** -0.5)
        kvh = f"d0 floordiv {grp}" if grp > 1 else "d0"

        def dot(a, acc):
            m, s = em.fresh(), em.fresh()
            return [f"{m} = arith.mulf {a[0]}, {a[1]} : f32", f"{s} = arith.addf {acc}, {m} : f32"], s

        # scores[h, t, u] over (h, t, u, j)
        sc = em.generic([(q, ["d1", "d0", "d3"]), (k, ["d2", kvh, "d3"])], em.init((H, None, None)),
                        ["d0", "d1", "d2"], ["parallel"] * 3 + ["reduction"], dot)
        ninf = em.cst(-np.inf)

        def masked(a, acc, *, reduce: bool):
            t, u, ok, sv, mv = em.fresh(), em.fresh(), em.fresh(), em.fresh(), em.fresh()
            lines = [f"{t} = linalg.index 1 : index", f"{u} = linalg.index 2 : index",
                     f"{ok} = arith.cmpi ule, {u}, {t} : index"]
            if window is not None:                  # and t - u < window: u + window - 1 >= t
                w1, uw, inw, both = em.fresh(), em.fresh(), em.fresh(), em.fresh()
                lines += [f"{w1} = arith.constant {int(window) - 1} : index", f"{uw} = arith.addi {u}, {w1} : index",
                          f"{inw} = arith.cmpi uge, {uw}, {t} : index", f"{both} = arith.andi {ok}, {inw} : i1"]
                ok = both
            lines += [f"{sv} = arith.mulf {a[0]}, {scale} : f32", f"{mv} = arith.select {ok}, {sv}, {ninf} : f32"]
            if reduce:
                r = em.fresh()
                return lines + [f"{r} = arith.maximumf {acc}, {mv} : f32"], r
            s2, e = em.fresh(), em.fresh()
            return lines + [f"{s2} = arith.subf {mv}, {a[1]} : f32", f"{e} = math.exp {s2} : f32"], e

        d3 = ["d0", "d1", "d2"]
        mx = em.generic([(sc, d3)], em.init((H, None), -np.inf), ["d0", "d1"], ["parallel", "parallel", "reduction"],
                        lambda a, acc: masked(a, acc, reduce=True))
        ex = em.generic([(sc, d3), (mx, ["d0", "d1"])], em.init((H, None, None), None), d3, ["parallel"] * 3,
                        lambda a, acc: masked(a, acc, reduce=False))
        z = em.generic([(ex, d3)], em.init((H, None)), ["d0", "d1"], ["parallel", "parallel", "reduction"],
                       lambda a, acc: ([f"{(s := em.fresh())} = arith.addf {acc}, {a[0]} : f32"], s))
        # o[t, h, j] = sum_u ex[h, t, u] v[u, h/g, j] / z[h, t], over (t, h, j, u)
        kvh2 = f"d1 floordiv {grp}" if grp > 1 else "d1"
        o = em.generic([(ex, ["d1", "d0", "d3"]), (v, ["d3", kvh2, "d2"])], em.init((None, H, hd)),
                       ["d0", "d1", "d2"], ["parallel"] * 3 + ["reduction"], dot)
        o = em.generic([(o, ["d0", "d1", "d2"]), (z, ["d1", "d0"])], em.init((None, H, hd), None), ["d0", "d1", "d2"],
                       ["parallel"] * 3, lambda a, acc: ([f"{(r := em.fresh())} = arith.divf {a[0]}, {a[1]} : f32"], r))
        if "g_proj" in n.params:                    # each head's output times its sigmoid gate g[t, h]
            sg = self.gate(n, "g", {"g_proj": self.proj(n, "g_proj", x)})
            o = em.generic([(o, ["d0", "d1", "d2"]), (sg, ["d0", "d1"])], em.init((None, H, hd), None),
                           ["d0", "d1", "d2"], ["parallel"] * 3,
                           lambda a, acc: ([f"{(r := em.fresh())} = arith.mulf {a[0]}, {a[1]} : f32"], r))
        flat = _V(em.fresh("o"), (None, H * hd))
        em.emit(f"{flat.name} = tensor.collapse_shape {o.name} [[0], [1, 2]] : {o.ty} into {flat.ty}")
        return self.proj(n, "out_proj", flat)

    def gated_mlp(self, n: Node, x: _V) -> _V:
        proj = {"w1": self.proj(n, "w1", x), "w3": self.proj(n, "w3", x)}
        return self.proj(n, "w2", self.em.binary(self.gate(n, "gate", proj), self.gate(n, "up", proj), "mulf"))

    def moe(self, n: Node, x: _V) -> _V:
        em = self.em
        E, k = int(n.attrs["num_experts"]), int(n.attrs["top_k"])
        scores = self.gate(n, "router", {"router": self.proj(n, "router", x)})          # [T, E]
        choose = em.bias(scores, self.p(n, "expert_bias")) if n.attrs["use_expert_bias"] else scores
        one, zero, kk = em.cst(1.0), em.cst(0.0), em.cst(float(k))

        def outrank(a, acc):                     # over (t, e, e2): a[0] = choose[t, e2], a[1] = choose[t, e]
            e, e2, gt, eq, lt, tie, c, inc, s = (em.fresh() for _ in range(9))
            return [f"{e} = linalg.index 1 : index", f"{e2} = linalg.index 2 : index",
                    f"{gt} = arith.cmpf ogt, {a[0]}, {a[1]} : f32", f"{eq} = arith.cmpf oeq, {a[0]}, {a[1]} : f32",
                    f"{lt} = arith.cmpi ult, {e2}, {e} : index", f"{tie} = arith.andi {eq}, {lt} : i1",
                    f"{c} = arith.ori {gt}, {tie} : i1", f"{inc} = arith.select {c}, {one}, {zero} : f32",
                    f"{s} = arith.addf {acc}, {inc} : f32"], s

        rank = em.generic([(choose, ["d0", "d2"]), (choose, ["d0", "d1"])], em.init((None, E)), ["d0", "d1"],
                          ["parallel", "parallel", "reduction"], outrank)

        def pick(a, acc):
            c, r = em.fresh(), em.fresh()
            return [f"{c} = arith.cmpf olt, {a[1]}, {kk} : f32", f"{r} = arith.select {c}, {a[0]}, {zero} : f32"], r

        d2 = ["d0", "d1"]
        w = em.generic([(scores, d2), (rank, d2)], em.init((None, E), None), d2, ["parallel"] * 2, pick)
        if n.attrs["norm_topk_prob"]:
            tot = em.generic([(w, d2)], em.init((None,)), ["d0"], ["parallel", "reduction"],
                             lambda a, acc: ([f"{(s := em.fresh())} = arith.addf {acc}, {a[0]} : f32"], s))
            eps = em.cst(float(n.attrs["topk_norm_eps"]))

            def div(a, acc):
                s, r = em.fresh(), em.fresh()
                return [f"{s} = arith.addf {a[1]}, {eps} : f32", f"{r} = arith.divf {a[0]}, {s} : f32"], r

            w = em.generic([(w, d2), (tot, ["d0"])], em.init((None, E), None), d2, ["parallel"] * 2, div)
        if float(n.attrs["routed_scaling_factor"]) != 1.0:
            sf = em.cst(float(n.attrs["routed_scaling_factor"]))
            w = em.generic([(w, d2)], em.init((None, E), None), d2, ["parallel"] * 2,
                           lambda a, acc: ([f"{(r := em.fresh())} = arith.mulf {a[0]}, {sf} : f32"], r))
        gu, dn = self.p(n, "gate_up"), self.p(n, "down")

        def dot(a, acc):
            m, s = em.fresh(), em.fresh()
            return [f"{m} = arith.mulf {a[0]}, {a[1]} : f32", f"{s} = arith.addf {acc}, {m} : f32"], s

        # h[t, e, f2] = sum_d x[t, d] gu[e, f2, d], over (t, e, f2, d)
        h = em.generic([(x, ["d0", "d3"]), (gu, ["d1", "d2", "d3"])], em.init((None, E, gu.shape[1])),
                       ["d0", "d1", "d2"], ["parallel"] * 3 + ["reduction"], dot)
        act = em.binary(self.gate(n, "gate", {"gate_up": h}), self.gate(n, "up", {"gate_up": h}), "mulf")

        def wdot(a, acc):                        # over (t, d, e, f): w[t, e] * act[t, e, f] * down[e, d, f]
            m1, m2, s = em.fresh(), em.fresh(), em.fresh()
            return [f"{m1} = arith.mulf {a[1]}, {a[2]} : f32", f"{m2} = arith.mulf {a[0]}, {m1} : f32",
                    f"{s} = arith.addf {acc}, {m2} : f32"], s

        return em.generic([(w, ["d0", "d2"]), (act, ["d0", "d2", "d3"]), (dn, ["d2", "d1", "d3"])],
                          em.init((None, x.shape[1])), ["d0", "d1"], ["parallel"] * 2 + ["reduction"] * 2, wdot)

    def lower(self) -> str:
        g, em = self.g, self.em
        bad = sorted({n.op for n in g.nodes if n.op not in _SUPPORTED})
        if bad:
            raise LfmcError(f"--lower linalg does not lower {', '.join(bad)} (the lfm dialect form does)")
        quant = sorted({p.name for p in g.params().values() if p.type.dtype != "f32"})
        if quant:
            raise LfmcError(f"--lower linalg needs float32 weights; {quant[0]} is {g.params()[quant[0]].type.dtype} "
                            "(export the model before quantizing)")
        args = ["%tokens: tensor<?xi64>"]
        for i, (name, p) in enumerate(g.params().items()):
            v = _V(f"%p{i}", p.type.shape)
            self.params[name] = v
            args.append(f"{v.name}: {v.ty} {{lfm.param = \"{name}\"}}")
        c0 = em.fresh("c")
        em.emit(f"{c0} = arith.constant 0 : index")
        em.emit(f"%T = tensor.dim %tokens, {c0} : tensor<?xi64>")
        toks = _V("%tokens", (None,), "i64")
        value: dict[str, _V] = {g.inputs[0][0]: toks}
        for n in g.nodes:
            a = [value[i] for i in n.inputs]
            if n.op == "add":
                value[n.name] = em.binary(a[0], a[1], "addf")
            elif n.op == "rmsnorm":
                value[n.name] = em.rmsnorm(a[0], self.p(n, "weight"), float(n.attrs["eps"]))
            elif n.op in ("linear", "lm_head"):
                value[n.name] = self.proj(n, "weight", a[0])
            else:
                value[n.name] = getattr(self, n.op)(n, a[0])
        out = value[g.outputs[0]]
        head = (f"  func.func @forward({', '.join(args)}) -> {out.ty} attributes {{lfm.graph = \"{g.name}\"}} {{")
        return "\n".join(["module {", head] + em.lines + [f"    return {out.name} : {out.ty}", "  }", "}", ""])


def lower_linalg(g: Graph) -> str:
    """MLIR text of ``@forward`` in func / linalg / arith / math / tensor (not yet verified)."""
    if len(g.inputs) != 1 or len(g.outputs) != 1:
        raise LfmcError("--lower linalg expects one token input and one logits output")
    return _Lowering(g).lower()


__all__ = ["lower_linalg", "tensor_type"]
