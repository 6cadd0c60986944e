"""The IR verifier: shapes, dtypes, declared state, LIV metadata and references.

Run after every transformation (frontends, passes) in tests; every problem names the node.
"""
from __future__ import annotations

from .errors import VerifyError
from .fusion import check_fusion
from .graph import LIV_CLASSES, MIXINGS, Gate, Graph, Node, Param
from .ops import CANONICAL_FEATURIZERS, SCHEMAS
from .types import TensorType


def expected_featurizer(node: Node) -> dict[str, Gate]:
    """The featurizer an op implements (the MoE router's activation is its scoring function)."""
    feat = dict(CANONICAL_FEATURIZERS[node.op])
    if node.op == "moe":
        feat["router"] = Gate("router", act=str(node.attrs.get("scoring")))
    if node.op == "attention" and "g_proj" in node.params:       # the per-head output gate
        feat["g"] = Gate("g_proj", act="sigmoid")
    return feat


def _check_node(n: Node, types: dict[str, TensorType], params: dict[str, Param]) -> None:
    where = f"node %{n.name} ({n.op})"
    sch = SCHEMAS.get(n.op)
    if sch is None:
        raise VerifyError(f"{where}: unknown op {n.op!r} (known: {', '.join(sorted(SCHEMAS))})")
    if len(n.inputs) != sch.arity:
        raise VerifyError(f"{where}: takes {sch.arity} operand(s), got {len(n.inputs)}")
    for i in n.inputs:
        if i not in types:
            raise VerifyError(f"{where}: operand %{i} is not defined before use")
    for a, ty in sch.attrs.items():
        if a not in n.attrs:
            raise VerifyError(f"{where}: missing attribute {a!r}")
        v = n.attrs[a]
        if not isinstance(v, ty) or (isinstance(v, bool) and bool not in (ty if isinstance(ty, tuple) else (ty,))):
            raise VerifyError(f"{where}: attribute {a!r} = {v!r} has the wrong type")
    extra = set(n.attrs) - set(sch.attrs) - set(sch.optional_attrs)
    if extra:
        raise VerifyError(f"{where}: unknown attribute(s) {sorted(extra)}")
    missing = [r for r in sch.params if r not in n.params]
    if missing:
        raise VerifyError(f"{where}: missing parameter(s) {missing}")
    roles = set(sch.params) | set(sch.optional_params)
    unknown = {r for r in n.params if r not in roles and not (r.endswith(("_scale", "_zero"))
                                                               and r.rsplit("_", 1)[0] in roles)}
    if unknown:
        raise VerifyError(f"{where}: unknown parameter role(s) {sorted(unknown)}")
    _check_quant(n, where)
    if "act_quant" in n.attrs:
        a = n.attrs["act_quant"]
        if not isinstance(a, int) or isinstance(a, bool) or a < 1:
            raise VerifyError(f"{where}: act_quant must be a positive group size, not {a!r}")
        if not any(r + "_scale" in n.params for r in n.params):
            raise VerifyError(f"{where}: act_quant is set but the node has no quantized projection")
    if "act_dtype" in n.attrs:
        if n.attrs["act_dtype"] != "bf16":
            raise VerifyError(f"{where}: act_dtype must be 'bf16', not {n.attrs['act_dtype']!r}")
        if not any(p.type.dtype == "bf16" for p in n.params.values()):
            raise VerifyError(f"{where}: act_dtype bf16 is set but the node has no bf16 projection")
    for role, p in n.params.items():
        if p.type.symbolic:
            raise VerifyError(f"{where}: parameter {role} (@{p.name}) has a symbolic shape {p.type}")
        prev = params.setdefault(p.name, p)
        if prev.type != p.type:
            raise VerifyError(f"{where}: parameter @{p.name} is used as {p.type} here but as {prev.type} elsewhere")
    try:
        out, state = sch.infer(n, [types[i] for i in n.inputs])
    except ValueError as e:
        raise VerifyError(f"{where}: {e}") from None
    if out != n.type:
        raise VerifyError(f"{where}: declared type {n.type}, but its operands and parameters give {out}")
    if state != n.state:
        decl = {k: str(v) for k, v in n.state.items()}
        want = {k: str(v) for k, v in state.items()}
        raise VerifyError(f"{where}: declared state {decl}, expected {want}")
    if sch.liv_class is None:
        if n.liv is not None:
            raise VerifyError(f"{where}: is not a linear input-varying op but carries liv metadata")
        return
    if n.liv is None:
        raise VerifyError(f"{where}: LIV op without its liv record (class, mixing, featurizer)")
    if n.liv.cls not in LIV_CLASSES:
        raise VerifyError(f"{where}: unknown token-mixing class {n.liv.cls!r} (known: {', '.join(LIV_CLASSES)})")
    if n.liv.cls != sch.liv_class:
        raise VerifyError(f"{where}: token-mixing class {n.liv.cls!r}, but {n.op} is {sch.liv_class!r}")
    if n.liv.mixing not in MIXINGS:
        raise VerifyError(f"{where}: unknown channel mixing {n.liv.mixing!r}")
    for gname, g in n.liv.featurizer.items():
        if g.proj not in n.params:
            raise VerifyError(f"{where}: featurizer gate {gname!r} reads projection {g.proj!r}, which is not a parameter")
        rows = n.params[g.proj].type.shape[-2] if len(n.params[g.proj].type.shape) >= 2 else 0
        if g.chunks < 1 or not 0 <= g.chunk < g.chunks or rows % g.chunks:
            raise VerifyError(f"{where}: featurizer gate {gname!r} takes chunk {g.chunk} of {g.chunks} of "
                              f"{g.proj} ({rows} rows)")
    # Which chunk feeds which gate is the model's choice; which projection, how many chunks and which
    # activation is the op's.
    want = expected_featurizer(n)
    shape_of = lambda f: {k: (g.proj, g.chunks, g.act) for k, g in f.items()}  # noqa: E731
    if shape_of(n.liv.featurizer) != shape_of(want):
        got = {k: str(v) for k, v in n.liv.featurizer.items()}
        raise VerifyError(f"{where}: featurizer {got} is not the one {n.op} computes "
                          f"({ {k: str(v) for k, v in want.items()} })")
    used = [(g.proj, g.chunk) for g in n.liv.featurizer.values()]
    if len(set(used)) != len(used):
        raise VerifyError(f"{where}: two featurizer gates read the same chunk of one projection")


def verify(g: Graph) -> Graph:
    """Check ``g``; raise :class:`VerifyError` naming the first bad node. Returns ``g`` for chaining."""
    types: dict[str, TensorType] = {}
    for name, t in g.inputs:
        if name in types:
            raise VerifyError(f"input %{name} defined twice")
        types[name] = t
    params: dict[str, Param] = {}
    for n in g.nodes:
        if n.name in types:
            raise VerifyError(f"node %{n.name} ({n.op}): value %{n.name} is defined twice")
        _check_node(n, types, params)
        types[n.name] = n.type
    if not g.outputs:
        raise VerifyError("the graph returns nothing")
    for o in g.outputs:
        if o not in types:
            raise VerifyError(f"return of undefined value %{o}")
    check_fusion(g)
    return g


def _check_quant(n: Node, where: str) -> None:
    """Quantized weights (lfmc/ir/quant.py): integer codes with a scale of shape [..., N, G], G dividing K."""
    from .quant import QUANT_DTYPES

    for role, p in n.params.items():
        if role.endswith(("_scale", "_zero")) and role.rsplit("_", 1)[0] in n.params:
            base = n.params[role.rsplit("_", 1)[0]]
            if base.type.dtype not in QUANT_DTYPES:
                raise VerifyError(f"{where}: {role} given but {role.rsplit('_', 1)[0]} is not quantized "
                                  f"({base.type.dtype})")
            continue
        scale = n.params.get(role + "_scale")
        if p.type.dtype in QUANT_DTYPES or p.type.dtype == "i4":
            if scale is None:
                raise VerifyError(f"{where}: {role} holds {p.type.dtype} codes but has no {role}_scale")
            ws, ss = p.type.shape, scale.type.shape
            if len(ss) != len(ws) or ss[:-1] != ws[:-1] or ws[-1] % ss[-1]:
                raise VerifyError(f"{where}: {role}_scale {list(ss)} does not fit {role} {list(ws)}")
            z = n.params.get(role + "_zero")
            if z is not None and (p.type.dtype != "u4" or z.type.shape != ss):
                raise VerifyError(f"{where}: {role}_zero needs u4 codes and the scale's shape")
        elif p.type.dtype not in ("f32", "f16", "bf16"):
            raise VerifyError(f"{where}: parameter {role} has dtype {p.type.dtype}; weights are f32, f16, bf16 or "
                              f"quantized codes ({', '.join(QUANT_DTYPES)})")
