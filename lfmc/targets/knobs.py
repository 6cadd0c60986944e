"""Schedule knobs: what a target family chooses for the shared kernels. No TVM here, so that plans and packed
parameters can be rebuilt on a machine without it (a lent GPU regenerating weights from a seed)."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from ..ir.quant import ACT_GROUP


@dataclass(frozen=True)
class Knobs:
    """Target-chosen schedule parameters."""

    lanes: int = 8            # f32 vector width (8: AVX2 / NEON x2, 16: AVX-512)
    rows: int = 4             # matmul register tile rows (the rows of a call are padded to a multiple)
    cols: int = 3             # matmul register tile: vectors of `lanes` outputs per row
    f32_cols: int = 0         # ... for float32 weights (0: cols): the host's decode GEMV, 4 panels side by side
    parallel: bool = True
    gpu: bool = False         # GPU family: TE kernels left unscheduled for dlight, parallel loops become threads
    threads: int = 64         # GPU: threads per block (work-group) for lfmc's own loop kernels
    dot: str = ""             # integer dot-product family of int8-activation matmuls (act_quant nodes): a key of
                              # kernels/matmul_a8.DOT ("avx2", "vnni", "sdot", "i8mm", "amx"); "": the target has none
    bf16dot: str = ""         # bf16-activation matmuls (act_dtype bf16 nodes): a key of kernels/matmul_bf16.BF16DOT
                              # ("avx512bf16", "fma", "bfmmla", "amx"); "": the target has none
    a8_cols: int = 0          # int8-activation matmuls: `cols` of their register tile (0: cols)
    prefetch: int = 0         # int8-activation GEMVs: software prefetch this many bytes ahead (0: none)
    batch_rows: int = 0       # decode: matmul tile rows for steps of 2+ sequences (0: the 1-row GEMVs for all)
    batch_cols: int = 0       # ... and its vectors per row (0: cols)


# Decode GEMVs with at most this many weights run on one thread: a parallel launch wakes the pool and joins it
# (about 1 us per launch on a 2-core host), more than such a GEMV takes alone (lfm2-tiny's decode step: ~2x).
SERIAL_GEMV_WEIGHTS = 1 << 16
# Decode-only loop kernels (conv window, recurrence step) over at most this many channels: one thread too.
SERIAL_LOOP_CHANNELS = 256


def pick_lanes(n: int, lanes: int) -> int:
    """The widest vector width <= lanes that divides n (packed layouts need N % lanes == 0)."""
    for l in (lanes, 16, 8, 4, 2, 1):
        if l <= lanes and n % l == 0:
            return l
    return 1


def pick_cols(nvec: int, want: int) -> int:
    """The largest divisor of ``nvec`` that is at most ``want``: how many vectors (or blocks) a tile takes."""
    for c in range(min(want, nvec), 0, -1):
        if nvec % c == 0:
            return c
    return 1


def gpu_knobs(max_threads: int = 256) -> dict[str, Knobs]:
    """Knobs of every GPU family: row tiles of 1 (the runtime pads nothing), plain [N, K] weight layout (lanes 1),
    lfmc's loop kernels 64 threads wide (or the device's limit if lower)."""
    k = Knobs(lanes=1, rows=1, cols=1, parallel=True, gpu=True, threads=min(64, max_threads))
    return {"prefill": k, "decode": k}


def weight_cols(knobs: Knobs, qkind: str | None) -> int:
    """The register tile's vector columns for weights of ``qkind`` (None: float32): ``f32_cols`` for float32 where
    set; int4 on the CPU at most 4 (its unpacking needs registers of its own, and 8 columns spill to the stack,
    seen in the generated assembly); else ``cols``."""
    if qkind is None and knobs.f32_cols:
        return knobs.f32_cols
    return min(knobs.cols, 4) if qkind == "q4" and not knobs.gpu else knobs.cols


def matmul_cols(N: int, l: int, knobs: Knobs, swiglu: bool, qkind: str | None) -> int:
    """Vector columns (of ``l`` outputs) each thread of :func:`lfmc.targets.kernels.make_matmul`'s schedule
    accumulates at once (per half of a SwiGLU pair): :func:`weight_cols`, a divisor of N's."""
    cols = weight_cols(knobs, qkind)
    return pick_cols(N // l, max(1, cols // 2) if swiglu else cols)


PANEL_QUANTS = (("f16",), ("bf16",))    # the fallback's projections (not only LM heads): see gemv_panels


def gemv_panels(N: int, knobs: dict[str, Knobs], quant: tuple | None, swiglu: bool = False,
                head: bool = False) -> int:
    """Weight panels (of ``lanes`` outputs each) stored interleaved per input row for a 16-bit / int8 (per channel)
    weight (per half of a SwiGLU pair), so that the decode GEMV reads its columns in fewer streams (stop 45
    measured fewer streams faster; timed again with each artifact's page cache controlled, the interleave was
    within 2% either way: 1.02x for f16 decode, 0.97-0.99x for float32, which therefore stays panel after panel:
    BENCHMARKS.md, "Where an artifact's pages lie"). 1: panel after panel.

    Where every matmul tile of the weight (prefill, decode, batched decode) takes a multiple of the same number of
    panels (their gcd, > 1: 4 on AVX-512, 2 per SwiGLU half), every tile reads whole groups, contiguous per input
    row, and every projection takes it. Else (AVX2's 3-column prefill tile against its 8-column GEMV) only LM
    heads (``head``) and :data:`PANEL_QUANTS` projections, not SwiGLU pairs, interleave the decode's columns,
    which the narrower tiles read in K blocks (kernels/matmul.schedule_matmul; a float32 projection's prefill
    measured 7-18% slower that way). Never for float32 weights, grouped codes or on GPUs
    (plain [N, K] rows for dlight)."""
    decode = knobs["decode"]
    qkind = quant[0] if quant else None
    if decode.gpu or qkind is None or qkind == "q4" or (qkind == "q8" and len(quant) > 1):
        return 1
    l = pick_lanes(N, decode.lanes)
    want = matmul_cols(N, l, decode, swiglu, qkind)
    others = [matmul_cols(N, l, k, swiglu, qkind) for e, k in knobs.items() if e != "decode"]
    if decode.batch_rows:
        others.append(matmul_cols(N, l, dataclasses.replace(decode, cols=decode.batch_cols or decode.cols), swiglu,
                                  qkind))
    common = math.gcd(want, *others)
    if common > 1:
        return common
    if swiglu or not (head or quant in PANEL_QUANTS):
        return 1
    m = math.lcm(*others) if others else 1
    return next((p for p in range(want, 1, -1) if (N // l) % p == 0 and p % m == 0), 1)


BF16_PAIRS = -1    # a parameter's packed layout: the bf16-activation matmul's input pairs (0: float, > 0: int8 interleave)


def bf16_lanes(knobs: Knobs) -> int:
    """Outputs per vector of the bf16-activation matmul (and its packed layout): 16 for vdpbf16ps on zmm and AMX
    tiles (16 outputs a tile row), else the target's f32 lanes."""
    return 16 if knobs.bf16dot == "avx512bf16" or knobs.bf16dot in AMX else knobs.lanes


def bf16_kpad(knobs: Knobs, amx: bool = False) -> int:
    """What the bf16-activation layout pads K to: 32 where the prefill multiplies AMX tiles (``amx``: 32 inputs
    per tile product), 4 for bfmmla (4 inputs per step) and on NEON (4 lanes) for its FMA fallback, which reads
    the same packed weights; else 2 (input pairs)."""
    if amx or knobs.bf16dot in AMX:
        return 32
    return 4 if knobs.bf16dot == "bfmmla" or knobs.lanes == 4 else 2


PEAK_ACCS = 8      # peak kernels: independent accumulators per thread (8-12 measured at the peak on AVX-512; 16 spilled)


def peak_spec(kind: str, knobs: Knobs) -> dict:
    """The peak kernel of ``kind`` (kernels/peak.py) as the plan records it: its operand buffer ``in`` [2, lanes]
    and accumulator buffer ``out`` [threads, PEAK_ACCS, lanes] (shape without the threads, dtype), and the
    operations (multiplies and adds counted apart) per loop iteration and thread: float32 FMAs on ``lanes``, int8
    quads on 32 bytes, bf16 pairs on ``bf16_lanes``."""
    L, B = knobs.lanes, bf16_lanes(knobs)
    spec = {"f32": ((L, "float32"), (L, "float32"), 2 * L), "int8": ((32, "int8"), (8, "int32"), 64),
            "bf16": ((2 * B, "uint16"), (B, "float32"), 4 * B)}
    # the matrix families (Arm smmla / bfmmla), which the prefill tiles use: a 2 x 2 tile of 8 / 4 inputs
    if knobs.dot == "i8mm":
        spec["int8"] = ((16, "int8"), (4, "int32"), 2 * 2 * 2 * 8)
    if knobs.bf16dot == "bfmmla":
        spec["bf16"] = ((8, "uint16"), (4, "float32"), 2 * 2 * 2 * 4)
    if kind not in spec:
        raise ValueError(f"no peak kernel for {kind!r} (have {', '.join(spec)})")
    (il, idt), (ol, odt), ops = spec[kind]
    return {"in": [[2, il], idt], "out": [[PEAK_ACCS, ol], odt], "ops_per_iter": PEAK_ACCS * ops}


A8_GROUP = ACT_GROUP    # int8 activations: inputs per scale (one AVX2 register of codes); see lfmc/ir/quant.py


AMX = frozenset({"amx", "amx-emulated"})     # Knobs.dot / .bf16dot families that multiply AMX tiles


def amx_tiles(knobs: dict[str, Knobs], field: str = "dot") -> bool:
    """Whether the matmuls of ``knobs`` (entry -> Knobs) multiply AMX tiles in ``field``'s family: their weight
    layouts then give each tile's rows 64 contiguous bytes (:func:`a8_interleave`, :func:`bf16_kpad`)."""
    return any(getattr(k, field) in AMX for k in knobs.values())


def a8_interleave(N: int, swiglu: bool, decode: Knobs, quant: tuple, amx: bool = False) -> int:
    """Weight blocks of 8 outputs stored interleaved for the int8-activation matmul, so that the blocks a decode
    call reads side by side stream as one sequence: int4 codes (their integer work per byte is the larger; one
    stream with software prefetch measured fastest). int8 codes are not interleaved (1): their decode tiles read
    twice as many blocks, each from its own panel: these parallel streams measured faster than one interleaved
    stream on this repository's host CPU (BENCHMARKS.md, "W8A8 decode with int8 weights in parallel panels").
    With ``amx`` (the prefill multiplies AMX tiles) int8 codes pair blocks (il 2) unless gate and up already fill a
    packed row: each packed row is then 64 bytes, one row of a tile of 16 outputs."""
    if quant[0] == "q8":
        return 2 if amx and not swiglu else 1
    return pick_cols(-(-N // 8), max(1, decode.cols // 2 // (2 if swiglu else 1)))
