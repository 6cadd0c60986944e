"""Launch tables: the runtime's expression evaluator accepts integer arithmetic over known names only, and a
malformed table is a load error naming the kernel."""
from __future__ import annotations

import pytest

from lfmc.runtime import RuntimeLoadError
from lfmc.runtime.drivers.launch import LaunchSpec, TempPool, compile_expr


def test_expressions():
    f = compile_expr("((n + 63) // 64)", {"n"})
    assert [f({"n": n}) for n in (1, 64, 65)] == [1, 1, 2]
    assert compile_expr("max((n * 4) % 3, min(n, 2))", {"n"})({"n": 5}) == 2
    for bad, msg in [("__import__('os')", "only min/max"), ("n.real", "Attribute"), ("m + 1", "unknown name 'm'"),
                     ("n / 2", "Div"), ("1.5 * n", "non-integer"), ("n +", "bad expression"),
                     ("[n]", "List")]:
        with pytest.raises(RuntimeLoadError, match=msg):
            compile_expr(bad, {"n"})


def test_spec_binds_shapes_and_scalars():
    spec = LaunchSpec("k", {"params": 3, "shape_vars": {"n": [0, 0]}, "scalars": {"slot": 2},
                            "temps": {"T": {"dtype": "float32", "elems": "(n * 8)"}},
                            "launches": [{"function": "k_kernel", "args": [["buffer", 1], ["temp", "T"],
                                                                           ["int", "n", "int32"]],
                                          "grid": ["((n + 1) // 2)", "slot", "1"], "block": ["64", "1", "1"]}]})

    class A:
        def __init__(self, shape):
            self.shape = shape

    env = spec.env((A((5, 3)), A((7,)), 4), lambda a: a.shape)
    assert env == {"n": 5, "slot": 4}
    fn, args, grid, block = spec.launches[0]
    assert fn == "k_kernel" and [g(env) for g in grid] == [3, 4, 1] and spec.temps["T"][1](env) == 40
    made = []
    pool = TempPool(spec, lambda n, dt: made.append((n, dt)) or len(made))
    vals = spec.arguments(args, (A((5, 3)), "B", 4), env, pool, lambda a: a + "!")
    assert vals == ["B!", 1, 5] and made == [(40, "float32")]
    pool.get("T", {"n": 2, "slot": 0})                      # smaller: the buffer is kept
    pool.get("T", {"n": 6, "slot": 0})                      # larger: grown
    assert made == [(40, "float32"), (48, "float32")]
    with pytest.raises(RuntimeLoadError, match="takes 3 arguments"):
        spec.env((A((5, 3)),), lambda a: a.shape)
    with pytest.raises(RuntimeLoadError, match="launch table of bad is malformed"):
        LaunchSpec("bad", {"params": 1})
    with pytest.raises(RuntimeLoadError, match="unknown temporary"):
        LaunchSpec("k2", {"params": 1, "shape_vars": {}, "scalars": {}, "launches": [
            {"function": "f", "args": [["temp", "X"]], "grid": ["1"] * 3, "block": ["1"] * 3}]})
