"""Differential testing: random valid LFM2 / LFM2-MoE configurations (layer mix, widths, heads, GQA, conv
length, biases, tying, experts, routing options) go through import -> passes -> compile -> run; the compiled
engine must follow the interpreter step by step (prefill, then greedy decode)."""
from __future__ import annotations

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

from lfmc.compile import compile_model  # noqa: E402
from lfmc.frontend.config import graph_from_config  # noqa: E402
from lfmc.ir.interp import Interpreter  # noqa: E402
from lfmc.ir.model import Model  # noqa: E402
from lfmc.ir.weights import random_weights  # noqa: E402
from lfmc.runtime import Engine  # noqa: E402
from tests.fuzz import SCALE  # noqa: E402
from tests.helpers import assert_follows_interpreter  # noqa: E402


@st.composite
def configs(draw):
    moe = draw(st.booleans())
    hd = draw(st.sampled_from([8, 16]))
    kv = draw(st.sampled_from([1, 2]))
    heads = kv * draw(st.sampled_from([1, 2, 3]))
    D = hd * heads
    n = draw(st.integers(2, 5))
    types = draw(st.lists(st.sampled_from(["conv", "full_attention"]), min_size=n, max_size=n))
    cfg = {"architecture": "Lfm2MoeForCausalLM" if moe else "Lfm2ForCausalLM",
           "vocab_size": draw(st.sampled_from([256, 300])), "hidden_size": D, "num_attention_heads": heads,
           "num_key_value_heads": kv, "layer_types": types, "num_hidden_layers": n,
           "conv_L_cache": draw(st.integers(2, 4)), "conv_bias": draw(st.booleans()),
           "tie_word_embeddings": draw(st.booleans()), "norm_eps": 1e-5,
           "rope_theta": draw(st.sampled_from([1e4, 1e6])), "max_position_embeddings": 512,
           "block_auto_adjust_ff_dim": False, "intermediate_size": 16 * draw(st.integers(2, 8)),
           "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}
    if moe:
        E = draw(st.integers(2, 6))
        cfg |= {"num_experts": E, "num_experts_per_tok": draw(st.integers(1, min(3, E))),
                "moe_intermediate_size": 8 * draw(st.integers(1, 4)), "num_dense_layers": draw(st.integers(0, 1)),
                "use_expert_bias": draw(st.booleans()), "norm_topk_prob": draw(st.booleans()),
                "routed_scaling_factor": draw(st.sampled_from([1.0, 2.5]))}
    return cfg


def _check(cfg, quant, prompt_len, tmp_path) -> None:
    g = graph_from_config(cfg, "rand")
    m = Model(g, random_weights(g, seed=prompt_len, std=0.25), {"source": "test", "config": cfg})
    art = compile_model(m, tmp_path / f"a{np.random.default_rng().integers(1 << 30)}", max_batch=2, max_context=64,
                        prefill_chunk=8, quant=quant)
    eng = Engine(art)
    # quantized weights: the interpreter runs the same quantized graph (dequantized), so the tolerance stays tight
    from lfmc.passes import run_pipeline

    q = run_pipeline(m, None, {"quant": quant} if quant else {})
    prompt = np.random.default_rng(prompt_len).integers(0, cfg["vocab_size"], prompt_len)
    assert_follows_interpreter(Interpreter(q.graph, q.weights), eng, prompt, 5, where=(cfg, quant))


DIFF = settings(max_examples=3 * SCALE, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)


@DIFF
@given(cfg=configs(), quant=st.sampled_from([None, "q8"]), prompt_len=st.integers(1, 20))
def test_random_models_compiled_follow_the_interpreter(cfg, quant, prompt_len, tmp_path_factory):
    _check(cfg, quant, prompt_len, tmp_path_factory.mktemp("diff"))


@pytest.mark.slow
@settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(cfg=configs(), quant=st.sampled_from([None, "q8", "q4g32"]), prompt_len=st.integers(1, 40))
def test_random_models_compiled_follow_the_interpreter_many(cfg, quant, prompt_len, tmp_path_factory):
    _check(cfg, quant, prompt_len, tmp_path_factory.mktemp("diff"))
