"""Constructs the lifter does not know are errors naming the module path and the aten ops found."""
from __future__ import annotations

import pytest
import torch

from lfmc.frontend import import_torch_model
from lfmc.frontend.reference import build_hf_model
from lfmc.frontend.torch_lift import LiftError

from tests.configs import DENSE_CONFIGS


class GeluMLP(torch.nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.up = torch.nn.Linear(d, 2 * d, bias=False)
        self.down = torch.nn.Linear(2 * d, d, bias=False)

    def forward(self, x):
        return self.down(torch.nn.functional.gelu(self.up(x)))


class Tanh(torch.nn.Module):
    def forward(self, x):
        return torch.tanh(x)


def test_unknown_block_names_module_and_ops():
    model = build_hf_model(DENSE_CONFIGS["dense-c"])
    model.model.layers[1].feed_forward = GeluMLP(32)
    with pytest.raises(LiftError) as e:
        import_torch_model(model)
    msg = str(e.value)
    assert "model.layers.1.feed_forward" in msg and "gelu" in msg and "linear" in msg


def test_altered_known_block_is_refused():
    model = build_hf_model(DENSE_CONFIGS["dense-c"])
    conv = model.model.layers[0].conv
    orig = conv.forward
    conv.forward = lambda hidden_states, **kw: torch.sigmoid(orig(hidden_states, **kw))
    with pytest.raises(LiftError, match=r"model.layers.0.conv.*sigmoid: found 1, expected 0"):
        import_torch_model(model)


def test_unknown_op_between_operators():
    model = build_hf_model(DENSE_CONFIGS["dense-c"])
    model.model.embedding_norm = torch.nn.Sequential(model.model.embedding_norm, Tanh())
    with pytest.raises(LiftError, match="tanh"):
        import_torch_model(model)
