"""ONNX graphs as people hold them: symbolic axes, wrapper modules, onnx-community's cache layout with ONNX Runtime's
fused ops, 4-bit MatMulNBits (ONNX Runtime's own quantizer), float16. Each is imported and checked against ONNX
Runtime running the same file: logits within the stated tolerance, greedy tokens equal for 16 decode steps after
prefill."""
from __future__ import annotations

import copy
import json
import logging

import numpy as np
import pytest

from lfmc.frontend import import_torch_model
from lfmc.frontend.config import graph_from_config
from lfmc.frontend.onnx import OnnxLiftError, import_onnx, lift_onnx
from lfmc.frontend.reference import build_hf_model
from lfmc.ir.interp import Interpreter
from lfmc.ir.text import print_graph
from lfmc.ir.weights import random_weights
from tests.configs import ALL_CONFIGS, INIT_STD
from tests.onnx_graphs import community_graph, ort_generate, ort_session

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

PROMPT = [1, 5, 9, 3, 7, 11, 2]
STEPS = 16
# logits, relative to their largest: float32 graphs 1e-4; int4 graphs 1e-4 too (lfmc keeps the MatMulNBits codes
# and scales as they are; ONNX Runtime computes in float32: accuracy_level 0, unset); float16 graphs 3e-3
TOL = {"f32": 1e-4, "q4": 1e-4, "f16": 3e-3}


def _weights(name: str, seed: int = 3) -> tuple[dict, dict]:
    cfg = ALL_CONFIGS[name]
    return cfg, random_weights(graph_from_config(cfg), seed=seed, std=INIT_STD)


def _interp_logits(mo, tokens: list[int]) -> np.ndarray:
    g, w = lift_onnx(mo)
    return Interpreter(g, w).run(np.array(tokens))


def _agree(mo, kind: str, prompt=PROMPT, steps: int = STEPS) -> list[int]:
    """ONNX Runtime's greedy decode (cache graph) against lfmc's interpreter on the lifted graph."""
    toks, lg = ort_generate(ort_session(mo), prompt, steps)
    ours = _interp_logits(mo, prompt + toks[:-1])[len(prompt) - 1:]
    scale = float(np.abs(np.stack(lg)).max())
    err = max(float(np.abs(ours[k] - lg[k]).max()) for k in range(len(lg))) / scale
    assert err < TOL[kind], err
    assert [int(np.argmax(r)) for r in ours] == toks
    assert len(set(toks)) > 3                       # not one repeated token
    return toks


@pytest.mark.parametrize("name", ["dense-a", "dense-c"])
def test_community_cache_graph_equals_onnxruntime(name):
    """onnx-community's decoder layout (past_conv / past_key_values inputs, present outputs, GroupQueryAttention,
    RotaryEmbedding, SkipSimplifiedLayerNormalization, the conv in its cache form)."""
    cfg, w = _weights(name)
    _agree(community_graph(cfg, w), "f32")


@pytest.mark.parametrize("name,qmoe", [("moe-a", False), ("moe-a", True),
                                       pytest.param("moe-c", False, marks=pytest.mark.slow)])
def test_community_moe_graph_equals_onnxruntime(name, qmoe, tmp_path):
    """LFM2-MoE with ONNX Runtime's MoE op (router scores, expert bias, top-k, log-probabilities scattered into
    router_probs, interleaved SwiGLU experts), or QMoE with 4-bit experts (kept as lfmc int4): the interpreter and
    the compiled host artifact agree with ONNX Runtime, greedy tokens equal for 16 steps after prefill."""
    from lfmc.compile import compile_model
    from lfmc.runtime import Engine

    cfg, w = _weights(name)
    mo = community_graph(cfg, w, qmoe=qmoe)
    assert any(n.op_type == ("QMoE" if qmoe else "MoE") for n in mo.graph.node)
    toks = _agree(mo, "q4" if qmoe else "f32")
    path = tmp_path / "m.onnx"
    onnx.save(mo, str(path))
    m = import_onnx(path)
    assert m.provenance["config"]["architecture"] == "Lfm2MoeForCausalLM"
    if qmoe:
        assert m.graph.attrs["quant"] == "q4g32" and m.weights[next(
            k for k in m.weights if k.endswith("experts.gate_up_proj"))].dtype == np.uint8
    art = compile_model(m, tmp_path / "a.host", max_batch=1, max_context=64, prefill_chunk=8)
    assert Engine(art).generate(PROMPT, max_new_tokens=STEPS + 1, stop=[]).tokens == toks


def test_community_lfm3_graph_equals_onnxruntime(tmp_path):
    """LFM3 in the cache layout: GroupQueryAttention with local_window_size on the sliding layers, RotaryEmbedding
    caches per layer type (frequency 0 for the pairs LFM3 does not rotate), the per-head sigmoid gate before o_proj,
    sandwich norms. The lifted IR equals the config's; the interpreter and the compiled host artifact follow ONNX
    Runtime for 16 steps after a prompt past the window (ONNX Runtime's GQA needs head_dim a multiple of 8:
    lfm3-a)."""
    from lfmc.compile import compile_model
    from lfmc.runtime import Engine
    from tests.configs import LFM3_CONFIGS

    cfg = LFM3_CONFIGS["lfm3-a"]
    g0 = graph_from_config(cfg, "m")
    w = random_weights(g0, seed=3, std=INIT_STD)
    mo = community_graph(cfg, w)
    assert any(a.name == "local_window_size" and a.i == cfg["sliding_window"]
               for n in mo.graph.node if n.op_type == "GroupQueryAttention" for a in n.attribute)
    g, _ = lift_onnx(mo, "m")
    assert print_graph(g) == print_graph(g0)
    prompt = (np.arange(20) * 7 % cfg["vocab_size"]).tolist()
    toks = _agree(mo, "f32", prompt)
    path = tmp_path / "m.onnx"
    onnx.save(mo, str(path))
    art = compile_model(import_onnx(path), tmp_path / "a.host", max_batch=1, max_context=64, prefill_chunk=8)
    assert Engine(art).generate(prompt, max_new_tokens=STEPS + 1, stop=[]).tokens == toks


def test_community_graph_compiled_for_the_host(tmp_path):
    """The same graph as a file with external data and config / tokenizer one folder up (onnx-community's onnx/
    folder), compiled for the host: greedy tokens equal ONNX Runtime's for 16 steps after prefill."""
    from lfmc.compile import compile_model
    from lfmc.runtime import Engine

    cfg, w = _weights("dense-a")
    mo = community_graph(cfg, w)
    d = tmp_path / "LFM2-ONNX"
    (d / "onnx").mkdir(parents=True)
    onnx.save(copy.deepcopy(mo), str(d / "onnx" / "model.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
              location="model.onnx_data", size_threshold=0)
    (d / "config.json").write_text(json.dumps({k: v for k, v in cfg.items() if k != "architecture"}
                                              | {"architectures": [cfg["architecture"]], "model_type": "lfm2"}))
    m = import_onnx(d / "onnx" / "model.onnx")
    assert m.provenance["config"]["layer_types"] == cfg["layer_types"]
    toks, _ = ort_generate(ort_session(mo), PROMPT, STEPS)
    art = compile_model(m, tmp_path / "a.host", max_batch=1, max_context=64, prefill_chunk=8)
    got = Engine(art).generate(PROMPT, max_new_tokens=STEPS + 1, stop=[]).tokens
    assert got == toks


@pytest.mark.parametrize("block,sym", [(32, True), (32, False), (64, True)])
def test_matmulnbits_graph_equals_onnxruntime(block, sym, tmp_path):
    """The cache graph quantized by ONNX Runtime's MatMulNBitsQuantizer (4-bit, accuracy_level unset): lfmc keeps
    the codes (and zero points) as q4g<block>[a] and agrees with ONNX Runtime on the file."""
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    cfg, w = _weights("dense-a")
    logging.disable(logging.INFO)
    try:
        q = MatMulNBitsQuantizer(community_graph(cfg, w), block_size=block, is_symmetric=sym)
        q.process()
    finally:
        logging.disable(logging.NOTSET)
    mo = q.model.model
    assert sum(n.op_type == "MatMulNBits" for n in mo.graph.node) >= 20
    _agree(mo, "q4")
    from lfmc.frontend.onnx.lift import lift_net
    from lfmc.frontend.onnx.net import Net

    lf = lift_net(Net(mo, "q"), "m")
    assert len(lf.kept) >= 20 and all(k[0] == "u4" and k[2].shape[-1] * block == k[1].shape[-1]
                                      for k in lf.kept.values())
    assert all((k[3] is None) == sym for k in lf.kept.values())
    if block == 32 and sym:                         # compiled as it is: the host's int4 kernels on the file's codes
        from lfmc.compile import compile_model
        from lfmc.runtime import Engine

        path = tmp_path / "q4.onnx"
        onnx.save(mo, str(path))
        m = import_onnx(path)
        assert m.graph.attrs["quant"] == "q4g32"
        art = compile_model(m, tmp_path / "a.host", max_batch=1, max_context=64, prefill_chunk=8)
        toks, _ = ort_generate(ort_session(mo), PROMPT, STEPS)
        assert Engine(art).generate(PROMPT, max_new_tokens=STEPS + 1, stop=[]).tokens == toks


def test_int8_matmulnbits_graph_equals_onnxruntime():
    """8-bit MatMulNBits (the quantizer with bits=8, symmetric, blocks of 32): kept as lfmc int8 in groups (q8g32)."""
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    cfg, w = _weights("dense-a")
    logging.disable(logging.WARNING)
    try:
        q = MatMulNBitsQuantizer(community_graph(cfg, w), algo_config=DefaultWeightOnlyQuantConfig(
            block_size=32, is_symmetric=True, bits=8))
        q.process()
    finally:
        logging.disable(logging.NOTSET)
    mo = q.model.model
    assert any(n.op_type == "MatMulNBits" and any(a.name == "bits" and a.i == 8 for a in n.attribute)
               for n in mo.graph.node)
    _agree(mo, "q4")
    from lfmc.frontend.onnx.lift import lift_net
    from lfmc.frontend.onnx.net import Net

    lf = lift_net(Net(mo, "q"), "m")
    assert len(lf.kept) >= 20 and all(k[0] == "i8" for k in lf.kept.values())


def test_int4_embedding_graph_equals_onnxruntime():
    """The quantizer run over Gather too (transformers.js' q4 files): the embedding as GatherBlockQuantized with
    int4 data (dequantized by lfmc, noted), the projections as MatMulNBits."""
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    cfg, w = _weights("dense-a")
    logging.disable(logging.WARNING)
    try:
        q = MatMulNBitsQuantizer(community_graph(cfg, w), block_size=32, is_symmetric=True,
                                 op_types_to_quantize=("MatMul", "Gather"))
        q.process()
    finally:
        logging.disable(logging.NOTSET)
    mo = q.model.model
    assert any(n.op_type == "GatherBlockQuantized" for n in mo.graph.node)
    _agree(mo, "q4")
    from lfmc.frontend.onnx.lift import lift_net
    from lfmc.frontend.onnx.net import Net

    assert any("GatherBlockQuantized" in note for note in lift_net(Net(mo, "q"), "m").notes)


def test_float16_graph_equals_onnxruntime(tmp_path):
    """The cache graph converted to float16 weights and activations with float32 inputs / outputs (ONNX Runtime's
    float16 converter, keep_io_types), as transformers.js' fp16 files are written."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    cfg, w = _weights("dense-a")
    mo = convert_float_to_float16(community_graph(cfg, w), keep_io_types=True)
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in mo.graph.initializer)
    _agree(mo, "f16")
    path = tmp_path / "f16.onnx"
    onnx.save(mo, str(path))
    m = import_onnx(path)
    assert m.provenance["onnx"]["weight_dtypes"] == ["f16"] and m.graph.attrs["weight_dtype"] == "f16"
    assert m.weights["model.layers.0.conv.in_proj.weight"].dtype == np.float16
    from lfmc.compile import compile_model
    from lfmc.runtime import Engine

    toks, _ = ort_generate(ort_session(mo), PROMPT, STEPS)
    art = compile_model(m, tmp_path / "a.host", max_batch=1, max_context=64, prefill_chunk=8)
    assert Engine(art).generate(PROMPT, max_new_tokens=STEPS + 1, stop=[]).tokens == toks
    q = compile_model(m, tmp_path / "q.host", max_batch=1, max_context=64, prefill_chunk=8, quant="q8")
    assert "int8" in {v["dtype"] for v in json.loads((q / "manifest.json").read_text())["plan"]["params"].values()}


@pytest.mark.parametrize("wtype,ops", [("QUInt8", ["MatMul", "Gather"]), ("QInt8", ["MatMul", "Gather"]),
                                       ("QUInt8", None)])
def test_dynamic_int8_graph_equals_onnxruntime(tmp_path, wtype, ops):
    """ONNX Runtime's quantize_dynamic on the cache graph (per-tensor int8 weights, uint8 ones with zero points;
    DynamicQuantizeLinear -> MatMulInteger, the embedding Gather + DequantizeLinear): imported dequantized, with a
    note per weight; the numbers agree with ONNX Runtime's up to its int8 activations."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    cfg, w = _weights("dense-a")
    src, dst = tmp_path / "f.onnx", tmp_path / "q.onnx"
    onnx.save(community_graph(cfg, w), str(src))
    quantize_dynamic(str(src), str(dst), weight_type=getattr(QuantType, wtype), op_types_to_quantize=ops,
                     extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    mo = onnx.load(str(dst))
    assert sum(n.op_type == "MatMulInteger" for n in mo.graph.node) >= 20
    assert (ops is None) == any(n.op_type == "ConvInteger" for n in mo.graph.node)   # every op: the conv too
    m = import_onnx(dst)
    assert len(m.provenance["onnx"]["converted"]) >= 20
    for k, v in w.items():                          # each weight within half a quantization step of the float one
        if v.ndim == 2 or (v.ndim == 3 and ops is None and k.endswith("conv.weight")):
            step = max(float(v.max() - v.min()) / 255, 2 * float(np.abs(v).max()) / 254)   # uint8 / int8
            assert np.abs(m.weights[k] - v).max() <= 0.5 * step * (1 + 1e-3) + 1e-7, k
    toks, lg = ort_generate(ort_session(mo), PROMPT, 4)
    ours = Interpreter(m.graph, m.weights).run(np.array(PROMPT + toks[:-1]))[len(PROMPT) - 1:]
    # ONNX Runtime also quantizes every activation to uint8 per tensor (lfmc computes in float): the logits agree
    # in direction (cosine > 0.98), not to the last digit
    for a, b in zip(ours, lg):
        assert float(a @ b / np.linalg.norm(a) / np.linalg.norm(b)) > 0.98


# ------------------------------------------------------------------------------------ torch.onnx.export variants
def _export(model, path, dynamic: bool = False, wrap: bool = False) -> None:
    ids = torch.randint(0, model.config.vocab_size, (2, 8), generator=torch.Generator().manual_seed(0))
    if wrap:
        class LogitsOnly(torch.nn.Module):
            def __init__(self, m):
                super().__init__()
                self.inner = m

            def forward(self, tokens):
                return self.inner(tokens, use_cache=False).logits

        torch.onnx.export(LogitsOnly(model), (ids,), dynamo=True, f=str(path), verbose=False,
                          dynamic_shapes=({0: torch.export.Dim("b"), 1: torch.export.Dim("s")},) if dynamic else None)
        return
    torch.onnx.export(model, (ids,), kwargs={"use_cache": False}, dynamo=True, f=str(path), verbose=False,
                      dynamic_shapes={"input_ids": {0: torch.export.Dim("batch"), 1: torch.export.Dim("seq")},
                                      "use_cache": None} if dynamic else None)


def _host_greedy_equals_onnxruntime(mo, path, tmp_path, prompt=PROMPT) -> None:
    """A cache-less graph with a symbolic sequence axis compiled for the host: its greedy decode equals ONNX
    Runtime's on the file (the whole sequence run again each step) for 16 steps after the prompt."""
    from lfmc.compile import compile_model
    from lfmc.runtime import Engine

    sess = ort_session(mo)
    name = sess.get_inputs()[0].name
    seq = list(prompt)
    for _ in range(STEPS + 1):
        seq.append(int(np.argmax(sess.run(None, {name: np.array([seq], np.int64)})[0][0, -1])))
    want = seq[len(prompt):]
    assert len(set(want)) > 3
    art = compile_model(import_onnx(path), tmp_path / "a.host", max_batch=1, max_context=64, prefill_chunk=8)
    assert Engine(art).generate(list(prompt), max_new_tokens=STEPS + 1, stop=[]).tokens == want


@pytest.mark.parametrize("dynamic,wrap", [(True, False), (False, True), (True, True)])
def test_export_variants_lift_to_the_torch_ir(tmp_path, dynamic, wrap):
    """Symbolic batch and sequence axes, and a wrapper module returning the logits only: the same IR and weights as
    the torch import, and ONNX Runtime's logits on a prompt longer than the export's."""
    cfg, w = _weights("dense-a")
    model = build_hf_model(cfg, w)
    path = tmp_path / "m.onnx"
    _export(model, path, dynamic, wrap)
    a, b = import_torch_model(model, "m"), import_onnx(path, "m")
    assert print_graph(b.graph) == print_graph(a.graph)
    for k in a.weights:
        np.testing.assert_array_equal(a.weights[k], b.weights[k])
    T = 13 if dynamic else 8
    ids = np.array([PROMPT + [4, 6, 8, 10, 12, 14][:T - len(PROMPT)]], np.int64)
    sess = ort_session(onnx.load(str(path)))
    want = sess.run(None, {sess.get_inputs()[0].name: np.repeat(ids, 2, 0)})[0][0]
    got = Interpreter(b.graph, b.weights).run(ids[0])
    np.testing.assert_allclose(got, want, atol=TOL["f32"] * float(np.abs(want).max()))
    if dynamic and wrap:                            # the wrapper with symbolic axes, compiled: greedy as ONNX Runtime
        _host_greedy_equals_onnxruntime(onnx.load(str(path)), path, tmp_path)


@pytest.mark.parametrize("name", ["lfm3-a", pytest.param("lfm3-b", marks=pytest.mark.slow),
                                  pytest.param("lfm3-c", marks=pytest.mark.slow)])
def test_lfm3_export_lifts_to_the_torch_ir(tmp_path, name):
    """An LFM3 exported with a dynamic sequence axis: sliding windows (read from the mask at the probe length),
    output gates, sandwich norms and RoPE per layer type (partial, scaled) lift to the torch frontend's IR and
    weights; ONNX Runtime's logits on a prompt three times the window equal the interpreter's."""
    from tests.configs import LFM3_CONFIGS

    cfg = LFM3_CONFIGS[name]
    w = random_weights(graph_from_config(cfg), seed=7, std=INIT_STD)
    model = build_hf_model(cfg, w)
    path = tmp_path / "m.onnx"
    _export(model, path, dynamic=True)
    a, b = import_torch_model(model, "m"), import_onnx(path, "m")
    assert print_graph(b.graph) == print_graph(a.graph)
    for k in a.weights:
        np.testing.assert_array_equal(a.weights[k], b.weights[k])
    assert b.provenance["config"]["architecture"] == "Lfm3ForCausalLM"
    ids = (np.arange(3 * cfg["sliding_window"]) * 7 % cfg["vocab_size"]).astype(np.int64)
    sess = ort_session(onnx.load(str(path)))
    want = sess.run(None, {"input_ids": ids[None]})[0][0]
    got = Interpreter(b.graph, b.weights).run(ids)
    np.testing.assert_allclose(got, want, atol=TOL["f32"] * float(np.abs(want).max()))


def test_lfm3_export_compiled_for_the_host_decodes_as_onnxruntime(tmp_path):
    """The LFM3 export compiled for the host: greedy decode for 16 steps after a prompt longer than the window
    equals ONNX Runtime's greedy decode on the file (the cache-less graph run on the whole sequence each step)."""
    from lfmc.compile import compile_model
    from lfmc.runtime import Engine
    from tests.configs import LFM3_CONFIGS

    cfg = LFM3_CONFIGS["lfm3-a"]
    model = build_hf_model(cfg, random_weights(graph_from_config(cfg), seed=7, std=INIT_STD))
    path = tmp_path / "m.onnx"
    _export(model, path, dynamic=True)
    sess = ort_session(onnx.load(str(path)))
    seq = list((np.arange(11) * 7 % cfg["vocab_size"]).tolist())
    prompt_len = len(seq)
    for _ in range(STEPS + 1):
        seq.append(int(np.argmax(sess.run(None, {"input_ids": np.array([seq], np.int64)})[0][0, -1])))
    want = seq[prompt_len:]
    assert len(set(want)) > 3
    art = compile_model(import_onnx(path), tmp_path / "a.host", max_batch=1, max_context=64, prefill_chunk=8)
    assert Engine(art).generate(seq[:prompt_len], max_new_tokens=STEPS + 1, stop=[]).tokens == want


def test_lfm3_static_export_is_refused(tmp_path):
    """A fixed-length LFM3 export cannot show its sliding windows: refused with what to do."""
    from tests.configs import LFM3_CONFIGS

    cfg = LFM3_CONFIGS["lfm3-a"]
    model = build_hf_model(cfg, random_weights(graph_from_config(cfg), seed=7, std=INIT_STD))
    path = tmp_path / "m.onnx"
    _export(model, path)
    with pytest.raises(OnnxLiftError, match="dynamic sequence axis"):
        import_onnx(path)


def test_onnxruntime_optimized_export_lifts(tmp_path):
    """An export passed through ONNX Runtime's transformer optimizer (which fuses its norms into
    SimplifiedLayerNormalization / SkipSimplifiedLayerNormalization) lifts to the same numbers."""
    from onnxruntime.transformers.optimizer import optimize_model

    cfg, w = _weights("dense-a")
    model = build_hf_model(cfg, w)
    path = tmp_path / "m.onnx"
    _export(model, path, dynamic=True)
    opt = optimize_model(str(path), model_type="gpt2", num_heads=cfg["num_attention_heads"],
                         hidden_size=cfg["hidden_size"], opt_level=1)
    mo = opt.model
    ops = {n.op_type for n in mo.graph.node}
    assert ops & {"SimplifiedLayerNormalization", "SkipSimplifiedLayerNormalization"}, ops
    g, ww = lift_onnx(mo)
    ids = np.array(PROMPT + [4, 6, 8], np.int64)
    sess = ort_session(mo)
    want = sess.run(None, {"input_ids": ids[None]})[0][0]
    got = Interpreter(g, ww).run(ids)
    np.testing.assert_allclose(got, want, atol=TOL["f32"] * float(np.abs(want).max()))
    opt_path = tmp_path / "opt.onnx"
    onnx.save(mo, str(opt_path))
    _host_greedy_equals_onnxruntime(mo, opt_path, tmp_path)


# ------------------------------------------------------------------------------------ errors
def test_layout_errors_name_what_and_where(tmp_path):
    cfg, w = _weights("dense-a")
    mo = community_graph(cfg, w)

    bad = copy.deepcopy(mo)                         # an input nobody knows
    bad.graph.input.append(onnx.helper.make_tensor_value_info("pixel_values", onnx.TensorProto.FLOAT, [1, 3]))
    with pytest.raises(OnnxLiftError if False else Exception, match="pixel_values"):
        lift_onnx(bad)

    bad = copy.deepcopy(mo)                         # GroupQueryAttention with a softcap
    for n in bad.graph.node:
        if n.op_type == "GroupQueryAttention":
            n.attribute.append(onnx.helper.make_attribute("softcap", 30.0))
    with pytest.raises(OnnxLiftError, match=r"model\.layers\.2\.self_attn.*softcap"):
        lift_onnx(bad)

    bad = copy.deepcopy(mo)                         # MatMulNBits with 3-bit weights
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    logging.disable(logging.INFO)
    try:
        q = MatMulNBitsQuantizer(bad, block_size=32, is_symmetric=True)
        q.process()
    finally:
        logging.disable(logging.NOTSET)
    qm = q.model.model
    n = next(n for n in qm.graph.node if n.op_type == "MatMulNBits")
    next(a for a in n.attribute if a.name == "bits").i = 3
    with pytest.raises(OnnxLiftError, match="3-bit"):
        lift_onnx(qm)

    d = tmp_path / "ext"                            # external data outside the model's folder, and truncated
    d.mkdir()
    onnx.save(copy.deepcopy(mo), str(d / "model.onnx"), save_as_external_data=True, location="model.onnx_data",
              size_threshold=0)
    raw = (d / "model.onnx_data").read_bytes()
    (d / "model.onnx_data").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(Exception, match="truncated or corrupt"):
        import_onnx(d / "model.onnx")
    m2 = onnx.load(str(d / "model.onnx"), load_external_data=False)
    for t in m2.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = "../../etc/passwd"
    onnx.save(m2, str(d / "evil.onnx"))
    with pytest.raises(Exception, match="outside the model's folder"):
        import_onnx(d / "evil.onnx")
