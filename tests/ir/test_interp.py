"""Interpreter self-consistency: chunked prefill = full prefill = token-by-token decode; state shapes."""
from __future__ import annotations

import numpy as np
import pytest

from lfmc.ir import Interpreter, LfmcError

from tests.configs import ALL_CONFIGS


@pytest.mark.parametrize("name", ["dense-a", "dense-b", "moe-a", "moe-c"])
def test_chunking_does_not_change_logits(name, tiny_models):
    m = tiny_models[name]
    it = Interpreter(m.graph, m.weights)
    toks = np.random.default_rng(0).integers(0, 256, 20)
    full = it.run(toks)
    st = it.new_state()
    parts = [it.run(toks[:7], st), it.run(toks[7:8], st), it.run(toks[8:], st)]
    np.testing.assert_allclose(np.concatenate(parts), full, rtol=1e-4, atol=1e-4 * np.abs(full).max())
    st1 = it.new_state()
    steps = np.concatenate([it.run([t], st1) for t in toks])
    np.testing.assert_allclose(steps, full, rtol=1e-4, atol=1e-4 * np.abs(full).max())
    assert st.pos == st1.pos == 20


def test_state_conv_constant_kv_grows(tiny_models):
    m = tiny_models["dense-a"]
    it = Interpreter(m.graph, m.weights)
    st = it.new_state()
    it.run(np.arange(5), st)
    sizes5 = {k: {n: a.shape for n, a in d.items()} for k, d in st.tensors.items()}
    it.run(np.arange(9), st)
    for node in m.graph.stateful():
        for sname, t in node.state.items():
            shape = st.tensors[node.name][sname].shape
            if "ctx" in t.shape:
                assert shape[0] == 14 and sizes5[node.name][sname][0] == 5
            else:
                assert shape == tuple(t.shape) == sizes5[node.name][sname]


def test_bad_tokens(tiny_models):
    m = tiny_models["dense-c"]
    it = Interpreter(m.graph, m.weights)
    with pytest.raises(LfmcError, match="token id out of range"):
        it.run([ALL_CONFIGS["dense-c"]["vocab_size"]])
    with pytest.raises(LfmcError, match="at least one token"):
        it.run([])
