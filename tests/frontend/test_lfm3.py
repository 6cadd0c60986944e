"""LFM3 (transformers' Lfm3ForCausalLM) in the IR: the interpreter against transformers' modeling code on the
test matrix (sliding windows smaller than the prompt, gate and sandwich norm on / off, partial and overridden
RoPE, conv kernels 3 and 7), the sliding window's state, and the config errors."""
from __future__ import annotations

import numpy as np
import pytest

from lfmc.check import RTOL, compare
from lfmc.frontend import import_preset
from lfmc.frontend.config import graph_from_config
from lfmc.ir import Interpreter, parse_graph, print_graph
from lfmc.ir.errors import LfmcError
from lfmc.ir.summary import summarize
from lfmc.passes.pipeline import run_pipeline

from tests.configs import LFM3_CONFIGS
from tests.helpers import interpreter_greedy


@pytest.mark.parametrize("name", sorted(LFM3_CONFIGS))
def test_interpreter_matches_transformers(name, lfm3_models):
    """Prompts 1, 7, 8, 9, 40 (around and past windows of 5 and 8), each followed by 64 greedy decode steps, so
    the window slides many times: every call's logits within RTOL of transformers'."""
    m = lfm3_models[name]
    res = compare(m, prefill_lens=(1, 7, 8, 9, 40), decode_steps=64, seed=3)
    assert len(res.cases) == 5 * 65
    bad = [c for c in res.cases if not c.ok]
    assert not bad, f"over tolerance ({RTOL} relative): {bad[:3]}"
    assert max(c.max_abs_logit for c in res.cases) > 1.0
    toks = interpreter_greedy(Interpreter(m.graph, m.weights), [5, 9, 200, 3, 17, 64, 101, 7, 8, 250], 40)
    assert len(set(toks)) >= 5, f"greedy output is degenerate: {toks}"


@pytest.mark.parametrize("name", sorted(LFM3_CONFIGS))
def test_chunked_prefill_over_the_window_equals_token_by_token(name, lfm3_models):
    m = lfm3_models[name]
    prompt = (np.arange(29) * 37 % 256).tolist()
    one = Interpreter(m.graph, m.weights)
    s1 = one.new_state()
    ref = np.concatenate([one.run([t], s1) for t in prompt])
    for chunks in ([29], [3, 11, 15], [9, 1, 19]):
        it = Interpreter(m.graph, m.weights)
        st, out, i = it.new_state(), [], 0
        for c in chunks:
            out.append(it.run(prompt[i:i + c], st))
            i += c
        np.testing.assert_allclose(np.concatenate(out), ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
        # the sliding layers keep only their window's last keys: constant state
        for n in m.graph.nodes:
            if n.op == "attention" and "window" in n.attrs:
                assert st.tensors[n.name]["k"].shape[0] == n.attrs["window"] - 1


def test_ir_of_lfm3_round_trips_and_lists_the_window_as_constant_state(lfm3_models):
    m = lfm3_models["lfm3-a"]
    text = print_graph(m.graph)
    assert print_graph(parse_graph(text)) == text
    assert "window = 8" in text and "g_proj" in text and "rope_angles = 4" in text and "post_ffn_norm" in text
    rows = {r["value"]: r for r in summarize(m.graph)["nodes"]}
    att = [n for n in m.graph.nodes if n.op == "attention"]
    for n in att:
        r = rows[n.name]
        if "window" in n.attrs:      # ring of keys: bytes per sequence, none per token
            assert r["state_bytes_per_token"] == 0 and r["state_bytes_per_sequence"] == 2 * 8 * 2 * 16 * 4
        else:
            assert r["state_bytes_per_token"] == 2 * 2 * 16 * 4 and r["state_bytes_per_sequence"] == 0
        assert n.liv.featurizer["g"].act == "sigmoid"


def test_residual_fusion_does_not_cross_a_post_norm(lfm3_models):
    m = lfm3_models["lfm3-a"]
    g = run_pipeline(m, ["fuse-residual"]).graph
    by = {n.name: n for n in g.nodes}
    adds = [n for n in g.nodes if n.op == "add"]
    post = [a for a in adds if any(by.get(i) is not None and by[i].op == "rmsnorm" for i in a.inputs)]
    assert len(post) == 2 * 8 and all(not a.fused for a in post)
    # without sandwich norms the adds fuse as in LFM2
    g = run_pipeline(lfm3_models["lfm3-c"], ["fuse-residual"]).graph
    assert all(n.fused for n in g.nodes if n.op == "add")


def test_presets_lfm3_and_lfm25():
    s = summarize(import_preset("lfm3-1.7b").graph)
    assert 1.70e9 < s["parameters"] < 1.75e9
    kinds = [n.attrs.get("window") for n in import_preset("lfm3-1.7b").graph.nodes if n.op == "attention"]
    assert kinds.count(256) == 5 and kinds.count(None) == 6
    assert s["state_bytes_per_token"] == 6 * 2 * 4 * 128 * 4          # only the full layers grow
    assert summarize(import_preset("lfm2.5-1.2b").graph)["parameters"] == 1_170_340_608
    for name in ("lfm2.5-350m", "lfm2.5-1.2b", "lfm2.5-8b-a1b", "lfm3-1.7b"):
        assert import_preset(name).provenance["assumed"], name


@pytest.mark.parametrize("change, message", [
    ({"rope_parameters": {"sliding_attention": {"rope_type": "yarn", "rope_theta": 1e4},
                          "full_attention": {"rope_type": "default", "rope_theta": 1e6}}}, "rope_type 'yarn'"),
    ({"rope_parameters": {"full_attention": {"rope_type": "default", "rope_theta": 1e6}}}, "no entry .* 'sliding"),
    ({"attention_bias": True}, "attention_bias"),
    ({"sliding_window": 0}, "sliding_window must be a positive integer"),
    ({"layer_types": ["conv", "linear_attention", "conv", "full_attention"]}, "layer_types must list"),
])
def test_config_errors_say_what(change, message):
    cfg = dict(LFM3_CONFIGS["lfm3-b"]) | change
    with pytest.raises(LfmcError, match=message):
        graph_from_config(cfg, "bad")


@pytest.mark.parametrize("name", sorted(LFM3_CONFIGS))
def test_torch_lift_equals_the_config_build(name, lfm3_models):
    """Lfm3ForCausalLM traced with torch.export and lifted by pattern: the same IR (window from the config's
    layer type, gate, RoPE read back from the inverse-frequency buffers) and the model's own weights."""
    from lfmc.frontend.reference import build_hf_model
    from lfmc.frontend.torch_lift import lift

    m = lfm3_models[name]
    g, w = lift(build_hf_model(m.provenance["config"], m.weights), name)
    assert print_graph(g) == print_graph(m.graph)
    assert set(w) == set(m.weights) and all(np.array_equal(w[k], m.weights[k]) for k in w)


def test_checkpoint_dir_with_chat_template(tmp_path, lfm3_models):
    import json

    from lfmc.frontend import import_hf_dir, import_source
    from lfmc.frontend.reference import build_hf_model

    m = lfm3_models["lfm3-a"]
    d = tmp_path / "lfm3"
    build_hf_model(m.provenance["config"], m.weights).save_pretrained(d)
    assert json.loads((d / "config.json").read_text())["model_type"] == "lfm3"
    (d / "tokenizer_config.json").write_text(json.dumps({
        "chat_template": "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}",
        "bos_token": "<|startoftext|>", "eos_token": "<|im_end|>"}))
    got = import_source(str(d))
    assert print_graph(got.graph).replace('"lfm3"', '"x"') == print_graph(m.graph).replace('"lfm3-a"', '"x"')
    assert all(np.array_equal(got.weights[k], m.weights[k]) for k in m.weights)
    assert got.provenance["chat"]["eos_token"] == "<|im_end|>"
    for f in d.glob("*.safetensors"):                   # config-only: built from config.json without torch
        f.unlink()
    conf = import_hf_dir(d)
    assert conf.weights is None and print_graph(conf.graph) == print_graph(got.graph)
