"""The hybrid zoo model compiled for the host: greedy tokens equal the PyTorch reference; a 2048-token prefill
(chunked scans, conv state, KV cache) equals decoding the same tokens one at a time."""
from __future__ import annotations

import numpy as np
import pytest

from lfmc.compile import compile_model
from lfmc.frontend import import_preset
from lfmc.frontend.reference import build_hf_model
from lfmc.runtime import Engine

from tests.helpers import torch_greedy


@pytest.fixture(scope="module")
def hybrid(tmp_path_factory):
    m = import_preset("lfm2-hybrid-tiny", weights=True, seed=2, std=0.25)
    art = compile_model(m, tmp_path_factory.mktemp("hy") / "a", max_batch=2, max_context=2100, prefill_chunk=256)
    return m, art


def test_greedy_equals_pytorch_reference(hybrid):
    m, art = hybrid
    ref = build_hf_model(m.provenance["config"], m.weights)
    eng = Engine(art)
    prompt = np.random.default_rng(5).integers(0, 256, 19).tolist()
    assert eng.generate(prompt, max_new_tokens=32, stop=[]).tokens == torch_greedy(ref, prompt, 32)


def test_long_prefill_equals_step_by_step(hybrid):
    _, art = hybrid
    eng = Engine(art)
    toks = np.random.default_rng(6).integers(0, 256, 2048).tolist()
    a, b = eng.new_sequence(), eng.new_sequence()
    la = eng.prefill(a, toks)
    lb = eng.prefill(b, toks[:1])
    for t in toks[1:]:
        lb = eng.decode([b], [t])[0]
    np.testing.assert_allclose(la, lb, rtol=1e-4, atol=1e-4 * np.abs(la).max())
