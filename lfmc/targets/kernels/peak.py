"""The arithmetic peak of an instruction family, measured on the machine that runs the artifact: a loop of the exact
instruction sequence the matmul kernels use (:data:`.matmul_a8.DOT`, :data:`.matmul_bf16.BF16DOT`, float32 FMAs) on
registers, ``ACCS`` independent accumulators per thread so that neither latency nor memory bounds it. ``lfmc bench
--profile`` sets each matmul's GOP/s against the peak of its family (the two vCPUs of a VM may be SMT siblings of
one core, so the peak is measured, not computed from the clock)."""
from __future__ import annotations

import tvm
from tvm.script import tirx as T

from ..knobs import PEAK_ACCS as ACCS, bf16_lanes, peak_spec
from .common import Knobs, _named


def _step(kind: str, knobs: Knobs):
    """One step acc -> acc of ``kind``'s family (buffers and operations per step: :func:`.knobs.peak_spec`)."""
    if kind == "f32":
        L = knobs.lanes
        return lambda acc, a, b: T.call_llvm_pure_intrin(f"float32x{L}", f"llvm.fma.v{L}f32", a, b, acc)
    if kind == "int8":
        from .matmul_a8 import DOT, _dot4, _widen16

        fam = DOT[knobs.dot]
        if fam.mmla is not None:                       # the prefill tiles' matrix product (smmla)
            return fam.mmla
        if fam.quad is None:                           # AVX2: pmaddubsw + pmaddwd, added
            return lambda acc, a, b: acc + _widen16(_dot4(T.reinterpret("uint8x32", a), b))
        return lambda acc, a, b: fam.quad(acc, T.reinterpret("uint8x32", a), b)
    from .matmul_bf16 import BF16DOT

    fam = BF16DOT[knobs.bf16dot]
    return fam.mmla if fam.mmla is not None else fam.make(bf16_lanes(knobs))


def make_peak(name: str, kind: str, knobs: Knobs) -> tvm.tirx.PrimFunc:
    """``kind`` ("f32", "int8" or "bf16") in ``knobs``' family: P threads x ``iters`` iterations of ACCS
    independent steps on two operand vectors (``In``: their bits); the accumulators are written to ``Out`` [P,
    ACCS, lanes] so that nothing is optimized away. Args: In, Out, P, iters."""
    spec = peak_spec(kind, knobs)
    (_, OL), odt = spec["in"]
    (_, L), adt = spec["out"]
    step = _step(kind, knobs)

    @T.prim_func
    def f(i: T.handle, o: T.handle, P: T.int32, iters: T.int32):
        In = T.match_buffer(i, (2, OL), odt)
        Out = T.match_buffer(o, (P, ACCS, L), adt)
        for p in T.parallel(P):
            acc = T.decl_buffer((ACCS, L), adt)
            for a in T.unroll(ACCS):
                acc[a, T.ramp(0, 1, L)] = T.broadcast(T.Cast(adt, 0), L)
            for it in T.serial(iters):
                for a in T.unroll(ACCS):
                    acc[a, T.ramp(0, 1, L)] = step(acc[a, T.ramp(0, 1, L)], In[0, T.ramp(0, 1, OL)],
                                                   In[1, T.ramp(0, 1, OL)])
            for a in T.unroll(ACCS):
                Out[p, a, T.ramp(0, 1, L)] = acc[a, T.ramp(0, 1, L)]

    return _named(f, name)


def make_read_peak(name: str, knobs: Knobs, streams: int = 1) -> tvm.tirx.PrimFunc:
    """The memory read bandwidth: each of P threads sums its contiguous share (rows p*n/P ...) of ``In`` [n, lanes]
    float32 into ACCS accumulator vectors (independent adds, so that only the loads bound it), written to ``Out``
    [P, ACCS, lanes] so that nothing is optimized away. ``streams`` > 1 reads each share as that many equal parts
    at once (how a GEMV reads several weight panels; benchmarks/decode_read_phases.py). ``n`` a multiple of
    P * streams * ACCS. Args: In, Out, P."""
    L, S = knobs.lanes, int(streams)

    @T.prim_func
    def f(i: T.handle, o: T.handle, P: T.int32):
        n = T.int32()
        In = T.match_buffer(i, (n, L), "float32")
        Out = T.match_buffer(o, (P, ACCS, L), "float32")
        for p in T.parallel(P):
            acc = T.decl_buffer((ACCS, L), "float32")
            for a in T.unroll(ACCS):
                acc[a, T.ramp(0, 1, L)] = T.broadcast(T.float32(0), L)
            for it in T.serial(n // P // (S * ACCS)):
                for s in T.unroll(S):
                    for a in T.unroll(ACCS):
                        acc[a, T.ramp(0, 1, L)] = acc[a, T.ramp(0, 1, L)] + In[
                            p * (n // P) + s * (n // P // S) + it * ACCS + a, T.ramp(0, 1, L)]
            for a in T.unroll(ACCS):
                Out[p, a, T.ramp(0, 1, L)] = acc[a, T.ramp(0, 1, L)]

    return _named(f, name)
