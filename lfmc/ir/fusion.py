"""Fusion annotations (``Node.fused``): which kernel computes a node, decided by passes, checked here.

They never change a node's value, so the interpreter ignores them and every fused graph is checked against the
unfused one. Keys:

- ``into = "%p"`` on an ``add``: computed in the epilogue of operand ``%p``'s output projection, accumulating
  into the other operand (the residual stream) in place.
- ``into = "%c"`` on an ``rmsnorm``: folded into the first projection(s) of its only consumer ``%c``: the norm
  weight is multiplied into the projection weights and the row scale 1/rms(x) is computed in that kernel.
- ``post = "%a"`` on an ``rmsnorm``: a sandwich (post-) norm computed inside the residual add ``%a``, its only
  user: the add's kernel normalizes the operand and adds it into the residual in one pass.
- ``swiglu = true`` on a ``gated_mlp``: the gate and up projections and silu(gate) ⊙ up are one kernel.
- ``rope = true`` on an ``attention``: QK-norm, RoPE and the KV-cache write happen inside the attention kernel.
"""
from __future__ import annotations

from .errors import VerifyError
from .graph import Graph
from .ops import SCHEMAS, ops_with

# ops whose output projection can accumulate into the residual, and that can take a folded input norm (the
# op schemas' traits: lfmc/ir/ops.py)
RESIDUAL_PRODUCERS = ops_with("residual_producer")
NORM_CONSUMERS = ops_with("norm_consumer")
KEYS = {name: set(s.fusions) for name, s in SCHEMAS.items() if s.fusions}


def check_fusion(g: Graph) -> None:
    """Raise :class:`VerifyError` for a fusion annotation that a target could not honour."""
    producer = {n.name: n for n in g.nodes}
    users = g.users()
    for n in g.nodes:
        if not n.fused:
            continue
        where = f"node %{n.name} ({n.op})"
        bad = set(n.fused) - KEYS.get(n.op, set())
        if bad:
            raise VerifyError(f"{where}: unknown fusion annotation(s) {sorted(bad)}")
        if n.op == "add":
            into = n.fused["into"]
            p = producer.get(into)
            if into not in n.inputs or p is None or p.op not in RESIDUAL_PRODUCERS:
                raise VerifyError(f"{where}: fused into %{into}, which is not an operand produced by one of "
                                  f"{', '.join(RESIDUAL_PRODUCERS)}")
            if users.get(into) != [n.name]:
                raise VerifyError(f"{where}: %{into} is also used elsewhere, so it cannot be accumulated away")
        elif n.op == "rmsnorm" and "post" in n.fused:
            a = producer.get(n.fused["post"])
            if a is None or a.op != "add" or users.get(n.name) != [a.name] or n.name == a.inputs[0] == a.inputs[1]:
                raise VerifyError(f"{where}: post-norm fused into %{n.fused['post']}, which must be a residual add "
                                  "and its only user")
            if len(n.fused) != 1:
                raise VerifyError(f"{where}: a norm is folded into a projection or into an add, not both")
        elif n.op == "rmsnorm":
            into = n.fused["into"]
            c = producer.get(into)
            if c is None or c.op not in NORM_CONSUMERS or users.get(n.name) != [into]:
                raise VerifyError(f"{where}: fused into %{into}, which must be its only user and one of "
                                  f"{', '.join(NORM_CONSUMERS)}")
        elif n.op == "gated_mlp" and not isinstance(n.fused["swiglu"], bool):
            raise VerifyError(f"{where}: swiglu must be true or false")
        elif n.op == "attention" and not isinstance(n.fused["rope"], bool):
            raise VerifyError(f"{where}: rope must be true or false")
