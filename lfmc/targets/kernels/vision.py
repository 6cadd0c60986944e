"""Kernels of a vision encoder and its projector (LFM2-VL's SigLIP2 tower): LayerNorm, GELU, bidirectional
attention over one image's patches, the pixel-unshuffle gather, and the merge of image embeddings into the
decoder's token embeddings. Loop kernels in the style of :mod:`.rows` (CPU threads or GPU blocks x threads)."""
from __future__ import annotations

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
    """A[n, F] = gelu(A) in place: the tanh approximation or the exact erf form. Args: A."""

    def g(v):
        if approximate:
            return T.float32(0.5) * v * (T.float32(1) + T.tanh(T.float32(0.7978845608028654)
                                                                * (v + T.float32(0.044715) * v * v * v)))
        return T.float32(0.5) * v * (T.float32(1) + T.erf(v * T.float32(0.7071067811865476)))

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


def make_encoder_attention(name: str, H: int, KV: int, hd: int, kn: Knobs = Knobs()) -> tvm.tirx.PrimFunc:
    """Bidirectional softmax attention over the n rows of one image, one pass per (row, head) with an online
    softmax. QKV [n, (H + 2 KV) hd] holds q | k | v; O [n, H hd]. Args: QKV, O."""
    W = (H + 2 * KV) * hd
    grp = H // KV
    scale = float(hd) ** -0.5

    @T.prim_func
    def f(qkv: T.handle, o: T.handle):
        T.func_attr({"tirx.noalias": True})
        n = T.int32()
        Q = T.match_buffer(qkv, (n, W), "float32")
        O = T.match_buffer(o, (n, H * hd), "float32")
        for bi in _grid(n * H, kn):
            for ti in _lane(kn):
                if _flat(bi, ti, kn) < n * H:
                    it: T.let = _flat(bi, ti, kn)
                    i: T.let = it // H
                    h: T.let = it % H
                    ko: T.let = H * hd + (h // grp) * hd
                    vo: T.let = (H + KV) * hd + (h // grp) * hd
                    acc = T.decl_buffer((hd,), "float32", scope=_scope(kn))
                    st = T.decl_buffer((4,), "float32", scope=_scope(kn))      # max, sum, score, rescale
                    st[0] = T.float32(-3.0e38)
                    st[1] = T.float32(0)
                    for d in T.serial(hd):
                        acc[d] = T.float32(0)
                    for j in T.serial(n):
                        st[2] = T.float32(0)
                        for d in T.serial(hd):
                            st[2] = st[2] + Q[i, h * hd + d] * Q[j, ko + d]
                        st[2] = st[2] * T.float32(scale)
                        if st[2] > st[0]:
                            st[3] = T.exp(st[0] - st[2])
                            st[1] = st[1] * st[3] + T.float32(1)
                            for d in T.serial(hd):
                                acc[d] = acc[d] * st[3] + Q[j, vo + d]
                            st[0] = st[2]
                        else:
                            st[3] = T.exp(st[2] - st[0])
                            st[1] = st[1] + st[3]
                            for d in T.serial(hd):
                                acc[d] = acc[d] + st[3] * Q[j, vo + d]
                    for d in T.serial(hd):
                        O[i, h * hd + d] = acc[d] / st[1]

    return _named(f, name)
