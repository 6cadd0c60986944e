"""The IR as MLIR ops of an ``lfm`` dialect, in generic form, built with the upstream MLIR Python bindings.

One ``func.func @forward(%tokens, %params...) -> logits`` per graph. Parameters are function arguments (with
``lfm.param`` naming the weight), so the module stays small and weights travel separately. Every IR node is one
``"lfm.<op>"`` operation; its attributes carry the node's attributes, its parameter roles (``lfm.params``, in
operand order), and for LIV operators ``lfm.liv`` (class, mixing, featurizer) and ``lfm.state`` (the per-sequence
state it carries). The ``lfm`` dialect is unregistered: MLIR parses and verifies it in generic form.
"""
from __future__ import annotations

from typing import Any

from ...ir.graph import Graph
from ...ir.types import TensorType

_ELT = {"f32": "f32", "f16": "f16", "bf16": "bf16", "i64": "i64", "i32": "i32", "i8": "i8", "u8": "ui8", "u4": "ui8"}


def tensor_type(t: TensorType) -> str:
    """``f32[T, 64]`` -> ``tensor<?x64xf32>`` (symbolic dims are dynamic)."""
    dims = "x".join("?" if isinstance(d, str) else str(int(d)) for d in t.shape)
    return f"tensor<{dims + 'x' if dims else ''}{_ELT.get(t.dtype, t.dtype)}>"


def _attr(ir, v: Any):
    if isinstance(v, bool):
        return ir.BoolAttr.get(v)
    if isinstance(v, int):
        return ir.IntegerAttr.get(ir.IntegerType.get_signless(64), v)
    if isinstance(v, float):
        return ir.FloatAttr.get_f64(v)
    if isinstance(v, str):
        return ir.StringAttr.get(v)
    if isinstance(v, dict):
        return ir.DictAttr.get({str(k): _attr(ir, x) for k, x in v.items()})
    if isinstance(v, (list, tuple)):
        return ir.ArrayAttr.get([_attr(ir, x) for x in v])
    raise TypeError(f"no MLIR attribute for {type(v).__name__} {v!r}")


def build_dialect_module(g: Graph, ir, func) -> Any:
    """An ``ir.Module`` (in the caller's context, unregistered dialects allowed) holding ``@forward``."""
    ptype = {name: p.type for name, p in g.params().items()}
    params = list(ptype)
    module = ir.Module.create()
    module.operation.attributes["lfm.graph"] = ir.StringAttr.get(g.name)
    module.operation.attributes["lfm.ir_version"] = _attr(ir, 1)
    in_types = [ir.Type.parse(tensor_type(t)) for _, t in g.inputs] + [ir.Type.parse(tensor_type(ptype[p]))
                                                                       for p in params]
    types = {n.name: n.type for n in g.nodes} | {name: t for name, t in g.inputs}
    out_types = [ir.Type.parse(tensor_type(types[o])) for o in g.outputs]
    with ir.InsertionPoint(module.body):
        f = func.FuncOp("forward", ir.FunctionType.get(in_types, out_types))
        f.arg_attrs = ir.ArrayAttr.get([ir.DictAttr.get({"lfm.input": ir.StringAttr.get(n)}) for n, _ in g.inputs]
                                       + [ir.DictAttr.get({"lfm.param": ir.StringAttr.get(p)}) for p in params])
        block = f.add_entry_block()
        args = list(block.arguments)
        value = {name: args[i] for i, (name, _) in enumerate(g.inputs)}
        pval = {p: args[len(g.inputs) + i] for i, p in enumerate(params)}
        with ir.InsertionPoint(block):
            for n in g.nodes:
                roles = sorted(n.params)
                attrs: dict[str, Any] = {k: _attr(ir, v) for k, v in sorted(n.attrs.items())}
                attrs["lfm.params"] = _attr(ir, roles)
                attrs["lfm.node"] = _attr(ir, n.name)
                if n.liv is not None:
                    attrs["lfm.liv"] = _attr(ir, {"class": n.liv.cls, "mixing": n.liv.mixing,
                                                  "featurizer": {k: v.to_attr() for k, v in
                                                                 sorted(n.liv.featurizer.items())}})
                if n.state:
                    attrs["lfm.state"] = _attr(ir, {k: str(t) for k, t in sorted(n.state.items())})
                op = ir.Operation.create(f"lfm.{n.op}", results=[ir.Type.parse(tensor_type(n.type))],
                                         operands=[value[i] for i in n.inputs] + [pval[n.params[r].name]
                                                                                  for r in roles],
                                         attributes=attrs)
                value[n.name] = op.results[0]
            func.ReturnOp([value[o] for o in g.outputs])
    return module
