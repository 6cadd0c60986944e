"""Mixture-of-experts kernels: the router (top-k choice and weights) and the expert matmuls."""
from __future__ import annotations

import tvm
from tvm import s_tir, te
from tvm.script import tirx as T

from .common import (_flat, _gpu_dlight, _grid, Knobs, _lane, _named, NEG, pick_cols, pick_lanes, _scope, _WDTYPE, _widen)


def _expert_weight(E: int, N: int, K: int, l: int, quant: tuple | None, name: str):
    """Placeholders of stacked expert weights [E, N, K] in the matmul layout, and a function giving the float
    weight of expert e at output j, input k (dequantized per element: experts see few rows per call)."""
    qkind = quant[0] if quant else None
    extra = []
    if qkind == "q4":
        g, asym = int(quant[1]), bool(quant[2])
        W = te.placeholder((E, N // l, K // 2, l), name=name, dtype="uint8")
        Sc = te.placeholder((E, N, K // g), name=name + "_scale")
        Zp = te.placeholder((E, N, K // g), name=name + "_zero") if asym else None
        extra = [Sc] + ([Zp] if Zp is not None else [])

        def wv(e, j, k):
            code = (W[e, j // l, k // 2, j % l] >> (4 * (k % 2)).astype("uint8")) & tvm.tirx.const(15, "uint8")
            zero = Zp[e, j, k // g] if Zp is not None else tvm.tirx.const(8.0, "float32")
            return (code.astype("float32") - zero) * Sc[e, j, k // g]
    elif qkind == "q8" and len(quant) > 1:             # int8 with a scale per group of g inputs (Q8_0)
        g = int(quant[1])
        W = te.placeholder((E, N // l, K, l), name=name, dtype="int8")
        Sc = te.placeholder((E, N, K // g), name=name + "_scale")
        extra = [Sc]

        def wv(e, j, k):
            return W[e, j // l, k, j % l].astype("float32") * Sc[e, j, k // g]
    elif qkind == "q8":
        W = te.placeholder((E, N // l, K, l), name=name, dtype="int8")
        Sc = te.placeholder((E, N), name=name + "_scale")
        extra = [Sc]

        def wv(e, j, k):
            return W[e, j // l, k, j % l].astype("float32") * Sc[e, j]
    else:
        W = te.placeholder((E, N // l, K, l), name=name, dtype=_WDTYPE[qkind])

        def wv(e, j, k):
            return _widen(W[e, j // l, k, j % l], qkind)
    return [W] + extra, wv


def make_moe_gate_up(name: str, E: int, F2: int, D: int, topk: int, knobs: Knobs,
                     quant: tuple | None = None) -> tvm.tirx.PrimFunc:
    """H[n*k, F2] = X[n] @ GU[idx[n, j]]^T for each chosen expert j. GU packed [E, F2/l, D, l] (quantized or
    16-bit as in :func:`make_matmul`). Args: X[n, D], GU, (scale), (zero), idx[n, k], H[n*k, F2]."""
    l = pick_lanes(F2, knobs.lanes)
    J = pick_cols(F2 // l, knobs.cols * 2)
    n = te.var("n", "int32")
    X = te.placeholder((n, D), name="X")
    wargs, wv = _expert_weight(E, F2, D, l, quant, "GU")
    idx = te.placeholder((n, topk), name="idx", dtype="int32")
    d = te.reduce_axis((0, D), name="d")
    H = te.compute((n * topk, F2), lambda r, f: te.sum(
        X[r // topk, d] * wv(idx[r // topk, r % topk], f, d), axis=d), name="H")
    if knobs.gpu:
        return _gpu_dlight(te.create_prim_func([X] + wargs + [idx, H]), name)
    sch = s_tir.Schedule(te.create_prim_func([X] + wargs + [idx, H]))
    b = sch.get_sblock("H")
    r, f, dd = sch.get_loops(b)
    fo, fj, fi = sch.split(f, [None, J, l])
    sch.reorder(r, fo, dd, fj, fi)
    outer = sch.fuse(r, fo)
    if knobs.parallel:
        sch.parallel(outer)
    c = sch.cache_write(b, 0, "local")
    sch.reverse_compute_at(c, outer)
    sch.unroll(fj)
    if l > 1:
        sch.vectorize(fi)
    init = sch.decompose_reduction(b, dd)
    if l > 1:
        sch.vectorize(sch.get_loops(c)[-1])
        sch.vectorize(sch.get_loops(init)[-1])
    return _named(sch.mod["main"], name)


def make_moe_down(name: str, E: int, D: int, F: int, topk: int, knobs: Knobs,
                  quant: tuple | None = None, accumulate: bool = False) -> tvm.tirx.PrimFunc:
    """Y[n, D] = sum_j w[n, j] * (A[n*k + j] @ Dn[idx[n, j]]^T) (+ Y when ``accumulate``: the residual stream,
    updated in place). Dn packed [E, D/l, F, l] (quantized or 16-bit as in :func:`make_matmul`).
    Args: A[n*k, F], Dn, (scale), (zero), idx[n, k], w[n, k], (Res), Y[n, D] — Res and Y the same buffer."""
    l = pick_lanes(D, knobs.lanes)
    J = pick_cols(D // l, knobs.cols * 2)
    n = te.var("n", "int32")
    A = te.placeholder((n * topk, F), name="A")
    wargs, wv = _expert_weight(E, D, F, l, quant, "Dn")
    idx = te.placeholder((n, topk), name="idx", dtype="int32")
    w = te.placeholder((n, topk), name="w")
    j = te.reduce_axis((0, topk), name="j")
    f = te.reduce_axis((0, F), name="f")
    Y = te.compute((n, D), lambda i, o: te.sum(
        w[i, j] * A[i * topk + j, f] * wv(idx[i, j], o, f), axis=[j, f]), name="Y")
    if accumulate:
        Res = te.placeholder((n, D), name="Res")
        Z = te.compute((n, D), lambda i, o: Y[i, o] + Res[i, o], name="Z")
        func = te.create_prim_func([A] + wargs + [idx, w, Res, Z]).with_attr("tir.noalias", False)
    else:
        func = te.create_prim_func([A] + wargs + [idx, w, Y])
    if knobs.gpu:
        return _gpu_dlight(func, name)
    sch = s_tir.Schedule(func)
    b = sch.get_sblock("Y")
    i, o, jj, ff = sch.get_loops(b)
    oo, oj, oi = sch.split(o, [None, J, l])
    sch.reorder(i, oo, jj, ff, oj, oi)
    outer = sch.fuse(i, oo)
    if knobs.parallel:
        sch.parallel(outer)
    c = sch.cache_write(b, 0, "local")
    sch.reverse_compute_at(c, outer)
    if accumulate:
        sch.reverse_compute_inline(sch.get_sblock("Z"))
    sch.unroll(oj)
    if l > 1:
        sch.vectorize(oi)
    init = sch.decompose_reduction(b, jj)
    if l > 1:
        sch.vectorize(sch.get_loops(c)[-1])
        sch.vectorize(sch.get_loops(init)[-1])
    return _named(sch.mod["main"], name)


def make_moe_route(name: str, E: int, topk: int, scoring: str, use_bias: bool, norm: bool, norm_eps: float,
                   scale: float, kn: Knobs = Knobs()) -> tvm.tirx.PrimFunc:
    """Router: scores = sigmoid|softmax(logits); choose top-k of scores (+ expert_bias); weights are the
    unbiased scores of the chosen, normalized over them (+eps) when ``norm``, times ``scale``.
    Args: logits[n, E], bias[E], idx[n, k] int32, w[n, k]."""
    sig = scoring == "sigmoid"

    @T.prim_func
    def f(lg: T.handle, bias: T.handle, idx: T.handle, w: T.handle):
        T.func_attr({"tirx.noalias": True})
        n = T.int32()
        Lg = T.match_buffer(lg, (n, E), "float32")
        Bs = T.match_buffer(bias, (E,), "float32")
        Ix = T.match_buffer(idx, (n, topk), "int32")
        Wt = T.match_buffer(w, (n, topk), "float32")
        for bi in _grid(n, kn):
            for ti in _lane(kn):
                if _flat(bi, ti, kn) < n:
                    t: T.let = _flat(bi, ti, kn)
                    sc = T.decl_buffer((E,), "float32", scope=_scope(kn))
                    taken = T.decl_buffer((E,), "int32", scope=_scope(kn))
                    tmp = T.decl_buffer((3,), "float32", scope=_scope(kn))     # max logit, softmax sum, best
                    best = T.decl_buffer((1,), "int32", scope=_scope(kn))
                    tmp[0] = T.float32(NEG)
                    for e in T.serial(E):
                        tmp[0] = T.max(tmp[0], Lg[t, e])
                    tmp[1] = T.float32(0)
                    for e in T.serial(E):
                        tmp[1] = tmp[1] + T.exp(Lg[t, e] - tmp[0])
                    for e in T.serial(E):
                        taken[e] = 0
                        if sig:
                            sc[e] = T.float32(1) / (T.float32(1) + T.exp(-Lg[t, e]))
                        else:
                            sc[e] = T.exp(Lg[t, e] - tmp[0]) / tmp[1]
                    for j in T.serial(topk):
                        tmp[2] = T.float32(NEG)
                        best[0] = 0
                        for e in T.serial(E):
                            if taken[e] == 0 and sc[e] + T.if_then_else(use_bias, Bs[e], T.float32(0)) > tmp[2]:
                                tmp[2] = sc[e] + T.if_then_else(use_bias, Bs[e], T.float32(0))
                                best[0] = e
                        taken[best[0]] = 1
                        Ix[t, j] = best[0]
                        Wt[t, j] = sc[best[0]]
                    tmp[1] = T.float32(0)
                    for j in T.serial(topk):
                        tmp[1] = tmp[1] + Wt[t, j]
                    for j in T.serial(topk):
                        if norm:
                            Wt[t, j] = Wt[t, j] / (tmp[1] + T.float32(norm_eps)) * T.float32(scale)
                        else:
                            Wt[t, j] = Wt[t, j] * T.float32(scale)

    return _named(f, name)
