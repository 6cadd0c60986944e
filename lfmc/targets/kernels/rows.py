"""Row-wise kernels: embedding lookup, RMSNorm, the residual add, SwiGLU's silu * up, and taking the last row."""
from __future__ import annotations

import tvm
from tvm import te
from tvm.script import tirx as T

from .common import _flat, _gpu_dlight, _grid, Knobs, _lane, _named, _scope, _WDTYPE, _widen
from .matmul_a8 import a8_layout


def make_embedding(name: str, V: int, D: int, l: int, quant: tuple | None = None,
                   gpu: bool = False, a8_il: int = 0, panels: int = 1) -> tvm.tirx.PrimFunc:
    """Out[n, D] = table[tokens[n]], the table packed like the LM head's weight [V/l, D, l] (shared when tied;
    ``panels`` > 1: [V/(P l), D, P, l], see :func:`make_matmul`), dequantized per row when ``quant``; with
    ``a8_il`` in the int8-activation layout of :func:`make_matmul_a8` (interleave ``a8_il``).
    Args: tokens, W, (scale), (zero), Out."""
    n = te.var("n", "int32")
    tok = te.placeholder((n,), name="tok", dtype="int32")
    qkind = quant[0] if quant else None
    P = panels

    def shape(rows: int) -> tuple:
        """The packed table's shape with ``rows`` (packed) input rows."""
        return (V // l, rows, l) if P == 1 else (V // (l * P), rows, P, l)

    def at(t, r) -> tuple:
        """The index of token t's element at packed input row r."""
        return (t // l, r, t % l) if P == 1 else (t // l // P, r, t // l % P, t % l)

    if a8_il:
        il = a8_il
        lay = a8_layout(V, D, quant, False, il)
        W = te.placeholder(lay["W"][0], name="W", dtype=lay["W"][1])
        Sc = te.placeholder(lay["S"][0], name="scale", dtype=lay["S"][1])
        asym = qkind == "q4" and bool(quant[2])
        Zp = te.placeholder(lay["S"][0], name="zero", dtype=lay["S"][1]) if asym else None

        def val(i, d):
            t = tok[i]
            blk, o = t // 8, t % 8
            if qkind == "q8" and len(quant) > 1:      # int8 in groups: a float16 scale per (block, group)
                at = (blk // il, d // int(quant[1]), 0, blk % il, o)
                return W[blk // il, d // 4, 0, blk % il, o * 4 + d % 4].astype("float32") * Sc[at].astype("float32")
            if qkind == "q8":
                return W[blk // il, d // 4, 0, blk % il, o * 4 + d % 4].astype("float32") * Sc[0, t]
            g = int(quant[1])
            byte = W[blk // il, d // 8, 0, blk % il, o * 4 + d % 4]
            code = (byte >> (4 * ((d % 8) // 4)).astype("uint8")) & tvm.tirx.const(15, "uint8")
            at = (blk // il, d // g, 0, blk % il, o)
            zero = Zp[at].astype("float32") if Zp is not None else tvm.tirx.const(8.0, "float32")
            return (code.astype("float32") - zero) * Sc[at].astype("float32")
    elif qkind == "q4":
        g, asym = int(quant[1]), bool(quant[2])
        W = te.placeholder(shape(D // 2), name="W", dtype="uint8")
        Sc = te.placeholder((V, D // g), name="scale")
        Zp = te.placeholder((V, D // g), name="zero") if asym else None

        def val(i, d):
            t = tok[i]
            code = (W[at(t, d // 2)] >> (4 * (d % 2)).astype("uint8")) & tvm.tirx.const(15, "uint8")
            zero = Zp[t, d // g] if Zp is not None else tvm.tirx.const(8.0, "float32")
            return (code.astype("float32") - zero) * Sc[t, d // g]
    elif qkind == "q8" and len(quant) > 1:
        g = int(quant[1])
        W = te.placeholder(shape(D), name="W", dtype="int8")
        Sc, Zp = te.placeholder((V, D // g), name="scale"), None

        def val(i, d):
            return W[at(tok[i], d)].astype("float32") * Sc[tok[i], d // g]
    elif qkind == "q8":
        W = te.placeholder(shape(D), name="W", dtype="int8")
        Sc, Zp = te.placeholder((V,), name="scale"), None

        def val(i, d):
            return W[at(tok[i], d)].astype("float32") * Sc[tok[i]]
    else:
        W, Sc, Zp = te.placeholder(shape(D), name="W", dtype=_WDTYPE[qkind]), None, None

        def val(i, d):
            return _widen(W[at(tok[i], d)], qkind)
    O = te.compute((n, D), val, name="O")
    f = te.create_prim_func([tok, W] + [t for t in (Sc, Zp) if t is not None] + [O])
    return _gpu_dlight(f, name) if gpu else _named(f, name)


def make_rmsnorm(name: str, D: int, eps: float, kn: Knobs = Knobs()) -> tvm.tirx.PrimFunc:
    """Y[n, D] = w * X * rsqrt(mean(X^2) + eps). Args: X, w, Y."""

    @T.prim_func
    def f(x: T.handle, w: T.handle, y: T.handle):
        T.func_attr({"tirx.noalias": True})
        n = T.int32()
        X = T.match_buffer(x, (n, D), "float32")
        Wt = T.match_buffer(w, (D,), "float32")
        Y = T.match_buffer(y, (n, D), "float32")
        for bi in _grid(n, kn):
            for ti in _lane(kn):
                if _flat(bi, ti, kn) < n:
                    i: T.let = _flat(bi, ti, kn)
                    ss = T.decl_buffer((1,), "float32", scope=_scope(kn))
                    ss[0] = T.float32(0)
                    for d in T.serial(D):
                        ss[0] = ss[0] + X[i, d] * X[i, d]
                    ss[0] = T.float32(1) / T.sqrt(ss[0] / T.float32(D) + T.float32(eps))
                    for d in T.serial(D):
                        Y[i, d] = Wt[d] * (X[i, d] * ss[0])

    return _named(f, name)


def make_add_rmsnorm(name: str, D: int, eps: float, kn: Knobs = Knobs()) -> tvm.tirx.PrimFunc:
    """H[n, D] += w * Y * rsqrt(mean(Y^2) + eps): a sandwich (post-) norm and its residual add in one pass, the
    normalized rows never written (LFM3's post_operator_norm / post_ffn_norm). Args: H, Y, w."""

    @T.prim_func
    def f(h: T.handle, y: T.handle, w: T.handle):
        T.func_attr({"tirx.noalias": True})
        n = T.int32()
        H = T.match_buffer(h, (n, D), "float32")
        Y = T.match_buffer(y, (n, D), "float32")
        Wt = T.match_buffer(w, (D,), "float32")
        for bi in _grid(n, kn):
            for ti in _lane(kn):
                if _flat(bi, ti, kn) < n:
                    i: T.let = _flat(bi, ti, kn)
                    ss = T.decl_buffer((1,), "float32", scope=_scope(kn))
                    ss[0] = T.float32(0)
                    for d in T.serial(D):
                        ss[0] = ss[0] + Y[i, d] * Y[i, d]
                    ss[0] = T.float32(1) / T.sqrt(ss[0] / T.float32(D) + T.float32(eps))
                    for d in T.serial(D):
                        H[i, d] = H[i, d] + Wt[d] * (Y[i, d] * ss[0])

    return _named(f, name)


def make_add(name: str, D: int, kn: Knobs = Knobs()) -> tvm.tirx.PrimFunc:
    """A[n, D] += B[n, D] (in place: the residual stream). Args: A, B."""

    @T.prim_func
    def f(a: T.handle, b: T.handle):
        n = T.int32()
        A = T.match_buffer(a, (n, D), "float32")
        B = T.match_buffer(b, (n, D), "float32")
        for bi in _grid(n * D, kn):
            for ti in _lane(kn):
                if _flat(bi, ti, kn) < n * D:
                    i: T.let = _flat(bi, ti, kn)
                    A[i // D, i % D] = A[i // D, i % D] + B[i // D, i % D]

    return _named(f, name)


def make_silu_mul(name: str, F: int, gate_chunk: int, kn: Knobs = Knobs()) -> tvm.tirx.PrimFunc:
    """A[n, F] = silu(G[:, gate]) * G[:, up], G = [n, 2F] with the gate in chunk ``gate_chunk``. Args: G, A."""
    go, uo = gate_chunk * F, (1 - gate_chunk) * F

    @T.prim_func
    def f(g: T.handle, a: T.handle):
        T.func_attr({"tirx.noalias": True})
        n = T.int32()
        G = T.match_buffer(g, (n, 2 * F), "float32")
        A = T.match_buffer(a, (n, F), "float32")
        for bi in _grid(n * F, kn):
            for ti in _lane(kn):
                if _flat(bi, ti, kn) < n * F:
                    i: T.let = _flat(bi, ti, kn)
                    A[i // F, i % F] = G[i // F, go + i % F] / (T.float32(1) + T.exp(-G[i // F, go + i % F])) * G[
                        i // F, uo + i % F]

    return _named(f, name)


def make_take_last(name: str, D: int, kn: Knobs = Knobs()) -> tvm.tirx.PrimFunc:
    """Out[0, :] = X[n - 1, :] (prefill computes logits for its last token only). Args: X, Out[r, D]."""

    @T.prim_func
    def f(x: T.handle, out: T.handle):
        T.func_attr({"tirx.noalias": True})
        n = T.int32()
        r = T.int32()
        X = T.match_buffer(x, (n, D), "float32")
        O = T.match_buffer(out, (r, D), "float32")
        for bi in _grid(D, kn):
            for ti in _lane(kn):
                if _flat(bi, ti, kn) < D:
                    d: T.let = _flat(bi, ti, kn)
                    O[0, d] = X[n - 1, d]

    return _named(f, name)
