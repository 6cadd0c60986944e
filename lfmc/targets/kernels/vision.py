"""Kernels of a vision encoder and its projector (LFM2-VL's SigLIP2 tower): LayerNorm, GELU, bidirectional
attention over one image's patches, the pixel-unshuffle gather, and the merge of image embeddings into the
decoder's token embeddings. Loop kernels in the style of :mod:`.rows` (CPU threads or GPU blocks x threads)."""
from __future__ import annotations

import numpy as np
import tvm
from tvm.script import tirx as T

from .common import _flat, _grid, Knobs, _lane, _named, _scope


def make_layernorm(name: str, D: int, eps: float, kn: Knobs = Knobs()) -> tvm.tirx.PrimFunc:
    """Y[n, D] = (X - mean) * rsqrt(var + eps) * w + b, per row. Args: X, w, b, Y."""

    @T.prim_func
    def f(x: T.handle, w: T.handle, b: T.handle, y: T.handle):
        T.func_attr({"tirx.noalias": True})
        n = T.int32()
        X = T.match_buffer(x, (n, D), "float32")
        Wt = T.match_buffer(w, (D,), "float32")
        Bs = T.match_buffer(b, (D,), "float32")
        Y = T.match_buffer(y, (n, D), "float32")
        for bi in _grid(n, kn):
            for ti in _lane(kn):
                if _flat(bi, ti, kn) < n:
                    i: T.let = _flat(bi, ti, kn)
                    s = T.decl_buffer((2,), "float32", scope=_scope(kn))
                    s[0] = T.float32(0)
                    for d in T.serial(D):
                        s[0] = s[0] + X[i, d]
                    s[0] = s[0] / T.float32(D)
                    s[1] = T.float32(0)
                    for d in T.serial(D):
                        s[1] = s[1] + (X[i, d] - s[0]) * (X[i, d] - s[0])
                    s[1] = T.float32(1) / T.sqrt(s[1] / T.float32(D) + T.float32(eps))
                    for d in T.serial(D):
                        Y[i, d] = (X[i, d] - s[0]) * s[1] * Wt[d] + Bs[d]

    return _named(f, name)


def make_gelu(name: str, F: int, approximate: bool, kn: Knobs = Knobs()) -> tvm.tirx.PrimFunc:
    """A[n, F] = gelu(A) in place: the tanh approximation or the exact erf form. On a CPU the tanh form runs on
    vectors as x * sigmoid(2u) with the polynomial exponential of the attention kernels (no libm call per
    element). Args: A."""
    from .attention import _fast_exp

    def g(v):
        if approximate:
            return T.float32(0.5) * v * (T.float32(1) + T.tanh(T.float32(0.7978845608028654)
                                                                * (v + T.float32(0.044715) * v * v * v)))
        return T.float32(0.5) * v * (T.float32(1) + T.erf(v * T.float32(0.7071067811865476)))

    def g_vec(x):
        z = T.float32(1.5957691216057308) * (x + T.float32(0.044715) * x * x * x)     # 2u: gelu = x sigmoid(2u)
        e = _fast_exp(-T.fabs(z))                                                      # e^-|z|, argument <= 0
        return x * T.if_then_else(z >= T.float32(0), T.float32(1), e) / (T.float32(1) + e)

    if approximate and not kn.gpu and F % 16 == 0:
        C16 = F // 16

        @T.prim_func
        def fv(a: T.handle):
            n = T.int32()
            A = T.match_buffer(a, (n, F), "float32")
            for i in T.parallel(n * C16):
                for l in T.vectorized(16):
                    A[i // C16, (i % C16) * 16 + l] = g_vec(A[i // C16, (i % C16) * 16 + l])

        return _named(fv, name)

    @T.prim_func
    def f(a: T.handle):
        n = T.int32()
        A = T.match_buffer(a, (n, F), "float32")
        for bi in _grid(n * F, kn):
            for ti in _lane(kn):
                if _flat(bi, ti, kn) < n * F:
                    i: T.let = _flat(bi, ti, kn)
                    A[i // F, i % F] = g(A[i // F, i % F])

    return _named(f, name)


def make_gather_rows(name: str, D: int, kn: Knobs = Knobs()) -> tvm.tirx.PrimFunc:
    """Y[i, :] = X[idx[i], :]: a pixel unshuffle reads the patches in merge order, so that each block of
    factor^2 rows of Y is one image token's features. Args: X, idx, Y."""

    @T.prim_func
    def f(x: T.handle, idx: T.handle, y: T.handle):
        T.func_attr({"tirx.noalias": True})
        n = T.int32()
        X = T.match_buffer(x, (n, D), "float32")
        I = T.match_buffer(idx, (n,), "int32")
        Y = T.match_buffer(y, (n, D), "float32")
        for bi in _grid(n * D, kn):
            for ti in _lane(kn):
                if _flat(bi, ti, kn) < n * D:
                    i: T.let = _flat(bi, ti, kn)
                    Y[i // D, i % D] = X[I[i // D], i % D]

    return _named(f, name)


def make_image_merge(name: str, D: int, image_token: int, kn: Knobs = Knobs()) -> tvm.tirx.PrimFunc:
    """E[i, :] = Img[i, :] where tokens[i] is the image token (in place on the token embeddings). Args: E,
    tokens, Img."""

    @T.prim_func
    def f(e: T.handle, t: T.handle, img: T.handle):
        T.func_attr({"tirx.noalias": True})
        n = T.int32()
        E = T.match_buffer(e, (n, D), "float32")
        Tk = T.match_buffer(t, (n,), "int32")
        Im = T.match_buffer(img, (n, D), "float32")
        for bi in _grid(n * D, kn):
            for ti in _lane(kn):
                if _flat(bi, ti, kn) < n * D:
                    i: T.let = _flat(bi, ti, kn)
                    if Tk[i // D] == image_token:
                        E[i // D, i % D] = Im[i // D, i % D]

    return _named(f, name)


def make_encoder_qkv(name: str, H: int, KV: int, hd: int, kn: Knobs = Knobs(),
                     kt: bool = False) -> tvm.tirx.PrimFunc:
    """Split one image's projected q | k | v rows: q into Q[n, H hd], k and v into the scratch caches
    Kc / Vc[1, P, KV, hd] (row i at position i), so that the decoder's cache attention kernel
    (:func:`lfmc.targets.kernels.make_attention`) attends every row to all n positions (each row's ``pos`` set to
    n - 1): bidirectional attention with the blocked, vectorized kernels of causal prefill. With ``kt`` the keys go
    transposed into Kc[1, KV, hd, P] for :func:`make_encoder_attention`. Args: QKV, Q, Kc, Vc."""
    W = (H + 2 * KV) * hd

    @T.prim_func
    def f(qkv: T.handle, q: T.handle, kc: T.handle, vc: T.handle):
        T.func_attr({"tirx.noalias": True})
        n = T.int32()
        P = T.int32()
        X = T.match_buffer(qkv, (n, W), "float32")
        Q = T.match_buffer(q, (n, H * hd), "float32")
        Kc = T.match_buffer(kc, (1, KV, hd, P) if kt else (1, P, KV, hd), "float32")
        Vc = T.match_buffer(vc, (1, P, KV, hd), "float32")
        for bi in _grid(n * W, kn):
            for ti in _lane(kn):
                if _flat(bi, ti, kn) < n * W:
                    i: T.let = _flat(bi, ti, kn) // W
                    c: T.let = _flat(bi, ti, kn) % W
                    if c < H * hd:
                        Q[i, c] = X[i, c]
                    elif c < (H + KV) * hd:
                        if kt:
                            Kc[0, (c - H * hd) // hd, (c - H * hd) % hd, i] = X[i, c]
                        else:
                            Kc[0, i, (c - H * hd) // hd, (c - H * hd) % hd] = X[i, c]
                    else:
                        Vc[0, i, (c - (H + KV) * hd) // hd, (c - (H + KV) * hd) % hd] = X[i, c]

    return _named(f, name)


def make_grid_conv(name: str, D: int, K: int, merge: int, ib: int, ic: int, ix: int,
                   kn: Knobs = Knobs()) -> tvm.tirx.PrimFunc:
    """LFM3-VL's gated depthwise K x K convolution over one image's patch grid (zero padded), patches in
    merge-block order: Y[t, d] = C[t, d] * sum_taps w[d, tap] * (B * x)[neighbour(t, tap), d], with B, C, x the
    chunks ``ib``, ``ic``, ``ix`` of the projection P[n, 3D]; the grid's rows and columns are scalars. Args: P,
    taps[D, K*K], Y, rows, cols."""
    h = K // 2
    mm = merge * merge

    @T.prim_func
    def f(p: T.handle, w: T.handle, y: T.handle, gh: T.int32, gw: T.int32):
        T.func_attr({"tirx.noalias": True})
        n = T.int32()
        P = T.match_buffer(p, (n, 3 * D), "float32")
        Wt = T.match_buffer(w, (D, K * K), "float32")
        Y = T.match_buffer(y, (n, D), "float32")
        for bi in _grid(n * D, kn):
            for ti in _lane(kn):
                if _flat(bi, ti, kn) < n * D:
                    t: T.let = _flat(bi, ti, kn) // D
                    d: T.let = _flat(bi, ti, kn) % D
                    bw: T.let = gw // merge
                    r: T.let = (t // mm) // bw * merge + (t % mm) // merge
                    c: T.let = (t // mm) % bw * merge + t % merge
                    acc = T.decl_buffer((1,), "float32", scope=_scope(kn))
                    acc[0] = T.float32(0)
                    for dy in T.serial(K):
                        for dx in T.serial(K):
                            if (r + dy - h >= 0 and r + dy - h < gh and c + dx - h >= 0 and c + dx - h < gw):
                                u: T.let = (((r + dy - h) // merge) * bw + (c + dx - h) // merge) * mm + (
                                    (r + dy - h) % merge) * merge + (c + dx - h) % merge
                                acc[0] = acc[0] + Wt[d, dy * K + dx] * P[u, ib * D + d] * P[u, ix * D + d]
                    Y[t, d] = P[t, ic * D + d] * acc[0]

    return _named(f, name)


def make_encoder_qkv_rope(name: str, H: int, KV: int, hd: int, eps: float, theta: float, merge: int,
                          kn: Knobs = Knobs(), kt: bool = False) -> tvm.tirx.PrimFunc:
    """:func:`make_encoder_qkv` with LFM3-VL's per-head RMSNorm on q and k and its axial 2-D rotary embedding
    (row angles then column angles, head_dim / 4 frequencies theta^(-4i/hd), rotate-half), the patch's row and
    column from its merge-block index and the grid's columns (a scalar); ``kt``: keys transposed, as there.
    Args: QKV, qn, kn, Q, Kc, Vc, cols."""
    W = (H + 2 * KV) * hd
    half, quarter = hd // 2, hd // 4
    mm = merge * merge
    logt = float(np.log(theta))

    @T.prim_func
    def f(qkv: T.handle, qn: T.handle, knw: T.handle, q: T.handle, kc: T.handle, vc: T.handle, gw: T.int32):
        T.func_attr({"tirx.noalias": True})
        n = T.int32()
        P = T.int32()
        X = T.match_buffer(qkv, (n, W), "float32")
        Qn = T.match_buffer(qn, (hd,), "float32")
        Kn = T.match_buffer(knw, (hd,), "float32")
        Q = T.match_buffer(q, (n, H * hd), "float32")
        Kc = T.match_buffer(kc, (1, KV, hd, P) if kt else (1, P, KV, hd), "float32")
        Vc = T.match_buffer(vc, (1, P, KV, hd), "float32")
        for bi in _grid(n * (H + 2 * KV), kn):
            for ti in _lane(kn):
                if _flat(bi, ti, kn) < n * (H + 2 * KV):
                    i: T.let = _flat(bi, ti, kn) // (H + 2 * KV)
                    hh: T.let = _flat(bi, ti, kn) % (H + 2 * KV)
                    if hh >= H + KV:
                        for d in T.serial(hd):
                            Vc[0, i, hh - H - KV, d] = X[i, hh * hd + d]
                    else:
                        bw: T.let = gw // merge
                        row: T.let = (i // mm) // bw * merge + (i % mm) // merge
                        col: T.let = (i // mm) % bw * merge + i % merge
                        u = T.decl_buffer((hd,), "float32", scope=_scope(kn))
                        ss = T.decl_buffer((1,), "float32", scope=_scope(kn))
                        ss[0] = T.float32(0)
                        for d in T.serial(hd):
                            ss[0] = ss[0] + X[i, hh * hd + d] * X[i, hh * hd + d]
                        ss[0] = T.float32(1) / T.sqrt(ss[0] / T.float32(hd) + T.float32(eps))
                        for d in T.serial(hd):
                            if hh < H:
                                u[d] = X[i, hh * hd + d] * ss[0] * Qn[d]
                            else:
                                u[d] = X[i, hh * hd + d] * ss[0] * Kn[d]
                        for d in T.serial(hd):
                            j: T.let = d % half
                            pos: T.let = T.Cast("float32", T.if_then_else(j < quarter, row, col))
                            ang: T.let = pos * T.exp(T.float32(-4.0 * logt / hd) * T.Cast("float32", j % quarter))
                            rot: T.let = T.if_then_else(d < half, -u[d + half], u[d - half])
                            if hh < H:
                                Q[i, hh * hd + d] = u[d] * T.cos(ang) + rot * T.sin(ang)
                            elif kt:
                                Kc[0, hh - H, d, i] = u[d] * T.cos(ang) + rot * T.sin(ang)
                            else:
                                Kc[0, i, hh - H, d] = u[d] * T.cos(ang) + rot * T.sin(ang)

    return _named(f, name)


def make_encoder_attention(name: str, H: int, KV: int, hd: int, R: int = 16, B: int = 16,
                           kn: Knobs = Knobs()) -> tvm.tirx.PrimFunc:
    """CPU: bidirectional attention of one image's rows over all of them, from q rows and a scratch of the keys
    transposed (Kt[1, KV, hd, P]) and the values (V[1, P, KV, hd]): ``R`` query rows of one head per iteration
    share every key and value they read; scores for ``B`` keys at a time are vector FMAs along the keys (no
    horizontal sums), an online softmax per row (one max and rescale per block, exponentials vectorized), the
    values accumulated along head_dim. The scratch's P is a multiple of ``B`` (its columns past n are read and
    masked). Args: Q[n, H hd], Kt, V, O[n, H hd]."""
    from .attention import _fast_exp

    G = H // KV
    scale = float(hd) ** -0.5
    NEGV = -3.0e38

    @T.prim_func
    def f(q: T.handle, kt: T.handle, v: T.handle, o: T.handle):
        T.func_attr({"tirx.noalias": True})
        n = T.int32()
        P = T.int32()
        Q = T.match_buffer(q, (n, H * hd), "float32")
        Kt = T.match_buffer(kt, (1, KV, hd, P), "float32")
        V = T.match_buffer(v, (1, P, KV, hd), "float32")
        O = T.match_buffer(o, (n, H * hd), "float32")
        for it in T.parallel(((n + R - 1) // R) * H):
            rb: T.let = it // H
            h: T.let = it % H
            g: T.let = h // G
            acc = T.decl_buffer((R * hd,), "float32", scope="global")
            sc = T.decl_buffer((R * B,), "float32", scope="global")
            st = T.decl_buffer((2 * R + 3,), "float32", scope="global")     # max, sum per row; block max, rescale, sum
            qv = T.decl_buffer((R * hd,), "float32", scope="global")
            for r in T.serial(R):
                st[r] = T.float32(NEGV)
                st[R + r] = T.float32(0)
                for d in T.serial(hd):
                    qv[r * hd + d] = Q[T.min(rb * R + r, n - 1), h * hd + d] * T.float32(scale)
                    acc[r * hd + d] = T.float32(0)
            for jb in T.serial((n + B - 1) // B):
                for r in T.serial(R):
                    for j in T.vectorized(B):
                        sc[r * B + j] = T.float32(0)
                for d in T.serial(hd):
                    for r in T.serial(R):
                        for j in T.vectorized(B):
                            sc[r * B + j] = sc[r * B + j] + qv[r * hd + d] * Kt[0, g, d, jb * B + j]
                for r in T.serial(R):
                    for j in T.vectorized(B):
                        sc[r * B + j] = T.if_then_else(jb * B + j < n, sc[r * B + j], T.float32(NEGV))
                    st[2 * R] = st[r]
                    for j in T.serial(B):
                        st[2 * R] = T.max(st[2 * R], sc[r * B + j])
                    st[2 * R + 1] = _fast_exp(st[r] - st[2 * R])          # rescale of what came before
                    for j in T.vectorized(B):
                        sc[r * B + j] = _fast_exp(sc[r * B + j] - st[2 * R])
                    st[2 * R + 2] = T.float32(0)
                    for j in T.serial(B):
                        st[2 * R + 2] = st[2 * R + 2] + sc[r * B + j]
                    st[R + r] = st[R + r] * st[2 * R + 1] + st[2 * R + 2]
                    st[r] = st[2 * R]
                    for d in T.vectorized(hd):
                        acc[r * hd + d] = acc[r * hd + d] * st[2 * R + 1]
                for j in T.serial(B):
                    if jb * B + j < n:
                        for r in T.serial(R):
                            for d in T.vectorized(hd):
                                acc[r * hd + d] = acc[r * hd + d] + sc[r * B + j] * V[0, jb * B + j, g, d]
            for r in T.serial(R):
                if rb * R + r < n:
                    for d in T.serial(hd):
                        O[rb * R + r, h * hd + d] = acc[r * hd + d] / st[R + r]

    return _named(f, name)
