"""The verifier rejects each kind of inconsistency and names the node."""
from __future__ import annotations

import copy

import pytest

from lfmc.frontend.config import graph_from_config
from lfmc.frontend.presets import preset
from lfmc.ir import Gate, Param, TensorType, VerifyError, parse_graph, print_graph, verify


@pytest.fixture
def g():
    return graph_from_config(preset("lfm2-moe-tiny")["config"], "m")


def _node(g, op):
    return next(n for n in g.nodes if n.op == op)


def test_valid(g):
    verify(g)


def test_unknown_op_in_text(g):
    text = print_graph(g).replace("= gated_mlp(", "= swirly_mlp(", 1)
    with pytest.raises(VerifyError, match=r"node %\d+ \(swirly_mlp\): unknown op 'swirly_mlp'"):
        verify(parse_graph(text))


def test_shape_mismatch(g):
    n = _node(g, "short_conv")
    n.params["in_proj"] = Param(n.params["in_proj"].name, TensorType("f32", (190, 64)))
    with pytest.raises(VerifyError, match=rf"%{n.name} \(short_conv\): param in_proj has shape \[190, 64\]"):
        verify(g)


def test_declared_state_must_match(g):
    n = _node(g, "attention")
    n.state["k"] = TensorType("f32", (128, 2, 16))          # a KV cache must grow with ctx
    with pytest.raises(VerifyError, match="declared state"):
        verify(g)
    n = _node(graph_from_config(preset("lfm2-tiny")["config"], "t"), "short_conv")
    n.state = {}
    g2 = graph_from_config(preset("lfm2-tiny")["config"], "t")
    g2.nodes[int(n.name)].state = {}
    with pytest.raises(VerifyError, match="declared state"):
        verify(g2)


def test_liv_metadata(g):
    n = _node(g, "short_conv")
    n.liv.cls = "low_rank"
    with pytest.raises(VerifyError, match="token-mixing class 'low_rank', but short_conv is 'scaled_toeplitz'"):
        verify(g)
    n.liv.cls = "scaled_toeplitz"
    n.liv.featurizer["C"] = Gate("in_proj", 0, 3)           # C reads the same chunk as B
    with pytest.raises(VerifyError, match="same chunk"):
        verify(g)
    n.liv.featurizer["C"] = Gate("out_proj", 1, 3)
    with pytest.raises(VerifyError, match="featurizer"):
        verify(g)
    n.liv.featurizer["C"] = Gate("in_proj", 1, 3)
    verify(g)
    m = _node(g, "moe")
    m.liv = None
    with pytest.raises(VerifyError, match="without its liv record"):
        verify(g)


def test_undefined_operand_and_duplicate_value(g):
    g2 = copy.deepcopy(g)
    g2.nodes[3].inputs = ["999", "0"]
    with pytest.raises(VerifyError, match="operand %999 is not defined"):
        verify(g2)
    g3 = copy.deepcopy(g)
    g3.nodes[4].name = g3.nodes[3].name
    with pytest.raises(VerifyError, match="defined twice"):
        verify(g3)


def test_tied_reference_must_agree(g):
    head = g.nodes[-1]
    head.params["weight"] = Param(head.params["weight"].name, TensorType("f32", (255, 64)))
    with pytest.raises(VerifyError, match="used as f32\\[255, 64\\] here but as f32\\[256, 64\\]"):
        verify(g)


def test_attributes(g):
    m = _node(g, "moe")
    m.attrs["top_k"] = 99
    with pytest.raises(VerifyError, match="top_k 99"):
        verify(g)
    m.attrs["top_k"] = 2.0
    with pytest.raises(VerifyError, match="wrong type"):
        verify(g)
    del m.attrs["top_k"]
    with pytest.raises(VerifyError, match="missing attribute 'top_k'"):
        verify(g)
