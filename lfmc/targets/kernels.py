"""Kernel definitions shared by every target family: one TensorIR function per fused op group.

Each ``make_*`` takes the op's static shape parameters and a :class:`Knobs` (what a target family chooses:
vector lanes, register tiles, whether loops run in parallel) and returns a PrimFunc. How an operator is computed
lives here, once; targets differ in the knobs, the codegen and the packaging.

Conventions: activations are row-major ``[rows, cols]`` float32; ``rows`` is symbolic (the tokens of a prefill
chunk, or the sequences of a decode batch). Matmul weights are packed ``[N / lanes, K, lanes]`` so that each
output block streams one contiguous panel. Per-row ``slots`` / ``pos`` (int32) say which sequence a row belongs to
and its absolute position: attention and the KV cache work the same way for prefill and for batched decode.
Caches are ``[S, C, KV, hd]`` (S sequence slots, C max context), conv state ``[S, D, L-1]``.
"""
from __future__ import annotations

import tvm
from tvm import s_tir, te
from tvm.script import tirx as T

from .knobs import A8_GROUP, Knobs, a8_interleave, pick_cols, pick_lanes  # noqa: F401  (re-exported: the makers' knobs)

NEG = -3.0e38
ATT_BLOCK = 32          # positions per block of the CPU attention kernels (scores, max and exps per block)


def _grid(n, kn: Knobs):
    """The outer loop of a loop kernel: CPU threads over the iterations, or GPU blocks of ``kn.threads``."""
    if kn.gpu:
        return T.thread_binding((n + kn.threads - 1) // kn.threads, thread="blockIdx.x")
    return T.parallel(n) if kn.parallel else T.serial(n)


def _lane(kn: Knobs):
    """The inner loop of a loop kernel: GPU threads of a block (a unit loop on the CPU)."""
    return T.thread_binding(kn.threads, thread="threadIdx.x") if kn.gpu else T.serial(1)


def _scope(kn: Knobs) -> str:
    """Storage of a loop kernel's scratch buffers: registers on a GPU; on a CPU the stack ("global" below TVM's
    stack limit: "local" would be a TVMBackendAllocWorkspace call per loop iteration, seen in TVM 0.27's
    assembly). Scalar values are bound with ``x: T.let = ...`` for the same reason: a plain ``x = ...`` is a
    mutable variable that TVM 0.27 also places in workspace memory on CPUs."""
    return "local" if kn.gpu else "global"


def _named(f: tvm.tirx.PrimFunc, name: str) -> tvm.tirx.PrimFunc:
    return f.with_attr("global_symbol", name)


def _gpu_dlight(f: tvm.tirx.PrimFunc, name: str) -> tvm.tirx.PrimFunc:
    """A TE kernel for a GPU family: left unscheduled, marked for TVM's dlight rules at build time (they need
    the concrete target)."""
    return _named(f, name).with_attr("lfmc.schedule", "dlight")


# ------------------------------------------------------------------------------------------------ matmul
_WDTYPE = {None: "float32", "f16": "float16", "bf16": "uint16"}


def _widen(v, qkind: str | None):
    """A stored weight element as float32: int8 codes and f16 convert, bf16 bits (uint16) shift into place."""
    if qkind == "bf16":
        return tvm.tirx.reinterpret("float32", v.astype("uint32") << tvm.tirx.const(16, "uint32"))
    if qkind in ("q8", "f16"):
        return v.astype("float32")
    return v


def _matmul_cols(N: int, l: int, knobs: Knobs, swiglu: bool, qkind: str | None) -> int:
    """Vector columns (of ``l`` outputs) each thread accumulates at once. int4 on the CPU takes at most 4: its
    unpacking needs registers of its own, and 8 columns spill to the stack (seen in the generated assembly)."""
    cols = min(knobs.cols, 4) if qkind == "q4" and not knobs.gpu else knobs.cols
    return pick_cols(N // l, max(1, cols // 2) if swiglu else cols)


def make_matmul(name: str, N: int, K: int, knobs: Knobs, bias: bool = False, rms_eps: float | None = None,
                accumulate: bool = False, swiglu: bool = False, quant: tuple | None = None,
                nb_static: int | None = None, schedule: bool = True) -> tvm.tirx.PrimFunc:
    """Y[nb*R, N] = X[nb*R, K] @ W^T with optional fused prologue and epilogues:

    - ``rms_eps``: X is the raw input of an RMSNorm (weight NW[K]): X * NW / sqrt(mean(X^2) + eps) is formed in
      the kernel, so the normalized activations never take a launch of their own.
    - ``bias``: + bias[N].  ``accumulate``: the output buffer holds the residual stream and is updated in place.
    - ``swiglu``: two weights (gate, up) side by side per output block; the output is silu(gate) * up, N wide.
    - ``quant``: ``("f16",)`` / ``("bf16",)``: 16-bit weights widened in the inner loop (bf16 passed as uint16
      bits); or weight-only quantized W, dequantized in the inner loop: ``("q8",)`` int8 codes with a scale
      per output channel (applied after the sum); ``("q4", g, asym)`` 4-bit codes packed two per byte along K,
      scale (and zero when ``asym``, else 8) per group of g inputs.

    W layouts (l = vector lanes): f32 / q8 ``[N/l, (2,) K, l]``, q4 ``[N/l, (2,) K/2, l]`` uint8; scales
    ``[(2,) N]`` (q8) or ``[(2,) N, K/g]`` (q4). Args: X, W, (scale), (zero), (NW), (bias), (Res), Out, nb — with
    ``accumulate`` the caller passes the residual buffer as both Res and Out.

    ``nb_static``: the row-block count fixed at this value (no ``nb`` argument): the shape a tuned variant is
    specialized to. ``schedule=False``: the unscheduled TensorIR (a workload for meta_schedule); see
    :func:`schedule_matmul` for the default schedule."""
    R = knobs.rows
    l = pick_lanes(N, knobs.lanes)
    qkind = quant[0] if quant else None
    J = _matmul_cols(N, l, knobs, swiglu, qkind)
    nb = te.var("nb", "int32") if nb_static is None else int(nb_static)
    X0 = te.placeholder((nb * R, K), name="X")
    H = (2,) if swiglu else ()
    if qkind == "q4":
        g, asym = int(quant[1]), bool(quant[2])
        if K % g or K % 2:
            raise ValueError(f"q4 group {g} must divide K={K} (and K be even)")
        W = te.placeholder((N // l, *H, K // 2, l), name="W", dtype="uint8")
        Sc = te.placeholder((*H, N, K // g), name="scale")
        Zp = te.placeholder((*H, N, K // g), name="zero") if asym else None
    elif qkind == "q8":
        W = te.placeholder((N // l, *H, K, l), name="W", dtype="int8")
        Sc = te.placeholder((*H, N), name="scale")
        Zp = None
    else:
        W = te.placeholder((N // l, *H, K, l), name="W", dtype=_WDTYPE[qkind])
        Sc = Zp = None

    def wv(h, j, k):
        """The weight (h: gate/up half, or None) at output j, input k, widened to float32. int4 is dequantized
        per element here only for GPU families (one reduction dlight's GEMV rules take); CPUs take the
        per-group path below."""
        hh = () if h is None else (h,)
        if qkind == "q4":
            code = (W[(j // l, *hh, k // 2, j % l)] >> (4 * (k % 2)).astype("uint8")) & tvm.tirx.const(15, "uint8")
            zero = Zp[(*hh, j, k // g)] if Zp is not None else tvm.tirx.const(8.0, "float32")
            return (code.astype("float32") - zero) * Sc[(*hh, j, k // g)]
        return _widen(W[(j // l, *hh, k, j % l)], qkind)

    def post(h, j, v):
        """Per-channel scale of q8, applied once after the sum."""
        if qkind != "q8":
            return v
        return v * (Sc[j] if h is None else Sc[h, j])

    X = X0
    NW = None
    if rms_eps is not None:
        NW = te.placeholder((K,), name="norm_weight")
        k2 = te.reduce_axis((0, K), name="k2")
        S = te.compute((nb * R,), lambda i: te.sum(X0[i, k2] * X0[i, k2], axis=k2), name="S")
        X = te.compute((nb * R, K), lambda i, kk: X0[i, kk] * NW[kk] / te.sqrt(S[i] / float(K) + float(rms_eps)),
                       name="Xs")
    pair_sum = te.comm_reducer(lambda x, y: (x[0] + y[0], x[1] + y[1]),
                               lambda t0, t1: (tvm.tirx.const(0, t0), tvm.tirx.const(0, t1)), name="pair_sum")
    if qkind == "q4" and not knobs.gpu:
        # two levels: raw code dot products per group (P), then scale and zero once per group:
        # sum_k x (c - z) s = sum_groups s (sum_group x c - z sum_group x)
        G = K // g
        kg = te.reduce_axis((0, g), name="kg")
        XS = te.compute((nb * R, G), lambda i, q: te.sum(X[i, q * g + kg], axis=kg), name="XS")
        kp = te.reduce_axis((0, g), name="kp")
        code = lambda h, j, kk: ((W[(j // l, *h, kk // 2, j % l)] >> (4 * (kk % 2)).astype("uint8"))  # noqa: E731
                                 & tvm.tirx.const(15, "uint8")).astype("float32")
        zero = lambda h, j, q: Zp[(*h, j, q)] if Zp is not None else tvm.tirx.const(8.0, "float32")  # noqa: E731
        q_ = te.reduce_axis((0, G), name="q")
        if swiglu:
            Pg, Pu = te.compute((nb * R, N, G), lambda i, j, q: pair_sum(
                (X[i, q * g + kp] * code((0,), j, q * g + kp), X[i, q * g + kp] * code((1,), j, q * g + kp)),
                axis=kp), name="P")
            Yg, Yu = te.compute((nb * R, N), lambda i, j: pair_sum(
                (Sc[0, j, q_] * (Pg[i, j, q_] - zero((0,), j, q_) * XS[i, q_]),
                 Sc[1, j, q_] * (Pu[i, j, q_] - zero((1,), j, q_) * XS[i, q_])), axis=q_), name="Y")
        else:
            P = te.compute((nb * R, N, G), lambda i, j, q: te.sum(X[i, q * g + kp] * code((), j, q * g + kp),
                                                                 axis=kp), name="P")
            Y = te.compute((nb * R, N), lambda i, j: te.sum(
                Sc[j, q_] * (P[i, j, q_] - zero((), j, q_) * XS[i, q_]), axis=q_), name="Y")
    elif swiglu:
        k = te.reduce_axis((0, K), name="k")
        # gate and up in one block with a pair-valued sum, so one pass over X feeds both
        Yg, Yu = te.compute((nb * R, N), lambda i, j: pair_sum((X[i, k] * wv(0, j, k), X[i, k] * wv(1, j, k)),
                                                                axis=k), name="Y")
    else:
        k = te.reduce_axis((0, K), name="k")
        Y = te.compute((nb * R, N), lambda i, j: te.sum(X[i, k] * wv(None, j, k), axis=k), name="Y")
    args = [X0, W] + [t for t in (Sc, Zp, NW) if t is not None]
    Bv = te.placeholder((N,), name="bias") if bias else None
    Res = te.placeholder((nb * R, N), name="Res") if accumulate else None
    if Bv is not None:
        args.append(Bv)
    if swiglu:
        def out_sw(i, j):
            gv, uv = post(0, j, Yg[i, j]), post(1, j, Yu[i, j])
            return te.sigmoid(gv) * gv * uv
        Z = te.compute((nb * R, N), out_sw, name="Z")
    else:
        def out(i, j):
            v = post(None, j, Y[i, j])
            if Bv is not None:
                v = v + Bv[j]
            if Res is not None:
                v = v + Res[i, j]
            return v
        Z = te.compute((nb * R, N), out, name="Z")
    if Res is not None:
        args.append(Res)
    f = te.create_prim_func(args + [Z] + ([nb] if nb_static is None else []))
    if Res is not None:
        # Res and Z are the same buffer (the residual stream, updated in place): each element is read and then
        # written by the same thread, so only the no-alias promise has to go.
        f = f.with_attr("tir.noalias", False)
    if knobs.gpu:
        return _gpu_dlight(f, name)
    if not schedule:
        return _named(f, name)
    sch = s_tir.Schedule(f)
    schedule_matmul(sch, N, K, knobs, rms_eps is not None, swiglu, quant)
    return _named(sch.mod["main"], name)


def schedule_matmul(sch: s_tir.Schedule, N: int, K: int, knobs: Knobs, norm: bool = False, swiglu: bool = False,
                    quant: tuple | None = None) -> None:
    """lfmc's default CPU schedule of :func:`make_matmul`'s TensorIR, applied to ``sch`` (traced, so tuning can
    record it as the baseline every candidate has to beat)."""
    R = knobs.rows
    l = pick_lanes(N, knobs.lanes)
    qkind = quant[0] if quant else None
    J = _matmul_cols(N, l, knobs, swiglu, qkind)
    b = sch.get_sblock("Y")
    i, j, kk = sch.get_loops(b)
    jo, jj, ji = sch.split(j, [None, J, l])
    io, ii = sch.split(i, [None, R])
    # column blocks outermost: each thread keeps one weight panel hot in L2 while it walks every row block
    # (rows outermost re-streams the whole weight from memory once per row block)
    sch.reorder(jo, io, kk, ii, jj, ji)
    if knobs.parallel:
        sch.parallel(jo)
    sch.set_scope(b, 0, "local")
    if swiglu:
        sch.set_scope(b, 1, "local")
    bz = sch.get_sblock("Z")
    sch.reverse_compute_at(bz, io)
    if norm:
        sch.compute_at(sch.get_sblock("S"), sch.get_loops(sch.get_sblock("Xs"))[0])
        xl = sch.get_loops(sch.get_sblock("Xs"))
        if knobs.parallel:
            sch.parallel(xl[0])
        if l > 1 and K % l == 0:
            xo, xi = sch.split(xl[-1], [None, l])
            sch.vectorize(xi)
    if qkind == "q4":
        # the per-group code dot products live next to the group loop, in registers
        bp = sch.get_sblock("P")
        sch.compute_at(bp, kk)
        sch.set_scope(bp, 0, "local")
        if swiglu:
            sch.set_scope(bp, 1, "local")
        allp = sch.get_loops(bp)
        at = next(i for i, x in enumerate(allp) if sch.get_sref(x).same_as(sch.get_sref(kk)))
        pl = allp[at + 1:]                             # [rows of the tile (absent when 1)], its columns, group inputs
        pko, pki = sch.split(pl[-1], [None, 2])        # the two nibbles of a byte: constant shifts once unrolled
        pjo, pji = sch.split(pl[-2], [None, l])
        sch.reorder(pko, pki, *pl[:-2], pjo, pji)
        sch.unroll(pki)
        for x in pl[:-2]:
            sch.unroll(x)
        sch.unroll(pjo)
        if l > 1:
            sch.vectorize(pji)
        sch.decompose_reduction(bp, pko)
        xs = sch.get_loops(sch.get_sblock("XS"))
        if knobs.parallel:
            sch.parallel(xs[0])
    sch.unroll(ii)
    sch.unroll(jj)
    if l > 1:
        sch.vectorize(ji)
    init = sch.decompose_reduction(b, kk)
    zl = sch.get_loops(bz)
    zo, zi = sch.split(zl[-1], [None, l])
    if l > 1:
        sch.vectorize(zi)
        sch.vectorize(sch.get_loops(init)[-1])


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


# ------------------------------------------------------------------------------------- row-wise kernels
def make_embedding(name: str, V: int, D: int, l: int, quant: tuple | None = None,
                   gpu: bool = False, a8_il: int = 0) -> tvm.tirx.PrimFunc:
    """Out[n, D] = table[tokens[n]], the table packed like the LM head's weight [V/l, D, l] (shared when tied),
    dequantized per row when ``quant`` (see :func:`make_matmul`); with ``a8_il`` in the int8-activation layout
    of :func:`make_matmul_a8` (interleave ``a8_il``). Args: tokens, W, (scale), (zero), Out."""
    n = te.var("n", "int32")
    tok = te.placeholder((n,), name="tok", dtype="int32")
    qkind = quant[0] if quant else None
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
        W = te.placeholder((V // l, D // 2, l), name="W", dtype="uint8")
        Sc = te.placeholder((V, D // g), name="scale")
        Zp = te.placeholder((V, D // g), name="zero") if asym else None

        def val(i, d):
            t = tok[i]
            code = (W[t // l, d // 2, t % l] >> (4 * (d % 2)).astype("uint8")) & tvm.tirx.const(15, "uint8")
            zero = Zp[t, d // g] if Zp is not None else tvm.tirx.const(8.0, "float32")
            return (code.astype("float32") - zero) * Sc[t, d // g]
    elif qkind == "q8":
        W = te.placeholder((V // l, D, l), name="W", dtype="int8")
        Sc, Zp = te.placeholder((V,), name="scale"), None

        def val(i, d):
            return W[tok[i] // l, d, tok[i] % l].astype("float32") * Sc[tok[i]]
    else:
        W, Sc, Zp = te.placeholder((V // l, D, l), name="W", dtype=_WDTYPE[qkind]), None, None

        def val(i, d):
            return _widen(W[tok[i] // l, d, tok[i] % l], qkind)
    O = te.compute((n, D), val, name="O")
    f = te.create_prim_func([tok, W] + [t for t in (Sc, Zp) if t is not None] + [O])
    return _gpu_dlight(f, name) if gpu else _named(f, name)


def make_rmsnorm(name: str, D: int, eps: float, kn: Knobs = Knobs()) -> tvm.tirx.PrimFunc:
    """Y[n, D] = w * X * rsqrt(mean(X^2) + eps). Args: X, w, Y."""

    kn_tb = kn.threads if kn.gpu else 1

    @T.prim_func
    def f(x: T.handle, w: T.handle, y: T.handle):
        T.func_attr({"tirx.noalias": True})
        n = T.int32()
        X = T.match_buffer(x, (n, D), "float32")
        Wt = T.match_buffer(w, (D,), "float32")
        Y = T.match_buffer(y, (n, D), "float32")
        for bi in _grid(n, kn):
            for ti in _lane(kn):
                if bi * kn_tb + ti < n:
                    i: T.let = bi * kn_tb + ti
                    ss = T.decl_buffer((1,), "float32", scope=_scope(kn))
                    ss[0] = T.float32(0)
                    for d in T.serial(D):
                        ss[0] = ss[0] + X[i, d] * X[i, d]
                    ss[0] = T.float32(1) / T.sqrt(ss[0] / T.float32(D) + T.float32(eps))
                    for d in T.serial(D):
                        Y[i, d] = Wt[d] * (X[i, d] * ss[0])

    return _named(f, name)


def make_add(name: str, D: int, kn: Knobs = Knobs()) -> tvm.tirx.PrimFunc:
    """A[n, D] += B[n, D] (in place: the residual stream). Args: A, B."""

    kn_tb = kn.threads if kn.gpu else 1

    @T.prim_func
    def f(a: T.handle, b: T.handle):
        n = T.int32()
        A = T.match_buffer(a, (n, D), "float32")
        B = T.match_buffer(b, (n, D), "float32")
        for bi in _grid(n * D, kn):
            for ti in _lane(kn):
                if bi * kn_tb + ti < n * D:
                    i: T.let = bi * kn_tb + ti
                    A[i // D, i % D] = A[i // D, i % D] + B[i // D, i % D]

    return _named(f, name)


def make_silu_mul(name: str, F: int, gate_chunk: int, kn: Knobs = Knobs()) -> tvm.tirx.PrimFunc:
    """A[n, F] = silu(G[:, gate]) * G[:, up], G = [n, 2F] with the gate in chunk ``gate_chunk``. Args: G, A."""
    go, uo = gate_chunk * F, (1 - gate_chunk) * F

    kn_tb = kn.threads if kn.gpu else 1

    @T.prim_func
    def f(g: T.handle, a: T.handle):
        T.func_attr({"tirx.noalias": True})
        n = T.int32()
        G = T.match_buffer(g, (n, 2 * F), "float32")
        A = T.match_buffer(a, (n, F), "float32")
        for bi in _grid(n * F, kn):
            for ti in _lane(kn):
                if bi * kn_tb + ti < n * F:
                    i: T.let = bi * kn_tb + ti
                    A[i // F, i % F] = G[i // F, go + i % F] / (T.float32(1) + T.exp(-G[i // F, go + i % F])) * G[
                        i // F, uo + i % F]

    return _named(f, name)


def make_take_last(name: str, D: int, kn: Knobs = Knobs()) -> tvm.tirx.PrimFunc:
    """Out[0, :] = X[n - 1, :] (prefill computes logits for its last token only). Args: X, Out[r, D]."""

    kn_tb = kn.threads if kn.gpu else 1

    @T.prim_func
    def f(x: T.handle, out: T.handle):
        T.func_attr({"tirx.noalias": True})
        n = T.int32()
        r = T.int32()
        X = T.match_buffer(x, (n, D), "float32")
        O = T.match_buffer(out, (r, D), "float32")
        for bi in _grid(D, kn):
            for ti in _lane(kn):
                if bi * kn_tb + ti < D:
                    d: T.let = bi * kn_tb + ti
                    O[0, d] = X[n - 1, d]

    return _named(f, name)


# ------------------------------------------------------------------------------------ short convolution
def make_conv_prefill(name: str, D: int, L: int, ib: int, ic: int, ix: int,
                      kn: Knobs = Knobs()) -> tvm.tirx.PrimFunc:
    """Gated causal depthwise conv over one sequence's chunk, continuing and updating its conv state (the IR's
    ``short_conv`` between its two projections).

    P[n, 3D] holds the in_proj chunks (B at ``ib``, C at ``ic``, x at ``ix``); Y[t] = C[t] * sum_j w[j] *
    hist[t + j] with hist = [state(slot); B*x]; afterwards the state holds the last L-1 entries of hist.
    The bias operand is always passed (zeros when the model has none). Args: P, state[S, D, L-1], w[D, L],
    bias[D], Y[n, D], slot."""
    Lm, Lc, last = L - 1, max(L - 1, 1), max(L - 2, 0)

    kn_tb = kn.threads if kn.gpu else 1

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
                if bi * kn_tb + ti < D:
                    d: T.let = bi * kn_tb + ti
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

    kn_tb = kn.threads if kn.gpu else 1

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
                if bi * kn_tb + ti < n * D:
                    bd: T.let = bi * kn_tb + ti
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

    kn_tb = kn.threads if kn.gpu else 1

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
                if bi * kn_tb + ti < D:
                    d: T.let = bi * kn_tb + ti
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
    kn_tb = kn.threads if kn.gpu else 1
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
                if bi * kn_tb + ti < (n + Q - 1) // Q * D:
                    i: T.let = bi * kn_tb + ti
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
                if bi * kn_tb + ti < D:
                    d: T.let = bi * kn_tb + ti
                    h = T.decl_buffer((1,), "float32", scope=_scope(kn))
                    h[0] = St[slot, d]
                    for c in T.serial((n + Q - 1) // Q):
                        E[(c * D + d) * 3 + 2] = h[0]
                        h[0] = E[(c * D + d) * 3] + E[(c * D + d) * 3 + 1] * h[0]
                    St[slot, d] = h[0]
        for bi in _grid((n + Q - 1) // Q * D, kn):
            for ti in _lane(kn):
                if bi * kn_tb + ti < (n + Q - 1) // Q * D:
                    i: T.let = bi * kn_tb + ti
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

    kn_tb = kn.threads if kn.gpu else 1

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
                if bi * kn_tb + ti < n * D:
                    bd: T.let = bi * kn_tb + ti
                    St[Sl[bd // D], bd % D] = St[Sl[bd // D], bd % D] / (T.float32(1) + T.exp(
                        -P[bd // D, ia * D + bd % D])) + P[bd // D, ib * D + bd % D] * P[bd // D, ix * D + bd % D]
                    Y[bd // D, bd % D] = P[bd // D, ic * D + bd % D] * St[Sl[bd // D], bd % D]

    return _named(f, name)


# ------------------------------------------------------------------------------------------- attention
def _norm_rope_macro(hd: int, eps: float, theta: float):
    """TIR macro: ``v = rope(rmsnorm(X[t, col:col+hd]) * W, Ps[t])`` into the local buffer ``v`` (NeoX
    rotate-half, angle pos / theta^(2i/hd)); ``u`` and ``ss`` are local scratch."""
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
            ang: T.let = T.Cast("float32", p) * (T.float32(1) / T.pow(
                T.float32(theta), T.Cast("float32", (d % half) * 2) / T.float32(hd)))
            rot: T.let = T.if_then_else(d < half, -u[T.min(d + half, hd - 1)], u[T.max(d - half, 0)])
            v[d] = u[d] * T.cos(ang) + rot * T.sin(ang)

    return norm_rope


def _cache_kv_macro(H: int, KV: int, hd: int, kv: str, norm_rope):
    """TIR macro: KV head g of row t into the cache of its slot at its position: k normed and rotated
    (``norm_rope``), v as projected, both stored as ``kv``. Shared by the fused and unfused attention."""

    @T.macro
    def cache_kv(X, t, g, Kn, Ps, Sl, Kc, Vc, v, u, ss):
        norm_rope(X, t, (H + g) * hd, Kn, Ps[t], v, u, ss)
        for d in T.serial(hd):
            Kc[Sl[t], Ps[t], g, d] = T.Cast(kv, v[d])
            Vc[Sl[t], Ps[t], g, d] = T.Cast(kv, X[t, (H + KV + g) * hd + d])

    return cache_kv


def make_qk_rope(name: str, H: int, KV: int, hd: int, eps: float, theta: float,
                 kn: Knobs = Knobs(), kv: str = "float32") -> tvm.tirx.PrimFunc:
    """Per row: RMSNorm each q and k head (weights qn, kn), NeoX RoPE at pos[row], q to Q, k and v into the
    KV cache of slots[row] at pos[row]. Args: QKV[n, (H+2KV)hd], qn, kn, Kc, Vc, Q[n, H*hd], slots, pos."""
    norm_rope = _norm_rope_macro(hd, eps, theta)
    cache_kv = _cache_kv_macro(H, KV, hd, kv, norm_rope)

    kn_tb = kn.threads if kn.gpu else 1

    @T.prim_func
    def f(qkv: T.handle, qn: T.handle, knw: T.handle, kc: T.handle, vc: T.handle, q: T.handle,
          slots: T.handle, pos: T.handle):
        T.func_attr({"tirx.noalias": True})
        n = T.int32()
        S = T.int32()
        C = T.int32()
        X = T.match_buffer(qkv, (n, (H + 2 * KV) * hd), "float32")
        Qn = T.match_buffer(qn, (hd,), "float32")
        Kn = T.match_buffer(knw, (hd,), "float32")
        Kc = T.match_buffer(kc, (S, C, KV, hd), kv)
        Vc = T.match_buffer(vc, (S, C, KV, hd), kv)
        Q = T.match_buffer(q, (n, H * hd), "float32")
        Sl = T.match_buffer(slots, (n,), "int32")
        Ps = T.match_buffer(pos, (n,), "int32")
        for bi in _grid(n * (H + KV), kn):
            for ti in _lane(kn):
                if bi * kn_tb + ti < n * (H + KV):
                    th: T.let = bi * kn_tb + ti
                    v = T.decl_buffer((hd,), "float32", scope=_scope(kn))
                    u = T.decl_buffer((hd,), "float32", scope=_scope(kn))
                    ss = T.decl_buffer((1,), "float32", scope=_scope(kn))
                    if th % (H + KV) < H:
                        norm_rope(X, th // (H + KV), (th % (H + KV)) * hd, Qn, Ps[th // (H + KV)], v, u, ss)
                        for d in T.serial(hd):
                            Q[th // (H + KV), (th % (H + KV)) * hd + d] = v[d]
                    else:
                        cache_kv(X, th // (H + KV), th % (H + KV) - H, Kn, Ps, Sl, Kc, Vc, v, u, ss)

    return _named(f, name)


def _online_softmax_macro(H: int, KV: int, hd: int, VL: int):
    """TIR macro: causal GQA attention of query ``q`` (local, hd) of head ``h`` over cache slot ``s`` positions
    0..p, with an online softmax (no score buffer), written to O[t, h*hd:]."""
    G = H // KV
    NC = hd // VL
    scale = float(hd) ** -0.5

    @T.macro
    def attend(qv, Kc, Vc, s, p, h, O, t, acc, part, st):
        st[0] = T.float32(NEG)
        st[1] = T.float32(0)
        for dc in T.serial(NC):
            for dl in T.vectorized(VL):
                acc[dc * VL + dl] = T.float32(0)
        for c in T.serial(p + 1):
            for dl in T.vectorized(VL):
                part[dl] = T.float32(0)
            for dc in T.serial(NC):
                for dl in T.vectorized(VL):
                    part[dl] = part[dl] + qv[dc * VL + dl] * T.Cast("float32",
                                                                    Kc[s, c, h // G, dc * VL + dl])
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
                        "float32", Vc[s, c, h // G, dc * VL + dl])
            st[0] = st[3]
        for d in T.serial(hd):
            O[t, h * hd + d] = acc[d] / st[1]

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


def _group_softmax_macro(H: int, KV: int, hd: int, VL: int, B: int = 32):
    """TIR macro (CPU): causal attention of the G = H/KV query heads of KV head ``g`` (local ``qg`` [G*hd]) over
    cache slot ``s`` positions 0..p, in blocks of ``B`` positions: scores of a block for all G heads (each K row
    read once for the group), one max and rescale per block, exponentials vectorized (polynomial, no libm), the
    values accumulated once per position for the group. Writes O[t, (g*G + i)*hd:]."""
    G = H // KV
    NC = hd // VL
    scale = float(hd) ** -0.5

    @T.macro
    def attend(qg, Kc, Vc, s, p, g, O, t, acc, part, sc, st):
        for i in T.serial(G):
            st[i] = T.float32(NEG)              # running max
            st[G + i] = T.float32(0)            # running sum
            for d in T.vectorized(hd):
                acc[i * hd + d] = T.float32(0)
        for blk in T.serial((p + B) // B):
            for j in T.serial(B):
                for i in T.serial(G):
                    for dl in T.vectorized(VL):
                        part[dl] = T.float32(0)
                    for dc in T.serial(NC):
                        for dl in T.vectorized(VL):
                            part[dl] = part[dl] + qg[i * hd + dc * VL + dl] * T.Cast(
                                "float32", Kc[s, T.min(blk * B + j, p), g, dc * VL + dl])
                    st[2 * G] = T.float32(0)
                    for dl in T.serial(VL):
                        st[2 * G] = st[2 * G] + part[dl]
                    sc[i * B + j] = T.if_then_else(blk * B + j <= p, st[2 * G] * T.float32(scale), T.float32(NEG))
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
                        acc[i * hd + d] = acc[i * hd + d] + sc[i * B + j] * T.Cast(
                            "float32", Vc[s, T.min(blk * B + j, p), g, d])
        for i in T.serial(G):
            for d in T.serial(hd):
                O[t, (g * G + i) * hd + d] = acc[i * hd + d] / st[G + i]

    return attend


def make_attention(name: str, H: int, KV: int, hd: int, kn: Knobs = Knobs(),
                   kv: str = "float32") -> tvm.tirx.PrimFunc:
    """Causal GQA attention of each row over its sequence's cache up to and including pos[row], with an
    online softmax (no score buffer); dot products and the value update run on ``lanes``-wide vectors.
    Args: Q[n, H*hd], Kc, Vc, O[n, H*hd], slots, pos."""
    VL = pick_lanes(hd, 1 if kn.gpu else kn.lanes)
    attend = _online_softmax_macro(H, KV, hd, VL)
    group = _group_softmax_macro(H, KV, hd, VL, ATT_BLOCK)
    G = H // KV

    kn_tb = kn.threads if kn.gpu else 1

    @T.prim_func
    def f(q: T.handle, kc: T.handle, vc: T.handle, o: T.handle, slots: T.handle, pos: T.handle):
        T.func_attr({"tirx.noalias": True})
        n = T.int32()
        S = T.int32()
        C = T.int32()
        Q = T.match_buffer(q, (n, H * hd), "float32")
        Kc = T.match_buffer(kc, (S, C, KV, hd), kv)
        Vc = T.match_buffer(vc, (S, C, KV, hd), kv)
        O = T.match_buffer(o, (n, H * hd), "float32")
        Sl = T.match_buffer(slots, (n,), "int32")
        Ps = T.match_buffer(pos, (n,), "int32")
        if kn.gpu:
            for bi in _grid(n * H, kn):
                for ti in _lane(kn):
                    if bi * kn_tb + ti < n * H:
                        th: T.let = bi * kn_tb + ti
                        qv = T.decl_buffer((hd,), "float32", scope=_scope(kn))
                        acc = T.decl_buffer((hd,), "float32", scope=_scope(kn))
                        part = T.decl_buffer((VL,), "float32", scope=_scope(kn))
                        st = T.decl_buffer((6,), "float32", scope=_scope(kn))    # max, sum, score, new max, rescale
                        for d in T.serial(hd):
                            qv[d] = Q[th // H, (th % H) * hd + d]
                        attend(qv, Kc, Vc, Sl[th // H], Ps[th // H], th % H, O, th // H, acc, part, st)
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
                group(qg, Kc, Vc, slot, last, tg % KV, O, tg // KV, acc, part, sc, st)

    return _named(f, name)


def make_rope_attention(name: str, H: int, KV: int, hd: int, eps: float, theta: float,
                        kn: Knobs = Knobs(), kv: str = "float32") -> tvm.tirx.PrimFunc:
    """QK-norm + RoPE + cache write + attention in one kernel, straight from the QKV projection's output.
    First every row's k (normed, rotated) and v go into the cache (parallel over rows × KV heads), then every
    (row, head) normalizes and rotates its q in registers and attends: the rotated q never touches memory.
    Args: QKV[n, (H+2KV)hd], qn, kn, Kc, Vc, O[n, H*hd], slots, pos."""
    VL = pick_lanes(hd, 1 if kn.gpu else kn.lanes)
    attend = _online_softmax_macro(H, KV, hd, VL)
    group = _group_softmax_macro(H, KV, hd, VL, ATT_BLOCK)
    G = H // KV
    norm_rope = _norm_rope_macro(hd, eps, theta)
    cache_kv = _cache_kv_macro(H, KV, hd, kv, norm_rope)

    kn_tb = kn.threads if kn.gpu else 1

    @T.prim_func
    def f(qkv: T.handle, qn: T.handle, knw: T.handle, kc: T.handle, vc: T.handle, o: T.handle,
          slots: T.handle, pos: T.handle):
        T.func_attr({"tirx.noalias": True})
        n = T.int32()
        S = T.int32()
        C = T.int32()
        X = T.match_buffer(qkv, (n, (H + 2 * KV) * hd), "float32")
        Qn = T.match_buffer(qn, (hd,), "float32")
        Kn = T.match_buffer(knw, (hd,), "float32")
        Kc = T.match_buffer(kc, (S, C, KV, hd), kv)
        Vc = T.match_buffer(vc, (S, C, KV, hd), kv)
        O = T.match_buffer(o, (n, H * hd), "float32")
        Sl = T.match_buffer(slots, (n,), "int32")
        Ps = T.match_buffer(pos, (n,), "int32")
        for bi in _grid(n * KV, kn):
            for ti in _lane(kn):
                if bi * kn_tb + ti < n * KV:
                    tg: T.let = bi * kn_tb + ti
                    v = T.decl_buffer((hd,), "float32", scope=_scope(kn))
                    u = T.decl_buffer((hd,), "float32", scope=_scope(kn))
                    ss = T.decl_buffer((1,), "float32", scope=_scope(kn))
                    cache_kv(X, tg // KV, tg % KV, Kn, Ps, Sl, Kc, Vc, v, u, ss)
        if kn.gpu:
            for bi in _grid(n * H, kn):
                for ti in _lane(kn):
                    if bi * kn_tb + ti < n * H:
                        th: T.let = bi * kn_tb + ti
                        qv = T.decl_buffer((hd,), "float32", scope=_scope(kn))
                        u = T.decl_buffer((hd,), "float32", scope=_scope(kn))
                        ss = T.decl_buffer((1,), "float32", scope=_scope(kn))
                        acc = T.decl_buffer((hd,), "float32", scope=_scope(kn))
                        part = T.decl_buffer((VL,), "float32", scope=_scope(kn))
                        st = T.decl_buffer((6,), "float32", scope=_scope(kn))
                        norm_rope(X, th // H, (th % H) * hd, Qn, Ps[th // H], qv, u, ss)
                        attend(qv, Kc, Vc, Sl[th // H], Ps[th // H], th % H, O, th // H, acc, part, st)
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
                group(qg, Kc, Vc, slot, last, tg % KV, O, tg // KV, acc, part, sc, st)

    return _named(f, name)


# ---------------------------------------------------------------------------------------------- MoE
def make_moe_route(name: str, E: int, topk: int, scoring: str, use_bias: bool, norm: bool, norm_eps: float,
                   scale: float, kn: Knobs = Knobs()) -> tvm.tirx.PrimFunc:
    """Router: scores = sigmoid|softmax(logits); choose top-k of scores (+ expert_bias); weights are the
    unbiased scores of the chosen, normalized over them (+eps) when ``norm``, times ``scale``.
    Args: logits[n, E], bias[E], idx[n, k] int32, w[n, k]."""
    sig = scoring == "sigmoid"

    kn_tb = kn.threads if kn.gpu else 1

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
                if bi * kn_tb + ti < n:
                    t: T.let = bi * kn_tb + ti
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


# ------------------------------------------------------------------------- int8-activation matmul (x86 AVX2)


def _x86(name: str, dtype: str, *args):
    return T.call_llvm_pure_intrin(dtype, name, *args)


def _dot4(w_u8, x_i8):
    """pmaddubsw: unsigned 8-bit w times signed 8-bit x, adjacent pairs summed into int16 lanes."""
    return _x86("llvm.x86.avx2.pmadd.ub.sw", "int16x16", w_u8, x_i8)


def _widen16(v):
    """pmaddwd with ones: adjacent int16 pairs summed into int32 lanes (one lane per output of the block)."""
    return _x86("llvm.x86.avx2.pmadd.wd", "int32x8", v, T.broadcast(T.int16(1), 16))


def _xquad(Xq, i, k):
    """x[i, k:k+4] (int8) repeated for each of the 8 outputs of a weight block: one broadcast 32-bit load."""
    return T.reinterpret("int8x32", T.broadcast(T.reinterpret("int32", Xq[i, T.ramp(k, 1, 4)]), 8))


def a8_layout(N: int, K: int, quant: tuple, swiglu: bool, il: int) -> dict:
    """Shapes of the int8-activation matmul's packed operands (see :func:`make_matmul_a8`)."""
    H = 2 if swiglu else 1
    NB = -(-N // (8 * il)) * il
    Kp = -(-K // A8_GROUP) * A8_GROUP
    if quant[0] == "q4":
        g = int(quant[1])
        if g % A8_GROUP or K % g:
            raise ValueError(f"int8 activations with int4 weights need groups that are multiples of {A8_GROUP} "
                             f"dividing K (group {g}, K={K})")
        return {"W": ((NB // il, Kp // 8, H, il, 32), "uint8"), "S": ((NB // il, K // g, H, il, 8), "float16"),
                "NB": NB, "Kp": Kp}
    if quant[0] == "q8":
        return {"W": ((NB // il, Kp // 4, H, il, 32), "int8"), "S": ((H, NB * 8), "float32"), "NB": NB, "Kp": Kp}
    raise ValueError(f"no int8-activation kernel for {quant[0]} weights")


def make_matmul_a8(name: str, N: int, K: int, knobs: Knobs, bias: bool = False, rms_eps: float | None = None,
                   accumulate: bool = False, swiglu: bool = False, quant: tuple = ("q8",),
                   il: int = 1) -> tvm.tirx.PrimFunc:
    """:func:`make_matmul` with int8 activations and integer dot products (x86 AVX2): same arguments, same
    prologue / epilogues, different weight layout.

    The rows of X (RMS-normalized first when ``rms_eps``) are quantized per group of 32 inputs: d = max|x| / 127,
    q = round-half-even(x / d) (lfmc/ir/quant.py says the same for the interpreter). Weights are packed in blocks
    of 8 outputs x 4 inputs (32 bytes, one AVX2 register), ``il`` blocks interleaved (:func:`.knobs.a8_interleave`;
    int8 codes are packed with il 1, and a decode tile reads several panels side by side):
    int8 codes ``[N/8/il, K/4, H, il, 32]`` (q8), or two int4 codes per byte ``[N/8/il, K/8, H, il, 32]`` whose
    low nibbles hold inputs 8m..8m+3 and high nibbles 8m+4..8m+7 (q4; scales / zeros ``[N/8/il, K/g, H, il, 8]``).
    H = 2 (gate, up) with ``swiglu``; N is padded up to 8 * il outputs and K to 32 inputs.
    One ``pmaddubsw`` multiplies a block by four broadcast activations and sums pairs; int4 sums stay in int16 for
    32 inputs (|15 * 127 * 2| * 8 < 2^15), int8 ones go to int32 at once (unsigned |w| times sign-carrying x).
    Per group the int32 sums become float: q4 ``scale * d * (sum - zero * sum(q))``, q8 ``d * sum`` (its channel
    scale after the loop)."""
    qkind = quant[0]
    lay = a8_layout(N, K, quant, swiglu, il)
    H = 2 if swiglu else 1
    R = knobs.rows
    NB, Kp = lay["NB"], lay["Kp"]
    KB = Kp // A8_GROUP
    q4 = qkind == "q4"
    if q4:                                         # the interleaved blocks
        J = pick_cols(il, max(1, knobs.cols // 2 // H))
    else:                                          # int8 (il 1): one panel per block; decode tiles take twice as many
        J = pick_cols(NB, max(1, knobs.cols // (1 if R == 1 else 2) // H))
    (wshape, wdtype), (sshape, sdtype) = lay["W"], lay["S"]
    g = int(quant[1]) if q4 else A8_GROUP
    asym = bool(quant[2]) if q4 else False
    G, SB = (K // g, g // A8_GROUP) if q4 else (KB, 1)
    norm = rms_eps is not None
    eps = float(rms_eps) if norm else 0.0
    padk, padn = K % A8_GROUP != 0, N % 8 != 0
    par = knobs.parallel
    ROW = H * il * 32                              # bytes of one packed row (4 inputs, or 8 for int4)
    WBYTES = NB // il * wshape[1] * ROW
    # software prefetch ``knobs.prefetch`` bytes ahead when one call streams whole interleaved rows (decode): the
    # integer work per byte leaves the out-of-order window too few loads in flight to hide memory latency
    pf = int(knobs.prefetch) if J == il else 0
    use_pf = pf > 0

    def prefetch(Wf, at):
        return T.evaluate(T.call_llvm_intrin("void", "llvm.prefetch.p0", T.address_of(Wf[T.min(at, WBYTES - 1)]),
                                             0, 3, 1))

    def xval(X, NW, Rn, i, k):
        v = X[i, k] * NW[k] * Rn[i] if norm else X[i, k]
        return T.if_then_else(k < K, v, T.float32(0)) if padk else v

    def wblock(W, blk, m, h):
        """The 32 bytes of weight block ``blk`` (8 outputs) at packed row ``m``."""
        return W[blk // il, m, h, blk % il, T.ramp(0, 1, 32)]

    def nib(W, blk, m, h, high):
        v = wblock(W, blk, m, h)
        return (v >> T.broadcast(T.uint8(4), 32)) if high else (v & T.broadcast(T.uint8(15), 32))

    def q8dot(W, Xq, blk, m, h, row, k):
        v = wblock(W, blk, m, h)
        xs = _x86("llvm.x86.avx2.psign.b", "int8x32", _xquad(Xq, row, k), v)
        return _widen16(_dot4(T.abs(v), xs))

    def q4group(S, Zp, Xs, Dx, a16, r, h, jj, blk, q, kb, row):
        """One group's int16 sums of one block as float: scale * d * (sum - zero * sum of the input codes)."""
        at = (blk // il, q, h, blk % il, T.ramp(0, 1, 8))
        s32 = _widen16(a16[r, h, jj, T.ramp(0, 1, 16)])
        if asym:
            v = T.Cast("float32x8", s32) - T.Cast("float32x8", Zp[at]) * T.broadcast(T.Cast("float32", Xs[row, kb]), 8)
        else:
            v = T.Cast("float32x8", s32 - T.broadcast(Xs[row, kb] * 8, 8))
        return v * (T.Cast("float32x8", S[at]) * T.broadcast(Dx[row, kb], 8))

    @T.macro
    def zero_tile(buf, lanes, zero):
        """Clear a register tile [R, H, J, lanes]."""
        for r in T.unroll(R):
            for h in T.unroll(H):
                for jj in T.unroll(J):
                    buf[r, h, jj, T.ramp(0, 1, lanes)] = T.broadcast(zero, lanes)

    def finish(Res, Bv, S, acc, r, jj, t, row, o):
        a0 = acc[r, 0, jj, t] * S[0, o] if not q4 else acc[r, 0, jj, t]
        if swiglu:
            u = acc[r, 1, jj, t] * S[1, o] if not q4 else acc[r, 1, jj, t]
            a0 = T.sigmoid(a0) * a0 * u
        if bias:
            a0 = a0 + Bv[o]
        if accumulate:
            a0 = a0 + Res[row, o]
        return a0

    @T.prim_func
    def f(x: T.handle, w: T.handle, s: T.handle, z: T.handle, nw: T.handle, b: T.handle, res: T.handle,
          y: T.handle, nb: T.int32):
        X = T.match_buffer(x, (nb * R, K), "float32")
        W = T.match_buffer(w, wshape, wdtype)
        S = T.match_buffer(s, sshape, sdtype)
        Zp = T.match_buffer(z, sshape, sdtype)
        NW = T.match_buffer(nw, (K,), "float32")
        Bv = T.match_buffer(b, (N,), "float32")
        Res = T.match_buffer(res, (nb * R, N), "float32")
        Y = T.match_buffer(y, (nb * R, N), "float32")
        Wf = T.decl_buffer((WBYTES,), wdtype, data=W.data)
        Xq = T.alloc_buffer((nb * R, Kp), "int8")
        Dx = T.alloc_buffer((nb * R, KB), "float32")
        Xs = T.alloc_buffer((nb * R, KB), "int32")
        Rn = T.alloc_buffer((nb * R,), "float32")
        if norm:
            for i in T.parallel(nb * R) if par else T.serial(nb * R):
                ss = T.decl_buffer((1,), "float32")
                ss[0] = T.float32(0)
                for k in T.serial(K):
                    ss[0] = ss[0] + X[i, k] * X[i, k]
                Rn[i] = T.float32(1) / T.sqrt(ss[0] / T.float32(K) + T.float32(eps))
        # activations -> int8 codes per group of 32, the group's scale and its code sum
        for ig in T.parallel(nb * R * KB) if par else T.serial(nb * R * KB):
            am = T.decl_buffer((2,), "float32")
            cs = T.decl_buffer((1,), "int32")
            am[0] = T.float32(0)
            for t in T.serial(A8_GROUP):
                am[0] = T.max(am[0], T.abs(xval(X, NW, Rn, ig // KB, ig % KB * A8_GROUP + t)))
            am[1] = T.if_then_else(am[0] > T.float32(0), T.float32(127) / am[0], T.float32(0))
            Dx[ig // KB, ig % KB] = am[0] / T.float32(127)
            cs[0] = 0
            for t in T.serial(A8_GROUP):
                Xq[ig // KB, ig % KB * A8_GROUP + t] = T.Cast("int8", T.nearbyint(
                    xval(X, NW, Rn, ig // KB, ig % KB * A8_GROUP + t) * am[1]))
                cs[0] = cs[0] + T.Cast("int32", Xq[ig // KB, ig % KB * A8_GROUP + t])
            Xs[ig // KB, ig % KB] = cs[0]
        for jb in T.parallel(NB // J) if par else T.serial(NB // J):
            for ib in T.serial(nb):
                acc = T.decl_buffer((R, H, J, 8), "float32")
                zero_tile(acc, 8, T.float32(0))
                if q4:
                    for q in T.serial(G):
                        for sb in T.serial(SB):
                            a16 = T.decl_buffer((R, H, J, 16), "int16")
                            if use_pf:
                                for c in T.unroll(ROW * 4 // 64):
                                    prefetch(Wf, ((jb * (Kp // 8) + (q * SB + sb) * 4) * ROW) + pf + c * 64)
                            zero_tile(a16, 16, T.int16(0))
                            for m in T.unroll(4):
                                for h in T.unroll(H):
                                    for jj in T.unroll(J):
                                        for r in T.unroll(R):
                                            a16[r, h, jj, T.ramp(0, 1, 16)] = (
                                                a16[r, h, jj, T.ramp(0, 1, 16)]
                                                + _dot4(nib(W, jb * J + jj, (q * SB + sb) * 4 + m, h, False),
                                                        _xquad(Xq, ib * R + r, (q * SB + sb) * 32 + m * 8))
                                                + _dot4(nib(W, jb * J + jj, (q * SB + sb) * 4 + m, h, True),
                                                        _xquad(Xq, ib * R + r, (q * SB + sb) * 32 + m * 8 + 4)))
                            for r in T.unroll(R):
                                for h in T.unroll(H):
                                    for jj in T.unroll(J):
                                        acc[r, h, jj, T.ramp(0, 1, 8)] = acc[r, h, jj, T.ramp(0, 1, 8)] + q4group(
                                            S, Zp, Xs, Dx, a16, r, h, jj, jb * J + jj, q, q * SB + sb, ib * R + r)
                else:
                    for kb in T.serial(KB):
                        a32 = T.decl_buffer((R, H, J, 8), "int32")
                        if use_pf:
                            for c in T.unroll(ROW * 8 // 64):
                                prefetch(Wf, ((jb * (Kp // 4) + kb * 8) * ROW) + pf + c * 64)
                        zero_tile(a32, 8, T.int32(0))
                        for m in T.unroll(8):
                            for h in T.unroll(H):
                                for jj in T.unroll(J):
                                    for r in T.unroll(R):
                                        a32[r, h, jj, T.ramp(0, 1, 8)] = a32[r, h, jj, T.ramp(0, 1, 8)] + q8dot(
                                            W, Xq, jb * J + jj, kb * 8 + m, h, ib * R + r, kb * 32 + m * 4)
                        for r in T.unroll(R):
                            for h in T.unroll(H):
                                for jj in T.unroll(J):
                                    acc[r, h, jj, T.ramp(0, 1, 8)] = acc[r, h, jj, T.ramp(0, 1, 8)] + T.Cast(
                                        "float32x8", a32[r, h, jj, T.ramp(0, 1, 8)]) * T.broadcast(
                                        Dx[ib * R + r, kb], 8)
                for r in T.serial(R):
                    for jj in T.serial(J):
                        for t in T.serial(8):
                            if not padn or (jb * J + jj) * 8 + t < N:      # padded outputs are never stored
                                Y[ib * R + r, (jb * J + jj) * 8 + t] = finish(
                                    Res, Bv, S, acc, r, jj, t, ib * R + r, (jb * J + jj) * 8 + t)

    keep = [True, True, True, asym, norm, bias, accumulate, True, True]
    f = tvm.tirx.PrimFunc([p for p, k in zip(f.params, keep) if k], f.body, f.ret_type, f.attrs)
    if not accumulate:
        f = f.with_attr("tirx.noalias", True)
    return _named(f, name)
