"""IR -> kernels + kernel plan + packed parameters. Written once and shared by every target family.

The plan is plain JSON that the runtime executes without any compiler import:

- ``slabs``: activation buffers, each viewed per launch as ``[rows, cols]``; ``rows`` is a spec evaluated per
  call: ``"n"`` (rows of the call: prefill-chunk tokens or decode sequences), ``"np"`` (n rounded up to the
  entry's row tile), ``"nk"`` (n × experts per token), or an integer. The runtime sizes each slab once, for
  its largest use, so decode allocates nothing per token.
- ``state``: per-sequence-slot state, shapes with ``S`` (slots = max batch) and ``C`` (max context).
- ``params``: packed weights (the layout the kernels read), stored in ``params.safetensors``.
- ``entries``: ``prefill`` (one sequence, a chunk of tokens) and ``decode`` (one token for each of n
  sequences), each an ordered list of :class:`lfmc.plan.Launch` es (a kernel and its :class:`lfmc.plan.Arg` s:
  slabs, parameters, state, the int32 ``tokens`` / ``slots`` / ``pos`` inputs, the ``nb`` / ``slot`` scalars,
  constants), written as the JSON that :mod:`lfmc.plan` describes.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from ..ir.errors import LfmcError
from ..ir.graph import Graph, Node
from ..ir.ops import schema, state_types
from ..ir.quant import storage_dtype
from ..plan import ENTRIES, PLAN_VERSION, Arg, Launch, launches
from ..progress import task
from . import knobs as KN

SYMBOLIC_DIMS = {"ctx": "C", "ring": "R"}      # IR state dims -> the plan's (lfmc.plan.STATE_DIMS)
SHORT_PREFILL = 16     # prefill calls of up to this many rows (a verify of drafts) take the batched-decode matmuls


@dataclass
class KernelSpec:
    """How to make one kernel: a maker of :mod:`lfmc.targets.kernels` by name (imported when built: lowering itself,
    the plan and the packed parameters, needs no TVM), or a function (a tuned variant), and its arguments by
    name (``spec.kw["N"]``: what tuning and the caches read)."""

    maker: str | Callable[..., Any]
    kw: dict[str, Any]
    # optional CPU features (manifest keys) its code uses: built for the full target, the artifact's other kernels
    # without them; the runtime runs its fallback (an ISA variant, lfmc/targets/variants.py) on a CPU that lacks
    # one
    needs: tuple[str, ...] = ()

    @property
    def maker_name(self) -> str:
        """The maker's name (a function's own name: ``_fixed`` for a tuned variant); what caches and tuning key
        on (a ``make_*`` name with plain arguments is keyed without building the kernel)."""
        return self.maker if isinstance(self.maker, str) else getattr(self.maker, "__name__", "")

    @property
    def knobs(self) -> KN.Knobs | None:
        """The schedule knobs among the arguments (every maker takes one), or None."""
        return next((a for a in self.kw.values() if isinstance(a, KN.Knobs)), None)

    def make(self, name: str, **extra: Any):
        """The kernel's PrimFunc named ``name``; ``extra``: more keyword arguments (a tuned variant's shape)."""
        if isinstance(self.maker, str):
            from . import kernels

            return getattr(kernels, self.maker)(name, **self.kw, **extra)
        return self.maker(name, **self.kw, **extra)

    def build(self, name: str):
        return self.make(name)


@dataclass
class Lowered:
    plan: dict[str, Any]
    kernels: dict[str, KernelSpec]
    params: dict[str, np.ndarray]


def pack_linear(w: np.ndarray, lanes: int) -> np.ndarray:
    """[N, K] -> [N/l, K, l]: each block of l output rows becomes one contiguous panel (any dtype)."""
    N, Kd = w.shape
    l = KN.pick_lanes(N, lanes)
    return np.ascontiguousarray(w.reshape(N // l, l, Kd).transpose(0, 2, 1))


def pack_weight(w: np.ndarray, scale: np.ndarray | None, zero: np.ndarray | None, quant: tuple | None, lanes: int,
                swiglu: bool, panels: int = 1) -> tuple[np.ndarray, list[np.ndarray]]:
    """A weight [M, K] (float, or integer codes with scale/zero [M, G]) in the layout :func:`make_matmul` reads,
    plus its extra operands (scale, zero). With ``swiglu`` the M = 2N rows are [gate; up]; ``panels`` > 1:
    that many panels interleaved per input row (:func:`lfmc.targets.knobs.gemv_panels`)."""
    if quant and quant[0] == "q4":
        w = (w[:, 0::2] | (w[:, 1::2] << 4)).astype(np.uint8)          # two 4-bit codes per byte along K
    if quant and quant[0] == "bf16":
        w = np.ascontiguousarray(w).view(np.uint16)                     # bf16 bits; the kernels widen them
    M, Kp = w.shape
    if swiglu:
        N = M // 2
        l = KN.pick_lanes(N, lanes)
        packed = np.ascontiguousarray(w.reshape(2, N // l, l, Kp).transpose(1, 0, 3, 2))
    else:
        packed = pack_linear(w, lanes)
    if panels > 1:          # [N/l, (2,) K, l] -> [N/(P l), (2,) K, P, l]
        nb = packed.shape[0]
        if nb % panels:
            raise ValueError(f"{panels} panels must divide the {nb} panels of the weight")
        t = packed.reshape(nb // panels, panels, *packed.shape[1:])
        packed = np.ascontiguousarray(np.moveaxis(t, 1, -2))
    extra = []
    if quant and quant[0] in ("q8", "q4"):
        G = scale.shape[-1]
        lead = (2, M // 2) if swiglu else (M,)
        extra.append(np.ascontiguousarray(scale.reshape(*lead) if quant == ("q8",) else scale.reshape(*lead, G),
                                          dtype=np.float32))
        if zero is not None:
            extra.append(np.ascontiguousarray(zero.reshape(*lead, G), dtype=np.float32))
    return packed, extra


def pack_weight_a8(w: np.ndarray, scale: np.ndarray, zero: np.ndarray | None, quant: tuple,
                   swiglu: bool, il: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """A quantized weight [M, K] (codes, scale / zero [M, G]) in the layout of the int8-activation matmul
    (:func:`lfmc.targets.kernels.make_matmul_a8`): blocks of 8 outputs x 4 inputs, ``il`` blocks interleaved,
    int4 scales / zeros in float16 (exact for lfmc's own quantization, see lfmc/ir/quant.py; an imported file's
    float32 scales, e.g. ONNX MatMulNBits, are rounded to the nearest float16: at most 2^-11 relative),
    N padded to 8 * il and K to 32 with zero codes and zero scales (padded outputs are never stored, padded
    inputs are zero)."""
    M, Kd = w.shape
    A8_GROUP = KN.A8_GROUP
    H = 2 if swiglu else 1
    N = M // H
    NB = -(-N // (8 * il)) * il
    Kp = -(-Kd // A8_GROUP) * A8_GROUP
    codes = np.zeros((H, NB * 8, Kp), w.dtype)
    codes[:, :N, :Kd] = w.reshape(H, N, Kd)

    def blocks(c: np.ndarray) -> np.ndarray:
        """[h, block, o, m, b] (4 bytes b of output o at packed row m) -> [block / il, m, h, block % il, o * 4 + b]."""
        m = c.shape[3]
        return c.reshape(H, NB // il, il, 8, m, 4).transpose(1, 4, 0, 2, 3, 5).reshape(NB // il, m, H, il, 32)

    def group_scales(arrays) -> list[np.ndarray]:
        """Per-group scales / zeros as float16 [NB / il, G, H, il, 8] (nearest)."""
        G = scale.shape[-1]
        out = []
        for a in arrays:
            if a is None:
                continue
            t = np.zeros((H, NB * 8, G), np.float16)
            t[:, :N] = a.reshape(H, N, G)
            out.append(np.ascontiguousarray(t.reshape(H, NB // il, il, 8, G).transpose(1, 4, 0, 2, 3)))
        return out

    if quant[0] == "q4":
        c = codes.reshape(H, NB, 8, Kp // 8, 2, 4)                       # [h, block, o, m, nibble, b]
        packed = blocks((c[:, :, :, :, 0, :] | (c[:, :, :, :, 1, :] << 4)).astype(np.uint8))
        return np.ascontiguousarray(packed), group_scales((scale, zero))
    packed = blocks(codes.reshape(H, NB, 8, Kp // 4, 4))                  # [h, block, o, m, b]
    if quant != ("q8",):                                                  # int8 in groups (GGUF's Q8_0)
        return np.ascontiguousarray(packed), group_scales((scale,))
    sc = np.zeros((H, NB * 8), np.float32)
    sc[:, :N] = scale.reshape(H, N)
    return np.ascontiguousarray(packed), [sc]


def n_extra(quant: tuple | None) -> int:
    """Operands a weight brings besides itself: a scale (q8, q4) and a zero (asymmetric q4)."""
    if not quant or quant[0] not in ("q8", "q4"):
        return 0
    return 2 if quant[0] == "q4" and quant[2] else 1


def pack_weight_bf16(w: np.ndarray, swiglu: bool, L: int, kpad: int = 2) -> tuple[np.ndarray, list[np.ndarray]]:
    """A bf16 weight [M, K] (uint16 bits, or any float) in the layout of the bf16-activation matmul
    (:func:`lfmc.targets.kernels.make_matmul_bf16`): [N/L, K/2, H, 2L], input pairs of each output side by side,
    N padded to L and K to a multiple of ``kpad`` with zeros."""
    import ml_dtypes

    bits = w.view(np.uint16) if w.dtype == ml_dtypes.bfloat16 else \
        np.asarray(w, np.float32).astype(ml_dtypes.bfloat16).view(np.uint16)
    M, Kd = bits.shape
    H = 2 if swiglu else 1
    N = M // H
    NB, Kp = -(-N // L), -(-Kd // kpad) * kpad
    t = np.zeros((H, NB * L, Kp), np.uint16)
    t[:, :N, :Kd] = bits.reshape(H, N, Kd)
    # [h, nb, o, k2, two] -> [nb, k2, h, o * 2 + two]
    return np.ascontiguousarray(t.reshape(H, NB, L, Kp // 2, 2).transpose(1, 3, 0, 2, 4).reshape(NB, Kp // 2, H,
                                                                                                2 * L)), []


def pack_any(w: np.ndarray, scale: np.ndarray | None, zero: np.ndarray | None, quant: tuple | None, lanes: int,
             swiglu: bool, il: int, bf16: tuple[int, int] = (16, 2),
             panels: int = 1) -> tuple[np.ndarray, list[np.ndarray]]:
    """A weight in the layout of the matmul that reads it: the bf16-activation one when ``il`` is
    ``BF16_PAIRS`` (``bf16``: outputs per vector, K padding), the int8-activation one when ``il`` > 0 (its interleave),
    else :func:`make_matmul`'s (``panels`` interleaved)."""
    if il == KN.BF16_PAIRS:
        return pack_weight_bf16(w, swiglu, *bf16)
    if il:
        return pack_weight_a8(w, scale, zero, quant, swiglu, il)
    return pack_weight(w, scale, zero, quant, lanes, swiglu, panels)


def quant_spec(n: Node, role: str) -> tuple | None:
    """The kernel's quantization spec for weight ``role`` of ``n`` (see lfmc/ir/quant.py), or None."""
    p = n.params[role]
    if p.type.dtype in ("f16", "bf16"):
        return (p.type.dtype,)
    if role + "_scale" not in n.params:
        return None
    G = n.params[role + "_scale"].type.shape[-1]
    Kd = p.type.shape[-1]
    if p.type.dtype == "i8":
        return ("q8",) if G == 1 else ("q8", Kd // G)
    if p.type.dtype == "u4":
        return ("q4", Kd // G, role + "_zero" in n.params)
    raise LfmcError(f"%{n.name}: no kernel for {p.type.dtype} weights")


@dataclass
class _Lowering:
    graph: Graph
    weights: dict[str, np.ndarray]
    knobs: dict[str, KN.Knobs]
    kernels: dict[str, KernelSpec] = field(default_factory=dict)
    params: dict[str, np.ndarray] = field(default_factory=dict)
    state: dict[str, dict[str, Any]] = field(default_factory=dict)
    slabs: dict[str, dict[str, Any]] = field(default_factory=dict)
    entry_names: tuple[str, ...] = ENTRIES            # ("vision",) for a VL model's image encoder
    prefix: str = ""                                   # of slab names ("vis." for the image encoder)
    layouts: dict[str, int] = field(default_factory=dict)
    node_name: str = ""
    row_variants: dict[str, str] = field(default_factory=dict)   # decode matmul -> its batch_rows-tall twin
    short_prefill: dict[str, str] = field(default_factory=dict)  # prefill matmul -> that twin (verify-sized calls)
    arith: dict[str, str] = field(default_factory=dict)   # dense matmul -> its arithmetic family (f32, int8, bf16)

    def __post_init__(self) -> None:
        self.entries: dict[str, list[Launch]] = {e: [] for e in self.entry_names}

    @property
    def loop(self) -> KN.Knobs:
        """Knobs of the loop kernels (conv, scan, attention, router, elementwise): the family's, from prefill."""
        return self.knobs["prefill"]

    def decode_loop(self, D: int) -> KN.Knobs:
        """Knobs of a decode-only loop kernel over ``D`` channels: one thread when D is too small to pay for a
        parallel launch (:data:`lfmc.targets.knobs.SERIAL_LOOP_CHANNELS`)."""
        kn = self.loop
        return dataclasses.replace(kn, parallel=False) if self.decode_key(D) else kn

    def decode_key(self, D: int) -> tuple[str, ...]:
        """The kernel-key suffix of :meth:`decode_loop`'s choice: ``("1t",)`` for one thread."""
        kn = self.loop
        return ("1t",) if kn.parallel and not kn.gpu and D <= KN.SERIAL_LOOP_CHANNELS else ()

    # --- registries
    def kernel(self, key: tuple, maker: str, **kw: Any) -> str:
        """Register the kernel ``maker(**kw)`` under a name made from ``key``; its name."""
        name = "k_" + "_".join(str(k).replace(".", "p").replace("-", "m") for k in key)
        self.kernels.setdefault(name, KernelSpec(maker, kw))
        return name

    def param(self, name: str, make: Callable[[], np.ndarray]) -> Arg:
        if name not in self.params and self.weights is not None:
            a = np.ascontiguousarray(make())
            self.params[name] = a.astype(np.float32) if a.dtype == np.float64 else a   # f16 / codes stay
        return Arg.param(name)

    def w(self, n: Node, role: str) -> np.ndarray | None:
        """The weight of ``n`` in ``role``, or None when the node has no such parameter (a scale, a zero)."""
        return self.weights[n.params[role].name] if role in n.params else None

    def packed(self, name: str, quant: tuple | None, il: int,
               pack: Callable[[], tuple[np.ndarray, list[np.ndarray]]], panels: int = 1) -> list[Arg]:
        """Plan arguments of the packed weight ``name`` and its scale / zero, packed once by ``pack`` (when the
        weights are there; the plan alone needs none). ``il``, ``panels``: its layout, recorded (:meth:`layout`)."""
        packed = None
        if self.weights is not None and name not in self.params:
            packed = pack()
        self.layout(name, il, panels)
        return ([self.param(name, lambda: packed[0])]
                + [self.param(f"{name}#{i}", lambda i=i: packed[1][i]) for i in range(n_extra(quant))])

    def slab(self, name: str, rows: str | int, cols: int, dtype: str = "float32") -> Arg:
        name = self.prefix + name
        s = self.slabs.setdefault(name, {"dtype": dtype, "uses": []} | ({"entry": "vision"} if self.prefix else {}))
        if s["dtype"] != dtype:
            raise LfmcError(f"internal: slab {name} used as {dtype} and {s['dtype']}")
        if [rows, cols] not in s["uses"]:
            s["uses"].append([rows, cols])
        return Arg.slab(name, rows, cols)

    def launch(self, entry: str, kernel: str, args: list[Arg], flops_per_row: int | None = None) -> None:
        """Append a launch; ``flops_per_row``: the multiply-adds x 2 it does per row of input (dense matmuls),
        which ``lfmc bench --profile`` turns into GFLOP/s."""
        self.entries[entry].append(Launch(kernel, tuple(args), self.node_name, flops_per_row))

    def both(self, kernel: str, args: list[Arg]) -> None:
        for e in self.entry_names:
            self.launch(e, kernel, args)

    def declare_state(self, n: Node) -> dict[str, str]:
        """Declare the per-slot state of ``n`` as its op schema infers it (``S`` slots; ``C``: the max context;
        ``R``: a sliding window's ring, :func:`lfmc.plan.ring_slots`; a zero-width conv window kept one column
        wide); state name -> plan name."""
        out = {}
        for key, t in state_types(n).items():
            out[key] = name = f"{key}.{n.name}"
            self.state[name] = {"shape": ["S"] + [SYMBOLIC_DIMS[d] if d in SYMBOLIC_DIMS else max(int(d), 1)
                                                  for d in t.shape],
                                "dtype": storage_dtype(t.dtype), "kind": schema(n.op).state_kind, "node": n.name}
            if "ring" in t.shape:                       # a sliding window's ring: the runtime sizes it
                self.state[name]["window"] = int(n.attrs["window"])
        return out

    # --- shared pieces
    def matmul(self, x: tuple[str, int], srcs: list[tuple[Node, str]], N: int, Kd: int, out: tuple[str, int],
               bias: tuple[Node, str] | list[tuple[Node, str]] | None = None, entries: tuple[str, ...] | None = None,
               rows: str | int = "np", norm: Node | None = None, accumulate: bool = False, swiglu: bool = False,
               transposed: bool = False, head: bool = False) -> None:
        """One projection launch per entry. ``srcs``: the (node, role) weights stacked along the output (q, k, v;
        or gate, up with ``swiglu``). ``bias``: one (node, role) or a list stacked like ``srcs``. ``norm``: an
        RMSNorm applied to the input inside the kernel; ``accumulate``: add into ``out`` in place; ``swiglu``:
        output silu(gate) * up, N = its width; ``transposed``: the parameter is stored [K, N] (a table).
        ``rows`` "mp": the merged image-token rows of a vision entry (row blocks ``mb``). ``head``: an LM head;
        its weight panels are interleaved, like those of 16-bit projections (:func:`lfmc.targets.knobs.gemv_panels`)."""
        entries = entries or self.entry_names
        lanes = self.knobs["decode"].lanes
        specs = {quant_spec(n, r) for n, r in srcs}
        if len(specs) != 1:
            kinds = ", ".join(f"{n.params[r].name}: {quant_spec(n, r) or 'f32'}" for n, r in srcs)
            raise LfmcError(f"%{srcs[0][0].name}: projections fused into one kernel must share one quantization "
                            f"({kinds}); compile with --quant to give them one")
        quant = specs.pop()
        a8 = self.int8_activations(srcs[0][0], entries)
        bf = self.bf16_activations(srcs[0][0], entries)
        name = "w." + "+".join(n.params[r].name for n, r in srcs) + ("/swiglu" if swiglu else "")
        il = (KN.a8_interleave(N, swiglu, self.knobs["decode"], quant, KN.amx_tiles(self.knobs)) if a8
              else KN.BF16_PAIRS if bf else 0)
        P = self.panels(N, quant, il, head, swiglu)

        def cat(suffix: str) -> np.ndarray | None:
            parts = [self.weights[n.params[r + suffix].name] for n, r in srcs if r + suffix in n.params]
            if transposed and suffix == "" and parts:
                parts = [np.ascontiguousarray(p.T) for p in parts]
            return np.concatenate(parts) if parts else None

        bf16_lay = (KN.bf16_lanes(self.knobs["decode"]),
                    KN.bf16_kpad(self.knobs["decode"], KN.amx_tiles(self.knobs, "bf16dot")))
        p, *extra = self.packed(name, quant, il, lambda: pack_any(cat(""), cat("_scale"), cat("_zero"), quant, lanes,
                                                                   swiglu, il, bf16_lay, P), P)
        nw = [self.param("w." + norm.params["weight"].name, lambda: self.w(norm, "weight"))] if norm else []
        biases = [bias] if isinstance(bias, tuple) else list(bias or [])
        b = [self.param("w." + "+".join(m.params[r].name for m, r in biases),
                        lambda: np.concatenate([self.w(m, r) for m, r in biases]))] if biases else []
        eps = norm.attrs["eps"] if norm else None
        def make(e: str, kn: KN.Knobs) -> str:
            serial = e == "decode" and kn.parallel and not kn.gpu and N * Kd <= KN.SERIAL_GEMV_WEIGHTS
            if serial:          # too little work to pay for waking the other threads
                kn = dataclasses.replace(kn, parallel=False)
            cols = kn.cols if bf or a8 else KN.weight_cols(kn, quant[0] if quant else None)
            key = ("mm", N, Kd, "b" if bias else "", "n" if norm else "", "a" if accumulate else "",
                   "s" if swiglu else "", kn.lanes, kn.rows, cols) + ((repr(eps),) if norm else ()) + (quant or ())
            key += ("1t",) if serial else ()
            if bf:
                k = self.kernel(key + ("bf16a", kn.bf16dot, bf16_lay[1]), "make_matmul_bf16", N=N, K=Kd, knobs=kn,
                                bias=bias is not None, rms_eps=eps, accumulate=accumulate, swiglu=swiglu,
                                kpad=bf16_lay[1])
            elif a8:
                k = self.kernel(key + ("a8", il, kn.prefetch) + ((kn.dot,) if kn.dot != "avx2" else ())
                                + ((f"c{kn.a8_cols}",) if kn.a8_cols else ()), "make_matmul_a8",
                                N=N, K=Kd, knobs=kn,
                                bias=bias is not None, rms_eps=eps, accumulate=accumulate, swiglu=swiglu,
                                quant=quant, il=il)
            else:
                k = self.kernel(key + ((f"p{P}",) if P > 1 else ()), "make_matmul", N=N, K=Kd, knobs=kn,
                                bias=bias is not None, rms_eps=eps, accumulate=accumulate, swiglu=swiglu, quant=quant,
                                panels=P)
            self.arith[k] = "bf16" if bf else "int8" if a8 else "f32"    # the peak it is measured against
            return k

        made: dict[str, str] = {}
        for e in entries:
            kn = self.knobs[e]
            kname = made[e] = make(e, kn)
            if e == "decode" and rows == "np" and kn.batch_rows > kn.rows:
                # the same projection with a taller register tile for decode steps of several sequences: each
                # weight vector loaded feeds batch_rows rows (a 1-row GEMV reloads it for every row)
                self.row_variants[kname] = make(e, dataclasses.replace(kn, rows=kn.batch_rows,
                                                                       cols=kn.batch_cols or kn.cols))
            nb = Arg.const(rows // kn.rows) if isinstance(rows, int) else Arg.scalar("mb" if rows == "mp" else "nb")
            o = self.slab(out[0], rows, N)
            self.launch(e, kname, [self.slab(x[0], rows, Kd), p] + extra + nw + b + ([o] if accumulate else [])
                        + [o, nb], flops_per_row=2 * (2 if swiglu else 1) * N * Kd)
        if rows == "np" and "prefill" in made and made.get("decode") in self.row_variants:
            # a prefill of a few rows (speculative decoding's verify) takes the batched-decode twin: parallel
            # over the output columns, every weight read once for all rows, where the prefill tiles parallelize
            # over row blocks (one or two for a verify: a core idle) and are shaped for long prompts
            self.short_prefill[made["prefill"]] = self.row_variants[made["decode"]]

    def bf16_activations(self, n: Node, entries: tuple[str, ...] = ENTRIES) -> bool:
        """Whether ``n``'s projections take bf16 activations (``act_dtype``), checked against the target."""
        if n.attrs.get("act_dtype") != "bf16":
            return False
        for e in entries:
            if not self.knobs[e].bf16dot:
                raise LfmcError(f"%{n.name}: bf16 activations need a bf16 matmul kernel (a CPU with FMA); this "
                                f"target has none: compile without --act-quant bf16")
        return True

    def int8_activations(self, n: Node, entries: tuple[str, ...] = ENTRIES) -> bool:
        """Whether ``n``'s projections take int8 activations (``act_quant``), checked against the target."""
        if "act_quant" not in n.attrs:
            return False
        if n.attrs["act_quant"] != KN.A8_GROUP:
            raise LfmcError(f"%{n.name}: int8 activations in groups of {n.attrs['act_quant']}: the kernels take "
                            f"groups of {KN.A8_GROUP}")
        for e in entries:
            if not self.knobs[e].dot:
                raise LfmcError(f"%{n.name}: int8 activations need integer dot-product instructions (x86 AVX2, "
                                f"Arm dotprod); this target has none: compile without --act-quant")
        return True

    def panels(self, N: int, quant: tuple | None, il: int, head: bool = False, swiglu: bool = False) -> int:
        """Weight panels interleaved in the packed layout of a float / weight-only matmul of N outputs (not the
        int8- / bf16-activation layouts, ``il``): :func:`lfmc.targets.knobs.gemv_panels`."""
        if il:
            return 1
        return KN.gemv_panels(N, self.knobs, quant, swiglu, head)

    def layout(self, name: str, il: int, panels: int = 1) -> None:
        """Record the packed layout of parameter ``name`` (``il`` 0: float / weight-only with ``panels``
        interleaved, else the int8-activation interleave or bf16 pairs); a tied table read by two kernels must be
        packed one way for both."""
        prev = self.layouts.setdefault(name, (il, panels))
        if prev != (il, panels):
            raise LfmcError(f"internal: parameter {name} packed two ways (interleave, panels): {(il, panels)} "
                            f"and {prev}")

    # --- ops
    def lower(self) -> None:
        g = self.graph
        home: dict[str, str] = {}                       # IR value -> slab holding it
        last_use: dict[str, int] = {}
        index = {n.name: i for i, n in enumerate(g.nodes)}
        for i, n in enumerate(g.nodes):
            for v in n.inputs:
                last_use[v] = i
        for o in g.outputs:
            last_use[o] = len(g.nodes)
        # fusion decisions (from the fuse passes) that this lowering honours
        norm_of: dict[str, Node] = {}                   # consumer -> the rmsnorm folded into it
        acc_of: dict[str, tuple[Node, str]] = {}        # producer -> (add node, residual operand)
        self.post_norm: dict[str, Node] = {}            # add -> the sandwich norm computed in its kernel
        for n in g.nodes:
            if n.op == "rmsnorm" and n.fused.get("into"):
                norm_of[n.fused["into"]] = n
            if n.op == "rmsnorm" and n.fused.get("post"):
                self.post_norm[n.fused["post"]] = n
            if n.op == "add" and n.fused.get("into"):
                other = next(v for v in n.inputs if v != n.fused["into"])
                if last_use.get(other) == index[n.name]:          # the residual dies here: update it in place
                    acc_of[n.fused["into"]] = (n, other)
        skip_add = {a.name for a, _ in acc_of.values()}
        post_names = {m.name for m in self.post_norm.values()}
        free: list[str] = []
        live: dict[str, int] = {}                       # slab -> number of live values in it
        count = [0]
        for name, t in g.inputs:                        # float inputs (image rows, patches) live in slabs the
            if t.dtype == "f32":                        # runtime writes before a call
                home[name] = f"in.{name}"
                live[home[name]] = 1
        in_place = {"pos_embed", "image_merge"}         # ops that update their first operand when it dies there

        def new_slab() -> str:
            if free:
                return free.pop()
            count[0] += 1
            return f"v{count[0] - 1}"

        bar = task("packing weights and planning kernels", len(g.nodes), "node")
        for i, n in enumerate(g.nodes):
            bar.update()
            self.node_name = n.name
            ins = [home.get(v) for v in n.inputs]
            if n.op == "rmsnorm" and (n.fused.get("into") or n.fused.get("post")):
                out = ins[0]                               # folded into its consumer: no kernel, no buffer
            elif n.op == "merge_tokens":
                out = ins[0]                               # a reshape: the same rows, viewed [n / f^2, f^2 D]
            elif n.name in skip_add:
                out = home[next(v for v in n.inputs if v != n.fused["into"])]
            elif n.name in acc_of:
                out = home[acc_of[n.name][1]]
                getattr(self, "op_" + n.op)(n, ins, out, n.type.shape[1], norm=norm_of.get(n.name), accumulate=True)
            else:
                res = [v for v in n.inputs if v not in post_names] if n.op == "add" else []
                if n.op in in_place:
                    if last_use[n.inputs[0]] != i:
                        raise LfmcError(f"%{n.name} ({n.op}): its first operand is read again later; the "
                                        "lowering updates it in place")
                    out = ins[0]
                elif n.op == "add" and last_use[res[0]] == i:
                    out = home[res[0]]                     # in place into the dying residual operand
                elif n.op == "add" and len(res) == 2 and last_use[n.inputs[1]] == i:
                    out = ins[1]
                else:
                    out = new_slab()
                if schema(n.op).residual_producer:        # its lowering takes a folded input norm
                    getattr(self, "op_" + n.op)(n, ins, out, n.type.shape[1], norm=norm_of.get(n.name))
                else:
                    getattr(self, "op_" + n.op)(n, ins, out, n.type.shape[1])
            home[n.name] = out
            live[out] = live.get(out, 0) + 1
            for v in set(n.inputs):
                if v in home and last_use[v] == i:
                    live[home[v]] -= 1
                    if live[home[v]] == 0 and home[v] != out:
                        free.append(home[v])
        bar.close()
        self.output = home[g.outputs[0]]

    def op_embedding(self, n: Node, ins, out: str, D: int) -> None:
        V = n.params["weight"].type.shape[0]
        lanes = self.knobs["decode"].lanes
        # the same packed table (and name) as a tied LM head's weight, so it is stored once: in the LM head's
        # int8-activation layout when that head takes int8 activations
        quant = quant_spec(n, "weight")
        name = "w." + n.params["weight"].name
        head = next((m for m in self.graph.nodes if m.op == "lm_head"
                     and m.params["weight"].name == n.params["weight"].name), None)
        il = KN.a8_interleave(V, False, self.knobs["decode"], quant, KN.amx_tiles(self.knobs)) if head and self.int8_activations(head) else 0
        P = self.panels(V, quant, il, head=True) if head else 1     # as the tied LM head's matmul packs it
        p, *extra = self.packed(name, quant, il, lambda: pack_any(self.w(n, "weight"), self.w(n, "weight_scale"),
                                                                   self.w(n, "weight_zero"), quant, lanes, False, il,
                                                                   panels=P), P)
        k = self.kernel(("embed", V, D) + (quant or ()) + (("a8", il) if il else ()) + ((f"p{P}",) if P > 1 else ()),
                        "make_embedding", V=V, D=D, l=KN.pick_lanes(V, lanes), quant=quant, gpu=self.loop.gpu,
                        a8_il=il, panels=P)
        self.both(k, [Arg.input("tokens", "n"), p] + extra + [self.slab(out, "n", D)])

    def op_rmsnorm(self, n: Node, ins, out: str, D: int) -> None:
        eps = n.attrs["eps"]
        k = self.kernel(("rmsnorm", D, repr(eps)), "make_rmsnorm", D=D, eps=eps, kn=self.loop)
        p = self.param("w." + n.params["weight"].name, lambda: self.w(n, "weight"))
        self.both(k, [self.slab(ins[0], "n", D), p, self.slab(out, "n", D)])

    def op_add(self, n: Node, ins, out: str, D: int) -> None:
        a, b = (ins[0], ins[1]) if out == ins[0] else (ins[1], ins[0])
        if out not in (a,):
            raise LfmcError(f"internal: add %{n.name} has no operand to update in place")
        post = self.post_norm.get(n.name)
        if post is not None:                          # residual += rmsnorm(y) * w, one pass
            eps = post.attrs["eps"]
            k = self.kernel(("add_rmsnorm", D, repr(eps)), "make_add_rmsnorm", D=D, eps=eps, kn=self.loop)
            w = self.param("w." + post.params["weight"].name, lambda: self.w(post, "weight"))
            self.both(k, [self.slab(a, "n", D), self.slab(b, "n", D), w])
            return
        k = self.kernel(("add", D), "make_add", D=D, kn=self.loop)
        self.both(k, [self.slab(a, "n", D), self.slab(b, "n", D)])

    def op_linear(self, n: Node, ins, out: str, N: int, norm: Node | None = None, accumulate: bool = False) -> None:
        Kd = n.params["weight"].type.shape[1]
        bias = (n, "weight_bias") if "weight_bias" in n.params else None
        self.matmul((ins[0], Kd), [(n, "weight")], N, Kd, (out, N), bias, accumulate=accumulate)

    def op_lm_head(self, n: Node, ins, out: str, V: int) -> None:
        D = n.params["weight"].type.shape[1]
        R = self.knobs["prefill"].rows
        k = self.kernel(("take_last", D), "make_take_last", D=D, kn=self.loop)
        self.launch("prefill", k, [self.slab(ins[0], "n", D), self.slab("last", R, D)])
        self.matmul(("last", D), [(n, "weight")], V, D, (out, V), entries=("prefill",), rows=R, head=True)
        self.matmul((ins[0], D), [(n, "weight")], V, D, (out, V), entries=("decode",), head=True)

    def op_short_conv(self, n: Node, ins, out: str, D: int, norm: Node | None = None,
                      accumulate: bool = False) -> None:
        L = n.attrs["L_cache"]
        f = n.liv.featurizer
        ib, ic, ix = f["B"].chunk, f["C"].chunk, f["x"].chunk
        bias = lambda role: (n, role) if role in n.params else None  # noqa: E731
        self.matmul((ins[0], D), [(n, "in_proj")], 3 * D, D, ("t_p", 3 * D), bias("in_proj_bias"), norm=norm)
        st = self.declare_state(n)["conv"]
        cw = self.param("w." + n.params["conv"].name, lambda: self.w(n, "conv")[:, 0, :])
        cb = (self.param("w." + n.params["conv_bias"].name, lambda: self.w(n, "conv_bias"))
              if "conv_bias" in n.params else self.param(f"zeros.{D}", lambda: np.zeros(D, np.float32)))
        kp = self.kernel(("conv_prefill", D, L, ib, ic, ix), "make_conv_prefill", D=D, L=L, ib=ib, ic=ic,
                        ix=ix, kn=self.loop)
        kd = self.kernel(("conv_decode", D, L, ib, ic, ix) + self.decode_key(D), "make_conv_decode", D=D, L=L,
                         ib=ib, ic=ic, ix=ix, kn=self.decode_loop(D))
        base = [self.slab("t_p", "n", 3 * D), Arg.state(st), cw, cb, self.slab("t_y", "n", D)]
        self.launch("prefill", kp, base + [Arg.scalar("slot")])
        self.launch("decode", kd, base + [Arg.input("slots", "n")])
        self.matmul(("t_y", D), [(n, "out_proj")], D, D, (out, D), bias("out_proj_bias"), accumulate=accumulate)

    def op_linear_recurrence(self, n: Node, ins, out: str, D: int, norm: Node | None = None,
                             accumulate: bool = False) -> None:
        f = n.liv.featurizer
        ia, ib, ic, ix = (f[k].chunk for k in ("a", "b", "c", "x"))
        bias = lambda role: (n, role) if role in n.params else None  # noqa: E731
        self.matmul((ins[0], D), [(n, "in_proj")], 4 * D, D, ("t_p", 4 * D), bias("in_proj_bias"), norm=norm)
        st = self.declare_state(n)["h"]
        if self.loop.gpu:       # parallel in time too: channels alone leave most of a GPU idle
            kp = self.kernel(("rec_scan", D, ia, ib, ic, ix, 32), "make_recurrence_scan", D=D, ia=ia, ib=ib,
                             ic=ic, ix=ix, chunk=32, kn=self.loop)
        else:                   # channels already fill the CPU's cores; one pass over the chunk per channel
            kp = self.kernel(("rec_prefill", D, ia, ib, ic, ix), "make_recurrence_prefill", D=D, ia=ia, ib=ib,
                             ic=ic, ix=ix, kn=self.loop)
        kd = self.kernel(("rec_decode", D, ia, ib, ic, ix) + self.decode_key(D), "make_recurrence_decode", D=D,
                         ia=ia, ib=ib, ic=ic, ix=ix, kn=self.decode_loop(D))
        base = [self.slab("t_p", "n", 4 * D), Arg.state(st), self.slab("t_y", "n", D)]
        self.launch("prefill", kp, base + [Arg.scalar("slot")])
        self.launch("decode", kd, base + [Arg.input("slots", "n")])
        self.matmul(("t_y", D), [(n, "out_proj")], D, D, (out, D), bias("out_proj_bias"), accumulate=accumulate)

    def op_attention(self, n: Node, ins, out: str, D: int, norm: Node | None = None,
                     accumulate: bool = False) -> None:
        a = n.attrs
        H, KV, hd = a["heads"], a["kv_heads"], a["head_dim"]
        gated = "g_proj" in n.params
        Nq = (H + 2 * KV) * hd + (H if gated else 0)       # the gate logits follow q, k, v
        self.matmul((ins[0], D), [(n, r) for r in ("q_proj", "k_proj", "v_proj", "g_proj") if r in n.params], Nq, D,
                    ("t_p", Nq), norm=norm)
        st = self.declare_state(n)
        kvd = self.state[st["k"]]["dtype"]
        if kvd == "int8" and self.loop.gpu:
            raise LfmcError(f"%{n.name}: an int8 KV cache (--kv-dtype i8) is read by the CPU attention kernels only; "
                            f"compile for this GPU target with --kv-dtype f16 or f32")
        kn = self.knobs["prefill"]
        eps = a["eps"]
        # the variant (sliding window, gate, partial RoPE), named in the kernel key only where it differs from LFM2
        var = {"window": a.get("window", 0), "gated": gated}
        rope = {"theta": a["rope_theta"], "angles": a.get("rope_angles"), "factor": a.get("rope_factor", 1.0)}
        vkey = tuple(f"{k}{int(v)}" for k, v in var.items() if v)
        rkey = (("r", rope["angles"], repr(rope["factor"])) if rope["angles"] is not None or rope["factor"] != 1.0
                else ())
        rows = [Arg.input("slots", "n"), Arg.input("pos", "n")]
        norms = [self.param("w." + n.params["q_norm"].name, lambda: self.w(n, "q_norm")),
                 self.param("w." + n.params["k_norm"].name, lambda: self.w(n, "k_norm"))]
        cache = [Arg.state(st["k"]), Arg.state(st["v"])]
        if n.fused.get("rope"):
            ka = self.kernel(("rope_attn", H, KV, hd, repr(eps), repr(a["rope_theta"]), kn.lanes, kvd) + vkey + rkey,
                             "make_rope_attention", H=H, KV=KV, hd=hd, eps=eps, kn=self.loop, kv=kvd, **rope, **var)
            self.both(ka, [self.slab("t_p", "n", Nq)] + norms + cache + [self.slab("t_a", "n", H * hd)] + rows)
        else:
            Nqg = H * hd + (H if gated else 0)
            kq = self.kernel(("qk_rope", H, KV, hd, repr(eps), repr(a["rope_theta"]), kvd) + vkey + rkey, "make_qk_rope",
                             H=H, KV=KV, hd=hd, eps=eps, kn=self.loop, kv=kvd, **rope, **var)
            ka = self.kernel(("attn", H, KV, hd, kn.lanes, kvd) + vkey, "make_attention", H=H, KV=KV,
                             hd=hd, kn=self.loop, kv=kvd, **var)
            self.both(kq, [self.slab("t_p", "n", Nq)] + norms + cache + [self.slab("t_q", "n", Nqg)] + rows)
            self.both(ka, [self.slab("t_q", "n", Nqg)] + cache + [self.slab("t_a", "n", H * hd)] + rows)
        self.matmul(("t_a", H * hd), [(n, "out_proj")], D, H * hd, (out, D), accumulate=accumulate)

    def op_gated_mlp(self, n: Node, ins, out: str, D: int, norm: Node | None = None,
                     accumulate: bool = False) -> None:
        f = n.liv.featurizer
        F = n.params["w1"].type.shape[0]
        gate, up = f["gate"].proj, f["up"].proj
        w13 = [(n, gate), (n, up)]
        if n.fused.get("swiglu"):
            self.matmul((ins[0], D), w13, F, D, ("t_a", F), norm=norm, swiglu=True)
        else:
            self.matmul((ins[0], D), w13, 2 * F, D, ("t_p", 2 * F), norm=norm)
            k = self.kernel(("silu_mul", F, 0), "make_silu_mul", F=F, gate_chunk=0, kn=self.loop)
            self.both(k, [self.slab("t_p", "n", 2 * F), self.slab("t_a", "n", F)])
        self.matmul(("t_a", F), [(n, "w2")], D, F, (out, D), accumulate=accumulate)

    def op_moe(self, n: Node, ins, out: str, D: int, norm: Node | None = None, accumulate: bool = False) -> None:
        a = n.attrs
        E, k = a["num_experts"], a["top_k"]
        gu_shape = n.params["gate_up"].type.shape
        F2, F = gu_shape[1], gu_shape[1] // 2
        gi = n.liv.featurizer["gate"].chunk
        self.matmul((ins[0], D), [(n, "router")], E, D, ("t_r", E))
        bias = (self.param("w." + n.params["expert_bias"].name, lambda: self.w(n, "expert_bias"))
                if a["use_expert_bias"] else self.param(f"zeros.{E}", lambda: np.zeros(E, np.float32)))
        kr = self.kernel(("route", E, k, a["scoring"], int(a["use_expert_bias"]), int(a["norm_topk_prob"]),
                          repr(a["topk_norm_eps"]), repr(a["routed_scaling_factor"])), "make_moe_route",
                         E=E, topk=k, scoring=a["scoring"], use_bias=a["use_expert_bias"], norm=a["norm_topk_prob"],
                         norm_eps=a["topk_norm_eps"], scale=a["routed_scaling_factor"], kn=self.loop)
        idx, wts = self.slab("t_idx", "n", k, "int32"), self.slab("t_w", "n", k)
        self.both(kr, [self.slab("t_r", "n", E), bias, idx, wts])
        kn = self.knobs["prefill"]
        gu, qg = self.experts(n, "gate_up")
        dn, qd = self.experts(n, "down")
        kg = self.kernel(("moe_gu", E, F2, D, k, kn.lanes, kn.cols) + (qg or ()), "make_moe_gate_up", E=E, F2=F2, D=D,
                         topk=k, knobs=kn, quant=qg)
        ks = self.kernel(("silu_mul", F, gi), "make_silu_mul", F=F, gate_chunk=gi, kn=self.loop)
        kd = self.kernel(("moe_down", E, D, F, k, kn.lanes, kn.cols, "a" if accumulate else "") + (qd or ()),
                         "make_moe_down", E=E, D=D, F=F, topk=k, knobs=kn, quant=qd, accumulate=accumulate)
        self.both(kg, [self.slab(ins[0], "n", D)] + gu + [idx, self.slab("t_g", "nk", F2)])
        self.both(ks, [self.slab("t_g", "nk", F2), self.slab("t_a", "nk", F)])
        o = self.slab(out, "n", D)
        self.both(kd, [self.slab("t_a", "nk", F)] + dn + [idx, wts] + ([o] if accumulate else []) + [o])

    # --- vision encoders and VL decoders
    def rows_of(self, n: Node) -> str:
        """The row spec of ``n``'s value: "m" for merged image tokens (after a pixel unshuffle), else "n"."""
        return "m" if n.type.shape[0] == "M" else "n"

    def op_layernorm(self, n: Node, ins, out: str, D: int) -> None:
        eps = n.attrs["eps"]
        k = self.kernel(("layernorm", D, repr(eps)), "make_layernorm", D=D, eps=eps, kn=self.loop)
        w = [self.param("w." + n.params[r].name, lambda r=r: self.w(n, r)) for r in ("weight", "bias")]
        r = self.rows_of(n)
        self.both(k, [self.slab(ins[0], r, D)] + w + [self.slab(out, r, D)])

    def op_pos_embed(self, n: Node, ins, out: str, D: int) -> None:
        G = n.params["table"].type.shape[0]
        self.matmul((ins[1], G), [(n, "table")], D, G, (out, D), accumulate=True, transposed=True)

    def op_bidir_attention(self, n: Node, ins, out: str, D: int, norm: Node | None = None,
                           accumulate: bool = False) -> None:
        a = n.attrs
        H, hd = a["heads"], a["head_dim"]
        KV = a.get("kv_heads", H)
        roles = ("q_proj", "k_proj", "v_proj")
        biased = [r + "_bias" in n.params for r in roles]
        if any(biased) and not all(biased):
            raise LfmcError(f"%{n.name}: q, k and v projections must all have biases or none")
        Nq = (H + 2 * KV) * hd
        self.matmul((ins[0], D), [(n, r) for r in roles], Nq, D, ("t_p", Nq),
                    bias=[(n, r + "_bias") for r in roles] if all(biased) else None, norm=norm)
        kt = not self.loop.gpu
        ks = self.kernel(("enc_qkv", H, KV, hd) + (("kt",) if kt else ()), "make_encoder_qkv", H=H, KV=KV, hd=hd,
                         kn=self.loop, kt=kt)
        self.encoder_attention(n, ks, [], [], out, D, H, KV, hd, accumulate)

    def op_vision_attention(self, n: Node, ins, out: str, D: int) -> None:
        a = n.attrs
        H, KV, hd = a["heads"], a["kv_heads"], a["head_dim"]
        Nq = (H + 2 * KV) * hd
        self.matmul((ins[0], D), [(n, r) for r in ("q_proj", "k_proj", "v_proj")], Nq, D, ("t_p", Nq))
        kt = not self.loop.gpu
        ks = self.kernel(("enc_qkv_rope", H, KV, hd, repr(a["eps"]), repr(a["rope_theta"]), a["merge"])
                         + (("kt",) if kt else ()), "make_encoder_qkv_rope", H=H, KV=KV, hd=hd, eps=a["eps"],
                         theta=a["rope_theta"], merge=a["merge"], kn=self.loop, kt=kt)
        norms = [self.param("w." + n.params[r].name, lambda r=r: self.w(n, r)) for r in ("q_norm", "k_norm")]
        self.encoder_attention(n, ks, norms, [Arg.scalar("gw")], out, D, H, KV, hd)

    def encoder_attention(self, n: Node, split: str, before: list[Arg], after: list[Arg], out: str, D: int, H: int,
                          KV: int, hd: int, accumulate: bool = False) -> None:
        """Bidirectional attention over one image's rows from the q | k | v projection in ``t_p``: ``split``
        puts q into ``t_q`` and k, v into a scratch of the image's rows (args: t_p, ``before``, t_q, the
        scratch, ``after``). On a CPU the keys go there transposed for :func:`make_encoder_attention` (query rows
        blocked, scores vectorized along the keys); on a GPU the causal-prefill attention kernel runs over the
        scratch as a cache with every row's position at the last row, so each row sees all of them. The output
        projection follows."""
        kt = not self.loop.gpu
        P = -(-self.max_patches // 16) * 16            # make_encoder_attention reads whole blocks of 16 keys
        shapes = {"k": [1, KV, hd, P] if kt else [1, P, KV, hd], "v": [1, P, KV, hd]}
        names = {key: f"enc_{key}{'t' if key == 'k' and kt else ''}.{KV}x{hd}" for key in ("k", "v")}
        for key in ("k", "v"):
            self.state.setdefault(names[key], {"shape": shapes[key], "dtype": "float32", "kind": "scratch",
                                               "node": n.name})
        cache = [Arg.state(names["k"]), Arg.state(names["v"])]
        Nq = (H + 2 * KV) * hd
        self.both(split, [self.slab("t_p", "n", Nq)] + before + [self.slab("t_q", "n", H * hd)] + cache + after)
        if kt:
            ka = self.kernel(("enc_attn", H, KV, hd), "make_encoder_attention", H=H, KV=KV, hd=hd, kn=self.loop)
            self.both(ka, [self.slab("t_q", "n", H * hd)] + cache + [self.slab("t_a", "n", H * hd)])
        else:
            kn = self.knobs["prefill"]
            ka = self.kernel(("attn", H, KV, hd, kn.lanes, "float32"), "make_attention", H=H, KV=KV, hd=hd,
                             kn=self.loop, kv="float32")
            self.both(ka, [self.slab("t_q", "n", H * hd)] + cache + [self.slab("t_a", "n", H * hd),
                                                                      Arg.input("slots", "n"), Arg.input("pos", "n")])
        ob = (n, "out_proj_bias") if "out_proj_bias" in n.params else None
        self.matmul(("t_a", H * hd), [(n, "out_proj")], D, H * hd, (out, D), bias=ob, accumulate=accumulate)

    def op_grid_conv(self, n: Node, ins, out: str, D: int) -> None:
        f = n.liv.featurizer
        K, m = n.attrs["kernel"], n.attrs["merge"]
        ib, ic, ix = (f[g].chunk for g in ("B", "C", "x"))
        self.matmul((ins[0], D), [(n, "in_proj")], 3 * D, D, ("t_p", 3 * D))
        taps = self.param("w." + n.params["conv"].name, lambda: self.w(n, "conv").reshape(D, K * K))
        k = self.kernel(("grid_conv", D, K, m, ib, ic, ix), "make_grid_conv", D=D, K=K, merge=m, ib=ib, ic=ic, ix=ix,
                        kn=self.loop)
        self.both(k, [self.slab("t_p", "n", 3 * D), taps, self.slab("t_y", "n", D), Arg.scalar("gh"),
                      Arg.scalar("gw")])
        self.matmul(("t_y", D), [(n, "out_proj")], D, D, (out, D))

    def op_mlp(self, n: Node, ins, out: str, N: int) -> None:
        F, Kd = n.params["fc1"].type.shape
        r = self.rows_of(n)
        rp = "mp" if r == "m" else "np"
        self.matmul((ins[0], Kd), [(n, "fc1")], F, Kd, ("t_f", F), rows=rp,
                    bias=(n, "fc1_bias") if "fc1_bias" in n.params else None)
        approx = n.attrs["act"] == "gelu_tanh"
        k = self.kernel(("gelu", F, int(approx)), "make_gelu", F=F, approximate=approx, kn=self.loop)
        self.both(k, [self.slab("t_f", r, F)])
        self.matmul(("t_f", F), [(n, "fc2")], N, F, (out, N), rows=rp,
                    bias=(n, "fc2_bias") if "fc2_bias" in n.params else None)

    def op_pixel_unshuffle(self, n: Node, ins, out: str, N: int) -> None:
        D = N // n.attrs["factor"] ** 2
        k = self.kernel(("gather_rows", D), "make_gather_rows", D=D, kn=self.loop)
        self.both(k, [self.slab(ins[0], "n", D), Arg.input("order", "n"), self.slab(out, "n", D)])

    def op_image_merge(self, n: Node, ins, out: str, D: int) -> None:
        tok = n.attrs["image_token"]
        k = self.kernel(("image_merge", D, tok), "make_image_merge", D=D, image_token=tok, kn=self.loop)
        self.launch("prefill", k, [self.slab(out, "n", D), Arg.input("tokens", "n"), self.slab(ins[2], "n", D)])
        self.image = {"slab": self.prefix + ins[2], "cols": D, "image_token": tok}

    def experts(self, n: Node, role: str) -> tuple[list, tuple | None]:
        """Plan arguments (weight, scale, zero) of stacked expert weights, packed per expert, and their spec."""
        quant = quant_spec(n, role)
        lanes = self.knobs["decode"].lanes
        name = "w." + n.params[role].name
        def pack() -> tuple[np.ndarray, list[np.ndarray]]:
            w, sc, z = self.w(n, role), self.w(n, role + "_scale"), self.w(n, role + "_zero")
            per = [pack_weight(w[e], sc[e] if sc is not None else None, z[e] if z is not None else None, quant,
                               lanes, False) for e in range(len(w))]
            return np.stack([p[0] for p in per]), [np.stack([p[1][i] for p in per]) for i in range(len(per[0][1]))]

        return self.packed(name, quant, 0, pack), quant


def lower(graph: Graph, weights: dict[str, np.ndarray] | None, knobs: dict[str, KN.Knobs],
          vision: Graph | None = None, max_patches: int | None = None) -> Lowered:
    """Kernels, plan and packed parameters for ``graph``; ``knobs`` per entry point (the target's schedules).
    Without ``weights`` only the plan is built (no packing): enough to count kernels. ``vision``: a VL model's
    image encoder, lowered into the ``vision`` entry (rows: one image's patches, at most ``max_patches``) with
    the prefill's schedules."""
    lw = _Lowering(graph, weights, knobs)
    lw.lower()
    if vision is not None:              # into the same kernel, parameter and state registries, before the plan
        vision_plan, vw = _lower_vision(lw, vision, weights, knobs, max_patches)
    vocab = graph.nodes[-1].type.shape[1]
    first = graph.nodes[0]
    topk = max([n.attrs["top_k"] for n in graph.nodes if n.op == "moe"], default=1)
    plan = {
        "version": PLAN_VERSION,
        "vocab_size": vocab,
        "topk": topk,
        "row_tile": {e: knobs[e].rows for e in ENTRIES},
        "slabs": lw.slabs,
        "state": lw.state,
        "params": {k: {"shape": list(v.shape), "dtype": str(v.dtype)} for k, v in lw.params.items()},
        "entries": {e: [L.to_json() for L in launches] for e, launches in lw.entries.items()},
        "logits": {"prefill": Arg.slab(lw.output, knobs["prefill"].rows, vocab).to_json(),
                   "decode": Arg.slab(lw.output, "np", vocab).to_json()},
        "embedding_rows": first.params["weight"].type.shape[0] if first.op == "embedding" else vocab,
    }
    if lw.row_variants:     # decode calls of 2 or more rows take these kernels, rows padded to the taller tile
        plan["row_variants"] = {"decode": {"rows": knobs["decode"].batch_rows, "kernels": lw.row_variants}}
    if lw.short_prefill:    # ... and so do prefill calls of up to SHORT_PREFILL rows (a verify of drafts)
        plan["row_variants"]["prefill"] = {"rows": knobs["decode"].batch_rows, "max_rows": SHORT_PREFILL,
                                           "kernels": lw.short_prefill}
    kn = knobs["prefill"]
    if lw.arith and not kn.gpu:
        # the arithmetic peak of each family the matmuls compute in, measured where the artifact runs
        # (kernels/peak.py; lfmc bench --profile)
        plan["arith"] = lw.arith
        plan["peaks"] = {f: {"kernel": lw.kernel(("peak", f, kn.lanes, kn.dot, kn.bf16dot), "make_peak", kind=f,
                                                 knobs=kn), **KN.peak_spec(f, kn)}
                         for f in sorted(set(lw.arith.values()))}
    if not kn.gpu:
        # and the memory read bandwidth (kernels/peak.make_read_peak): what a decode step reads its weights against
        plan["read_peak"] = {"kernel": lw.kernel(("readpeak", kn.lanes), "make_read_peak", knobs=kn),
                             "lanes": kn.lanes, "accs": KN.PEAK_ACCS}
    if vision is not None:
        plan["entries"]["vision"] = [L.to_json() for L in vw.entries["vision"]]
        plan["row_tile"]["vision"] = knobs["prefill"].rows
        plan["slabs"].update(vw.slabs)
        plan["vision"], plan["image"] = vision_plan, lw.image
    return Lowered(plan, lw.kernels, lw.params)


def vision_layout(vision: Graph) -> str:
    """How a vision graph takes its patches: ``raster`` (row-major, merged by a pixel unshuffle: LFM2-VL) or
    ``merge_blocks`` (already in merge-block order: LFM3-VL); what the runtime's preprocessing follows."""
    return "merge_blocks" if any(n.op == "merge_tokens" for n in vision.nodes) else "raster"


def _lower_vision(lw: _Lowering, vision: Graph, weights: dict[str, np.ndarray] | None, knobs: dict[str, KN.Knobs],
                  max_patches: int | None) -> tuple[dict[str, Any], _Lowering]:
    """Lower a VL model's image encoder into the ``vision`` entry (kernels, parameters and scratch state into
    ``lw``'s registries): the plan's ``vision`` record and the entry's lowering (its launches and slabs)."""
    if not getattr(lw, "image", None):
        raise LfmcError(f"graph {lw.graph.name} has a vision graph but no image_merge taking its embeddings")
    if not max_patches or max_patches < 1:
        raise LfmcError("a vision graph needs max_patches (the largest image, in patches, the artifact takes)")
    vw = _Lowering(vision, weights, knobs | {"vision": knobs["prefill"]}, entry_names=("vision",), prefix="vis.")
    vw.kernels, vw.params, vw.layouts, vw.state = lw.kernels, lw.params, lw.layouts, lw.state   # shared registries
    vw.max_patches = int(max_patches)
    vw.lower()
    un = next((n for n in vision.nodes if n.op in ("pixel_unshuffle", "merge_tokens")), None)
    if un is None:
        raise LfmcError(f"vision graph {vision.name} merges no patches into image tokens")
    out_dim = int(vision.nodes[-1].type.shape[1])
    if out_dim != lw.image["cols"]:
        raise LfmcError(f"the vision graph returns width {out_dim}, the decoder's image rows take {lw.image['cols']}")
    f = int(un.attrs["factor"])
    v: dict[str, Any] = {"layout": vision_layout(vision), "max_patches": int(max_patches), "merge": f * f,
                         "factor": f, "patch_dim": int(vision.inputs[0][1].shape[1]), "patches": "vis.in.patches",
                         "output": Arg.slab(vw.prefix + vw.output, "m", out_dim).to_json()}
    if v["layout"] == "raster":             # LFM2-VL: learned positions resized per image
        pe = next(n for n in vision.nodes if n.op == "pos_embed")
        v |= {"grid": int(pe.attrs["grid"]), "pos_weights": "vis.in.pos_weights"}
    return v, vw


def kernels_per_layer(plan: dict[str, Any], graph: Graph, entry: str = "decode") -> dict[str, int]:
    """Launches per decoder layer of ``entry`` (layers from the transformers parameter names), plus 'other'."""
    layer_of: dict[str, str] = {}
    cur = "other"
    for n in graph.nodes:
        names = [p.name for p in n.params.values()]
        lay = next((nm.split(".")[2] for nm in names if nm.startswith("model.layers.")), None)
        if lay is not None:
            cur = f"layer {lay}"
        elif n.params:
            cur = "other"
        layer_of[n.name] = cur                 # adds carry no parameters: they go with the node before them
    counts: dict[str, int] = {}
    for L in launches(plan, entry):
        key = layer_of.get(L.node, "other")
        counts[key] = counts.get(key, 0) + 1
    return counts
