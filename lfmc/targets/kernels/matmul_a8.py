"""The int8-activation matmul (integer dot products) and its packed weight layout. One kernel; the instruction
family is the target's (``knobs.dot``, a key of :data:`DOT`): x86 AVX2's ``pmaddubsw`` + ``pmaddwd`` (two
instructions per 4-input block, int16 intermediate sums), AVX512-VNNI / AVX-VNNI's ``vpdpbusd`` (one, accumulating
in int32) and Arm's ``sdot`` (dotprod; signed times signed, two per 32-byte block on 128-bit NEON registers): the
same integer sums."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import tvm
from tvm.script import tirx as T

from .common import A8_GROUP, Knobs, _cat, _named, pick_cols


def _x86(name: str, dtype: str, *args):
    return T.call_llvm_pure_intrin(dtype, name, *args)


def _dot4(w_u8, x_i8):
    """pmaddubsw: unsigned 8-bit w times signed 8-bit x, adjacent pairs summed into int16 lanes."""
    return _x86("llvm.x86.avx2.pmadd.ub.sw", "int16x16", w_u8, x_i8)


def _dpbusd(acc, u8, s8):
    """vpdpbusd: ``acc`` plus, per int32 lane, the sum of 4 adjacent unsigned times signed products (the 256-bit
    form: AVX512-VNNI with AVX512-VL, or AVX-VNNI; LLVM picks the encoding from the target's features)."""
    return _x86("llvm.x86.avx512.vpdpbusd.256", "int32x8", acc, u8, s8)




def _sdot(acc, a, b):
    """Arm sdot on a 32-byte block: ``acc`` (8 int32 lanes) plus the sums of 4 adjacent signed times signed
    products, as two 128-bit ``sdot v.4s, v.16b, v.16b`` (NEON registers are 128 bits)."""
    a, b = T.reinterpret("int8x32", a), T.reinterpret("int8x32", b)
    # the halves are shufflevectors, free once LLVM splits the 256-bit values into registers
    halves = [T.call_llvm_pure_intrin("int32x4", "llvm.aarch64.neon.sdot.v4i32.v16i8",
                                      _cat([acc], range(4 * i, 4 * i + 4)),
                                      *(_cat([v], range(16 * i, 16 * i + 16)) for v in (a, b))) for i in range(2)]
    return _cat(halves, range(8))


def _tdpbusd(R: int, acc, a, b):
    """AMX tdpbusd through its LLVM-IR stand-in (:mod:`lfmc.targets.llvm_ir`): ``acc`` (int32 x 16R: an R x 16
    tile, row-major) plus the R x 32 unsigned tile ``a`` times the 8 x 64 signed tile ``b`` (row q: 16 outputs x
    inputs 4q..4q+3), per output the sum of its 32 products."""
    from ..llvm_ir import AMX_INT8

    return T.call_pure_extern(f"int32x{16 * R}", AMX_INT8, acc, a, b)


def _tdpbusd_emulated(R: int, acc, a, b):
    """The same tile product with vpdpbusd (two per tile row and 4-input quad): the AMX kernels' TensorIR run on a
    CPU without AMX (tests; QEMU emulates no AMX)."""
    out = []
    for r in range(R):
        for half in range(2):
            v = _cat([acc], range(16 * r + 8 * half, 16 * r + 8 * half + 8))
            for q in range(8):
                x4 = T.reinterpret("uint8x32", T.broadcast(T.reinterpret("int32", _cat([a], range(32 * r + 4 * q,
                                                                                             32 * r + 4 * q + 4))), 8))
                v = _dpbusd(v, x4, _cat([b], range(64 * q + 32 * half, 64 * q + 32 * half + 32)))
            out.append(v)
    return _cat(out, range(16 * R))


def _smmla(acc, a, b):
    """Arm smmla (i8mm): ``acc`` (int32 x 4: a 2 x 2 tile, row-major) plus the 2 x 8 signed matrix ``a`` times the
    transpose of the 2 x 8 signed matrix ``b`` (16 bytes each, row-major)."""
    return T.call_llvm_pure_intrin("int32x4", "llvm.aarch64.neon.smmla.v4i32.v16i8", acc, a, b)


@dataclass(frozen=True)
class DotFamily:
    """One ISA's integer dot product as the kernel uses it. ``quad(acc, a, b)``: ``acc`` (int32 x 8) plus, per
    lane, the sum of 4 adjacent products of a 32-byte block (None: the AVX2 path, pairs summed in int16 by
    ``pmaddubsw``). ``unsigned_a``: quad's first operand is unsigned (then int8 weights take the activations,
    stored offset by 128, as that operand); ``instruction``: what its inner loop must contain (tests check it).
    ``mmla``: a 2 x 8 by 8 x 2 matrix product (smmla), which tiles of an even number of rows take instead of the
    quad (two rows and two outputs per instruction: half the instructions of a quad per product). ``tile(R, acc,
    a, b)``: an R x 32 by 32 x 16 matrix product (AMX tdpbusd on tile registers), which the prefill tiles of int8 weights take
    (up to 16 rows; the quad does the rest)."""

    quad: Callable | None
    unsigned_a: bool
    instruction: str
    mmla: Callable | None = None
    tile: Callable | None = None


DOT: dict[str, DotFamily] = {
    "avx2": DotFamily(None, True, "vpmaddubsw"),
    "vnni": DotFamily(_dpbusd, True, "vpdpbusd"),
    "sdot": DotFamily(_sdot, False, "sdot"),
    "i8mm": DotFamily(_sdot, False, "smmla", _smmla),
    "amx": DotFamily(_dpbusd, True, "tdpbusd", tile=_tdpbusd),
    # the AMX kernels with each tile product done by vpdpbusd: what runs their TensorIR here (tests)
    "amx-emulated": DotFamily(_dpbusd, True, "vpdpbusd", tile=_tdpbusd_emulated),
}


def _widen16(v):
    """pmaddwd with ones: adjacent int16 pairs summed into int32 lanes (one lane per output of the block)."""
    return _x86("llvm.x86.avx2.pmadd.wd", "int32x8", v, T.broadcast(T.int16(1), 16))


def _xquad(Xq, i, k):
    """x[i, k:k+4] (int8, or uint8 offset by 128) repeated for each of the 8 outputs of a weight block: one
    broadcast 32-bit load."""
    return T.reinterpret(Xq.dtype + "x32", T.broadcast(T.reinterpret("int32", Xq[i, T.ramp(k, 1, 4)]), 8))


def a8_layout(N: int, K: int, quant: tuple, swiglu: bool, il: int) -> dict:
    """Shapes of the int8-activation matmul's packed operands (see :func:`make_matmul_a8`)."""
    H = 2 if swiglu else 1
    NB = -(-N // (8 * il)) * il
    Kp = -(-K // A8_GROUP) * A8_GROUP
    if len(quant) > 1:
        g = int(quant[1])
        if g % A8_GROUP or K % g:
            raise ValueError(f"int8 activations with grouped weights need groups that are multiples of {A8_GROUP} "
                             f"dividing K (group {g}, K={K})")
    if quant[0] == "q4":
        return {"W": ((NB // il, Kp // 8, H, il, 32), "uint8"), "S": ((NB // il, K // g, H, il, 8), "float16"),
                "NB": NB, "Kp": Kp}
    if quant[0] == "q8" and len(quant) > 1:            # int8 in groups (GGUF's Q8_0): float16 scales like int4's
        return {"W": ((NB // il, Kp // 4, H, il, 32), "int8"), "S": ((NB // il, K // g, H, il, 8), "float16"),
                "NB": NB, "Kp": Kp}
    if quant[0] == "q8":
        return {"W": ((NB // il, Kp // 4, H, il, 32), "int8"), "S": ((H, NB * 8), "float32"), "NB": NB, "Kp": Kp}
    raise ValueError(f"no int8-activation kernel for {quant[0]} weights")


def make_matmul_a8(name: str, N: int, K: int, knobs: Knobs, bias: bool = False, rms_eps: float | None = None,
                   accumulate: bool = False, swiglu: bool = False, quant: tuple = ("q8",),
                   il: int = 1) -> tvm.tirx.PrimFunc:
    """:func:`make_matmul` with int8 activations and integer dot products (``knobs.dot``): same arguments, same
    prologue / epilogues, different weight layout.

    The rows of X (RMS-normalized first when ``rms_eps``) are quantized per group of 32 inputs: d = max|x| / 127,
    q = round-half-even(x / d) (lfmc/ir/quant.py says the same for the interpreter). Weights are packed in blocks
    of 8 outputs x 4 inputs (32 bytes, one AVX2 register), ``il`` blocks interleaved (:func:`.knobs.a8_interleave`;
    int8 codes are packed with il 1, and a decode tile reads several panels side by side):
    int8 codes ``[N/8/il, K/4, H, il, 32]`` (q8; grouped q8's scales ``[N/8/il, K/g, H, il, 8]``), or two int4
    codes per byte ``[N/8/il, K/8, H, il, 32]`` whose low nibbles hold inputs 8m..8m+3 and high nibbles
    8m+4..8m+7 (q4; scales / zeros ``[N/8/il, K/g, H, il, 8]``).
    H = 2 (gate, up) with ``swiglu``; N is padded up to 8 * il outputs and K to 32 inputs.
    One ``pmaddubsw`` multiplies a block by four broadcast activations and sums pairs; int4 sums stay in int16 for
    32 inputs (|15 * 127 * 2| * 8 < 2^15), int8 ones go to int32 at once (unsigned |w| times sign-carrying x).
    With a quad family (``vpdpbusd``, ``sdot``: :data:`DOT`) one instruction does both steps and accumulates in
    int32 (the same integer sums).
    Per group the int32 sums become float: q4 ``scale * d * (sum - zero * sum(q))``, q8 ``d * sum`` (its channel
    scale after the loop; grouped q8 ``scale * d * sum``)."""
    c = _A8(N, K, knobs, bias, rms_eps, accumulate, swiglu, quant, il)
    R, H, J, KB = c.R, c.H, c.J, c.KB
    (wshape, wdtype), (sshape, sdtype) = c.lay["W"], c.lay["S"]
    tile = _amx_tile_macro(c) if c.amx is not None else _q4_tile_macro(c) if c.q4 else _q8_tile_macro(c)
    quantize, finish = _quantize_macro(c), _finish(c)

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
        Wf = T.decl_buffer((c.WBYTES,), wdtype, data=W.data)
        Xq = T.alloc_buffer(c.xshape(nb * R), c.xdtype)
        Dx = T.alloc_buffer((nb * R, KB), "float32")
        Xs = T.alloc_buffer((nb * R, KB), "int32")
        Rn = T.alloc_buffer((nb * R,), "float32")
        quantize(X, NW, Rn, Xq, Dx, Xs, nb * R)
        for jb in T.parallel(c.NB // J) if c.par else T.serial(c.NB // J):
            for ib in T.serial(nb):
                acc = T.decl_buffer((R, H, J, 8), "float32")
                for r in T.unroll(R):
                    for h in T.unroll(H):
                        for jj in T.unroll(J):
                            acc[r, h, jj, T.ramp(0, 1, 8)] = T.broadcast(T.float32(0), 8)
                tile(W, Wf, S, Zp, Xq, Dx, Xs, acc, jb, ib)
                for r in T.serial(R):
                    for jj in T.serial(J):
                        for t in T.serial(8):
                            if not c.padn or (jb * J + jj) * 8 + t < N:      # padded outputs are never stored
                                Y[ib * R + r, (jb * J + jj) * 8 + t] = finish(
                                    Res, Bv, S, acc, r, jj, t, ib * R + r, (jb * J + jj) * 8 + t)

    keep = [True, True, True, c.asym, c.norm, bias, accumulate, True, True]
    f = tvm.tirx.PrimFunc([p for p, k in zip(f.params, keep) if k], f.body, f.ret_type, f.attrs)
    if not accumulate:
        f = f.with_attr("tirx.noalias", True)
    return _named(f, name)


class _A8:
    """The static facts of one int8-activation matmul: its layout, register tile and what it fuses."""

    def __init__(self, N: int, K: int, knobs: Knobs, bias: bool, rms_eps: float | None, accumulate: bool,
                 swiglu: bool, quant: tuple, il: int):
        self.N, self.K, self.il, self.bias, self.accumulate, self.swiglu = N, K, il, bias, accumulate, swiglu
        self.lay = a8_layout(N, K, quant, swiglu, il)
        self.H = 2 if swiglu else 1
        self.R = knobs.rows
        cols = knobs.a8_cols or knobs.cols
        self.NB, self.Kp = self.lay["NB"], self.lay["Kp"]
        self.KB = self.Kp // A8_GROUP
        self.q4 = quant[0] == "q4"
        self.q8g = quant[0] == "q8" and len(quant) > 1      # int8 codes with a scale per group of g inputs
        if self.q4:                                     # the interleaved blocks
            self.J = pick_cols(il, max(1, cols // 2 // self.H))
        else:                                           # int8 (il 1): one panel per block; decode tiles take twice as many
            self.J = pick_cols(self.NB, max(1, cols // (1 if self.R == 1 else 2) // self.H))
        self.g = int(quant[1]) if len(quant) > 1 else A8_GROUP
        self.asym = bool(quant[2]) if self.q4 else False
        self.G, self.SB = (K // self.g, self.g // A8_GROUP) if len(quant) > 1 else (self.KB, 1)
        self.norm = rms_eps is not None
        self.eps = float(rms_eps) if self.norm else 0.0
        self.padk, self.padn = K % A8_GROUP != 0, self.NB * 8 != N
        self.par = knobs.parallel
        if knobs.dot not in DOT:
            raise ValueError(f"no integer dot-product family {knobs.dot!r} (have {', '.join(DOT)})")
        self.dot = DOT[knobs.dot]
        self.quad = self.dot.quad                       # None: AVX2 pairs (pmaddubsw) summed in int16
        self.mmla = self.dot.mmla if self.R % 2 == 0 else None   # row pairs x output pairs (smmla)
        # int8 weights with an unsigned-times-signed quad (vpdpbusd): the activations are the unsigned operand,
        # stored offset by 128, and each group's sums corrected by 128 x the weights' sum (one quad per block,
        # shared by the tile's rows) instead of moving every weight's sign onto x (vpsignb per row and block)
        self.xoff = self.quad is not None and self.dot.unsigned_a and not self.q4
        # AMX tiles (dot.tile): int8 codes whose packed rows are 64 bytes (16 outputs: il 2, or gate | up with
        # il 1), R <= 16 rows; T tile products per register tile (1 A + T B + T C tiles of the 8 registers)
        self.amx = self.dot.tile if (self.dot.tile is not None and not self.q4 and self.R <= 16
                                     and self.H * il == 2) else None
        if self.amx is not None:
            self.T = pick_cols(self.NB * self.H // 2, 3)
            self.J = self.T * 2 // self.H
        self.xdtype = "uint8" if self.xoff else "int8"
        self.ROW = self.H * il * 32                     # bytes of one packed row (4 inputs, or 8 for int4)
        self.WBYTES = self.NB // il * self.lay["W"][0][1] * self.ROW
        # software prefetch ``knobs.prefetch`` bytes ahead when one call streams whole interleaved rows (decode):
        # the integer work per byte leaves the out-of-order window too few loads in flight to hide memory latency
        self.pf = int(knobs.prefetch) if self.J == il else 0

    def xshape(self, rows):
        """Shape of the quantized activations: [rows, Kp], or for AMX flat, each tile's R x 32 codes contiguous
        (its rows for one tileloadd)."""
        return (rows * self.Kp,) if self.amx is not None else (rows, self.Kp)

    def xat(self, row, k):
        """Index of activation (row, k) in the quantized activations."""
        if self.amx is None:
            return row, k
        return ((row // self.R * self.KB + k // A8_GROUP) * self.R + row % self.R) * A8_GROUP + k % A8_GROUP


def _prefetch(c: _A8, Wf, at):
    return T.evaluate(T.call_llvm_intrin("void", "llvm.prefetch.p0", T.address_of(Wf[T.min(at, c.WBYTES - 1)]),
                                         0, 3, 1))


def _wblock(c: _A8, W, blk, m, h):
    """The 32 bytes of weight block ``blk`` (8 outputs) at packed row ``m``."""
    return W[blk // c.il, m, h, blk % c.il, T.ramp(0, 1, 32)]


def _nib(c: _A8, W, blk, m, h, high):
    v = _wblock(c, W, blk, m, h)
    return (v >> T.broadcast(T.uint8(4), 32)) if high else (v & T.broadcast(T.uint8(15), 32))


def _quantize_macro(c: _A8):
    """TIR macro: the rows of X (RMS-normalized first when the kernel fuses the norm) -> int8 codes per group of
    32 (Xq), each group's scale (Dx) and its code sum (Xs)."""
    K, KB, par, norm = c.K, c.KB, c.par, c.norm

    def code(v):
        """A rounded activation as stored: int8, or uint8 offset by 128."""
        return T.Cast("uint8", T.Cast("int32", v) + 128) if c.xoff else T.Cast("int8", v)

    def signed(q):
        return T.Cast("int32", q) - 128 if c.xoff else T.Cast("int32", q)

    def xval(X, NW, Rn, i, k):
        v = X[i, k] * NW[k] * Rn[i] if norm else X[i, k]
        return T.if_then_else(k < K, v, T.float32(0)) if c.padk else v

    @T.macro
    def quantize(X, NW, Rn, Xq, Dx, Xs, rows):
        if norm:
            for i in T.parallel(rows) if par else T.serial(rows):
                ss = T.decl_buffer((1,), "float32")
                ss[0] = T.float32(0)
                for k in T.serial(K):
                    ss[0] = ss[0] + X[i, k] * X[i, k]
                Rn[i] = T.float32(1) / T.sqrt(ss[0] / T.float32(K) + T.float32(c.eps))
        for ig in T.parallel(rows * KB) if par else T.serial(rows * KB):
            am = T.decl_buffer((2,), "float32")
            cs = T.decl_buffer((1,), "int32")
            am[0] = T.float32(0)
            for t in T.serial(A8_GROUP):
                am[0] = T.max(am[0], T.abs(xval(X, NW, Rn, ig // KB, ig % KB * A8_GROUP + t)))
            am[1] = T.if_then_else(am[0] > T.float32(0), T.float32(127) / am[0], T.float32(0))
            Dx[ig // KB, ig % KB] = am[0] / T.float32(127)
            cs[0] = 0
            for t in T.serial(A8_GROUP):
                Xq[c.xat(ig // KB, ig % KB * A8_GROUP + t)] = code(T.nearbyint(
                    xval(X, NW, Rn, ig // KB, ig % KB * A8_GROUP + t) * am[1]))
                cs[0] = cs[0] + signed(Xq[c.xat(ig // KB, ig % KB * A8_GROUP + t)])
            Xs[ig // KB, ig % KB] = cs[0]

    return quantize


def _mmla_w(w0, w1, k: int):
    """The smmla operand of outputs 2k and 2k + 1 (8 inputs each): ``w0`` holds each output's first 4 inputs at
    bytes 4o..4o+3 of a block, ``w1`` its next 4."""
    b = 8 * k
    return T.reinterpret("int8x16", _cat([w0, w1], [*range(b, b + 4), *range(32 + b, 36 + b), *range(b + 4, b + 8),
                                                     *range(36 + b, 40 + b)]))


def _mmla_x(Xq, row, k):
    """The smmla operand of rows ``row`` and ``row + 1``: x[row, k:k+8] then x[row + 1, k:k+8]."""
    return _cat([Xq[row, T.ramp(k, 1, 8)], Xq[row + 1, T.ramp(k, 1, 8)]], range(16))


def _mmla_macro(c: _A8):
    """TIR macro: the int32 sums of one group of 32 inputs of a register tile with smmla, for a tile of an even
    number of rows, left in ``s32[r, h, jj, 0:8]`` as the quad families leave them. ``w8(jj, m, h)`` gives the
    two 32-byte operands (inputs 0-3 and 4-7 of each output) of packed row pair ``m``; ``k0`` the group's first
    input."""
    R, H, J = c.R, c.H, c.J

    def step(acc4, W, Xq, q, h, jj, jb, ib, kb, k0, m, o: int):
        """acc4's 2 x 2 of row pair q and output pair o plus 8 inputs of packed row pair m."""
        return c.mmla(acc4[q, h, jj, o, T.ramp(0, 1, 4)], _mmla_x(Xq, ib * R + 2 * q, k0 + m * 8),
                      _mmla_w(*_pair(c, W, jb * J + jj, kb, m, h), o))

    def rows(acc4, q, h, jj, half: int):
        """The 8 outputs of row 2q + half from the block's four 2 x 2 tiles."""
        return _cat([acc4[q, h, jj, o, T.ramp(0, 1, 4)] for o in range(4)],
                    [4 * o + 2 * half + i for o in range(4) for i in range(2)])

    @T.macro
    def block(W, Xq, s32, jb, ib, kb, k0):
        acc4 = T.decl_buffer((R // 2, H, J, 4, 4), "int32")     # [row pair, h, block, output pair, 2 x 2]
        for q in T.unroll(R // 2):
            for h in T.unroll(H):
                for jj in T.unroll(J):
                    for o in T.unroll(4):
                        acc4[q, h, jj, o, T.ramp(0, 1, 4)] = T.broadcast(T.int32(0), 4)
        for m in T.unroll(4):                               # 8 inputs per step
            for h in T.unroll(H):
                for jj in T.unroll(J):
                    for q in T.unroll(R // 2):              # the block's 4 output pairs (shuffles take constants)
                        acc4[q, h, jj, 0, T.ramp(0, 1, 4)] = step(acc4, W, Xq, q, h, jj, jb, ib, kb, k0, m, 0)
                        acc4[q, h, jj, 1, T.ramp(0, 1, 4)] = step(acc4, W, Xq, q, h, jj, jb, ib, kb, k0, m, 1)
                        acc4[q, h, jj, 2, T.ramp(0, 1, 4)] = step(acc4, W, Xq, q, h, jj, jb, ib, kb, k0, m, 2)
                        acc4[q, h, jj, 3, T.ramp(0, 1, 4)] = step(acc4, W, Xq, q, h, jj, jb, ib, kb, k0, m, 3)
        for q in T.unroll(R // 2):
            for h in T.unroll(H):
                for jj in T.unroll(J):                      # row 2q: lanes 0, 1 of each 2 x 2; row 2q + 1: 2, 3
                    s32[2 * q, h, jj, T.ramp(0, 1, 8)] = rows(acc4, q, h, jj, 0)
                    s32[2 * q + 1, h, jj, T.ramp(0, 1, 8)] = rows(acc4, q, h, jj, 1)

    return block


def _pair(c: _A8, W, blk, kb, m, h):
    """Inputs 8m..8m+3 and 8m+4..8m+7 of group ``kb`` for the 8 outputs of block ``blk``: int4's low and high
    nibbles of packed row 4 kb + m, or int8's packed rows 8 kb + 2m and + 2m + 1."""
    if c.q4:
        return _nib(c, W, blk, kb * 4 + m, h, False), _nib(c, W, blk, kb * 4 + m, h, True)
    return _wblock(c, W, blk, kb * 8 + 2 * m, h), _wblock(c, W, blk, kb * 8 + 2 * m + 1, h)


def _q4_tile_macro(c: _A8):
    """TIR macro: one register tile (R rows x J blocks) of int4 weights, accumulated into ``acc``: int16 sums of
    32 inputs per ``pmaddubsw`` pair, then per group scale * d * (sum - zero * code sum) as float."""
    R, H, J, il, G, SB, ROW, Kp = c.R, c.H, c.J, c.il, c.G, c.SB, c.ROW, c.Kp
    use_pf = c.pf > 0
    quad = c.quad
    V, ACC, acc_t = (8, "int32x8", "int32") if quad else (16, "int16x16", "int16")   # the group's sums

    def q4group(S, Zp, Xs, Dx, a16, r, h, jj, blk, q, kb, row):
        at = (blk // il, q, h, blk % il, T.ramp(0, 1, 8))
        s32 = a16[r, h, jj, T.ramp(0, 1, 8)] if quad else _widen16(a16[r, h, jj, T.ramp(0, 1, 16)])
        if c.asym:
            v = T.Cast("float32x8", s32) - T.Cast("float32x8", Zp[at]) * T.broadcast(T.Cast("float32", Xs[row, kb]), 8)
        else:
            v = T.Cast("float32x8", s32 - T.broadcast(Xs[row, kb] * 8, 8))
        return v * (T.Cast("float32x8", S[at]) * T.broadcast(Dx[row, kb], 8))

    def q4dot(a, lo, xlo, hi, xhi):
        """The group's running sums plus a block's low-nibble and high-nibble products."""
        if quad:                                    # nibbles 0..15: unsigned or signed alike
            return quad(quad(a, lo, xlo), hi, xhi)
        return a + _dot4(lo, xlo) + _dot4(hi, xhi)

    mmla = _mmla_macro(c) if c.mmla is not None else None

    @T.macro
    def tile(W, Wf, S, Zp, Xq, Dx, Xs, acc, jb, ib):
        for q in T.serial(G):
            for sb in T.serial(SB):
                a16 = T.decl_buffer((R, H, J, V), acc_t)
                if use_pf:
                    for cc in T.unroll(ROW * 4 // 64):
                        _prefetch(c, Wf, ((jb * (Kp // 8) + (q * SB + sb) * 4) * ROW) + c.pf + cc * 64)
                if c.mmla is not None:
                    mmla(W, Xq, a16, jb, ib, q * SB + sb, (q * SB + sb) * 32)
                else:
                    for r in T.unroll(R):
                        for h in T.unroll(H):
                            for jj in T.unroll(J):
                                a16[r, h, jj, T.ramp(0, 1, V)] = T.broadcast(T.Cast(acc_t, 0), V)
                    for m in T.unroll(4):
                        for h in T.unroll(H):
                            for jj in T.unroll(J):
                                for r in T.unroll(R):
                                    a16[r, h, jj, T.ramp(0, 1, V)] = q4dot(
                                        a16[r, h, jj, T.ramp(0, 1, V)],
                                        _nib(c, W, jb * J + jj, (q * SB + sb) * 4 + m, h, False),
                                        _xquad(Xq, ib * R + r, (q * SB + sb) * 32 + m * 8),
                                        _nib(c, W, jb * J + jj, (q * SB + sb) * 4 + m, h, True),
                                        _xquad(Xq, ib * R + r, (q * SB + sb) * 32 + m * 8 + 4))
                for r in T.unroll(R):
                    for h in T.unroll(H):
                        for jj in T.unroll(J):
                            acc[r, h, jj, T.ramp(0, 1, 8)] = acc[r, h, jj, T.ramp(0, 1, 8)] + q4group(
                                S, Zp, Xs, Dx, a16, r, h, jj, jb * J + jj, q, q * SB + sb, ib * R + r)

    return tile


def _q8_tile_macro(c: _A8):
    """TIR macro: one register tile of int8 weights, accumulated into ``acc``: int32 sums per group of 32
    (unsigned |w| times sign-carrying x), times the group's activation scale."""
    R, H, J, KB, ROW, Kp, SB, il = c.R, c.H, c.J, c.KB, c.ROW, c.Kp, c.SB, c.il
    use_pf = c.pf > 0

    def scaled(S, Dx, a32, ws, r, h, jj, blk, kb, row):
        """A group's int32 sums as float: times the activation scale (and the weight group's scale); offset
        activations first lose 128 x the weights' sum."""
        s32 = a32[r, h, jj, T.ramp(0, 1, 8)]
        if c.xoff:
            s32 = s32 - ws[h, jj, T.ramp(0, 1, 8)] * T.broadcast(T.int32(128), 8)
        v = T.Cast("float32x8", s32) * T.broadcast(Dx[row, kb], 8)
        if c.q8g:
            v = v * T.Cast("float32x8", S[blk // il, kb // SB, h, blk % il, T.ramp(0, 1, 8)])
        return v

    def q8dot(a, W, Xq, blk, m, h, row, k):
        """The group's running int32 sums plus one block's products: offset x (unsigned) times w (signed) with
        an unsigned-times-signed quad (VNNI); x times w with a signed one (sdot); else (AVX2) |w| (unsigned)
        times x carrying w's sign."""
        v = _wblock(c, W, blk, m, h)
        if c.quad is not None:                      # x offset to unsigned where the quad wants it (c.xoff)
            return c.quad(a, _xquad(Xq, row, k), v)
        xs = _x86("llvm.x86.avx2.psign.b", "int8x32", _xquad(Xq, row, k), v)
        return a + _widen16(_dot4(T.abs(v), xs))

    mmla = _mmla_macro(c) if c.mmla is not None else None

    @T.macro
    def tile(W, Wf, S, Zp, Xq, Dx, Xs, acc, jb, ib):
        for kb in T.serial(KB):
            a32 = T.decl_buffer((R, H, J, 8), "int32")
            if use_pf:
                for cc in T.unroll(ROW * 8 // 64):
                    _prefetch(c, Wf, ((jb * (Kp // 4) + kb * 8) * ROW) + c.pf + cc * 64)
            ws = T.decl_buffer((H, J, 8), "int32")          # the group's weight sums (offset activations)
            if c.mmla is not None:
                mmla(W, Xq, a32, jb, ib, kb, kb * 32)
            else:
                for r in T.unroll(R):
                    for h in T.unroll(H):
                        for jj in T.unroll(J):
                            a32[r, h, jj, T.ramp(0, 1, 8)] = T.broadcast(T.int32(0), 8)
                if c.xoff:
                    for h in T.unroll(H):
                        for jj in T.unroll(J):
                            ws[h, jj, T.ramp(0, 1, 8)] = T.broadcast(T.int32(0), 8)
                for m in T.unroll(8):
                    for h in T.unroll(H):
                        for jj in T.unroll(J):
                            if c.xoff:
                                ws[h, jj, T.ramp(0, 1, 8)] = c.quad(ws[h, jj, T.ramp(0, 1, 8)],
                                                                     T.broadcast(T.uint8(1), 32),
                                                                     _wblock(c, W, jb * J + jj, kb * 8 + m, h))
                            for r in T.unroll(R):
                                a32[r, h, jj, T.ramp(0, 1, 8)] = q8dot(
                                    a32[r, h, jj, T.ramp(0, 1, 8)], W, Xq, jb * J + jj, kb * 8 + m, h, ib * R + r,
                                    kb * 32 + m * 4)
            for r in T.unroll(R):
                for h in T.unroll(H):
                    for jj in T.unroll(J):
                        acc[r, h, jj, T.ramp(0, 1, 8)] = acc[r, h, jj, T.ramp(0, 1, 8)] + scaled(
                            S, Dx, a32, ws, r, h, jj, jb * J + jj, kb, ib * R + r)

    return tile


def _amx_tile_macro(c: _A8):
    """TIR macro: one register tile of int8 weights with AMX tiles, accumulated into ``acc``: per group of 32
    inputs and tile product, the R x 32 activation codes (offset by 128) times the 8 packed rows of 16 outputs
    (512 contiguous bytes: a panel of il 2, or gate | up), an R x 16 int32 tile; then per output column 128 x
    the weights' sum off (vpdpbusd on the same bytes) and the group's scales on, as the quad kernel does."""
    R, H, J, T_, KB, Kp, SB, il = c.R, c.H, c.J, c.T, c.KB, c.Kp, c.SB, c.il

    def col(t: int, half: int):
        """(h, jj) of tile t's columns 8 half .. 8 half + 7."""
        return (half, t) if H == 2 else (0, 2 * t + half)

    def scaled(S, Dx, ct, ws, r, t, half, jb, kb, row):
        h, jj = col(t, half)
        blk = jb * J + jj
        s32 = ct[t, T.ramp(16 * r + 8 * half, 1, 8)] - ws[t, T.ramp(8 * half, 1, 8)] * T.broadcast(T.int32(128), 8)
        v = T.Cast("float32x8", s32) * T.broadcast(Dx[row, kb], 8)
        if c.q8g:
            v = v * T.Cast("float32x8", S[blk // il, kb // SB, h, blk % il, T.ramp(0, 1, 8)])
        return v

    def panel(jb, t, kb):
        """Flat offset of the 512 weight bytes of tile t, group kb."""
        return ((jb * T_ + t) * (Kp // 4) + kb * 8) * 64

    @T.macro
    def tile(W, Wf, S, Zp, Xq, Dx, Xs, acc, jb, ib):
        for kb in T.serial(KB):
            ct = T.decl_buffer((T_, R * 16), "int32")
            ws = T.decl_buffer((T_, 16), "int32")
            for t in T.unroll(T_):
                ct[t, T.ramp(0, 1, R * 16)] = c.amx(R, T.broadcast(T.int32(0), R * 16),
                                                    Xq[T.ramp((ib * KB + kb) * R * 32, 1, R * 32)],
                                                    Wf[T.ramp(panel(jb, t, kb), 1, 512)])
                for half in T.unroll(2):
                    ws[t, T.ramp(8 * half, 1, 8)] = T.broadcast(T.int32(0), 8)
                    for m in T.unroll(8):
                        ws[t, T.ramp(8 * half, 1, 8)] = c.quad(ws[t, T.ramp(8 * half, 1, 8)],
                                                               T.broadcast(T.uint8(1), 32),
                                                               Wf[T.ramp(panel(jb, t, kb) + m * 64 + half * 32, 1, 32)])
            for r in T.unroll(R):
                for t in T.unroll(T_):
                    for half in T.unroll(2):
                        acc[r, col(t, half)[0], col(t, half)[1], T.ramp(0, 1, 8)] = \
                            acc[r, col(t, half)[0], col(t, half)[1], T.ramp(0, 1, 8)] + scaled(
                                S, Dx, ct, ws, r, t, half, jb, kb, ib * R + r)

    return tile


def _finish(c: _A8):
    """The output element from the float tile: q8's channel scale, silu(gate) * up, bias, residual."""
    def finish(Res, Bv, S, acc, r, jj, t, row, o):
        chan = not (c.q4 or c.q8g)                  # per-channel int8: its scale once, here
        a0 = acc[r, 0, jj, t] * S[0, o] if chan else acc[r, 0, jj, t]
        if c.swiglu:
            u = acc[r, 1, jj, t] * S[1, o] if chan else acc[r, 1, jj, t]
            a0 = T.sigmoid(a0) * a0 * u
        if c.bias:
            a0 = a0 + Bv[o]
        if c.accumulate:
            a0 = a0 + Res[row, o]
        return a0
    return finish
