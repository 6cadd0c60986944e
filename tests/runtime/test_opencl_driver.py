"""Whole models on the `opencl` driver over PoCL with the Adreno profile's schedules (dlight for the TE kernels,
lfmc's thread-grid rule for the loop kernels): greedy tokens equal transformers / the PyTorch reference for 32
tokens, logits per decode step equal the interpreter, on dense, MoE, hybrid and quantized models."""
from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("pyopencl")

from lfmc.check import RTOL  # noqa: E402
from lfmc.compile import compile_model  # noqa: E402
from lfmc.frontend import import_preset  # noqa: E402
from lfmc.frontend.reference import build_hf_model  # noqa: E402
from lfmc.ir import Interpreter  # noqa: E402
from lfmc.runtime import Engine, RuntimeLoadError  # noqa: E402
from tests.helpers import assert_follows_interpreter, has_opencl, torch_greedy  # noqa: E402


pytestmark = pytest.mark.skipif(not has_opencl(), reason="no OpenCL device (apt install pocl-opencl-icd)")
TARGET = "snapdragon-8gen3"


@pytest.fixture(scope="module")
def models(tiny_models):
    hy = import_preset("lfm2-hybrid-tiny", weights=True, seed=2, std=0.25)
    return {"dense-a": tiny_models["dense-a"], "moe-b": tiny_models["moe-b"], "hybrid": hy}


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory, models):
    root = tmp_path_factory.mktemp("ocl")
    return {k: compile_model(m, root / k, target=TARGET, max_batch=2, max_context=96, prefill_chunk=16)
            for k, m in models.items()}


@pytest.mark.parametrize("name", ["dense-a", "moe-b", "hybrid"])
def test_greedy_tokens_equal_reference(name, models, artifacts):
    m = models[name]
    eng = Engine(artifacts[name])
    assert eng.driver.name == "opencl"
    ref = build_hf_model(m.provenance["config"], m.weights)
    prompt = np.random.default_rng(3).integers(0, m.provenance["config"]["vocab_size"], 21).tolist()
    assert eng.generate(prompt, max_new_tokens=32, stop=[]).tokens == torch_greedy(ref, prompt, 32)


@pytest.mark.parametrize("name", ["dense-a", "moe-b"])
def test_decode_after_prefill_matches_interpreter(name, models, artifacts):
    m = models[name]
    it, eng = Interpreter(m.graph, m.weights), Engine(artifacts[name])
    for plen in (1, 19):
        prompt = np.random.default_rng(plen).integers(0, m.provenance["config"]["vocab_size"], plen)
        assert_follows_interpreter(it, eng, prompt, 6, where=(name, plen))


@pytest.mark.parametrize("opts", [{"quant": "q4g32"}, {"quant": "q8", "kv_dtype": "f16"}, {"dtype": "f16"},
                                  {"quant": "q8g32"}])
def test_batched_decode_quantized_16bit(tmp_path, models, opts):
    m = models["dense-a"]
    art = compile_model(m, tmp_path / "q", target=TARGET, max_batch=2, max_context=64, prefill_chunk=16, **opts)
    host = compile_model(m, tmp_path / "h", max_batch=2, max_context=64, prefill_chunk=16, **opts)
    if "f16" in opts.values():
        import pyopencl as cl

        if not any("cl_khr_fp16" in d.extensions for p in cl.get_platforms() for d in p.get_devices()):
            with pytest.raises(RuntimeLoadError, match="lacks cl_khr_fp16"):     # PoCL on this CPU: said plainly
                Engine(art)
            return
    g, h = Engine(art), Engine(host)
    a, b = g.new_sequence(), g.new_sequence()
    ha, hb = h.new_sequence(), h.new_sequence()
    la, lb = g.prefill(a, [1, 2, 3]), g.prefill(b, [9, 8, 7, 6, 5])
    np.testing.assert_allclose(la, h.prefill(ha, [1, 2, 3]), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(lb, h.prefill(hb, [9, 8, 7, 6, 5]), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(g.decode([a, b], [4, 4]), h.decode([ha, hb], [4, 4]), rtol=1e-4, atol=1e-4)


def test_artifact_is_device_code_with_launch_table(artifacts):
    root = artifacts["dense-a"]
    man = json.loads((root / "manifest.json").read_text())
    assert man["target"]["driver"] == "opencl" and man["target"]["profile"]["name"] == TARGET
    lib = json.loads((root / "kernels" / "device.json").read_text())
    assert lib["api"] == "opencl" and "__kernel void" in lib["source"]
    assert set(lib["table"]) == set(man["kernels"])
    for spec in lib["table"].values():
        assert spec["launches"] and all(len(L["grid"]) == 3 and len(L["block"]) == 3 for L in spec["launches"])
    with pytest.raises(RuntimeLoadError, match="not for the 'cpu' driver"):
        Engine(root, device="cpu")


def test_chunked_scan_over_many_pieces(tmp_path, models):
    """GPU families run the recurrence prefill as a parallel-in-time scan (pieces of 32 tokens, carries, rescan;
    global temporaries between its three device kernels): a 75-token prefill equals the interpreter."""
    m = models["hybrid"]
    art = compile_model(m, tmp_path / "h", target=TARGET, max_batch=1, max_context=128, prefill_chunk=80)
    lib = json.loads((art / "kernels" / "device.json").read_text())
    scans = [v for k, v in lib["table"].items() if k.startswith("k_rec_scan")]
    assert scans and all(len(s["launches"]) == 3 and s["temps"] for s in scans)
    eng, it = Engine(art), Interpreter(m.graph, m.weights)
    toks = np.random.default_rng(9).integers(0, 256, 75)
    st, seq = it.new_state(), eng.new_sequence()
    ref, got = it.run(toks, st)[-1], eng.prefill(seq, toks.tolist())
    assert np.abs(got - ref).max() <= RTOL * max(1.0, np.abs(ref).max())
    ref, got = it.run([5], st)[-1], eng.decode([seq], [5])[0]
    assert np.abs(got - ref).max() <= RTOL * max(1.0, np.abs(ref).max())


@pytest.mark.parametrize("name,quant", [("moe-b", "q4g32"), ("hybrid", "q8")])
def test_quantized_moe_and_hybrid_equal_host_build(name, quant, models, tmp_path):
    """int4 experts (dequantized per element on GPUs) and int8 hybrid layers: the OpenCL build's greedy tokens
    and prefill logits equal the host build of the same quantized model."""
    m = models[name]
    kw = dict(max_batch=1, max_context=64, prefill_chunk=16, quant=quant)
    g, h = Engine(compile_model(m, tmp_path / "g", target=TARGET, **kw)), Engine(compile_model(m, tmp_path / "h", **kw))
    p = list(range(3, 23))
    assert g.generate(p, max_new_tokens=16, stop=[]).tokens == h.generate(p, max_new_tokens=16, stop=[]).tokens
    a, b = g.new_sequence(), h.new_sequence()
    np.testing.assert_allclose(g.prefill(a, p), h.prefill(b, p), rtol=1e-4, atol=1e-4)
