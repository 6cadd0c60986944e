"""Pieces every kernel family shares: the loop-kernel grid (CPU threads or GPU blocks), scratch storage,
naming, and the widening of stored weight elements."""
from __future__ import annotations

import tvm
from tvm.script import tirx as T

from ..knobs import A8_GROUP, Knobs, pick_cols, pick_lanes  # noqa: F401  (the makers' knobs, imported from here)

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


def _cat(vs, idx):
    """Lanes ``idx`` of the vectors ``vs`` laid end to end (a shufflevector: slices, concatenations, zips)."""
    return tvm.tirx.Shuffle(list(vs), [tvm.tirx.IntImm("int32", i) for i in idx])


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


def _flat(bi, ti, kn: Knobs):
    """The iteration index of a loop kernel's (block, thread) pair from :func:`_grid` and :func:`_lane`: each
    loop kernel guards it against its iteration count (the last GPU block may run past it)."""
    return bi * (kn.threads if kn.gpu else 1) + ti
