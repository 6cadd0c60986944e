"""The bf16-activation matmul (``--dtype bf16 --act-quant bf16``): bf16 weights times activations rounded to bf16,
the exact products summed in float32 (what PyTorch's bf16 CPU matmuls compute). The instruction family is the
target's (``knobs.bf16dot``, a key of :data:`BF16DOT`): AVX512-BF16's ``vdpbf16ps`` (two products per float32
lane per instruction: twice the float32 FMA rate) or float32 FMAs on the same pairs (any CPU with FMA; NEON). Both
add the odd input's product first, then the even one's, each rounded once: the same sums, bit for bit (bf16
products are exact in float32; ``vdpbf16ps`` also flushes denormals, which these sums do not meet).

Weights are packed in pairs along K: ``W[N/L, K/2, H, 2L]`` uint16 (bf16 bits), element (o, k) at
``[o // L, k // 2, h, 2 (o % L) + k % 2]``: one 32-bit word per output holds its two inputs, L outputs per
vector (L = 16 with ``vdpbf16ps``). H = 2 (gate, up) with ``swiglu``; N is padded to L and K to even."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import tvm
from tvm.script import tirx as T

from ..llvm_ir import placeholder
from ..knobs import bf16_kpad, bf16_lanes as _lanes
from .common import Knobs, _cat, _named, pick_cols


def _dpbf16ps(L: int):
    def dot(acc, w, x):
        """vdpbf16ps through the LLVM-IR placeholder (:mod:`lfmc.targets.llvm_ir`): TVM cannot pass bfloat
        vectors."""
        r = placeholder("llvm.x86.avx512.vpdpwssd.512", "int32x16", T.reinterpret("int32x16", acc),
                        T.reinterpret("int16x32", w), T.reinterpret("int16x32", x))
        return T.reinterpret("float32x16", r)
    return dot


def _fma_pairs(L: int):
    def dot(acc, w, x):
        """The same sums with float32 FMAs: each 32-bit word's high half is its odd input (bits in place), its
        low half the even one (shifted up)."""
        hi = T.broadcast(T.uint32(0xFFFF0000), L)
        sh = T.broadcast(T.uint32(16), L)
        w32, x32 = T.reinterpret(f"uint32x{L}", w), T.reinterpret(f"uint32x{L}", x)
        odd = T.call_llvm_pure_intrin(f"float32x{L}", f"llvm.fma.v{L}f32", T.reinterpret(f"float32x{L}", w32 & hi),
                                      T.reinterpret(f"float32x{L}", x32 & hi), acc)
        return T.call_llvm_pure_intrin(f"float32x{L}", f"llvm.fma.v{L}f32", T.reinterpret(f"float32x{L}", w32 << sh),
                                       T.reinterpret(f"float32x{L}", x32 << sh), odd)
    return dot


def _bfmmla(acc, a, b):
    """Arm bfmmla (FEAT_BF16): ``acc`` (float32 x 4: a 2 x 2 tile, row-major) plus the 2 x 4 bf16 matrix ``a`` times
    the transpose of the 2 x 4 bf16 matrix ``b`` (8 lanes each, row-major), through the LLVM-IR placeholder."""
    r = placeholder("llvm.aarch64.neon.ummla.v4i32.v16i8", "int32x4", T.reinterpret("int32x4", acc),
                    T.reinterpret("int8x16", a), T.reinterpret("int8x16", b))
    return T.reinterpret("float32x4", r)


def _tdpbf16ps(R: int, acc, a, b):
    """AMX tdpbf16ps through its LLVM-IR stand-in (:mod:`lfmc.targets.llvm_ir`): ``acc`` (float32 x 16R: an R x 16
    tile) plus the R x 32 bf16 tile ``a`` (uint16 bits) times the 16 x 32 bf16 tile ``b`` (row p: 16 outputs x
    inputs 2p, 2p + 1)."""
    from ..llvm_ir import AMX_BF16

    return T.call_pure_extern(f"float32x{16 * R}", AMX_BF16, acc, T.reinterpret(f"int8x{64 * R}", a),
                              T.reinterpret("int8x1024", b))


def _tdpbf16ps_emulated(R: int, acc, a, b):
    """The same tile product with the FMA pair family (16 lanes), row by row and pair by pair: the AMX kernels'
    TensorIR run on a CPU without AMX (tests). Its sums are the FMA family's, bit for bit; AMX hardware adds each
    pair in its own order, within float32 rounding of these."""
    dot, out = _fma_pairs(16), []
    for r in range(R):
        v = _cat([acc], range(16 * r, 16 * r + 16))
        for p in range(16):
            x = T.reinterpret("uint16x32", T.broadcast(T.reinterpret("uint32", _cat([a], range(32 * r + 2 * p,
                                                                                      32 * r + 2 * p + 2))), 16))
            v = dot(v, _cat([b], range(32 * p, 32 * p + 32)), x)
        out.append(v)
    return _cat(out, range(16 * R))


@dataclass(frozen=True)
class Bf16Family:
    """One ISA's bf16 pair dot product: ``make(L)`` gives ``dot(acc, w, x)``: ``acc`` (float32 x L) plus, per lane,
    the products of a 32-bit word of ``w`` (2L bf16) with the same word of ``x``; ``lanes``: the L it needs (0:
    the target's); ``instruction``: what its code must contain (tests check it). ``mmla``: a 2 x 4 by 4 x 2
    matrix product (bfmmla) that tiles of an even number of rows take instead (K then padded to 4). ``tile(R, acc,
    a, b)``: an R x 32 by 32 x 16 matrix product (AMX tdpbf16ps on tile registers) that prefill tiles of up to 16
    rows take (K then padded to 32)."""

    make: Callable
    lanes: int
    instruction: str
    mmla: Callable | None = None
    tile: Callable | None = None


BF16DOT: dict[str, Bf16Family] = {
    "avx512bf16": Bf16Family(_dpbf16ps, 16, "vdpbf16ps"),
    "fma": Bf16Family(_fma_pairs, 0, "vfmadd"),
    "bfmmla": Bf16Family(_fma_pairs, 0, "bfmmla", _bfmmla),
    "amx": Bf16Family(_dpbf16ps, 16, "tdpbf16ps", tile=_tdpbf16ps),
    # the AMX kernels with each tile product done by FMA pairs: what runs their TensorIR here (tests)
    "amx-emulated": Bf16Family(_fma_pairs, 16, "vfmadd", tile=_tdpbf16ps_emulated),
}


def bf16_lanes(knobs: Knobs) -> int:
    """Outputs per vector of the bf16-activation layout for ``knobs`` (:func:`lfmc.targets.knobs.bf16_lanes`)."""
    if knobs.bf16dot not in BF16DOT:
        raise ValueError(f"no bf16 dot-product family {knobs.bf16dot!r} (have {', '.join(BF16DOT)})")
    return _lanes(knobs)


def bf16_layout(N: int, K: int, swiglu: bool, L: int, kpad: int = 2) -> dict:
    """Shape of the bf16-activation matmul's packed weight (see the module doc); K padded to ``kpad``."""
    NB, Kp = -(-N // L), -(-K // kpad) * kpad
    return {"W": ((NB, Kp // 2, 2 if swiglu else 1, 2 * L), "uint16"), "NB": NB, "Kp": Kp}


class _Bf:
    """The static facts of one bf16-activation matmul: layout, register tile, fusions, instruction family."""

    def __init__(self, N: int, K: int, knobs: Knobs, bias: bool, rms_eps: float | None, accumulate: bool,
                 swiglu: bool, kpad: int = 0):
        self.N, self.K, self.bias, self.accumulate, self.swiglu = N, K, bias, accumulate, swiglu
        self.L = L = bf16_lanes(knobs)
        fam = BF16DOT[knobs.bf16dot]
        self.dot = fam.make(L)
        lay = bf16_layout(N, K, swiglu, L, kpad or bf16_kpad(knobs))
        self.wshape, self.NB, self.Kp = lay["W"][0], lay["NB"], lay["Kp"]
        self.R, self.H = knobs.rows, 2 if swiglu else 1
        self.J = pick_cols(self.NB, max(1, knobs.cols // self.H))
        self.par, self.norm = knobs.parallel, rms_eps is not None
        self.padk, self.padn = self.Kp != K, N % L != 0
        self.mm = fam.mmla if self.R % 2 == 0 else None    # row pairs x output pairs (bfmmla): L / 2 tiles a vector
        self.eps = float(rms_eps) if self.norm else 0.0
        # AMX tiles: R <= 16 rows x 16 outputs per tile, H x J of them (1 A + 2 H J tiles of the 8 registers)
        self.amx = fam.tile if fam.tile is not None and self.R <= 16 and self.Kp % 32 == 0 else None
        if self.amx is not None:
            self.J = pick_cols(self.NB, max(1, 3 // self.H))
            self.KT = self.Kp // 32

    def xshape(self, rows):
        """Shape of the bf16 activations: [rows, Kp], or for AMX flat, each tile's R x 32 values contiguous."""
        return (rows * self.Kp,) if self.amx is not None else (rows, self.Kp)

    def xat(self, row, k):
        """Index of activation (row, k) in the bf16 activations."""
        if self.amx is None:
            return row, k
        return ((row // self.R * self.KT + k // 32) * self.R + row % self.R) * 32 + k % 32


def _bits(v):
    """float32 -> bf16 bits, round half to even (finite values)."""
    b = T.reinterpret("uint32", v)
    return T.Cast("uint16", (b + T.uint32(0x7FFF) + ((b >> T.uint32(16)) & T.uint32(1))) >> T.uint32(16))


def _xval(c: _Bf, X, NW, Rn, i, k):
    v = X[i, k] * NW[k] * Rn[i] if c.norm else X[i, k]
    return T.if_then_else(k < c.K, v, T.float32(0)) if c.padk else v


def _pair(c: _Bf, Xb, row, k2):
    """x[row, 2 k2 : 2 k2 + 2] (one 32-bit word) repeated for the L outputs of a vector."""
    return T.reinterpret(f"uint16x{2 * c.L}", T.broadcast(T.reinterpret("uint32", Xb[row, T.ramp(2 * k2, 1, 2)]),
                                                           c.L))


def _mstep(c: _Bf, acc2, W, Xb, q, h, jj, jb, ib, p, o: int):
    """acc2's 2 x 2 tile of row pair q and output pair o plus inputs 4p..4p+3: packed rows 2p (each output's inputs
    4p, 4p+1) and 2p + 1 (4p+2, 4p+3) zipped into the two outputs' rows of 4."""
    L = c.L
    w = [W[jb * c.J + jj, 2 * p + i, h, T.ramp(0, 1, 2 * L)] for i in range(2)]
    b = _cat(w, (4 * o, 4 * o + 1, 2 * L + 4 * o, 2 * L + 4 * o + 1, 4 * o + 2, 4 * o + 3, 2 * L + 4 * o + 2,
                 2 * L + 4 * o + 3))
    a = _cat([Xb[ib * c.R + 2 * q + i, T.ramp(4 * p, 1, 4)] for i in range(2)], range(8))
    return c.mm(acc2[q, h, jj, o, T.ramp(0, 1, 4)], a, b)


def _unzip(c: _Bf, acc2, q, h, jj, half: int):
    """Row 2q + half of the L outputs from the vector's L / 2 tiles."""
    return _cat([acc2[q, h, jj, o, T.ramp(0, 1, 4)] for o in range(c.L // 2)],
                [4 * o + 2 * half + i for o in range(c.L // 2) for i in range(2)])


def _finish(c: _Bf, Res, Bv, acc, r, jj, t, row, o):
    a0 = acc[r, 0, jj, t]
    if c.swiglu:
        a0 = T.sigmoid(a0) * a0 * acc[r, 1, jj, t]
    if c.bias:
        a0 = a0 + Bv[o]
    if c.accumulate:
        a0 = a0 + Res[row, o]
    return a0


def _amx_tile_macro(c: _Bf):
    """TIR macro: one register tile with AMX tiles over all of K into ``acc``: per 32 inputs, the R x 32 activation
    tile times each (h, block)'s 16 packed rows of 16 outputs (contiguous without SwiGLU; gate and up rows
    alternate with it), the R x 16 float32 tiles carried across K."""
    R, H, J, KT = c.R, c.H, c.J, c.KT

    def wtile(Wf, blk, h, kt):
        """Packed rows 16 kt .. 16 kt + 15 of (block, h): one contiguous load without SwiGLU, else 16 rows."""
        row = lambda p: ((blk * (c.Kp // 2) + 16 * kt + p) * H + h) * 32     # noqa: E731
        if H == 1:
            return Wf[T.ramp(row(0), 1, 512)]
        return _cat([Wf[T.ramp(row(p), 1, 32)] for p in range(16)], range(512))

    @T.macro
    def tile(W, Wf, Xb, acc, jb, ib):
        ct = T.decl_buffer((H, J, R * 16), "float32")
        for h in T.unroll(H):
            for jj in T.unroll(J):
                ct[h, jj, T.ramp(0, 1, R * 16)] = T.broadcast(T.float32(0), R * 16)
        for kt in T.serial(KT):
            for h in T.unroll(H):
                for jj in T.unroll(J):
                    ct[h, jj, T.ramp(0, 1, R * 16)] = c.amx(R, ct[h, jj, T.ramp(0, 1, R * 16)],
                                                            Xb[T.ramp((ib * KT + kt) * R * 32, 1, R * 32)],
                                                            wtile(Wf, jb * J + jj, h, kt))
        for r in T.unroll(R):
            for h in T.unroll(H):
                for jj in T.unroll(J):
                    acc[r, h, jj, T.ramp(0, 1, 16)] = ct[h, jj, T.ramp(16 * r, 1, 16)]

    return tile


def _tile_macro(c: _Bf):
    """TIR macro: one register tile (R rows x J vectors) over all of K into ``acc``: pair dots, or with a matrix
    family 2 x 2 tiles of row pairs and output pairs unzipped into rows at the end."""
    R, H, J, L, Kp = c.R, c.H, c.J, c.L, c.Kp

    @T.macro
    def tile(W, Wf, Xb, acc, jb, ib):
        if c.mm is not None:
            acc2 = T.decl_buffer((R // 2, H, J, L // 2, 4), "float32")
            for q in T.unroll(R // 2):
                for h in T.unroll(H):
                    for jj in T.unroll(J):
                        for o in T.unroll(L // 2):
                            acc2[q, h, jj, o, T.ramp(0, 1, 4)] = T.broadcast(T.float32(0), 4)
            for p in T.serial(Kp // 4):
                for h in T.unroll(H):
                    for jj in T.unroll(J):
                        for q in T.unroll(R // 2):
                            acc2[q, h, jj, 0, T.ramp(0, 1, 4)] = _mstep(c, acc2, W, Xb, q, h, jj, jb, ib, p, 0)
                            acc2[q, h, jj, 1, T.ramp(0, 1, 4)] = _mstep(c, acc2, W, Xb, q, h, jj, jb, ib, p, 1)
            for q in T.unroll(R // 2):
                for h in T.unroll(H):
                    for jj in T.unroll(J):
                        acc[2 * q, h, jj, T.ramp(0, 1, L)] = _unzip(c, acc2, q, h, jj, 0)
                        acc[2 * q + 1, h, jj, T.ramp(0, 1, L)] = _unzip(c, acc2, q, h, jj, 1)
        else:
            for r in T.unroll(R):
                for h in T.unroll(H):
                    for jj in T.unroll(J):
                        acc[r, h, jj, T.ramp(0, 1, L)] = T.broadcast(T.float32(0), L)
            for k2 in T.serial(Kp // 2):
                for h in T.unroll(H):
                    for jj in T.unroll(J):
                        for r in T.unroll(R):
                            acc[r, h, jj, T.ramp(0, 1, L)] = c.dot(acc[r, h, jj, T.ramp(0, 1, L)],
                                                                   W[jb * J + jj, k2, h, T.ramp(0, 1, 2 * L)],
                                                                   _pair(c, Xb, ib * R + r, k2))

    return tile


def make_matmul_bf16(name: str, N: int, K: int, knobs: Knobs, bias: bool = False, rms_eps: float | None = None,
                     accumulate: bool = False, swiglu: bool = False, kpad: int = 0) -> tvm.tirx.PrimFunc:
    """:func:`make_matmul` with bf16 activations: the rows of X (RMS-normalized first when ``rms_eps``) rounded to
    bf16 (round half to even, as lfmc/ir/quant.py's ``round_bf16``) once per call, then R rows x J vectors of L
    outputs per register tile, one pair dot per (row, vector) and input pair. Args: X, W, (NW), (bias), (Res), Out,
    nb, as the float matmul's. ``kpad``: what the packed weight's K is padded to (0: :func:`.knobs.bf16_kpad`
    of ``knobs``; an artifact's ISA variants share their layout)."""
    c = _Bf(N, K, knobs, bias, rms_eps, accumulate, swiglu, kpad)
    R, H, J, L, NB, Kp, wshape = c.R, c.H, c.J, c.L, c.NB, c.Kp, c.wshape
    tile = _tile_macro(c) if c.amx is None else _amx_tile_macro(c)

    @T.prim_func
    def f(x: T.handle, w: T.handle, nw: T.handle, b: T.handle, res: T.handle, y: T.handle, nb: T.int32):
        X = T.match_buffer(x, (nb * R, K), "float32")
        W = T.match_buffer(w, wshape, "uint16")
        NW = T.match_buffer(nw, (K,), "float32")
        Bv = T.match_buffer(b, (N,), "float32")
        Res = T.match_buffer(res, (nb * R, N), "float32")
        Y = T.match_buffer(y, (nb * R, N), "float32")
        Wf = T.decl_buffer((NB * (Kp // 2) * H * 2 * L,), "uint16", data=W.data)
        Xb = T.alloc_buffer(c.xshape(nb * R), "uint16")
        Rn = T.alloc_buffer((nb * R,), "float32")
        for i in T.parallel(nb * R) if c.par else T.serial(nb * R):
            if c.norm:
                ss = T.decl_buffer((1,), "float32")
                ss[0] = T.float32(0)
                for k in T.serial(K):
                    ss[0] = ss[0] + X[i, k] * X[i, k]
                Rn[i] = T.float32(1) / T.sqrt(ss[0] / T.float32(K) + T.float32(c.eps))
            for k in T.serial(Kp):
                Xb[c.xat(i, k)] = _bits(_xval(c, X, NW, Rn, i, k))
        for jb in T.parallel(NB // J) if c.par else T.serial(NB // J):
            for ib in T.serial(nb):
                acc = T.decl_buffer((R, H, J, L), "float32")
                tile(W, Wf, Xb, acc, jb, ib)
                for r in T.serial(R):
                    for jj in T.serial(J):
                        for t in T.serial(L):
                            if not c.padn or (jb * J + jj) * L + t < N:      # padded outputs are never stored
                                Y[ib * R + r, (jb * J + jj) * L + t] = _finish(
                                    c, Res, Bv, acc, r, jj, t, ib * R + r, (jb * J + jj) * L + t)

    keep = [True, True, c.norm, bias, accumulate, True, True]
    f = tvm.tirx.PrimFunc([p for p, k in zip(f.params, keep) if k], f.body, f.ret_type, f.attrs)
    if not accumulate:
        f = f.with_attr("tirx.noalias", True)
    return _named(f, name)
