"""Presets: published parameter counts, state columns, config-only imports."""
from __future__ import annotations

import pytest

from lfmc.frontend import import_preset
from lfmc.frontend.presets import PRESETS
from lfmc.ir.summary import summarize


@pytest.mark.parametrize("name", [k for k, v in PRESETS.items() if v["published_parameters"]])
def test_published_parameter_counts(name):
    m = import_preset(name)
    assert m.weights is None                                  # config-only
    assert m.graph.num_parameters() == PRESETS[name]["published_parameters"]


def test_350m_and_1_2b_exact():
    assert summarize(import_preset("lfm2-1.2b").graph)["parameters"] == 1_170_340_608
    assert summarize(import_preset("lfm2-350m").graph)["parameters"] == 354_483_968


def test_state_columns_conv_constant_attention_grows():
    s = summarize(import_preset("lfm2-350m").graph)
    conv = [r for r in s["nodes"] if r["op"] == "short_conv"]
    attn = [r for r in s["nodes"] if r["op"] == "attention"]
    assert len(conv) == 10 and len(attn) == 6
    assert all(r["state_bytes_per_sequence"] == 1024 * 2 * 4 and r["state_bytes_per_token"] == 0 for r in conv)
    assert all(r["state_bytes_per_sequence"] == 0 and r["state_bytes_per_token"] == 2 * 8 * 64 * 4 for r in attn)
    assert s["state_bytes_per_token"] == 6 * 2 * 8 * 64 * 4


def test_assumed_presets_say_so():
    for name in ("lfm2-2.6b", "lfm2-24b-a2b"):
        assert PRESETS[name]["assumed"], name
    m = import_preset("lfm2-8b-a1b")
    s = summarize(m.graph)
    assert s["buffers"] == 22 * 32                            # expert_bias: a buffer, not a parameter
    assert sum(r["op"] == "moe" for r in s["nodes"]) == 22
