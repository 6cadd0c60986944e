"""Weight-only quantization: the pass, the IR round trip, the interpreter, and compiled kernels that
dequantize in their inner loops (compared with the interpreter on the same quantized graph)."""
from __future__ import annotations

import numpy as np
import pytest

from lfmc.compile import compile_model
from lfmc.ir import Interpreter, LfmcError, VerifyError, parse_graph, print_graph, verify
from lfmc.ir.quant import dequantize, quantize
from lfmc.passes import run_pipeline
from lfmc.passes.quantize import parse_scheme
from lfmc.runtime import Engine

from tests.helpers import assert_follows_interpreter

SCHEMES = ["q8", "q4g32", "q4g16a"]


@pytest.mark.parametrize("bits,group,asym", [(8, None, False), (4, 32, False), (4, 16, True), (4, 64, False)])
def test_quantize_round_trip_error(bits, group, asym):
    w = np.random.default_rng(0).standard_normal((48, 128)).astype(np.float32)
    q, s, z = quantize(w, bits, group, asym)
    back = dequantize(q, s, z, "i8" if bits == 8 else "u4")
    step = np.repeat(s, 128 // s.shape[-1], axis=-1)
    assert np.all(np.abs(back - w) <= 0.5 * step + 1e-6)          # round to nearest: half a step at most
    assert q.dtype == (np.int8 if bits == 8 else np.uint8) and (bits == 8 or q.max() <= 15)


def test_schemes():
    assert parse_scheme("q8") == (8, None, False)
    assert parse_scheme("q4g128a") == (4, 128, True)
    for bad in ("q3", "q4g", "q4g7", "int8"):
        with pytest.raises(LfmcError, match="unknown quantization"):
            parse_scheme(bad)


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("name", ["dense-a", "moe-a"])
def test_pass_ir_and_interpreter(scheme, name, tiny_models):
    m = tiny_models[name]
    q = run_pipeline(m, ["quantize"], {"quant": scheme})
    verify(q.graph)
    text = print_graph(q.graph)
    assert print_graph(parse_graph(text)) == text
    assert ("i8[" if scheme == "q8" else "u4[") in text and "in_proj_scale" in text
    assert ("_zero" in text) == scheme.endswith("a")
    assert q.graph.attrs["quant"] == scheme
    # codes take one byte each in the IR's weights file (4-bit codes are packed by targets); dense models shrink
    qparams = [p for p in q.graph.params().values() if p.type.dtype in ("i8", "u4")]
    assert qparams and all(q.weights[p.name].nbytes == p.type.numel() for p in qparams)
    if name.startswith("dense"):
        assert sum(v.nbytes for v in q.weights.values()) < 0.5 * sum(v.nbytes for v in m.weights.values())


@pytest.mark.parametrize("name", ["dense-a", "moe-a"])
def test_quantized_logit_drift(name):
    """Drift against float32 on a model with a moderate init (0.05: large inits make random nets chaotic, and
    any rounding then flips the argmax): int8 stays close, finer and asymmetric int4 groups drift less."""
    from lfmc.frontend.config import graph_from_config
    from lfmc.ir import Model, random_weights

    from tests.configs import ALL_CONFIGS

    g = graph_from_config(ALL_CONFIGS[name], name)
    m = Model(g, random_weights(g, seed=1, std=0.05), {})
    toks = np.random.default_rng(1).integers(0, 256, 64)
    ref = Interpreter(m.graph, m.weights).run(toks)
    drift, agree = {}, {}
    for scheme in ("q8", "q4g16a", "q4g32"):
        q = run_pipeline(m, ["quantize"], {"quant": scheme})
        out = Interpreter(q.graph, q.weights).run(toks)
        drift[scheme] = np.sqrt(((out - ref) ** 2).mean()) / ref.std()
        agree[scheme] = np.mean(out.argmax(-1) == ref.argmax(-1))
    assert drift["q8"] < 0.06 and agree["q8"] >= 0.9, (drift, agree)
    assert drift["q8"] < drift["q4g16a"] < drift["q4g32"] < 0.6, drift


def test_bad_quantized_ir(tiny_models):
    q = run_pipeline(tiny_models["dense-a"], ["quantize"], {"quant": "q8"})
    text = print_graph(q.graph)
    with pytest.raises(VerifyError, match="has no in_proj_scale"):
        g = parse_graph(text)
        n = next(n for n in g.nodes if n.op == "short_conv")
        del n.params["in_proj_scale"]
        verify(g)
    with pytest.raises(VerifyError, match="does not fit"):
        verify(parse_graph(text.replace("in_proj.weight.scale : f32[192, 1]", "in_proj.weight.scale : f32[192, 3]", 1)))


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("name", ["dense-a", "moe-b"])
def test_compiled_quantized_equals_interpreter(scheme, name, tiny_models, tmp_path):
    m = tiny_models[name]
    art = compile_model(m, tmp_path / "q", max_batch=2, max_context=128, prefill_chunk=16, quant=scheme)
    q = run_pipeline(m, ["quantize"], {"quant": scheme})
    it = Interpreter(q.graph, q.weights)
    eng = Engine(art)
    assert_follows_interpreter(it, eng, np.random.default_rng(7).integers(0, 256, 21), 8, rtol=1e-4)
    # the artifact stores the codes, not floats
    import json

    man = json.loads((art / "manifest.json").read_text())
    assert man["quant"] == scheme
    dtypes = {v["dtype"] for v in man["plan"]["params"].values()}
    assert ("int8" if scheme == "q8" else "uint8") in dtypes


@pytest.mark.parametrize("dtype", ["f16", "bf16"])
def test_16bit_weights(dtype, tiny_models, tmp_path):
    m = tiny_models["dense-b"]
    q = run_pipeline(m, ["cast-weights"], {"dtype": dtype})
    verify(q.graph)
    text = print_graph(q.graph)
    assert f"{dtype}[" in text and print_graph(parse_graph(text)) == text
    toks = np.random.default_rng(2).integers(0, 256, 16)
    ref, it = Interpreter(m.graph, m.weights).run(toks), Interpreter(q.graph, q.weights)
    rel = np.sqrt(((it.run(toks) - ref) ** 2).mean()) / ref.std()
    assert rel < (0.01 if dtype == "f16" else 0.05), rel
    art = compile_model(m, tmp_path / dtype, max_batch=2, max_context=64, prefill_chunk=16, dtype=dtype)
    assert_follows_interpreter(it, Engine(art), toks, 4, rtol=1e-4)
    with pytest.raises(LfmcError, match="unknown weight dtype"):
        run_pipeline(m, ["cast-weights"], {"dtype": "f8"})


@pytest.mark.parametrize("name", ["dense-a", "moe-b"])
def test_16bit_kv_cache(name, tiny_models, tmp_path):
    """cast-kv: the IR declares f16 KV state, the interpreter rounds what it caches, the compiled kernels store
    half and read it back in float32; the cache takes half the bytes."""
    m = tiny_models[name]
    q = run_pipeline(m, ["cast-kv"], {"kv_dtype": "f16"})
    verify(q.graph)
    text = print_graph(q.graph)
    assert 'kv_dtype = "f16"' in text and "k = f16[ctx" in text and print_graph(parse_graph(text)) == text
    with pytest.raises(VerifyError, match="declared state"):
        verify(parse_graph(text.replace("k = f16[ctx", "k = f32[ctx", 1)))
    it = Interpreter(q.graph, q.weights)
    toks = np.random.default_rng(5).integers(0, 256, 19)
    ref = Interpreter(m.graph, m.weights).run(toks)
    assert np.sqrt(((it.run(toks) - ref) ** 2).mean()) / ref.std() < 0.01
    arts = {kv: compile_model(m, tmp_path / kv, max_batch=2, max_context=64, prefill_chunk=8, kv_dtype=kv)
            for kv in ("f32", "f16")}
    eng = Engine(arts["f16"])
    assert {s["dtype"] for k, s in eng.plan["state"].items() if s["kind"] == "kv"} == {"float16"}
    assert eng.memory_bytes()["state"] < Engine(arts["f32"]).memory_bytes()["state"]
    assert_follows_interpreter(it, eng, toks, 6, rtol=1e-4)
    with pytest.raises(LfmcError, match="unknown KV-cache dtype"):
        run_pipeline(m, ["cast-kv"], {"kv_dtype": "f8"})
