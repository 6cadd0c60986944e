"""The ONNX graph normalised for lifting: what depends on the tokens, what is constant, what is plumbing.

Exporters write the same LFM in many ways: static or symbolic sequence axes (then ``Shape`` / ``Gather`` /
``Concat`` arithmetic feeds every ``Reshape``), with or without cache inputs and outputs, plain ops or ONNX
Runtime's fused ones, float or block-quantized weights. :class:`Net` reduces them to one vocabulary, so that the
lifter (``lift.py``) matches every LIV structure by data flow:

* **constants**: initializers, ``Constant`` nodes and everything computed from them alone (weight transposes,
  casts, dequantization) are folded, lazily, on first use;
* **active** values depend on the token ids through *data* operands (not through a ``Reshape``'s shape, a
  ``Slice``'s bounds or anything computed from a ``Shape``); the lifter walks these;
* **side** values (rotary tables, attention masks, position ids) depend only on shapes and the non-token graph
  inputs: :meth:`Net.side` evaluates one with ``onnx.reference`` for a probe length, so the lifter can check a
  mask is causal and read a rotary table whatever way the exporter computed it;
* **caches**: ``past_*`` inputs (onnx-community / Optimum naming) enter through a ``Concat`` with the new
  step's values; the lifter reads through those, and the ``present_*`` outputs are ignored;
* **fused forms**: every RMSNorm (``Pow`` / ``ReduceMean`` / ``Sqrt`` chains, ``SimplifiedLayerNormalization``,
  ``RMSNormalization``, ``SkipSimplifiedLayerNormalization`` split into its add and its norm) becomes one
  ``RMSNorm`` node; every projection with a constant weight (``MatMul``, ``Gemm``, ``MatMulNBits``, a dynamic
  int8 ``MatMulInteger`` chain) one ``Linear`` node carrying its :class:`Weight`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from ...ir.errors import LfmcError
from .load import Initializers, io_dims

_MAX_LISTED = 12
STD_DOMAINS = ("", "ai.onnx")
MS = "com.microsoft"
# operand positions that carry shapes, bounds or indices, never data, per op
META_OPERANDS = {"Reshape": {1}, "Expand": {1}, "Slice": {1, 2, 3, 4}, "Tile": {1}, "Unsqueeze": {1},
                 "Squeeze": {1}, "Split": {1}, "ConstantOfShape": {0}, "Range": {0, 1, 2}, "TopK": {1},
                 "ReduceMean": {1}, "ReduceSum": {1}, "ReduceMax": {1}, "Pad": {1, 2, 3}, "CumSum": {1},
                 "Trilu": {1}, "OneHot": {1}}
# ops whose outputs are shapes or sizes of their input: never data
SHAPE_OPS = {"Shape", "Size"}
# views: data passes through unchanged in value (only in layout or type)
VIEWS = {"Reshape", "Transpose", "Unsqueeze", "Squeeze", "Expand", "Identity", "Cast", "Slice", "Concat", "Split",
         "Flatten"}
CACHE_INPUT = re.compile(r"^(past_conv\.(\d+)|past_key_values\.(\d+)\.(key|value)|past_(?:key|value)_(\d+))$")
KNOWN_INPUTS = {"attention_mask", "position_ids", "num_logits_to_keep", "logits_to_keep", "cache_position"}


class OnnxLiftError(LfmcError):
    """An ONNX subgraph lfmc cannot lift to IR; names where it is and its nodes."""

    def __init__(self, where: str, msg: str, nodes: Iterable[Any] = ()):
        nodes = list(nodes)
        listed = ", ".join(f"{n.name or '<unnamed>'} ({n.op_type})" for n in nodes[:_MAX_LISTED])
        if len(nodes) > _MAX_LISTED:
            listed += f", and {len(nodes) - _MAX_LISTED} more"
        super().__init__(f"cannot lift {where or 'the graph'}: {msg}" + (f" (ONNX nodes: {listed})" if listed else ""))
        self.where, self.nodes = where, [n.name for n in nodes]


def attrs_of(node) -> dict[str, Any]:
    import onnx

    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


@dataclass
class Weight:
    """A projection's weight as the graph holds it: ``dense()`` gives float32 ``[out, in]``; ``kept`` is the
    quantized form lfmc can store as it is (code dtype, codes ``[out, in]``, scales ``[out, in / group]``, zeros
    or None) or None; ``note`` says what was converted; ``name`` the initializer (embeddings)."""
    dense: Callable[[], np.ndarray]
    out_features: int
    in_features: int
    bias: np.ndarray | None = None
    kept: tuple[str, np.ndarray, np.ndarray, np.ndarray | None] | None = None
    note: str | None = None
    dtype: str = "f32"
    name: str | None = None


@dataclass(eq=False)
class Op:
    """One node of the normalised graph: an ONNX node, or a fused ``RMSNorm`` / ``Linear`` / ``Embedding``
    standing for the ONNX nodes in ``src``."""
    op_type: str
    input: list[str]
    output: list[str]
    attrs: dict[str, Any] = field(default_factory=dict)
    src: list[Any] = field(default_factory=list)
    domain: str = ""
    weight: Weight | None = None

    @property
    def name(self) -> str:
        return self.src[0].name if self.src and self.src[0].name else f"<{self.op_type}>"


class Net:
    """The normalised graph (see the module docstring)."""

    def __init__(self, mo, source: str, base: Path | None = None):
        self.mo, self.source = mo, source
        g = mo.graph
        self.inits = Initializers(g, base, source)
        self._consts: dict[str, np.ndarray] = {}
        self._lazy: dict[str, tuple[Any, int]] = {}          # value -> (ONNX node, output index) folded on use
        self.inputs = {i.name: i for i in g.input if i.name not in self.inits}
        self.tokens = self._token_input()
        self.caches: dict[str, tuple[str, int, str]] = {}   # input name -> (kind, layer, role)
        for name in self.inputs:
            m = CACHE_INPUT.match(name)
            if m:
                if m.group(2):
                    self.caches[name] = ("conv", int(m.group(2)), "state")
                elif m.group(3):
                    self.caches[name] = ("kv", int(m.group(3)), m.group(4))
                else:
                    self.caches[name] = ("kv", int(m.group(5)), "key" if "key" in name else "value")
        unknown = [n for n in self.inputs if n != self.tokens and n not in self.caches and n not in KNOWN_INPUTS]
        if unknown:
            raise LfmcError(f"{source}: graph inputs {unknown} are neither the token ids, a cache (past_conv.N, "
                            "past_key_values.N.key / .value) nor attention_mask / position_ids / num_logits_to_keep")
        self.output = self._logits_output()
        self.notes: list[str] = []                           # what a fusion converted (the lifter reports them)
        self.ops: list[Op] = []
        for n in g.node:
            if n.domain not in STD_DOMAINS + (MS,):
                raise OnnxLiftError("the graph", f"operator domain {n.domain!r} of {n.op_type} is neither standard "
                                    "ONNX nor com.microsoft", [n])
            if n.op_type in ("If", "Loop", "Scan"):
                raise OnnxLiftError("the graph", f"control flow ({n.op_type}) is not an LFM structure", [n])
            if self._foldable(n):
                for k, o in enumerate(n.output):
                    if o:
                        self._lazy[o] = (n, k)
                continue
            self.ops.append(Op(n.op_type, list(n.input), list(n.output), attrs_of(n), [n],
                               MS if n.domain == MS else ""))
        self._index()

    # ------------------------------------------------------------------ inputs and outputs
    def _token_input(self) -> str:
        from onnx import TensorProto

        ints = (TensorProto.INT64, TensorProto.INT32)
        cands = [n for n, v in self.inputs.items() if v.type.tensor_type.elem_type in ints
                 and n not in KNOWN_INPUTS and not CACHE_INPUT.match(n)]
        if "input_ids" in cands:
            cands = ["input_ids"]
        if len(cands) != 1:
            raise LfmcError(f"{self.source}: expected one token-id input (input_ids, or the one integer input), "
                            f"found {cands or 'none'} among the graph inputs {list(self.inputs)}")
        return cands[0]

    def _logits_output(self) -> str:
        outs = [o.name for o in self.mo.graph.output]
        if not outs:
            raise LfmcError(f"{self.source}: the graph has no output")
        if "logits" in outs:
            return "logits"
        rest = [o for o in outs if not o.startswith("present")]
        if len(rest) != 1:
            raise LfmcError(f"{self.source}: cannot tell the logits among the outputs {outs} (name one 'logits')")
        return rest[0]

    # ------------------------------------------------------------------ constants
    def _foldable(self, n) -> bool:
        if n.op_type == "Constant":
            return True
        ins = [i for i in n.input if i]
        return bool(ins) and n.domain in STD_DOMAINS and n.op_type not in SHAPE_OPS | {"RandomNormalLike",
                                                                                        "RandomUniformLike"} \
            and all(self.is_const(i) for i in ins)

    def add_const(self, name: str, value: np.ndarray) -> None:
        """A constant a fusion made (a dequantized kernel)."""
        self._consts[name] = value

    def is_const(self, v: str) -> bool:
        return v in self._consts or v in self._lazy or v in self.inits

    def const(self, v: str) -> np.ndarray | None:
        """The constant value of ``v`` (folded on first use), or None if ``v`` is not constant."""
        if v in self._consts:
            return self._consts[v]
        if v in self.inits:
            return self.inits.get(v)
        if v not in self._lazy:
            return None
        n, k = self._lazy[v]
        outs = _fold(n, [self.const(i) if i else None for i in n.input])
        if outs is None:
            outs = _fold_reference(n, [self.const(i) if i else None for i in n.input], self.source)
        for o, a in zip(n.output, outs):
            if o:
                self._consts[o] = a
        return self._consts[v]

    # ------------------------------------------------------------------ structure
    def _index(self) -> None:
        self.producer: dict[str, Op] = {o: n for n in self.ops for o in n.output if o}
        self.users: dict[str, list[Op]] = {}
        for n in self.ops:
            for i in n.input:
                if i:
                    self.users.setdefault(i, []).append(n)
        active = {self.tokens}
        for n in self.ops:                                   # ONNX nodes are topologically sorted
            meta = META_OPERANDS.get(n.op_type, set())
            if n.op_type in SHAPE_OPS:
                continue
            if any(i in active for k, i in enumerate(n.input) if k not in meta):
                active.update(o for o in n.output if o)
        self.active = active
        if self.output not in active:
            raise LfmcError(f"{self.source}: the output {self.output!r} does not depend on the token ids")

    def replace(self, old: list[Op], new: list[Op]) -> None:
        """Swap the ``old`` ops for ``new`` (placed where the last of ``old`` was) and re-index."""
        ids = {id(o) for o in old}
        pos = max(i for i, o in enumerate(self.ops) if id(o) in ids)
        self.ops = [o for o in self.ops[:pos] if id(o) not in ids] + new + \
                   [o for o in self.ops[pos:] if id(o) not in ids]
        self._index()

    def canon(self, v: str) -> str:
        """Follow Identity nodes to the value they pass on."""
        while v in self.producer and self.producer[v].op_type == "Identity":
            v = self.producer[v].input[0]
        return v

    def prod(self, v: str) -> Op | None:
        return self.producer.get(self.canon(v))

    def active_users(self, v: str) -> list[Op]:
        out, todo = [], [v]
        while todo:
            for u in self.users.get(todo.pop(), []):
                if u.op_type == "Identity":
                    todo.append(u.output[0])
                else:
                    out.append(u)
        return out

    def through_views(self, v: str, producer: Callable[[str], Op | None], views: set[str], limit: int) -> str:
        """The value ``v`` passes on unchanged from: its producers followed while they are ``views`` (input 0),
        at most ``limit`` steps. ``producer``: which producers count (the whole graph's, or one block's)."""
        for _ in range(limit):
            v = self.canon(v)
            p = producer(v)
            if p is None or p.op_type not in views:
                return v
            v = p.input[0]
        return self.canon(v)

    def cache_of(self, v: str) -> tuple[str, int, str] | None:
        """The cache a value comes from (a ``past_*`` input through views), or None."""
        return self.caches.get(self.through_views(v, self.producer.get, VIEWS - {"Concat"}, 16))

    # ------------------------------------------------------------------ side values
    PROBE = 520     # tokens a symbolic sequence axis is probed with: shows sliding windows up to 519

    def static_len(self) -> int | None:
        dims = io_dims(self.inputs[self.tokens])
        return dims[-1] if dims and isinstance(dims[-1], int) and dims[-1] > 0 else None

    def probe_len(self) -> int:
        return self.static_len() or self.PROBE

    def side(self, v: str) -> np.ndarray | None:
        """The value of a non-token value (a rotary table, a mask) for a batch of one and :meth:`probe_len`
        tokens with empty caches, evaluated by ``onnx.reference``; None for a value that depends on the tokens."""
        if self.is_const(v):
            return self.const(v)
        if v in self.active:
            return None
        if not hasattr(self, "_side"):
            self._side: dict[str, np.ndarray] = {}
        if v in self._side:
            return self._side[v]
        need, todo, seen = [], [v], set()
        while todo:
            x = todo.pop()
            if x in seen or x in self.inputs or self.is_const(x) or not x:
                continue
            seen.add(x)
            p = self.producer.get(x)
            if p is None:
                return None
            if p not in need:
                need.append(p)
            todo += [i for i in p.input if i]
        order = {id(o): i for i, o in enumerate(self.ops)}
        need.sort(key=lambda o: order.get(id(o), 0))
        self._side[v] = _evaluate(self, need, v)
        return self._side[v]

    def side_feeds(self) -> dict[str, np.ndarray]:
        T = self.probe_len()
        feeds: dict[str, np.ndarray] = {}
        from onnx import helper

        for name, vi in self.inputs.items():
            tt = vi.type.tensor_type
            dt = np.dtype(helper.tensor_dtype_to_np_dtype(tt.elem_type))
            dims = io_dims(vi)
            if name == self.tokens:
                shape = [1 if k < len(dims) - 1 else T for k in range(len(dims))]
                feeds[name] = np.zeros(shape, dt)
            elif name == "attention_mask":
                feeds[name] = np.ones((1, T), dt)
            elif name in ("position_ids", "cache_position"):
                feeds[name] = np.arange(T, dtype=dt).reshape((1, T) if len(dims) == 2 else (T,))
            elif name in ("num_logits_to_keep", "logits_to_keep"):
                feeds[name] = np.asarray(0, dt)
            else:                                       # caches: batch 1, empty past, declared sizes elsewhere
                shape = []
                for k, d in enumerate(dims):
                    shape.append(d if isinstance(d, int) and d > 0 else (1 if k == 0 else 0))
                feeds[name] = np.zeros(shape, dt)
        return feeds


def _evaluate(net: Net, ops: list[Op], want: str) -> np.ndarray | None:
    """``want`` computed by the standard-ONNX ``ops`` from the probe feeds, through ``onnx.reference``."""
    import onnx
    from onnx import helper
    from onnx.reference import ReferenceEvaluator

    if any(o.domain == MS or len(o.src) != 1 for o in ops):
        return None
    used = {i for o in ops for i in o.input if i}
    feeds = {k: v for k, v in net.side_feeds().items() if k in used}
    consts = {i: net.const(i) for i in used if net.is_const(i)}
    if any(c is None or c.size > 1 << 22 for c in consts.values()):
        return None
    inits = [onnx.numpy_helper.from_array(np.asarray(c), k) for k, c in consts.items()]
    ins = [helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
           for k, v in feeds.items()]
    g = helper.make_graph([o.src[0] for o in ops], "side", ins, [helper.make_value_info(want, onnx.TypeProto())],
                          inits)
    m = helper.make_model(g, opset_imports=list(net.mo.opset_import))
    try:
        return np.asarray(ReferenceEvaluator(m).run(None, feeds)[0])
    except Exception:                                           # noqa: BLE001  unevaluable: the caller says what
        return None


# ---------------------------------------------------------------------------------------------- folding
def _fold(node, args: list[np.ndarray | None]) -> list[np.ndarray] | None:
    """Outputs of a constant node for the ops exporters leave on weights (fast paths; None: use the reference)."""
    import onnx.numpy_helper as nh

    op, at = node.op_type, attrs_of(node)
    if op == "Constant":
        if "value" in at:
            return [nh.to_array(at["value"])]
        for k, conv in (("value_float", np.float32), ("value_int", np.int64)):
            if k in at:
                return [np.asarray(at[k], conv)]
        for k, conv in (("value_floats", np.float32), ("value_ints", np.int64)):
            if k in at:
                return [np.asarray(list(at[k]), conv)]
        return None
    if op == "Identity":
        return [args[0]]
    if op == "Transpose":
        return [np.transpose(args[0], at.get("perm"))]
    if op in ("Unsqueeze", "Squeeze"):
        axes = [int(a) for a in (args[1] if len(args) > 1 and args[1] is not None else at.get("axes", []))]
        if op == "Unsqueeze":
            out = args[0]
            for a in sorted(a % (out.ndim + len(axes)) for a in axes):
                out = np.expand_dims(out, a)
            return [out]
        return [np.squeeze(args[0], tuple(axes) if axes else None)]
    if op == "Reshape":
        shape = [int(s) for s in args[1]]
        shape = [args[0].shape[i] if s == 0 and not at.get("allowzero") else s for i, s in enumerate(shape)]
        return [args[0].reshape(shape)]
    if op == "Cast":
        from onnx import helper

        return [np.asarray(args[0]).astype(helper.tensor_dtype_to_np_dtype(at["to"]))]
    return None


def _fold_reference(node, args: list[np.ndarray | None], source: str) -> list[np.ndarray]:
    """Any other constant node, through ``onnx.reference``."""
    import onnx
    from onnx import helper
    from onnx.reference import ReferenceEvaluator

    names = [f"in{k}" if a is not None else "" for k, a in enumerate(args)]
    n = helper.make_node(node.op_type, names, [f"out{k}" for k in range(len(node.output))], domain=node.domain,
                         **attrs_of(node))
    ins = [helper.make_tensor_value_info(nm, helper.np_dtype_to_tensor_dtype(np.asarray(a).dtype), np.shape(a))
           for nm, a in zip(names, args) if a is not None]
    outs = [helper.make_value_info(f"out{k}", onnx.TypeProto()) for k in range(len(node.output))]
    try:
        m = helper.make_model(helper.make_graph([n], "fold", ins, outs))
        return [np.asarray(x) for x in ReferenceEvaluator(m).run(
            None, {nm: np.asarray(a) for nm, a in zip(names, args) if a is not None})]
    except Exception as e:                                      # noqa: BLE001
        raise OnnxLiftError("the graph", f"cannot fold the constant {node.op_type} ({type(e).__name__}: {e})",
                            [node]) from None
