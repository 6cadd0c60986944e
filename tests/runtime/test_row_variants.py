"""Decode steps of several sequences take the plan's taller matmul tiles (``plan.row_variants``); their answers
are bit-identical to each sequence decoded alone (1-row GEMVs), at f32 and with int8 activations."""
from __future__ import annotations

import numpy as np
import pytest

from lfmc.compile import compile_model
from lfmc.runtime import Engine


def _run(e: Engine, prompts: list[list[int]], steps: int = 4) -> list[np.ndarray]:
    seqs = [e.new_sequence() for _ in prompts]
    toks = [int(np.argmax(e.prefill(s, p))) for s, p in zip(seqs, prompts)]
    out = []
    for _ in range(steps):
        L = e.decode(seqs, toks)
        out.append(L.copy())
        toks = [int(x) for x in np.argmax(L, 1)]
    for s in seqs:
        e.release(s)
    return out


@pytest.mark.parametrize("kw", [{}, {"quant": "q4g32", "act_quant": "i8"}])
def test_batched_decode_equals_alone(tiny_models, tmp_path, kw):
    art = compile_model(tiny_models["dense-a"], tmp_path / "a.host", max_batch=8, max_context=64, **kw)
    e = Engine(art)
    assert e.plan["row_variants"]["decode"]["kernels"] and e._tile("decode", 5) == 4 and e._tile("decode", 1) == 1
    prompts = [[1 + i, 7, 3 + 2 * i] for i in range(6)]
    for B in (2, 3, 6):
        batched = _run(e, prompts[:B])
        for i in range(B):
            alone = _run(e, [prompts[i]])
            assert all(np.array_equal(a[0], b[i]) for a, b in zip(alone, batched)), (B, i)
