"""LFM3 on every driver: the host CPU, the opencl driver over PoCL (the Adreno profile's schedules) and the
wafer simulator. Greedy tokens equal transformers' own Lfm3ForCausalLM for 48 tokens after a prompt longer than
the sliding window, and every call's logits follow the interpreter through prefills around the window."""
from __future__ import annotations

import numpy as np
import pytest

from lfmc.compile import compile_model
from lfmc.frontend.reference import build_hf_model
from lfmc.ir import Interpreter
from lfmc.runtime import Engine

from tests.helpers import assert_follows_interpreter, has_opencl, torch_greedy

TARGETS = {"host": "host", "opencl": "snapdragon-8gen3", "wafer": "wafer-tiny"}


def _target(kind: str):
    if kind == "opencl":
        pytest.importorskip("pyopencl")
        if not has_opencl():
            pytest.skip("no OpenCL device (apt install pocl-opencl-icd)")
    return TARGETS[kind]


@pytest.mark.parametrize("name", ["lfm3-a", "lfm3-b", pytest.param("lfm3-c", marks=pytest.mark.slow)])
@pytest.mark.parametrize("kind", sorted(TARGETS))
def test_lfm3_on_each_driver(kind, name, lfm3_models, tmp_path):
    m = lfm3_models[name]
    art = compile_model(m, tmp_path / name, target=_target(kind), max_batch=2, max_context=128, prefill_chunk=16)
    eng = Engine(art)
    assert eng.driver.name == {"host": "cpu"}.get(kind, kind)
    prompt = (np.arange(21) * 29 % 256).tolist()               # longer than the windows (5, 8)
    got = eng.generate(prompt, max_new_tokens=48, stop=[]).tokens
    want = torch_greedy(build_hf_model(m.provenance["config"], m.weights), prompt, 48)
    assert got == want and len(set(got)) >= 5
    it = Interpreter(m.graph, m.weights)
    for plen in (1, 8, 9, 40):
        assert_follows_interpreter(it, eng, (np.arange(plen) * 31 % 256).tolist(), 12, where=(kind, name, plen))
