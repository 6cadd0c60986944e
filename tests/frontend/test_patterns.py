"""lfmc/frontend/patterns.py: the short-conv checks both lifters share, on hand-made operands."""
from __future__ import annotations

import pytest

from lfmc.frontend.patterns import short_conv_gates, short_conv_kernel, with_optional


class Found(Exception):
    pass


def fail(msg, at=None):
    raise Found(msg)


def test_kernel_length_of_a_causal_depthwise_conv():
    assert short_conv_kernel((64, 1, 3), 64, 2, True, fail, []) == 3


@pytest.mark.parametrize("shape,groups,pad,unit,msg", [
    ((64, 1, 3), 1, 2, True, "not depthwise"),
    ((64, 1, 3), 64, 1, True, "not causal"),
    ((64, 1, 3), 64, 2, False, "not causal"),
    ((64, 2, 3), 64, 2, True, "depthwise \\[channels, 1, L\\]"),
])
def test_other_convolutions_are_refused(shape, groups, pad, unit, msg):
    with pytest.raises(Found, match=msg):
        short_conv_kernel(shape, groups, pad, unit, fail, [])


@pytest.mark.parametrize("b,c,x", [(0, 1, 2), (2, 0, 1), (1, 2, 0)])
def test_gates_follow_the_chunks(b, c, x):
    chunk = {"B": b, "C": c, "x": x}
    pre, post = ("mul", ["B", "x"]), ("mul", ["C", "conv"])
    feat = short_conv_gates([pre], [post], lambda m: m[1], chunk.get, fail)
    assert {k: (g.proj, g.chunk, g.chunks) for k, g in feat.items()} == {
        "B": ("in_proj", b, 3), "C": ("in_proj", c, 3), "x": ("in_proj", x, 3)}


def test_gates_need_b_times_x_and_c():
    chunk = {"B": 0, "C": 1, "x": 2}
    with pytest.raises(Found, match="conv\\(B \\* x\\)"):
        short_conv_gates([("mul", ["B", "w"])], [("mul", ["C", "conv"])], lambda m: m[1], chunk.get, fail)
    with pytest.raises(Found, match="C \\* conv"):
        short_conv_gates([("mul", ["B", "x"])], [("mul", ["w", "conv"])], lambda m: m[1], chunk.get, fail)
    with pytest.raises(Found, match="conv\\(B \\* x\\)"):
        short_conv_gates([], [("mul", ["C", "conv"])], lambda m: m[1], chunk.get, fail)


def test_optional_parameters_only_when_present():
    assert with_optional({"w": 1}, {"b": None, "c": 2}) == {"w": 1, "c": 2}
