"""Token mixers that carry per-sequence state through time: the gated short convolution and the linear
recurrence (sequential per channel, or chunked in parallel on GPUs)."""
from __future__ import annotations

import tvm
from tvm.script import tirx as T

from .common import _flat, _grid, Knobs, _lane, _named, _scope


def make_conv_prefill(name: str, D: int, L: int, ib: int, ic: int, ix: int,
                      kn: Knobs = Knobs()) -> tvm.tirx.PrimFunc:
    """Gated causal depthwise conv over one sequence's chunk, continuing and updating its conv state (the IR's
    ``short_conv`` between its two projections).

    P[n, 3D] holds the in_proj chunks (B at ``ib``, C at ``ic``, x at ``ix``); Y[t] = C[t] * sum_j w[j] *
    hist[t + j] with hist = [state(slot); B*x]; afterwards the state holds the last L-1 entries of hist.
    The bias operand is always passed (zeros when the model has none). Args: P, state[S, D, L-1], w[D, L],
    bias[D], Y[n, D], slot."""
    Lm, Lc, last = L - 1, max(L - 1, 1), max(L - 2, 0)

    @T.prim_func
    def f(p: T.handle, st: T.handle, w: T.handle, cb: T.handle, y: T.handle, slot: T.int32):
        T.func_attr({"tirx.noalias": True})
        n = T.int32()
        S = T.int32()
        P = T.match_buffer(p, (n, 3 * D), "float32")
        St = T.match_buffer(st, (S, D, Lc), "float32")
        Wt = T.match_buffer(w, (D, L), "float32")
        Cb = T.match_buffer(cb, (D,), "float32")
        Y = T.match_buffer(y, (n, D), "float32")
        for bi in _grid(D, kn):
            for ti in _lane(kn):
                if _flat(bi, ti, kn) < D:
                    d: T.let = _flat(bi, ti, kn)
                    acc = T.decl_buffer((1,), "float32", scope=_scope(kn))
                    for t in T.serial(n):
                        acc[0] = Cb[d]
                        for j in T.serial(L):
                            # hist index t + j: the state for t + j < L-1, else B*x of row t + j - (L-1)
                            acc[0] = acc[0] + Wt[d, j] * T.if_then_else(
                                t + j < Lm, St[slot, d, T.min(t + j, last)],
                                P[T.max(t + j - Lm, 0), ib * D + d] * P[T.max(t + j - Lm, 0), ix * D + d])
                        Y[t, d] = P[t, ic * D + d] * acc[0]
                    # new state: hist[n .. n + L-2]; ascending j reads only entries not yet overwritten
                    for j in T.serial(Lm):
                        St[slot, d, j] = T.if_then_else(
                            n + j < Lm, St[slot, d, T.min(n + j, last)],
                            P[T.max(n + j - Lm, 0), ib * D + d] * P[T.max(n + j - Lm, 0), ix * D + d])

    return _named(f, name)


def make_conv_decode(name: str, D: int, L: int, ib: int, ic: int, ix: int,
                     kn: Knobs = Knobs()) -> tvm.tirx.PrimFunc:
    """One token for each of n sequences: Y[b] = C * (w . [state(slots[b]); B*x]), the state shifted in place.
    Args: P[n, 3D], state[S, D, L-1], w[D, L], bias[D], Y[n, D], slots[n]."""
    Lm, Lc, last = L - 1, max(L - 1, 1), max(L - 2, 0)

    @T.prim_func
    def f(p: T.handle, st: T.handle, w: T.handle, cb: T.handle, y: T.handle, slots: T.handle):
        T.func_attr({"tirx.noalias": True})
        n = T.int32()
        S = T.int32()
        P = T.match_buffer(p, (n, 3 * D), "float32")
        St = T.match_buffer(st, (S, D, Lc), "float32")
        Wt = T.match_buffer(w, (D, L), "float32")
        Cb = T.match_buffer(cb, (D,), "float32")
        Y = T.match_buffer(y, (n, D), "float32")
        Sl = T.match_buffer(slots, (n,), "int32")
        for bi in _grid(n * D, kn):
            for ti in _lane(kn):
                if _flat(bi, ti, kn) < n * D:
                    bd: T.let = _flat(bi, ti, kn)
                    bx = T.decl_buffer((2,), "float32", scope=_scope(kn))
                    bx[0] = P[bd // D, ib * D + bd % D] * P[bd // D, ix * D + bd % D]
                    bx[1] = Cb[bd % D] + Wt[bd % D, L - 1] * bx[0]
                    for j in T.serial(Lm):
                        bx[1] = bx[1] + Wt[bd % D, j] * St[Sl[bd // D], bd % D, j]
                    for j in T.serial(last):
                        St[Sl[bd // D], bd % D, j] = St[Sl[bd // D], bd % D, j + 1]
                    St[Sl[bd // D], bd % D, last] = T.if_then_else(Lm > 0, bx[0], St[Sl[bd // D], bd % D, last])
                    Y[bd // D, bd % D] = P[bd // D, ic * D + bd % D] * bx[1]

    return _named(f, name)


# --------------------------------------------------------------------------------------- linear recurrence
def make_recurrence_prefill(name: str, D: int, ia: int, ib: int, ic: int, ix: int,
                            kn: Knobs = Knobs()) -> tvm.tirx.PrimFunc:
    """The scan of one sequence's chunk: h_t = sigmoid(a_t) h_{t-1} + b_t x_t, Y_t = c_t h_t, from and back
    into the state of ``slot``. P[n, 4D] holds the in_proj chunks (a at ``ia``, ...). Channels run in parallel,
    each a sequential pass over the chunk (the state never leaves a register).
    Args: P, state[S, D], Y[n, D], slot."""

    @T.prim_func
    def f(p: T.handle, st: T.handle, y: T.handle, slot: T.int32):
        T.func_attr({"tirx.noalias": True})
        n = T.int32()
        S = T.int32()
        P = T.match_buffer(p, (n, 4 * D), "float32")
        St = T.match_buffer(st, (S, D), "float32")
        Y = T.match_buffer(y, (n, D), "float32")
        for bi in _grid(D, kn):
            for ti in _lane(kn):
                if _flat(bi, ti, kn) < D:
                    d: T.let = _flat(bi, ti, kn)
                    h = T.decl_buffer((1,), "float32", scope=_scope(kn))
                    h[0] = St[slot, d]
                    for t in T.serial(n):
                        h[0] = h[0] / (T.float32(1) + T.exp(-P[t, ia * D + d])) + P[t, ib * D + d] * P[t, ix * D + d]
                        Y[t, d] = P[t, ic * D + d] * h[0]
                    St[slot, d] = h[0]

    return _named(f, name)


def make_recurrence_scan(name: str, D: int, ia: int, ib: int, ic: int, ix: int, chunk: int = 32,
                         kn: Knobs = Knobs()) -> tvm.tirx.PrimFunc:
    """The same prefill scan, parallel in time as well as over channels (for devices whose thread count
    channels alone cannot fill, and long prompts): the chunk of n tokens is cut into pieces of ``chunk``;

    1. every (piece, channel) scans its piece from a zero state: the piece's end state e and the product of its
       gates g (in parallel);
    2. every channel walks the pieces in order, carrying h_in(p+1) = e(p) + g(p) h_in(p) from the slot's state
       (n / chunk steps, not n) and leaves the last one in the state;
    3. every (piece, channel) rescans its piece from h_in(p), writing Y (in parallel).

    Temporaries (ends, products, carries: 3 n/chunk D floats) are global buffers: on a GPU the three phases are
    three kernels. Args: P, state[S, D], Y[n, D], slot (as :func:`make_recurrence_prefill`)."""
    Q = chunk

    @T.prim_func
    def f(p: T.handle, st: T.handle, y: T.handle, slot: T.int32):
        T.func_attr({"tirx.noalias": True})
        n = T.int32()
        S = T.int32()
        P = T.match_buffer(p, (n, 4 * D), "float32")
        St = T.match_buffer(st, (S, D), "float32")
        Y = T.match_buffer(y, (n, D), "float32")
        E = T.alloc_buffer(((n + Q - 1) // Q * D * 3,), "float32")     # per (piece, channel): end, product, h_in
        for bi in _grid((n + Q - 1) // Q * D, kn):
            for ti in _lane(kn):
                if _flat(bi, ti, kn) < (n + Q - 1) // Q * D:
                    i: T.let = _flat(bi, ti, kn)
                    acc = T.decl_buffer((2,), "float32", scope=_scope(kn))
                    acc[0] = T.float32(0)
                    acc[1] = T.float32(1)
                    for t in T.serial(T.min(Q, n - i // D * Q)):
                        acc[0] = acc[0] / (T.float32(1) + T.exp(-P[i // D * Q + t, ia * D + i % D])) + P[
                            i // D * Q + t, ib * D + i % D] * P[i // D * Q + t, ix * D + i % D]
                        acc[1] = acc[1] / (T.float32(1) + T.exp(-P[i // D * Q + t, ia * D + i % D]))
                    E[i * 3] = acc[0]
                    E[i * 3 + 1] = acc[1]
        for bi in _grid(D, kn):
            for ti in _lane(kn):
                if _flat(bi, ti, kn) < D:
                    d: T.let = _flat(bi, ti, kn)
                    h = T.decl_buffer((1,), "float32", scope=_scope(kn))
                    h[0] = St[slot, d]
                    for c in T.serial((n + Q - 1) // Q):
                        E[(c * D + d) * 3 + 2] = h[0]
                        h[0] = E[(c * D + d) * 3] + E[(c * D + d) * 3 + 1] * h[0]
                    St[slot, d] = h[0]
        for bi in _grid((n + Q - 1) // Q * D, kn):
            for ti in _lane(kn):
                if _flat(bi, ti, kn) < (n + Q - 1) // Q * D:
                    i: T.let = _flat(bi, ti, kn)
                    h = T.decl_buffer((1,), "float32", scope=_scope(kn))
                    h[0] = E[i * 3 + 2]
                    for t in T.serial(T.min(Q, n - i // D * Q)):
                        h[0] = h[0] / (T.float32(1) + T.exp(-P[i // D * Q + t, ia * D + i % D])) + P[
                            i // D * Q + t, ib * D + i % D] * P[i // D * Q + t, ix * D + i % D]
                        Y[i // D * Q + t, i % D] = P[i // D * Q + t, ic * D + i % D] * h[0]

    return _named(f, name)


def make_recurrence_decode(name: str, D: int, ia: int, ib: int, ic: int, ix: int,
                           kn: Knobs = Knobs()) -> tvm.tirx.PrimFunc:
    """One step for each of n sequences, the state of slots[b] updated in place. Args: P, state, Y, slots."""

    @T.prim_func
    def f(p: T.handle, st: T.handle, y: T.handle, slots: T.handle):
        T.func_attr({"tirx.noalias": True})
        n = T.int32()
        S = T.int32()
        P = T.match_buffer(p, (n, 4 * D), "float32")
        St = T.match_buffer(st, (S, D), "float32")
        Y = T.match_buffer(y, (n, D), "float32")
        Sl = T.match_buffer(slots, (n,), "int32")
        for bi in _grid(n * D, kn):
            for ti in _lane(kn):
                if _flat(bi, ti, kn) < n * D:
                    bd: T.let = _flat(bi, ti, kn)
                    St[Sl[bd // D], bd % D] = St[Sl[bd // D], bd % D] / (T.float32(1) + T.exp(
                        -P[bd // D, ia * D + bd % D])) + P[bd // D, ib * D + bd % D] * P[bd // D, ix * D + bd % D]
                    Y[bd // D, bd % D] = P[bd // D, ic * D + bd % D] * St[Sl[bd // D], bd % D]

    return _named(f, name)
