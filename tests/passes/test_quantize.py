"""Weight-only quantization: the pass, the IR round trip, the interpreter, and compiled kernels that
dequantize in their inner loops (compared with the interpreter on the same quantized graph)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from lfmc.compile import compile_model
from lfmc.ir import Interpreter, LfmcError, VerifyError, parse_graph, print_graph, verify
from lfmc.ir.quant import dequantize, quantize
from lfmc.passes import run_pipeline
from lfmc.passes.quantize import parse_scheme
from lfmc.runtime import Engine

from tests.helpers import assert_follows_interpreter

SCHEMES = ["q8", "q8g32", "q4g32", "q4g16a"]


@pytest.mark.parametrize("bits,group,asym", [(8, None, False), (8, 32, False), (4, 32, False), (4, 16, True),
                                             (4, 64, False)])
def test_quantize_round_trip_error(bits, group, asym):
    w = np.random.default_rng(0).standard_normal((48, 128)).astype(np.float32)
    q, s, z = quantize(w, bits, group, asym)
    back = dequantize(q, s, z, "i8" if bits == 8 else "u4")
    step = np.abs(np.repeat(s, 128 // s.shape[-1], axis=-1))
    if bits == 8 or asym:
        assert np.all(np.abs(back - w) <= 0.5 * step + 1e-6)      # round to nearest: half a step at most
    else:       # symmetric int4 trades a clipped extreme for a finer step: below Q4_0's error, never above
        gguf = pytest.importorskip("gguf")
        Q = gguf.GGMLQuantizationType.Q4_0
        for ww in (w, np.random.default_rng(1).standard_t(3, w.shape).astype(np.float32)):
            q2, s2, _ = quantize(ww, bits, group)
            mine = ((dequantize(q2, s2, None, "u4") - ww) ** 2).reshape(-1, group).sum(-1)
            if group == 32:
                ref = ((gguf.quants.dequantize(gguf.quants.quantize(ww, Q), Q) - ww) ** 2).reshape(-1, 32).sum(-1)
                assert np.all(mine <= ref * (1 + 2e-3) + 1e-7) and mine.sum() < 0.95 * ref.sum()
        assert np.all(np.abs(back - w) <= 1.5 * step + 1e-6)
    assert q.dtype == (np.int8 if bits == 8 else np.uint8) and (bits == 8 or q.max() <= 15)
    if bits == 4 or group:                                        # float16 values: targets may keep them in 16 bits
        assert np.array_equal(s.astype(np.float16).astype(np.float32), s) and (s != 0).all()


def test_schemes():
    assert parse_scheme("q8") == (8, None, False)
    assert parse_scheme("q4g128a") == (4, 128, True)
    assert parse_scheme("q8g32") == (8, 32, False)
    for bad in ("q3", "q4g", "q4g7", "int8", "q8g32a", "q8g"):
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
    assert ("i8[" if scheme.startswith("q8") else "u4[") in text and "in_proj_scale" in text
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
    assert ("int8" if scheme.startswith("q8") else "uint8") in dtypes


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


@pytest.mark.parametrize("name,kvd", [("dense-a", "f16"), ("dense-a", "i8"), pytest.param("moe-b", "f16", marks=pytest.mark.slow),
                                      pytest.param("moe-b", "i8", marks=pytest.mark.slow)])
def test_narrow_kv_cache(name, kvd, tiny_models, tmp_path):
    """cast-kv: the IR declares f16 KV state (i8: int8 codes and a float32 scale per row, head_dim + 4 bytes), the
    interpreter rounds what it caches, the compiled kernels store it and read it back in float32; the cache takes
    half (a bit over a quarter) of the bytes; prefill then decode follow the interpreter of the rounded cache."""
    m = tiny_models[name]
    q = run_pipeline(m, ["cast-kv"], {"kv_dtype": kvd})
    verify(q.graph)
    text = print_graph(q.graph)
    att = next(n for n in q.graph.nodes if n.op == "attention")
    hd, kvh = att.attrs["head_dim"], att.attrs["kv_heads"]
    row = f"{kvd}[ctx, {kvh}, {hd + 4 if kvd == 'i8' else hd}]"
    assert f'kv_dtype = "{kvd}"' in text and f"k = {row}" in text and print_graph(parse_graph(text)) == text
    with pytest.raises(VerifyError, match="declared state"):
        verify(parse_graph(text.replace(f"k = {kvd}[ctx", "k = f32[ctx", 1)))
    it = Interpreter(q.graph, q.weights)
    toks = np.random.default_rng(5).integers(0, 256, 19)
    ref = Interpreter(m.graph, m.weights).run(toks)
    assert np.sqrt(((it.run(toks) - ref) ** 2).mean()) / ref.std() < 0.01
    arts = {kv: compile_model(m, tmp_path / kv, max_batch=2, max_context=64, prefill_chunk=8, kv_dtype=kv)
            for kv in ("f32", kvd)}
    eng = Engine(arts[kvd])
    kv_states = [s for s in eng.plan["state"].values() if s["kind"] == "kv"]
    assert {s["dtype"] for s in kv_states} == {"float16" if kvd == "f16" else "int8"}
    row_bytes = {int(np.prod(s["shape"][2:])) * np.dtype(s["dtype"]).itemsize for s in kv_states}
    assert row_bytes == {kvh * (2 * hd if kvd == "f16" else hd + 4)}       # per position: 4 * kvh * hd in f32
    assert eng.memory_bytes()["state"] < Engine(arts["f32"]).memory_bytes()["state"]
    assert_follows_interpreter(it, eng, toks, 6, rtol=1e-4)
    a = eng.new_sequence()                               # a fork copies the rows (an int8 row with its scale)
    eng.prefill(a, toks[:11].tolist())
    b = eng.fork(a)
    la, lb = eng.decode([a, b], [int(toks[11])] * 2)
    np.testing.assert_array_equal(la, lb)
    with pytest.raises(LfmcError, match="unknown KV-cache dtype"):
        run_pipeline(m, ["cast-kv"], {"kv_dtype": "f8"})


def test_activation_quantization_semantics():
    """lfmc/ir/quant.py: codes in [-127, 127], a group's largest magnitude maps to +-127, the rounding error is at
    most half a step, an all-zero group stays zero, a short last group is its own group."""
    from lfmc.ir.quant import fake_quantize_activations, quantize_activations

    x = np.random.default_rng(3).standard_normal((3, 70)).astype(np.float32)
    x[1, 32:64] = 0
    q, d = quantize_activations(x, 32)
    assert q.dtype == np.int8 and d.shape == (3, 3) and np.abs(q).max() == 127 and d[1, 1] == 0
    back = fake_quantize_activations(x, 32)
    step = np.repeat(d, 32, axis=-1)[:, :70]
    assert np.all(np.abs(back - x) <= 0.5 * step + 1e-7) and np.all(back[1, 32:64] == 0)
    assert np.isclose(d[0, 2], np.abs(x[0, 64:]).max() / 127)


@pytest.mark.parametrize("scheme", ["q8", "q4g32", "q4g32a"])
def test_activation_pass_marks_integer_projections(scheme, tiny_models):
    m = tiny_models["moe-a"]
    q = run_pipeline(m, ["quantize", "quantize-activations"], {"quant": scheme, "act_quant": "i8"})
    marked = {n.op for n in q.graph.nodes if "act_quant" in n.attrs}
    assert marked == {"short_conv", "attention", "gated_mlp", "lm_head"}, marked     # MoE experts stay float
    assert all(n.attrs["act_quant"] == 32 for n in q.graph.nodes if "act_quant" in n.attrs)
    assert q.graph.attrs["act_quant"] == "i8g32" and q.graph.attrs["act_quant_skipped"]
    text = print_graph(q.graph)
    assert "act_quant = 32" in text and print_graph(parse_graph(text)) == text
    # the interpreter quantizes those inputs: logits move (a little: this random net is chaotic, see above)
    toks = np.random.default_rng(4).integers(0, 256, 12)
    w8 = run_pipeline(m, ["quantize"], {"quant": scheme})
    a = Interpreter(q.graph, q.weights).run(toks)
    b = Interpreter(w8.graph, w8.weights).run(toks)
    assert 0 < np.sqrt(((a - b) ** 2).mean()) / b.std() < 0.15


def test_int8_activation_packing_keeps_scales_in_float16():
    """lfmc's own int4 scales are float16 values (packed exactly); an imported file's float32 scales (ONNX
    MatMulNBits) are packed to the nearest float16."""
    from lfmc.targets.lower import pack_weight_a8

    q, s, z = quantize(np.random.default_rng(1).standard_normal((16, 64)).astype(np.float32), 4, 32)
    packed, extra = pack_weight_a8(q, s, z, ("q4", 32, False), False, 2)
    assert extra[0].dtype == np.float16 and packed.shape == (1, 8, 1, 2, 32)
    assert np.array_equal(np.sort(extra[0].astype(np.float32).reshape(-1)), np.sort(s.reshape(-1)))
    s2 = s * np.float32(1.0001)
    _, extra2 = pack_weight_a8(q, s2, z, ("q4", 32, False), False, 2)
    np.testing.assert_array_equal(np.sort(extra2[0].reshape(-1)), np.sort(s2.astype(np.float16).reshape(-1)))


def test_activation_pass_errors_and_skips(tiny_models):
    m = tiny_models["dense-b"]                                       # hidden 48: int4 groups of 32 do not fit
    q = run_pipeline(m, ["quantize", "quantize-activations"], {"quant": "q4g32", "act_quant": "i8"})
    assert not any("act_quant" in n.attrs for n in q.graph.nodes if n.op == "short_conv")
    q16 = run_pipeline(m, ["quantize", "quantize-activations"], {"quant": "q4g16", "act_quant": "i8"})
    assert not any("act_quant" in n.attrs for n in q16.graph.nodes)   # groups of 16: no integer kernel
    with pytest.raises(LfmcError, match="need int8 or int4 weights"):
        run_pipeline(m, ["quantize-activations"], {"act_quant": "i8"})
    with pytest.raises(LfmcError, match="unknown activation quantization"):
        run_pipeline(m, ["quantize", "quantize-activations"], {"quant": "q8", "act_quant": "i4"})
    text = print_graph(run_pipeline(m, ["quantize", "quantize-activations"],
                                    {"quant": "q8", "act_quant": "i8"}).graph)
    with pytest.raises(VerifyError, match="act_quant must be a positive group size"):
        verify(parse_graph(text.replace("act_quant = 32", "act_quant = 0", 1)))
    plain = print_graph(m.graph)
    conv = next(n for n in m.graph.nodes if n.op == "short_conv").name
    with pytest.raises(VerifyError, match="no quantized projection"):
        g = parse_graph(plain)
        n = next(n for n in g.nodes if n.name == conv)
        n.attrs["act_quant"] = 32
        verify(g)


class _Ties:
    """Watches the interpreter's activation quantization for inputs within ``eps`` code units of a rounding tie
    (x * 127 / max|x| = n + 0.5): there, float rounding alone (another summation order) can flip a code."""

    def __init__(self, monkeypatch, eps: float = 1e-4):
        import lfmc.ir.interp as interp
        from lfmc.ir.quant import fake_quantize_activations

        self.eps, self.hit = eps, False

        def spy(x, group):
            x = np.asarray(x, np.float32)
            K, G = x.shape[-1], -(-x.shape[-1] // group)
            xb = np.zeros((*x.shape[:-1], G * group), np.float32)
            xb[..., :K] = x
            xb = xb.reshape(*x.shape[:-1], G, group)
            am = np.abs(xb).max(-1, keepdims=True)
            v = xb * np.where(am > 0, np.float32(127) / am, np.float32(0)).astype(np.float32)
            self.hit |= bool((np.abs(np.abs(v - np.floor(v)) - 0.5) < self.eps).any())
            return fake_quantize_activations(x, group)

        monkeypatch.setattr(interp, "fake_quantize_activations", spy)

    def take(self) -> bool:
        hit, self.hit = self.hit, False
        return hit


@pytest.mark.parametrize("name,scheme", [
    ("dense-a", "q4g32"), ("dense-b", "q8"), pytest.param("dense-a", "q8g32", marks=pytest.mark.slow),
    pytest.param("lfm2-hybrid-tiny", "q8", marks=pytest.mark.slow),
    pytest.param("dense-a", "q8", marks=pytest.mark.slow), pytest.param("moe-a", "q4g32a", marks=pytest.mark.slow)])
def test_compiled_int8_activations_equal_interpreter(name, scheme, tmp_path, monkeypatch):
    """W8A8 / W4A8 kernels (integer dot products) against the interpreter on the same marked graph: prefill,
    decode after prefill, and a batch of two sequences at different positions; dense-b has K = 48 (padded).

    Quantizing activations is discontinuous: where an input lies within float rounding of a tie, the kernels
    (another summation order in the norms and the prefill attention) may round it the other way, and one code
    flipped by one changes the logits visibly. So each step must agree to 1e-4, or the interpreter must have met
    such a tie in that step (then the sequences have parted and the comparison stops there); at least three
    steps must agree. Weights std 0.05 (a calmer net than the usual 0.25)."""
    from lfmc.frontend import import_preset
    from lfmc.frontend.config import graph_from_config
    from lfmc.ir import Model, random_weights
    from lfmc.targets.host import cpu_features

    from tests.configs import ALL_CONFIGS

    if not cpu_features()["avx2"]:
        pytest.skip("int8-activation kernels need x86 AVX2")
    if name in ALL_CONFIGS:
        g = graph_from_config(ALL_CONFIGS[name], name)
        m = Model(g, random_weights(g, seed=3, std=0.05), {"source": "test", "config": ALL_CONFIGS[name]})
    else:
        m = import_preset(name, weights=True, seed=3, std=0.05)
    art = compile_model(m, tmp_path / "a8", max_batch=2, max_context=128, prefill_chunk=16, quant=scheme,
                        act_quant="i8")
    q = run_pipeline(m, None, {"quant": scheme, "act_quant": "i8"})
    assert any("act_quant" in n.attrs for n in q.graph.nodes)
    ties = _Ties(monkeypatch)
    it, eng = Interpreter(q.graph, q.weights), Engine(art)

    def close(got, want) -> bool:
        return np.abs(got - want).max() <= 1e-4 * max(1.0, np.abs(want).max())

    st, seq = it.new_state(), eng.new_sequence()
    prompt = np.random.default_rng(7).integers(0, 256, 21)
    ref, got = it.run(prompt, st)[-1], eng.prefill(seq, prompt.tolist())
    agreed = 0
    for step in range(8):
        tie = ties.take()
        if not close(got, ref):
            assert tie, f"step {step}: logits differ by {np.abs(got - ref).max()} without a rounding tie"
            break
        agreed += 1
        tok = int(np.argmax(ref))
        ref, got = it.run([tok], st)[-1], eng.decode([seq], [tok])[0]
    assert agreed >= 3, agreed
    eng.release(seq)
    s1, s2 = eng.new_sequence(), eng.new_sequence()
    st1, st2 = it.new_state(), it.new_state()
    p1, p2 = [5, 9, 200, 7, 1], [3] * 19
    eng.prefill(s1, p1), eng.prefill(s2, p2), it.run(p1, st1), it.run(p2, st2)
    got = eng.decode([s1, s2], [11, 12])
    want = np.stack([it.run([11], st1)[-1], it.run([12], st2)[-1]])
    assert close(got, want) or ties.take()
    import json

    man = json.loads((art / "manifest.json").read_text())
    assert man["act_quant"] == "i8g32" and any("_a8_" in k for k in man["kernels"])


def test_int8_activations_refused_where_no_kernels(tiny_models, tmp_path):
    """GPU and wafer families compute with float activations; an arm64 CPU without dotprod (a Cortex-A53,
    ARMv8.0) has no integer dot products: each refused by name. Arm CPUs with dotprod take the sdot kernels."""
    m = tiny_models["dense-a"]
    with pytest.raises(LfmcError, match="int8 activations .* implemented for CPUs with integer dot products"):
        compile_model(m, tmp_path / "g", target="snapdragon-8gen3", quant="q8", act_quant="i8")
    with pytest.raises(LfmcError, match="int8 activations .* implemented for CPUs with integer dot products"):
        compile_model(m, tmp_path / "w", target="wafer-small", act_quant="i8")
    from lfmc.compile import lower_for_target

    toml = tmp_path / "a53.toml"
    toml.write_text('[cortex-a53]\nfamily = "cpu"\nmtriple = "aarch64-linux-gnu"\nmcpu = "cortex-a53"\n')
    with pytest.raises(LfmcError, match="integer dot-product instructions"):
        lower_for_target(m, "cortex-a53", quant="q8", act_quant="i8", profiles=toml)
    _, low = lower_for_target(m, "snapdragon-8gen3:cpu", quant="q8", act_quant="i8")
    assert any("_a8_" in k and k.endswith("_i8mm_c2") for k in low.kernels)     # smmla (i8mm) prefill tiles
    assert not (tmp_path / "g").exists() and not (tmp_path / "w").exists()


@pytest.mark.parametrize("name", ["dense-a", "moe-b"])
def test_bf16_activations_follow_the_interpreter(name, tiny_models, tmp_path):
    """``--dtype bf16 --act-quant bf16``: the pass marks the nodes whose projections are all bf16 (not MoE experts,
    the embedding or the LM head) with ``act_dtype = "bf16"`` (printed and parsed back); the interpreter rounds their
    inputs to bf16; the host artifact (vdpbf16ps where the CPU has AVX512-BF16, float32 FMAs on the same pairs
    elsewhere) follows it through prefills of 1 and 19 tokens and 8 decode steps: within 3e-7 of the logit scale until
    an activation within float32 rounding of a bf16 rounding boundary rounds the other way (the kernel's float32
    norm sums in another order than numpy's), then within 2e-2 (seen: up to 8.5e-3 on dense-a)."""
    m = tiny_models[name]
    opts = {"dtype": "bf16", "act_quant": "bf16"}
    q = run_pipeline(m, ["cast-weights", "quantize-activations"], opts)
    marked = {n.op for n in q.graph.nodes if n.attrs.get("act_dtype") == "bf16"}
    assert marked and not marked & {"moe", "embedding", "lm_head"}, marked
    assert q.graph.attrs["act_quant"] == "bf16"
    text = print_graph(q.graph)
    assert 'act_dtype = "bf16"' in text and print_graph(parse_graph(text)) == text
    it = Interpreter(q.graph, q.weights)
    toks = np.random.default_rng(5).integers(0, 256, 12)
    plain = Interpreter(run_pipeline(m, ["cast-weights"], opts).graph, q.weights).run(toks)
    assert np.abs(it.run(toks) - plain).max() > 0             # the rounding is there
    art = compile_model(m, tmp_path / "bf", max_batch=2, max_context=64, prefill_chunk=16, **opts)
    man = json.loads((art / "manifest.json").read_text())
    assert man["act_quant"] == "bf16" and any("_bf16a_" in k for k in man["kernels"])
    eng = Engine(art)
    for plen in (1, 19):
        assert_follows_interpreter(it, eng, (np.arange(plen) * 29 % 256).tolist(), 8, rtol=2e-2, where=(name, plen))


def test_bf16_activations_refused_without_bf16_weights_or_kernels(tiny_models, tmp_path):
    m = tiny_models["dense-a"]
    with pytest.raises(LfmcError, match="--act-quant bf16 needs --dtype bf16"):
        compile_model(m, tmp_path / "a", act_quant="bf16")
    with pytest.raises(LfmcError, match="bf16 activations need bf16 weights"):
        run_pipeline(m, ["quantize-activations"], {"act_quant": "bf16"})
    with pytest.raises(LfmcError, match="bf16 activations .* implemented for CPU targets"):
        compile_model(m, tmp_path / "g", target="snapdragon-8gen3", dtype="bf16", act_quant="bf16")
    text = print_graph(run_pipeline(m, ["cast-weights", "quantize-activations"],
                                    {"dtype": "bf16", "act_quant": "bf16"}).graph)
    with pytest.raises(VerifyError, match="act_dtype must be 'bf16'"):
        verify(parse_graph(text.replace('act_dtype = "bf16"', 'act_dtype = "f16"', 1)))
    assert not (tmp_path / "a").exists() and not (tmp_path / "g").exists()
