"""lfmc/plan.py: the typed plan both sides share reads back what the compiler writes, and refuses what it does
not know, naming the part."""
from __future__ import annotations

import pytest

from lfmc.plan import Arg, Launch, PlanError, launches
from tests.test_layering import PKG, _lfmc_imports


def test_plan_module_imports_nothing_of_lfmc():
    assert _lfmc_imports(PKG / "plan.py") == set()


@pytest.mark.parametrize("target,quant", [("host", None), ("host", "q4g32"), ("snapdragon-8gen3", None)])
def test_lowered_plans_round_trip(tiny_models, target, quant):
    from lfmc.compile import lower_for_target

    for name in ("dense-a", "moe-a"):
        _, low = lower_for_target(tiny_models[name], target, quant=quant)
        for e in ("prefill", "decode"):
            typed = launches(low.plan, e)
            assert typed and all(isinstance(a, Arg) for L in typed for a in L.args)
            assert [L.to_json() for L in typed] == low.plan["entries"][e]
            assert [Launch.from_json(L.to_json()) for L in typed] == typed
            kinds = {a.kind for L in typed for a in L.args}
            assert {"slab", "param", "input"} <= kinds


@pytest.mark.parametrize("raw,msg", [
    (["slab", "v0", "n"], "no column count"),
    (["slab", "v0", "many", 4], "no row count"),
    (["input", "secrets", "n"], "unknown input"),
    (["scalar", "x"], "unknown scalar"),
    (["tensor", "x"], "not understood"),
    (["param"], "not understood"),
    (["param", 3], "has no name"),
    ("slab", "not understood"),
])
def test_bad_arguments_are_named(raw, msg):
    with pytest.raises(PlanError, match=msg):
        Arg.from_json(raw)


def test_bad_launches_are_named():
    with pytest.raises(PlanError, match="names no kernel"):
        Launch.from_json({"kernel": 3, "args": []})
    with pytest.raises(PlanError, match="malformed"):
        Launch.from_json({"kernel": "k", "args": "x"})
    with pytest.raises(PlanError, match="flops_per_row"):
        Launch.from_json({"kernel": "k", "args": [], "flops_per_row": "lots"})
    L = Launch.from_json({"kernel": "k", "args": [["const", 2], ["scalar", "nb"]], "node": "mm", "flops_per_row": 8})
    assert L == Launch("k", (Arg.const(2), Arg.scalar("nb")), "mm", 8)
