"""Attention: q / k RMSNorm + RoPE into the KV cache, and the attention over it (separate, or fused in one kernel).

Variants (compile-time arguments, the defaults give LFM2's attention):
- ``window`` > 0: a sliding window; a query at p attends to positions max(0, p - window + 1) .. p, and the cache is
  a ring: position c lives in row c % C of the cache (C its rows, :func:`lfmc.plan.ring_slots`).
- ``rope``: (theta, angles, factor): the first ``angles`` of the head_dim / 2 rotation angles turn, at
  frequencies theta^(-2i/hd) / factor (partial / proportional RoPE); the rest stay.
- ``gated``: a sigmoid gate per head scales the head's output; its logits follow q, k and v in the projection
  (H more columns), and the unfused q kernel copies them after Q's heads.
"""
from __future__ import annotations

import tvm
from tvm.script import tirx as T

from .common import ATT_BLOCK, _flat, _grid, Knobs, _lane, _named, NEG, pick_lanes, _scope

Rope = tuple  # (theta, angles, factor)


def _rope_spec(hd: int, theta: float, angles: int | None, factor: float) -> Rope:
    return (float(theta), hd // 2 if angles is None else int(angles), float(factor))


def _inv_freq(i, hd: int, rope: Rope):
    """Inverse frequency of rotation angle ``i`` (an expression): theta^(-2i/hd) / factor, 0 past ``angles``."""
    theta, angles, factor = rope
    inv = T.float32(1) / T.pow(T.float32(theta), T.Cast("float32", i * 2) / T.float32(hd))
    if factor != 1.0:
        inv = inv / T.float32(factor)
    if angles < hd // 2:
        inv = T.if_then_else(i < angles, inv, T.float32(0))
    return inv


def _first(p, window: int):
    """The first position a query at ``p`` attends to."""
    return T.max(p - (window - 1), 0) if window else 0


def _row(c, C, window: int):
    """The cache row of position ``c``: a sliding window's ring wraps."""
    return c % C if window else c


def _gate(v, G, t, col, gated: bool):
    """``v`` scaled by the sigmoid of gate logit G[t, col] when the attention is gated."""
    return v * (T.float32(1) / (T.float32(1) + T.exp(-G[t, col]))) if gated else v


def _norm_rope_macro(hd: int, eps: float, rope: Rope):
    """TIR macro: ``v = rope(rmsnorm(X[t, col:col+hd]) * W, Ps[t])`` into the local buffer ``v`` (NeoX
    rotate-half, angle pos * inv_freq(d mod hd/2)); ``u`` and ``ss`` are local scratch."""
    half = hd // 2

    @T.macro
    def norm_rope(X, t, col, W, p, v, u, ss):
        ss[0] = T.float32(0)
        for d in T.serial(hd):
            ss[0] = ss[0] + X[t, col + d] * X[t, col + d]
        ss[0] = T.float32(1) / T.sqrt(ss[0] / T.float32(hd) + T.float32(eps))
        for d in T.serial(hd):
            u[d] = X[t, col + d] * ss[0] * W[d]
        for d in T.serial(hd):
            ang: T.let = T.Cast("float32", p) * _inv_freq(d % half, hd, rope)
            rot: T.let = T.if_then_else(d < half, -u[T.min(d + half, hd - 1)], u[T.max(d - half, 0)])
            v[d] = u[d] * T.cos(ang) + rot * T.sin(ang)

    return norm_rope


def _cache_kv_macro(H: int, KV: int, hd: int, kv: str, norm_rope, window: int):
    """TIR macro: KV head g of row t into the cache of its slot at its position (its ring row with a window): k
    normed and rotated (``norm_rope``), v as projected, both stored as ``kv``. Shared by the fused and unfused
    attention."""

    @T.macro
    def cache_kv(X, t, g, Kn, Ps, Sl, Kc, Vc, C, v, u, ss):
        norm_rope(X, t, (H + g) * hd, Kn, Ps[t], v, u, ss)
        for d in T.serial(hd):
            Kc[Sl[t], _row(Ps[t], C, window), g, d] = T.Cast(kv, v[d])
            Vc[Sl[t], _row(Ps[t], C, window), g, d] = T.Cast(kv, X[t, (H + KV + g) * hd + d])

    return cache_kv


def make_qk_rope(name: str, H: int, KV: int, hd: int, eps: float, theta: float,
                 kn: Knobs = Knobs(), kv: str = "float32", window: int = 0, gated: bool = False,
                 angles: int | None = None, factor: float = 1.0) -> tvm.tirx.PrimFunc:
    """Per row: RMSNorm each q and k head (weights qn, kn), RoPE at pos[row], q to Q, k and v into the KV cache
    of slots[row] at pos[row] (gated: the H gate logits copied after Q's heads). Args: QKV[n, (H+2KV)hd (+H)],
    qn, kn, Kc, Vc, Q[n, H*hd (+H)], slots, pos."""
    norm_rope = _norm_rope_macro(hd, eps, _rope_spec(hd, theta, angles, factor))
    cache_kv = _cache_kv_macro(H, KV, hd, kv, norm_rope, window)
    NX, NQ = (H + 2 * KV) * hd + (H if gated else 0), H * hd + (H if gated else 0)

    @T.prim_func
    def f(qkv: T.handle, qn: T.handle, knw: T.handle, kc: T.handle, vc: T.handle, q: T.handle,
          slots: T.handle, pos: T.handle):
        T.func_attr({"tirx.noalias": True})
        n = T.int32()
        S = T.int32()
        C = T.int32()
        X = T.match_buffer(qkv, (n, NX), "float32")
        Qn = T.match_buffer(qn, (hd,), "float32")
        Kn = T.match_buffer(knw, (hd,), "float32")
        Kc = T.match_buffer(kc, (S, C, KV, hd), kv)
        Vc = T.match_buffer(vc, (S, C, KV, hd), kv)
        Q = T.match_buffer(q, (n, NQ), "float32")
        Sl = T.match_buffer(slots, (n,), "int32")
        Ps = T.match_buffer(pos, (n,), "int32")
        for bi in _grid(n * (H + KV), kn):
            for ti in _lane(kn):
                if _flat(bi, ti, kn) < n * (H + KV):
                    th: T.let = _flat(bi, ti, kn)
                    v = T.decl_buffer((hd,), "float32", scope=_scope(kn))
                    u = T.decl_buffer((hd,), "float32", scope=_scope(kn))
                    ss = T.decl_buffer((1,), "float32", scope=_scope(kn))
                    if th % (H + KV) < H:
                        norm_rope(X, th // (H + KV), (th % (H + KV)) * hd, Qn, Ps[th // (H + KV)], v, u, ss)
                        for d in T.serial(hd):
                            Q[th // (H + KV), (th % (H + KV)) * hd + d] = v[d]
                        if gated:
                            Q[th // (H + KV), H * hd + th % (H + KV)] = X[th // (H + KV),
                                                                          (H + 2 * KV) * hd + th % (H + KV)]
                    else:
                        cache_kv(X, th // (H + KV), th % (H + KV) - H, Kn, Ps, Sl, Kc, Vc, C, v, u, ss)

    return _named(f, name)


def _online_softmax_macro(H: int, KV: int, hd: int, VL: int, window: int = 0, gated: bool = False):
    """TIR macro: causal GQA attention of query ``q`` (local, hd) of head ``h`` over cache slot ``s`` positions
    first..p (:func:`_first`), with an online softmax (no score buffer), written to O[t, h*hd:] (times the
    sigmoid of gate logit G[t, gcol + h] when gated)."""
    G = H // KV
    NC = hd // VL
    scale = float(hd) ** -0.5

    @T.macro
    def attend(qv, Kc, Vc, s, p, h, O, t, acc, part, st, C, Gs, gcol):
        st[0] = T.float32(NEG)
        st[1] = T.float32(0)
        for dc in T.serial(NC):
            for dl in T.vectorized(VL):
                acc[dc * VL + dl] = T.float32(0)
        for c in T.serial(p + 1 - _first(p, window)):
            for dl in T.vectorized(VL):
                part[dl] = T.float32(0)
            for dc in T.serial(NC):
                for dl in T.vectorized(VL):
                    part[dl] = part[dl] + qv[dc * VL + dl] * T.Cast(
                        "float32", Kc[s, _row(_first(p, window) + c, C, window), h // G, dc * VL + dl])
            st[2] = T.float32(0)
            for dl in T.serial(VL):
                st[2] = st[2] + part[dl]
            st[2] = st[2] * T.float32(scale)
            st[3] = T.max(st[0], st[2])
            st[4] = T.exp(st[0] - st[3])
            st[5] = T.exp(st[2] - st[3])
            st[1] = st[1] * st[4] + st[5]
            for dc in T.serial(NC):
                for dl in T.vectorized(VL):
                    acc[dc * VL + dl] = acc[dc * VL + dl] * st[4] + st[5] * T.Cast(
                        "float32", Vc[s, _row(_first(p, window) + c, C, window), h // G, dc * VL + dl])
            st[0] = st[3]
        for d in T.serial(hd):
            O[t, h * hd + d] = _gate(acc[d] / st[1], Gs, t, gcol + h, gated)

    return attend


LN2 = 0.6931471805599453
LOG2E = 1.4426950408889634


def _fast_exp(x):
    """exp(x) for x <= 0 in vector-friendly arithmetic (no libm call): x = n ln2 + r, e^r by a degree-6
    polynomial on |r| <= ln2/2, 2^n by building the float's exponent bits. Relative error about 2e-7; x below
    -87 gives 0."""
    xc = T.max(x, T.float32(-87.0))
    nf = T.floor(xc * T.float32(LOG2E) + T.float32(0.5))
    r = xc - nf * T.float32(LN2)
    p = T.float32(1.0 / 720)
    p = p * r + T.float32(1.0 / 120)
    p = p * r + T.float32(1.0 / 24)
    p = p * r + T.float32(1.0 / 6)
    p = p * r + T.float32(0.5)
    p = p * r + T.float32(1.0)
    p = p * r + T.float32(1.0)
    two_n = T.reinterpret("float32", T.shift_left(T.Cast("int32", nf) + 127, 23))
    return T.if_then_else(x < T.float32(-87.0), T.float32(0), p * two_n)


def _group_softmax_macro(H: int, KV: int, hd: int, VL: int, B: int = 32, window: int = 0, gated: bool = False):
    """TIR macro (CPU): causal attention of the G = H/KV query heads of KV head ``g`` (local ``qg`` [G*hd]) over
    cache slot ``s`` positions first..p (:func:`_first`), in blocks of ``B`` positions: scores of a block for all
    G heads (each K row read once for the group), one max and rescale per block, exponentials vectorized
    (polynomial, no libm), the values accumulated once per position for the group. Writes O[t, (g*G + i)*hd:]
    (times the sigmoid of gate logit G[t, gcol + head] when gated)."""
    G = H // KV
    NC = hd // VL
    scale = float(hd) ** -0.5

    @T.macro
    def attend(qg, Kc, Vc, s, p, g, O, t, acc, part, sc, st, C, Gs, gcol):
        for i in T.serial(G):
            st[i] = T.float32(NEG)              # running max
            st[G + i] = T.float32(0)            # running sum
            for d in T.vectorized(hd):
                acc[i * hd + d] = T.float32(0)
        for blk in T.serial((p - _first(p, window) + B) // B):
            for j in T.serial(B):
                for i in T.serial(G):
                    for dl in T.vectorized(VL):
                        part[dl] = T.float32(0)
                    for dc in T.serial(NC):
                        for dl in T.vectorized(VL):
                            part[dl] = part[dl] + qg[i * hd + dc * VL + dl] * T.Cast("float32", Kc[
                                s, _row(T.min(_first(p, window) + blk * B + j, p), C, window), g, dc * VL + dl])
                    st[2 * G] = T.float32(0)
                    for dl in T.serial(VL):
                        st[2 * G] = st[2 * G] + part[dl]
                    sc[i * B + j] = T.if_then_else(_first(p, window) + blk * B + j <= p,
                                                   st[2 * G] * T.float32(scale), T.float32(NEG))
            for i in T.serial(G):
                st[2 * G + 1] = st[i]
                for j in T.serial(B):
                    st[2 * G + 1] = T.max(st[2 * G + 1], sc[i * B + j])
                st[2 * G + 2] = _fast_exp(st[i] - st[2 * G + 1])          # rescale of what came before
                for j in T.vectorized(B):
                    sc[i * B + j] = _fast_exp(sc[i * B + j] - st[2 * G + 1])
                st[2 * G + 3] = T.float32(0)
                for j in T.serial(B):
                    st[2 * G + 3] = st[2 * G + 3] + sc[i * B + j]
                st[G + i] = st[G + i] * st[2 * G + 2] + st[2 * G + 3]
                st[i] = st[2 * G + 1]
                for d in T.vectorized(hd):
                    acc[i * hd + d] = acc[i * hd + d] * st[2 * G + 2]
            for j in T.serial(B):
                for i in T.serial(G):
                    for d in T.vectorized(hd):
                        acc[i * hd + d] = acc[i * hd + d] + sc[i * B + j] * T.Cast("float32", Vc[
                            s, _row(T.min(_first(p, window) + blk * B + j, p), C, window), g, d])
        for i in T.serial(G):
            for d in T.serial(hd):
                O[t, (g * G + i) * hd + d] = _gate(acc[i * hd + d] / st[G + i], Gs, t, gcol + g * G + i, gated)

    return attend


def make_attention(name: str, H: int, KV: int, hd: int, kn: Knobs = Knobs(), kv: str = "float32",
                   window: int = 0, gated: bool = False) -> tvm.tirx.PrimFunc:
    """Causal GQA attention of each row over its sequence's cache up to and including pos[row] (within the window),
    with an online softmax (no score buffer); dot products and the value update run on ``lanes``-wide vectors.
    Args: Q[n, H*hd (+H gate logits)], Kc, Vc, O[n, H*hd], slots, pos."""
    VL = pick_lanes(hd, 1 if kn.gpu else kn.lanes)
    attend = _online_softmax_macro(H, KV, hd, VL, window, gated)
    group = _group_softmax_macro(H, KV, hd, VL, ATT_BLOCK, window, gated)
    G = H // KV
    NQ = H * hd + (H if gated else 0)

    @T.prim_func
    def f(q: T.handle, kc: T.handle, vc: T.handle, o: T.handle, slots: T.handle, pos: T.handle):
        T.func_attr({"tirx.noalias": True})
        n = T.int32()
        S = T.int32()
        C = T.int32()
        Q = T.match_buffer(q, (n, NQ), "float32")
        Kc = T.match_buffer(kc, (S, C, KV, hd), kv)
        Vc = T.match_buffer(vc, (S, C, KV, hd), kv)
        O = T.match_buffer(o, (n, H * hd), "float32")
        Sl = T.match_buffer(slots, (n,), "int32")
        Ps = T.match_buffer(pos, (n,), "int32")
        if kn.gpu:
            for bi in _grid(n * H, kn):
                for ti in _lane(kn):
                    if _flat(bi, ti, kn) < n * H:
                        th: T.let = _flat(bi, ti, kn)
                        qv = T.decl_buffer((hd,), "float32", scope=_scope(kn))
                        acc = T.decl_buffer((hd,), "float32", scope=_scope(kn))
                        part = T.decl_buffer((VL,), "float32", scope=_scope(kn))
                        st = T.decl_buffer((6,), "float32", scope=_scope(kn))    # max, sum, score, new max, rescale
                        for d in T.serial(hd):
                            qv[d] = Q[th // H, (th % H) * hd + d]
                        attend(qv, Kc, Vc, Sl[th // H], Ps[th // H], th % H, O, th // H, acc, part, st, C, Q, H * hd)
        else:
            for tg in _grid(n * KV, kn):                  # one KV head's query group per iteration
                qg = T.decl_buffer((G * hd,), "float32", scope=_scope(kn))
                acc = T.decl_buffer((G * hd,), "float32", scope=_scope(kn))
                part = T.decl_buffer((VL,), "float32", scope=_scope(kn))
                sc = T.decl_buffer((G * ATT_BLOCK,), "float32", scope=_scope(kn))
                st = T.decl_buffer((2 * G + 4,), "float32", scope=_scope(kn))
                for i in T.serial(G):
                    for d in T.serial(hd):
                        qg[i * hd + d] = Q[tg // KV, ((tg % KV) * G + i) * hd + d]
                slot: T.let = Sl[tg // KV]                # bound once: the loops below do not reload them
                last: T.let = Ps[tg // KV]
                group(qg, Kc, Vc, slot, last, tg % KV, O, tg // KV, acc, part, sc, st, C, Q, H * hd)

    return _named(f, name)


def make_rope_attention(name: str, H: int, KV: int, hd: int, eps: float, theta: float,
                        kn: Knobs = Knobs(), kv: str = "float32", window: int = 0, gated: bool = False,
                        angles: int | None = None, factor: float = 1.0) -> tvm.tirx.PrimFunc:
    """QK-norm + RoPE + cache write + attention in one kernel, straight from the QKV projection's output.
    First every row's k (normed, rotated) and v go into the cache (parallel over rows × KV heads), then every
    (row, head) normalizes and rotates its q in registers and attends: the rotated q never touches memory; a
    gated head's output is scaled in the same epilogue. Args: QKV[n, (H+2KV)hd (+H)], qn, kn, Kc, Vc,
    O[n, H*hd], slots, pos."""
    VL = pick_lanes(hd, 1 if kn.gpu else kn.lanes)
    attend = _online_softmax_macro(H, KV, hd, VL, window, gated)
    group = _group_softmax_macro(H, KV, hd, VL, ATT_BLOCK, window, gated)
    G = H // KV
    norm_rope = _norm_rope_macro(hd, eps, _rope_spec(hd, theta, angles, factor))
    cache_kv = _cache_kv_macro(H, KV, hd, kv, norm_rope, window)
    NX, gcol = (H + 2 * KV) * hd + (H if gated else 0), (H + 2 * KV) * hd

    @T.prim_func
    def f(qkv: T.handle, qn: T.handle, knw: T.handle, kc: T.handle, vc: T.handle, o: T.handle,
          slots: T.handle, pos: T.handle):
        T.func_attr({"tirx.noalias": True})
        n = T.int32()
        S = T.int32()
        C = T.int32()
        X = T.match_buffer(qkv, (n, NX), "float32")
        Qn = T.match_buffer(qn, (hd,), "float32")
        Kn = T.match_buffer(knw, (hd,), "float32")
        Kc = T.match_buffer(kc, (S, C, KV, hd), kv)
        Vc = T.match_buffer(vc, (S, C, KV, hd), kv)
        O = T.match_buffer(o, (n, H * hd), "float32")
        Sl = T.match_buffer(slots, (n,), "int32")
        Ps = T.match_buffer(pos, (n,), "int32")
        for bi in _grid(n * KV, kn):
            for ti in _lane(kn):
                if _flat(bi, ti, kn) < n * KV:
                    tg: T.let = _flat(bi, ti, kn)
                    v = T.decl_buffer((hd,), "float32", scope=_scope(kn))
                    u = T.decl_buffer((hd,), "float32", scope=_scope(kn))
                    ss = T.decl_buffer((1,), "float32", scope=_scope(kn))
                    cache_kv(X, tg // KV, tg % KV, Kn, Ps, Sl, Kc, Vc, C, v, u, ss)
        if kn.gpu:
            for bi in _grid(n * H, kn):
                for ti in _lane(kn):
                    if _flat(bi, ti, kn) < n * H:
                        th: T.let = _flat(bi, ti, kn)
                        qv = T.decl_buffer((hd,), "float32", scope=_scope(kn))
                        u = T.decl_buffer((hd,), "float32", scope=_scope(kn))
                        ss = T.decl_buffer((1,), "float32", scope=_scope(kn))
                        acc = T.decl_buffer((hd,), "float32", scope=_scope(kn))
                        part = T.decl_buffer((VL,), "float32", scope=_scope(kn))
                        st = T.decl_buffer((6,), "float32", scope=_scope(kn))
                        norm_rope(X, th // H, (th % H) * hd, Qn, Ps[th // H], qv, u, ss)
                        attend(qv, Kc, Vc, Sl[th // H], Ps[th // H], th % H, O, th // H, acc, part, st, C, X, gcol)
        else:
            for tg in _grid(n * KV, kn):                  # one KV head's query group per iteration
                qv = T.decl_buffer((hd,), "float32", scope=_scope(kn))
                u = T.decl_buffer((hd,), "float32", scope=_scope(kn))
                ss = T.decl_buffer((1,), "float32", scope=_scope(kn))
                qg = T.decl_buffer((G * hd,), "float32", scope=_scope(kn))
                acc = T.decl_buffer((G * hd,), "float32", scope=_scope(kn))
                part = T.decl_buffer((VL,), "float32", scope=_scope(kn))
                sc = T.decl_buffer((G * ATT_BLOCK,), "float32", scope=_scope(kn))
                st = T.decl_buffer((2 * G + 4,), "float32", scope=_scope(kn))
                for i in T.serial(G):
                    norm_rope(X, tg // KV, ((tg % KV) * G + i) * hd, Qn, Ps[tg // KV], qv, u, ss)
                    for d in T.serial(hd):
                        qg[i * hd + d] = qv[d]
                slot: T.let = Sl[tg // KV]                # bound once: the loops below do not reload them
                last: T.let = Ps[tg // KV]
                group(qg, Kc, Vc, slot, last, tg % KV, O, tg // KV, acc, part, sc, st, C, X, gcol)

    return _named(f, name)
