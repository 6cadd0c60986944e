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

from ...ir.ops import KV_SCALE_BYTES
from .common import ATT_BLOCK, _cat, _flat, _grid, Knobs, _lane, _named, NEG, pick_lanes, _scope

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


def kv_cols(hd: int, kv: str) -> int:
    """The last dimension of a KV cache stored as ``kv``: head_dim values, or for int8 head_dim codes and the
    4 bytes of the row's float32 scale (see lfmc/ir/ops.kv_state_type)."""
    return hd + KV_SCALE_BYTES if kv == "int8" else hd


def _kv_scale(Kc, s, row, g, hd: int):
    """The float32 scale of an int8 cache row, from the 4 bytes after its codes."""
    return T.reinterpret("float32", Kc[s, row, g, T.ramp(hd, 1, KV_SCALE_BYTES)])


def _check_kv(kv: str, kn: Knobs) -> None:
    """An int8 cache is read by the CPU attention only (its GPU kernels read float caches)."""
    if kv == "int8" and kn.gpu:
        raise ValueError("an int8 KV cache is read by the CPU attention kernels only")


def _quant_row_macro(hd: int):
    """TIR macro: ``src`` [hd] (float32) into int8 cache row (s, row, g) of ``Dst``: codes rint(x * 127 / absmax)
    and the scale absmax / 127 in the row's last 4 bytes (as lfmc/ir/interp.kv_round rounds it)."""

    @T.macro
    def quant_row(src, Dst, s, row, g, ss):
        ss[0] = T.float32(0)
        for d in T.serial(hd):
            ss[0] = T.max(ss[0], T.abs(src[d]))
        for d in T.serial(hd):
            Dst[s, row, g, d] = T.Cast("int8", T.round(src[d] * T.if_then_else(
                ss[0] > T.float32(0), T.float32(127) / T.max(ss[0], T.float32(1e-38)), T.float32(0))))
        Dst[s, row, g, T.ramp(hd, 1, KV_SCALE_BYTES)] = T.reinterpret("int8x4", ss[0] * T.float32(1 / 127))

    return quant_row


def _cache_kv_macro(H: int, KV: int, hd: int, kv: str, norm_rope, window: int):
    """TIR macro: KV head g of row t into the cache of its slot at its position (its ring row with a window): k
    normed and rotated (``norm_rope``), v as projected, both stored as ``kv`` (int8: quantized per row, see
    :func:`_quant_row_macro`). Shared by the fused and unfused attention."""
    quant_row = _quant_row_macro(hd)

    @T.macro
    def cache_kv(X, t, g, Kn, Ps, Sl, Kc, Vc, C, v, u, ss):
        norm_rope(X, t, (H + g) * hd, Kn, Ps[t], v, u, ss)
        if kv == "int8":
            quant_row(v, Kc, Sl[t], _row(Ps[t], C, window), g, ss)
            for d in T.serial(hd):
                u[d] = X[t, (H + KV + g) * hd + d]
            quant_row(u, Vc, Sl[t], _row(Ps[t], C, window), g, ss)
        else:
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
    _check_kv(kv, kn)
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
        Kc = T.match_buffer(kc, (S, C, KV, kv_cols(hd, kv)), kv)
        Vc = T.match_buffer(vc, (S, C, KV, kv_cols(hd, kv)), kv)
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


ATT_SPLITS = 8          # CPU attention: position ranges per row when a call has one row (flash-decoding; fewer per
                        # row for more rows, none past 8 rows), so that the threads share one long context
ATT_MIN_SPLIT = 256     # positions a range covers at least (a short context takes fewer ranges)
ATT_PREFETCH_BYTES = 32 << 10   # CPU attention: a block's V rows are prefetched during its scores if at most this
ATT_LANES = 8           # CPU attention's score vectors: at most 8 lanes. On AVX-512 (Zen 4), one thread, 16-lane
                        # scores took as long in cache and ~20% longer at 32k positions (f16 cache); on two threads
                        # no difference showed through the noise (benchmarks/attention_kernel.py --lanes)


def _hsum(v, lanes: int):
    """The sum of the ``lanes`` lanes of vector ``v``, halving by shuffles (log2(lanes) dependent adds)."""
    while lanes > 1:
        lanes //= 2
        v = _cat([v], range(lanes)) + _cat([v], range(lanes, 2 * lanes))
    return v


def _score_fns(H: int, KV: int, hd: int, VL: int, kv: str):
    """The CPU attention's scores at one position, as TIR expressions over the rotated queries ``qa`` [H*hd] and a
    cache row: ``score(qa, Kc, s, row, g, i)`` one head's (group g, head i of it: a dot product reduced by halving
    shuffles), ``scores(qa, Kc, s, row)`` every head's as one H-lane vector, and whether that form applies (H a
    multiple of the vector width VL, a power of two). Both times the row's scale for an int8 cache."""
    G = H // KV
    NC = hd // VL
    VT = f"float32x{VL}"

    def partial(qa, Kc, s, row, h, scaled):
        """Head h's dot product with its K row as VL partial sums."""
        g = h // G
        v = qa[T.ramp(h * hd, 1, VL)] * T.Cast(VT, Kc[s, row, g, T.ramp(0, 1, VL)])
        for dc in range(1, NC):
            v = v + qa[T.ramp(h * hd + dc * VL, 1, VL)] * T.Cast(VT, Kc[s, row, g, T.ramp(dc * VL, 1, VL)])
        return v * T.Broadcast(_kv_scale(Kc, s, row, g, hd), VL) if kv == "int8" and scaled else v

    def score(qa, Kc, s, row, g, i):
        v = _hsum(partial(qa, Kc, s, row, g * G + i, False), VL)
        return v * _kv_scale(Kc, s, row, g, hd) if kv == "int8" else v

    def scores(qa, Kc, s, row):
        """Each VL heads' partial-sum vectors reduced together pairwise (the even and the odd lanes of each pair's
        concatenation added: VL - 1 shuffle pairs and adds for VL heads, where reducing each head alone takes
        log2(VL) for each)."""
        out = []
        for b in range(H // VL):
            vs = [partial(qa, Kc, s, row, h, True) for h in range(b * VL, (b + 1) * VL)]
            while len(vs) > 1:
                vs = [_cat([x, y], range(0, 2 * VL, 2)) + _cat([x, y], range(1, 2 * VL, 2))
                      for x, y in zip(vs[::2], vs[1::2])]
            out.append(vs[0])
        return out[0] if len(out) == 1 else _cat(out, range(H))

    return score, scores, VL > 1 and VL & (VL - 1) == 0 and H % VL == 0


def _range_softmax_macro(H: int, KV: int, hd: int, VL: int, kv: str, B: int = ATT_BLOCK, window: int = 0):
    """TIR macro (CPU): the attention of all H query heads (rotated, in ``qa`` [H*hd]) over cache slot ``s``
    positions lo..hi-1, unnormalized: its running max (``mx`` [H]), sum of exponentials (``sm`` [H]) and weighted
    values (``acc`` [H*hd]), merged across ranges by the caller. Blocks of ``B`` positions: every head's scores
    of the block, position by position (each cache row, all KV heads, read once, in address order: one stream;
    ``sc`` laid out [position, head]), the block's max, rescale and sum of exponentials as vectors over the heads,
    then the values (see :func:`_score_fns` for the scores)."""
    G = H // KV
    scale = float(hd) ** -0.5
    score, scores, tree = _score_fns(H, KV, hd, VL, kv)
    # f16 cache: the values VV lanes of every head at a time (below). On the 350M's shape (benchmarks/
    # attention_kernel.py, AVX-512, two threads) this with the V prefetch (below) makes the f16 kernel 1.57x faster
    # with the cache in L3; for the f32 and int8 caches it was slower than one pass over each value row with every
    # head's accumulators (one-thread timings: four passes over the longer f32 rows, int8's extra conversion; int8
    # at two threads: no gain either), so those keep that.
    chunked = kv == "float16"
    VV = pick_lanes(hd, 16)
    COLS = kv_cols(hd, kv)
    LE = 64 // {"float32": 4, "float16": 2, "int8": 1}[kv]            # elements a cache line
    VLINES = (KV * COLS + LE - 1) // LE                                 # cache lines a row of all KV heads

    # The block's V rows are prefetched while its K rows are read (they are read after the block's softmax) where
    # they fit an L1 (ATT_PREFETCH_BYTES: f16 and int8 rows of 8 KV heads of 64; not f32's 64 KiB, which were
    # evicted before use and read slower); see BENCHMARKS.md "The attention kernel alone".
    prefetch_v = B * VLINES * 64 <= ATT_PREFETCH_BYTES

    @T.macro
    def prefetch(Vc, s, c, hi, C):
        if prefetch_v:
            for l in T.unroll(VLINES):
                T.evaluate(T.call_llvm_intrin("void", "llvm.prefetch.p0", T.address_of(Vc[
                    s, _row(T.min(c, hi - 1), C, window), l * LE // COLS, l * LE % COLS]), 0, 3, 1))

    def weight(sc, at, Vc, s, row, g):
        """A position's softmax weight, times its value row's scale for an int8 cache."""
        return sc[at] * _kv_scale(Vc, s, row, g, hd) if kv == "int8" else sc[at]

    @T.macro
    def attend(qa, Kc, Vc, s, lo, hi, acc, mx, sm, sc, st, C):
        for h in T.vectorized(H):
            mx[h] = T.float32(NEG)
            sm[h] = T.float32(0)
        for d in T.vectorized(H * hd):
            acc[d] = T.float32(0)
        for blk in T.serial((hi - lo + B - 1) // B):
            if tree:
                for j in T.serial(B):                       # K rows in address order: every head of a position
                    prefetch(Vc, s, lo + blk * B + j, hi, C)
                    sc[T.ramp(j * H, 1, H)] = T.Select(
                        lo + blk * B + j < hi,
                        scores(qa, Kc, s, _row(T.min(lo + blk * B + j, hi - 1), C, window))
                        * T.Broadcast(T.float32(scale), H),
                        T.Broadcast(T.float32(NEG), H))
            else:
                for j in T.serial(B):
                    prefetch(Vc, s, lo + blk * B + j, hi, C)
                    for g in T.serial(KV):
                        for i in T.unroll(G):               # straight-line: the group's heads share the K loads
                            sc[j * H + g * G + i] = T.Select(
                                lo + blk * B + j < hi,
                                score(qa, Kc, s, _row(T.min(lo + blk * B + j, hi - 1), C, window), g, i)
                                * T.float32(scale), T.float32(NEG))
            # the block's softmax statistics with every head in one vector (scores laid out [position, head])
            for h in T.vectorized(H):
                st[h] = mx[h]
            for j in T.serial(B):
                for h in T.vectorized(H):
                    st[h] = T.max(st[h], sc[j * H + h])
            for h in T.vectorized(H):
                st[H + h] = _fast_exp(mx[h] - st[h])           # rescale of what came before
                st[2 * H + h] = T.float32(0)
            for j in T.serial(B):
                for h in T.vectorized(H):
                    sc[j * H + h] = _fast_exp(sc[j * H + h] - st[h])
                    st[2 * H + h] = st[2 * H + h] + sc[j * H + h]
            for h in T.vectorized(H):
                sm[h] = sm[h] * st[H + h] + st[2 * H + h]
                mx[h] = st[h]
            for h in T.serial(H):
                for d in T.vectorized(hd):
                    acc[h * hd + d] = acc[h * hd + d] * st[H + h]
            if chunked:
                for dc in T.serial(hd // VV):               # values: VV lanes of every head at a time, so that the
                    for j in T.serial(B):                   # H accumulators stay in registers over the block
                        for h in T.unroll(H):
                            for d in T.vectorized(VV):
                                acc[h * hd + dc * VV + d] = acc[h * hd + dc * VV + d] + sc[j * H + h] * T.Cast(
                                    "float32", Vc[s, _row(T.min(lo + blk * B + j, hi - 1), C, window), h // G,
                                                  dc * VV + d])
            else:
                for j in T.serial(B):                       # V rows likewise, each loaded once for its group
                    for g in T.serial(KV):
                        for i in T.unroll(G):
                            for d in T.vectorized(hd):
                                acc[(g * G + i) * hd + d] = acc[(g * G + i) * hd + d] + weight(
                                    sc, j * H + g * G + i, Vc, s, _row(T.min(lo + blk * B + j, hi - 1), C, window),
                                    g) * T.Cast("float32",
                                                Vc[s, _row(T.min(lo + blk * B + j, hi - 1), C, window), g, d])

    return attend


def _split_attention_macro(H: int, KV: int, hd: int, VL: int, kv: str, window: int, gated: bool, par: bool = True):
    """TIR macro (CPU): attention of rows 0..n-1 (rotated queries ``Qr`` [n, H*hd]) over their slots' caches, each
    row's positions first..pos split into up to ``nsp`` ranges (ATT_SPLITS for one row), the ranges attended in
    parallel (:func:`_range_softmax_macro`) into ``Pm`` / ``Pl`` / ``Pa`` [n*nsp, H(*hd)], then merged per (row,
    head) into O[t, h*hd:] (times the sigmoid of gate logit ``Gs[t, gcol + h]`` when gated). ``par``: the ranges and
    heads on the thread pool (else one thread: a small model's decode)."""
    attend = _range_softmax_macro(H, KV, hd, pick_lanes(hd, min(VL, ATT_LANES)), kv, ATT_BLOCK, window)

    @T.macro
    def split_attention(Qr, Kc, Vc, Sl, Ps, O, Gs, gcol, Pm, Pl, Pa, n, nsp, C):
        for it in T.parallel(n * nsp) if par else T.serial(n * nsp):
            qa = T.decl_buffer((H * hd,), "float32")
            acc = T.decl_buffer((H * hd,), "float32")
            mx = T.decl_buffer((H,), "float32")
            sm = T.decl_buffer((H,), "float32")
            sc = T.decl_buffer((H * ATT_BLOCK,), "float32")
            st = T.decl_buffer((3 * H,), "float32")
            t: T.let = it // nsp
            p: T.let = Ps[t]
            f0: T.let = _first(p, window)
            ch: T.let = (T.max((p + 1 - f0 + nsp - 1) // nsp, ATT_MIN_SPLIT) + ATT_BLOCK - 1) // ATT_BLOCK * ATT_BLOCK
            lo: T.let = f0 + it % nsp * ch
            hi: T.let = T.min(lo + ch, p + 1)
            if lo < hi:
                for d in T.vectorized(H * hd):
                    qa[d] = Qr[t * H * hd + d]
                attend(qa, Kc, Vc, Sl[t], lo, hi, acc, mx, sm, sc, st, C)
                for h in T.serial(H):
                    Pm[it * H + h] = mx[h]
                    Pl[it * H + h] = sm[h]
                for d in T.vectorized(H * hd):
                    Pa[it * H * hd + d] = acc[d]
            else:
                for h in T.serial(H):
                    Pm[it * H + h] = T.float32(NEG)
                    Pl[it * H + h] = T.float32(0)
                for d in T.vectorized(H * hd):
                    Pa[it * H * hd + d] = T.float32(0)
        for th in T.parallel(n * H) if par else T.serial(n * H):
            w = T.decl_buffer((ATT_SPLITS,), "float32")
            mv = T.decl_buffer((2,), "float32")
            t: T.let = th // H
            h: T.let = th % H
            mv[0] = T.float32(NEG)
            for k in T.serial(nsp):
                mv[0] = T.max(mv[0], Pm[(t * nsp + k) * H + h])
            mv[1] = T.float32(0)
            for k in T.serial(nsp):
                w[k] = T.exp(Pm[(t * nsp + k) * H + h] - mv[0])
                mv[1] = mv[1] + w[k] * Pl[(t * nsp + k) * H + h]
            for d in T.serial(hd):
                O[t, h * hd + d] = T.float32(0)
            for k in T.serial(nsp):
                for d in T.vectorized(hd):
                    O[t, h * hd + d] = O[t, h * hd + d] + w[k] * Pa[((t * nsp + k) * H + h) * hd + d]
            for d in T.serial(hd):
                O[t, h * hd + d] = _gate(O[t, h * hd + d] / mv[1], Gs, t, gcol + h, gated)

    return split_attention


def make_attention(name: str, H: int, KV: int, hd: int, kn: Knobs = Knobs(), kv: str = "float32",
                   window: int = 0, gated: bool = False) -> tvm.tirx.PrimFunc:
    """Causal GQA attention of each row over its sequence's cache up to and including pos[row] (within the window),
    with an online softmax (no score buffer); dot products and the value update run on ``lanes``-wide vectors.
    Args: Q[n, H*hd (+H gate logits)], Kc, Vc, O[n, H*hd], slots, pos."""
    _check_kv(kv, kn)
    VL = pick_lanes(hd, 1 if kn.gpu else kn.lanes)
    attend = _online_softmax_macro(H, KV, hd, VL, window, gated)
    split = _split_attention_macro(H, KV, hd, VL, kv, window, gated, kn.parallel)
    NQ = H * hd + (H if gated else 0)

    @T.prim_func
    def f(q: T.handle, kc: T.handle, vc: T.handle, o: T.handle, slots: T.handle, pos: T.handle):
        T.func_attr({"tirx.noalias": True})
        n = T.int32()
        S = T.int32()
        C = T.int32()
        Q = T.match_buffer(q, (n, NQ), "float32")
        Kc = T.match_buffer(kc, (S, C, KV, kv_cols(hd, kv)), kv)
        Vc = T.match_buffer(vc, (S, C, KV, kv_cols(hd, kv)), kv)
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
            Qr = T.alloc_buffer((n * H * hd,), "float32")
            Pm = T.alloc_buffer((n * _nsp(n) * H,), "float32")
            Pl = T.alloc_buffer((n * _nsp(n) * H,), "float32")
            Pa = T.alloc_buffer((n * _nsp(n) * H * hd,), "float32")
            for th in T.parallel(n * H) if kn.parallel else T.serial(n * H):
                for d in T.vectorized(hd):
                    Qr[th * hd + d] = Q[th // H, th % H * hd + d]
            split(Qr, Kc, Vc, Sl, Ps, O, Q, H * hd, Pm, Pl, Pa, n, _nsp(n), C)

    return _named(f, name)


def _nsp(n):
    """Position ranges per row of a CPU attention call of ``n`` rows (at least one)."""
    return T.max(ATT_SPLITS // n, 1)


def make_rope_attention(name: str, H: int, KV: int, hd: int, eps: float, theta: float,
                        kn: Knobs = Knobs(), kv: str = "float32", window: int = 0, gated: bool = False,
                        angles: int | None = None, factor: float = 1.0) -> tvm.tirx.PrimFunc:
    """QK-norm + RoPE + cache write + attention in one kernel, straight from the QKV projection's output.
    First every row's k (normed, rotated) and v go into the cache (parallel over rows × KV heads), then every
    (row, head) normalizes and rotates its q in registers and attends: the rotated q never touches memory; a
    gated head's output is scaled in the same epilogue. Args: QKV[n, (H+2KV)hd (+H)], qn, kn, Kc, Vc,
    O[n, H*hd], slots, pos."""
    _check_kv(kv, kn)
    VL = pick_lanes(hd, 1 if kn.gpu else kn.lanes)
    attend = _online_softmax_macro(H, KV, hd, VL, window, gated)
    split = _split_attention_macro(H, KV, hd, VL, kv, window, gated, kn.parallel)
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
        Kc = T.match_buffer(kc, (S, C, KV, kv_cols(hd, kv)), kv)
        Vc = T.match_buffer(vc, (S, C, KV, kv_cols(hd, kv)), kv)
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
            Qr = T.alloc_buffer((n * H * hd,), "float32")
            Pm = T.alloc_buffer((n * _nsp(n) * H,), "float32")
            Pl = T.alloc_buffer((n * _nsp(n) * H,), "float32")
            Pa = T.alloc_buffer((n * _nsp(n) * H * hd,), "float32")
            for th in T.parallel(n * H) if kn.parallel else T.serial(n * H):    # each query normed and rotated once
                qv = T.decl_buffer((hd,), "float32")
                u = T.decl_buffer((hd,), "float32")
                ss = T.decl_buffer((1,), "float32")
                norm_rope(X, th // H, th % H * hd, Qn, Ps[th // H], qv, u, ss)
                for d in T.vectorized(hd):
                    Qr[th * hd + d] = qv[d]
            split(Qr, Kc, Vc, Sl, Ps, O, X, gcol, Pm, Pl, Pa, n, _nsp(n), C)

    return _named(f, name)
