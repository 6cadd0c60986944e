"""The zoo's hybrid model (conv + linear recurrence + attention + MoE): lifted from PyTorch, checked against
its PyTorch reference, and the recurrence's scan against step-by-step decoding."""
from __future__ import annotations

import numpy as np

from lfmc.check import compare
from lfmc.frontend import import_preset, import_torch_model
from lfmc.frontend.reference import build_hf_model
from lfmc.ir import Interpreter, print_graph
from lfmc.ir.summary import summarize


def test_lift_equals_config_and_matches_reference():
    m = import_preset("lfm2-hybrid-tiny", weights=True, seed=2, std=0.25)
    ref = build_hf_model(m.provenance["config"], m.weights)
    lifted = import_torch_model(ref, "lfm2-hybrid-tiny")
    assert print_graph(lifted.graph) == print_graph(m.graph)
    classes = {r["class"] for r in summarize(m.graph)["nodes"]}
    assert classes == {None, "diagonal", "low_rank", "scaled_toeplitz", "semi_separable"}
    res = compare(lifted, prefill_lens=(1, 7, 40), decode_steps=8, seed=3)
    assert res.ok, res.worst()


def test_interpreter_scan_equals_steps():
    m = import_preset("lfm2-hybrid-tiny", weights=True, seed=2, std=0.25)
    it = Interpreter(m.graph, m.weights)
    toks = np.random.default_rng(0).integers(0, 256, 300)
    a = it.run(toks)[-1]
    st = it.new_state()
    for t in toks:
        b = it.run([t], st)[-1]
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * np.abs(a).max())
