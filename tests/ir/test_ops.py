"""Op traits: passes and lowerings ask the op schema table (lfmc/ir/ops.py) instead of keeping lists of op
names, and a state's shape is computed there once."""
from __future__ import annotations

from lfmc.frontend import import_preset
from lfmc.ir import fusion
from lfmc.ir.ops import SCHEMAS, ops_with, state_types
from lfmc.passes.quantize import ROLES
from lfmc.targets.knobs import gpu_knobs
from lfmc.targets.lower import lower


def test_lists_of_ops_come_from_the_traits():
    assert set(fusion.RESIDUAL_PRODUCERS) == {"short_conv", "attention", "gated_mlp", "linear",
                                              "linear_recurrence", "moe"}
    assert set(fusion.NORM_CONSUMERS) == {"short_conv", "attention", "gated_mlp", "linear_recurrence"}
    assert fusion.KEYS == {"add": {"into"}, "rmsnorm": {"into", "post"}, "gated_mlp": {"swiglu"}, "attention": {"rope"}}
    assert ROLES["attention"] == ("q_proj", "k_proj", "v_proj", "out_proj", "g_proj") and "rmsnorm" not in ROLES
    assert set(ops_with("token_mixer")) == {"short_conv", "attention", "linear_recurrence"}
    for name, s in SCHEMAS.items():                 # quantizable roles are parameters of the op
        assert set(s.quant_roles) <= set(s.params) | set(s.optional_params), name


def test_plan_state_is_the_schema_state():
    m = import_preset("lfm2-hybrid-tiny", weights=False)
    plan = lower(m.graph, None, gpu_knobs()).plan
    want = {}
    for n in m.graph.nodes:
        for key, t in state_types(n).items():
            want[f"{key}.{n.name}"] = ["S"] + ["C" if d == "ctx" else max(int(d), 1) for d in t.shape]
    assert want and {k: v["shape"] for k, v in plan["state"].items()} == want
    kinds = {v["kind"] for v in plan["state"].values()}
    assert kinds == {"conv", "recurrence", "kv"}
