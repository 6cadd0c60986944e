"""Dense matmuls with fused prologue / epilogues (RMSNorm in, bias, residual, SwiGLU out), float, 16-bit or
weight-only quantized: the TE kernel and its default CPU schedule (what tuning starts from)."""
from __future__ import annotations

import tvm
from tvm import s_tir, te

from ..knobs import matmul_cols
from .common import _gpu_dlight, Knobs, _named, pick_cols, pick_lanes, _WDTYPE, _widen


def make_matmul(name: str, N: int, K: int, knobs: Knobs, bias: bool = False, rms_eps: float | None = None,
                accumulate: bool = False, swiglu: bool = False, quant: tuple | None = None,
                nb_static: int | None = None, schedule: bool = True, panels: int = 1) -> tvm.tirx.PrimFunc:
    """Y[nb*R, N] = X[nb*R, K] @ W^T with optional fused prologue and epilogues:

    - ``rms_eps``: X is the raw input of an RMSNorm (weight NW[K]): X * NW / sqrt(mean(X^2) + eps) is formed in
      the kernel, so the normalized activations never take a launch of their own.
    - ``bias``: + bias[N].  ``accumulate``: the output buffer holds the residual stream and is updated in place.
    - ``swiglu``: two weights (gate, up) side by side per output block; the output is silu(gate) * up, N wide.
    - ``quant``: ``("f16",)`` / ``("bf16",)``: 16-bit weights widened in the inner loop (bf16 passed as uint16
      bits); or weight-only quantized W, dequantized in the inner loop: ``("q8",)`` int8 codes with a scale
      per output channel (applied after the sum); ``("q8", g)`` int8 codes with a scale per group of g inputs
      (GGUF's Q8_0: g = 32); ``("q4", g, asym)`` 4-bit codes packed two per byte along K, scale (and zero when
      ``asym``, else 8) per group of g inputs.

    W layouts (l = vector lanes, P = ``panels``): f32 / q8 ``[N/(P l), (2,) K, (P,) l]``, q4 ``[N/(P l), (2,) K/2,
    (P,) l]`` uint8 (P > 1: P panels of l outputs interleaved per input row, :func:`.knobs.gemv_panels`); scales
    ``[(2,) N]`` (q8 per channel) or ``[(2,) N, K/g]`` (groups). Args: X, W, (scale), (zero), (NW), (bias), (Res), Out, nb — with
    ``accumulate`` the caller passes the residual buffer as both Res and Out.

    ``nb_static``: the row-block count fixed at this value (no ``nb`` argument): the shape a tuned variant is
    specialized to. ``schedule=False``: the unscheduled TensorIR (a workload for meta_schedule); see
    :func:`schedule_matmul` for the default schedule."""
    R = knobs.rows
    nb = te.var("nb", "int32") if nb_static is None else int(nb_static)
    rows = nb * knobs.rows
    X0 = te.placeholder((rows, K), name="X")
    w = _MatmulWeight(N, K, pick_lanes(N, knobs.lanes), swiglu, quant, panels)
    X, NW = _rms_prologue(X0, K, rows, rms_eps)
    if w.g and not knobs.gpu:
        Y = _group_dot(X, w, N, K, rows, swiglu)
    else:
        k = te.reduce_axis((0, K), name="k")
        if swiglu:      # gate and up in one block with a pair-valued sum, so one pass over X feeds both
            Y = te.compute((rows, N), lambda i, j: _pair_sum()((X[i, k] * w.value(0, j, k),
                                                                 X[i, k] * w.value(1, j, k)), axis=k), name="Y")
        else:
            Y = (te.compute((rows, N), lambda i, j: te.sum(X[i, k] * w.value(None, j, k), axis=k), name="Y"),)
    Bv = te.placeholder((N,), name="bias") if bias else None
    Res = te.placeholder((rows, N), name="Res") if accumulate else None
    Z = te.compute((rows, N), _epilogue(Y, w, Bv, Res), name="Z")
    args = [X0] + w.operands + [t for t in (NW, Bv, Res) if t is not None]
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
    schedule_matmul(sch, N, K, knobs, rms_eps is not None, swiglu, quant, panels)
    return _named(sch.mod["main"], name)


class _MatmulWeight:
    """The weight operands of :func:`make_matmul` (packed codes or floats, scale, zero) and how to read them."""

    def __init__(self, N: int, K: int, l: int, swiglu: bool, quant: tuple | None, panels: int = 1):
        self.l, self.qkind, self.P = l, (quant[0] if quant else None), panels
        if N % (l * panels):
            raise ValueError(f"{panels} panels of {l} outputs must divide N={N}")
        H = (2,) if swiglu else ()
        P = (panels,) if panels > 1 else ()
        self.Sc = self.Zp = None
        self.g = 0                                      # the group size of grouped scales (0: none)
        if self.qkind == "q8" and len(quant) > 1:
            self.g = int(quant[1])
            if K % self.g:
                raise ValueError(f"q8 group {self.g} must divide K={K}")
            self.W = te.placeholder((N // (l * panels), *H, K, *P, l), name="W", dtype="int8")
            self.Sc = te.placeholder((*H, N, K // self.g), name="scale")
        elif self.qkind == "q4":
            self.g, asym = int(quant[1]), bool(quant[2])
            if K % self.g or K % 2:
                raise ValueError(f"q4 group {self.g} must divide K={K} (and K be even)")
            self.W = te.placeholder((N // (l * panels), *H, K // 2, *P, l), name="W", dtype="uint8")
            self.Sc = te.placeholder((*H, N, K // self.g), name="scale")
            self.Zp = te.placeholder((*H, N, K // self.g), name="zero") if asym else None
        elif self.qkind == "q8":
            self.W = te.placeholder((N // (l * panels), *H, K, *P, l), name="W", dtype="int8")
            self.Sc = te.placeholder((*H, N), name="scale")
        else:
            self.W = te.placeholder((N // (l * panels), *H, K, *P, l), name="W", dtype=_WDTYPE[self.qkind])

    @property
    def operands(self) -> list:
        return [self.W] + [t for t in (self.Sc, self.Zp) if t is not None]

    def at(self, h: tuple, j, kk):
        """The stored element of output j at packed input row kk (h: () or (half,)): panels of l outputs, ``P``
        of them interleaved per input row when P > 1 (one read stream for the P panels a thread takes)."""
        l, P = self.l, self.P
        if P > 1:
            v = j // l                                  # the panel
            return self.W[(v // P, *h, kk, v % P, j % l)]
        return self.W[(j // l, *h, kk, j % l)]

    def code(self, h: tuple, j, k):
        """The integer code at output j, input k (h: () or (half,)) as float32 (grouped formats)."""
        if self.qkind == "q8":
            return self.at(h, j, k).astype("float32")
        return ((self.at(h, j, k // 2) >> (4 * (k % 2)).astype("uint8"))
                & tvm.tirx.const(15, "uint8")).astype("float32")

    def zero(self, h: tuple, j, q):
        """The zero point of group q (8 for symmetric int4, None for int8: no zero)."""
        if self.qkind == "q8":
            return None
        return self.Zp[(*h, j, q)] if self.Zp is not None else tvm.tirx.const(8.0, "float32")

    def value(self, h, j, k):
        """The weight (h: gate/up half, or None) at output j, input k, widened to float32. int4 is dequantized
        per element here only for GPU families (one reduction dlight's GEMV rules take); CPUs take the
        per-group path (:func:`_q4_group_dot`)."""
        hh = () if h is None else (h,)
        if self.g:
            z = self.zero(hh, j, k // self.g)
            c = self.code(hh, j, k) if z is None else self.code(hh, j, k) - z
            return c * self.Sc[(*hh, j, k // self.g)]
        return _widen(self.at(hh, j, k), self.qkind)

    def post(self, h, j, v):
        """Per-channel scale of q8, applied once after the sum."""
        if self.qkind != "q8" or self.g:
            return v
        return v * (self.Sc[j] if h is None else self.Sc[h, j])


def _pair_sum():
    """A sum reducer over (gate, up) pairs."""
    return te.comm_reducer(lambda x, y: (x[0] + y[0], x[1] + y[1]),
                           lambda t0, t1: (tvm.tirx.const(0, t0), tvm.tirx.const(0, t1)), name="pair_sum")


def _rms_prologue(X0, K: int, rows, rms_eps: float | None):
    """The matmul's input RMS-normalized in the kernel (and the norm weight operand), or X0 as it is."""
    if rms_eps is None:
        return X0, None
    NW = te.placeholder((K,), name="norm_weight")
    k2 = te.reduce_axis((0, K), name="k2")
    S = te.compute((rows,), lambda i: te.sum(X0[i, k2] * X0[i, k2], axis=k2), name="S")
    return te.compute((rows, K), lambda i, kk: X0[i, kk] * NW[kk] / te.sqrt(S[i] / float(K) + float(rms_eps)),
                      name="Xs"), NW


def _group_dot(X, w: _MatmulWeight, N: int, K: int, rows, swiglu: bool) -> tuple:
    """Grouped codes (int4; int8 in groups) on CPUs in two levels: raw code dot products per group (P), then
    scale and zero once per group: sum_k x (c - z) s = sum_groups s (sum_group x c - z sum_group x)."""
    g = w.g
    G = K // g
    if w.zero((), 0, 0) is None:                         # int8: no zero point, no input sums
        XS = None
    else:
        kg = te.reduce_axis((0, g), name="kg")
        XS = te.compute((rows, G), lambda i, q: te.sum(X[i, q * g + kg], axis=kg), name="XS")

    def grp(h: tuple, i, j, q, P):
        z = w.zero(h, j, q)
        return w.Sc[(*h, j, q)] * (P if z is None else P - z * XS[i, q])
    kp = te.reduce_axis((0, g), name="kp")
    q_ = te.reduce_axis((0, G), name="q")
    if swiglu:
        Pg, Pu = te.compute((rows, N, G), lambda i, j, q: _pair_sum()(
            (X[i, q * g + kp] * w.code((0,), j, q * g + kp), X[i, q * g + kp] * w.code((1,), j, q * g + kp)),
            axis=kp), name="P")
        return te.compute((rows, N), lambda i, j: _pair_sum()(
            (grp((0,), i, j, q_, Pg[i, j, q_]), grp((1,), i, j, q_, Pu[i, j, q_])), axis=q_), name="Y")
    P = te.compute((rows, N, G), lambda i, j, q: te.sum(X[i, q * g + kp] * w.code((), j, q * g + kp), axis=kp),
                   name="P")
    return (te.compute((rows, N), lambda i, j: te.sum(grp((), i, j, q_, P[i, j, q_]), axis=q_), name="Y"),)


def _epilogue(Y: tuple, w: _MatmulWeight, Bv, Res):
    """The output element: silu(gate) * up of the pair (SwiGLU), else the sum (+ bias) (+ residual)."""
    if len(Y) == 2:
        Yg, Yu = Y

        def out_sw(i, j):
            gv, uv = w.post(0, j, Yg[i, j]), w.post(1, j, Yu[i, j])
            return te.sigmoid(gv) * gv * uv
        return out_sw

    def out(i, j):
        v = w.post(None, j, Y[0][i, j])
        if Bv is not None:
            v = v + Bv[j]
        if Res is not None:
            v = v + Res[i, j]
        return v
    return out


def schedule_matmul(sch: s_tir.Schedule, N: int, K: int, knobs: Knobs, norm: bool = False, swiglu: bool = False,
                    quant: tuple | None = None, panels: int = 1) -> None:
    """lfmc's default CPU schedule of :func:`make_matmul`'s TensorIR, applied to ``sch`` (traced, so tuning can
    record it as the baseline every candidate has to beat). With ``panels`` interleaved wider than the register
    tile (a prefill over the decode GEMV's layout), a thread takes whole interleave groups and walks K in blocks of
    about 32 KiB of the group, every tile of the group in turn: the tile alone would read a few bytes of each
    interleaved input row, strided over 4-8x the memory."""
    R = knobs.rows
    l = pick_lanes(N, knobs.lanes)
    qkind = quant[0] if quant else None
    grouped = qkind == "q4" or (qkind == "q8" and len(quant) > 1)
    J = matmul_cols(N, l, knobs, swiglu, qkind)
    b = sch.get_sblock("Y")
    i, j, kk = sch.get_loops(b)
    io, ii = sch.split(i, [None, R])
    if panels > 1 and J >= panels:                     # whole interleave groups a tile: one read stream each
        J = panels * pick_cols(N // l // panels, J // panels)
    if panels > J and not grouped:
        J = pick_cols(panels, J)
        jo, jp, jj, ji = sch.split(j, [None, panels // J, J, l])
        wbytes = 2 if qkind in ("f16", "bf16") else 1 if qkind == "q8" else 4
        ko, kk = sch.split(kk, [None, pick_cols(K, max(1, 32768 // (panels * l * wbytes)))])
        sch.reorder(jo, io, ko, jp, kk, ii, jj, ji)
        kred = ko                                      # the sums start before the first K block
    else:
        jo, jj, ji = sch.split(j, [None, J, l])
        # column blocks outermost: each thread keeps one weight panel hot in L2 while it walks every row block
        # (rows outermost re-streams the whole weight from memory once per row block)
        sch.reorder(jo, io, kk, ii, jj, ji)
        kred = kk
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
    if grouped:
        # the per-group code dot products live next to the group loop, in registers
        bp = sch.get_sblock("P")
        sch.compute_at(bp, kk)
        sch.set_scope(bp, 0, "local")
        if swiglu:
            sch.set_scope(bp, 1, "local")
        allp = sch.get_loops(bp)
        at = next(i for i, x in enumerate(allp) if sch.get_sref(x).same_as(sch.get_sref(kk)))
        pl = allp[at + 1:]                             # [rows of the tile (absent when 1)], its columns, group inputs
        pko, pki = sch.split(pl[-1], [None, 2])        # int4: the two nibbles of a byte: constant shifts once unrolled
        pjo, pji = sch.split(pl[-2], [None, l])
        sch.reorder(pko, pki, *pl[:-2], pjo, pji)
        sch.unroll(pki)
        for x in pl[:-2]:
            sch.unroll(x)
        sch.unroll(pjo)
        if l > 1:
            sch.vectorize(pji)
        sch.decompose_reduction(bp, pko)
        if qkind == "q4":
            xs = sch.get_loops(sch.get_sblock("XS"))
            if knobs.parallel:
                sch.parallel(xs[0])
    sch.unroll(ii)
    sch.unroll(jj)
    if l > 1:
        sch.vectorize(ji)
    init = sch.decompose_reduction(b, kred)
    zl = sch.get_loops(bz)
    zo, zi = sch.split(zl[-1], [None, l])
    if l > 1:
        sch.vectorize(zi)
        sch.vectorize(sch.get_loops(init)[-1])
