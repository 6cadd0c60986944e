"""Shared fixtures: small LFM2 / LFM2-MoE configs that differ in layer pattern, sizes, L_cache and experts."""
from __future__ import annotations

# Random tiny models with transformers' default init (std 0.02) have tiny logits that hide bugs: use 0.25.
INIT_STD = 0.25


def _base(**kw):
    d = {"vocab_size": 256, "max_position_embeddings": 2048, "norm_eps": 1e-5, "rope_theta": 1e6,
         "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2, "conv_bias": False, "tie_word_embeddings": True}
    d.update(kw)
    d["num_hidden_layers"] = len(d["layer_types"])
    return d


C, A = "conv", "full_attention"
DENSE_CONFIGS = {
    "dense-a": _base(architecture="Lfm2ForCausalLM", hidden_size=64, intermediate_size=256, num_attention_heads=4,
                     num_key_value_heads=2, layer_types=[C, C, A, C, A, C], conv_L_cache=3, block_multiple_of=32),
    "dense-b": _base(architecture="Lfm2ForCausalLM", hidden_size=48, intermediate_size=144, num_attention_heads=6,
                     num_key_value_heads=2, layer_types=[A, C, C, A], conv_L_cache=4, conv_bias=True,
                     tie_word_embeddings=False, block_multiple_of=16, vocab_size=320),
    "dense-c": _base(architecture="Lfm2ForCausalLM", hidden_size=32, intermediate_size=96, num_attention_heads=4,
                     num_key_value_heads=4, layer_types=[C, A, C], conv_L_cache=2, block_multiple_of=8,
                     block_ffn_dim_multiplier=1.5, rope_theta=10000.0),
}
MOE_CONFIGS = {
    "moe-a": _base(architecture="Lfm2MoeForCausalLM", hidden_size=64, intermediate_size=160,
                   moe_intermediate_size=32, num_attention_heads=4, num_key_value_heads=2,
                   layer_types=[C, A, C, A], num_experts=8, num_experts_per_tok=2, num_dense_layers=1,
                   use_expert_bias=True, norm_topk_prob=True, routed_scaling_factor=1.0, conv_L_cache=3),
    "moe-b": _base(architecture="Lfm2MoeForCausalLM", hidden_size=32, intermediate_size=64,
                   moe_intermediate_size=24, num_attention_heads=4, num_key_value_heads=2, layer_types=[C, A, A],
                   num_experts=4, num_experts_per_tok=1, num_dense_layers=0, use_expert_bias=True,
                   norm_topk_prob=False, routed_scaling_factor=2.0, conv_L_cache=4),
    "moe-c": _base(architecture="Lfm2MoeForCausalLM", hidden_size=48, intermediate_size=96,
                   moe_intermediate_size=16, num_attention_heads=6, num_key_value_heads=3,
                   layer_types=[A, C, C, C, A], num_experts=6, num_experts_per_tok=3, num_dense_layers=2,
                   use_expert_bias=False, norm_topk_prob=True, routed_scaling_factor=1.0, conv_L_cache=2),
}
ALL_CONFIGS = DENSE_CONFIGS | MOE_CONFIGS



# LFM3 (transformers' Lfm3ForCausalLM): sliding-window and full attention, output gates, sandwich norms, RoPE per
# layer type. Kept apart from ALL_CONFIGS (the LFM2 matrix every target test runs).
S = "sliding_attention"
_PROPORTIONAL = {"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                 "full_attention": {"rope_type": "proportional", "rope_theta": 1e6, "partial_rotary_factor": 0.5}}


def _lfm3(**kw):
    d = {"architecture": "Lfm3ForCausalLM", "vocab_size": 256, "max_position_embeddings": 2048, "norm_eps": 1e-5,
         "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2, "conv_bias": False, "tie_word_embeddings": True,
         "sliding_window": 8, "conv_L_cache": 7, "use_attention_gate": True, "use_sandwich_norm": True}
    d.update(kw)
    if d.get("layer_types"):
        d["num_hidden_layers"] = len(d["layer_types"])
    return d


LFM3_CONFIGS = {
    # the default layer pattern (conv, conv, full, conv, sliding, conv, full, conv), gate and sandwich norms on,
    # RoPE as LFM3-1.7B (sliding: default 1e4; full: proportional 1e6, half the angles), conv kernel 7
    "lfm3-a": _lfm3(hidden_size=64, intermediate_size=96, num_hidden_layers=8, num_attention_heads=4,
                    num_key_value_heads=2, head_dim=16),
    # odd sizes, no gate, a quarter of the angles rotated, conv kernel 3, window 5
    "lfm3-b": _lfm3(hidden_size=40, intermediate_size=72, num_attention_heads=6, num_key_value_heads=3,
                    head_dim=10, layer_types=[S, C, A, S], conv_L_cache=3, sliding_window=5,
                    use_attention_gate=False, rope_parameters={
                        "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                        "full_attention": {"rope_type": "proportional", "rope_theta": 1e6,
                                           "partial_rotary_factor": 0.25}}),
    # no sandwich norms, a checkpoint's rope_parameters override (whole rotation, factor 2, other thetas)
    "lfm3-c": _lfm3(hidden_size=48, intermediate_size=80, num_attention_heads=4, num_key_value_heads=1,
                    head_dim=12, layer_types=[C, S, C, A, S], conv_L_cache=3, use_sandwich_norm=False,
                    rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 5e4},
                                     "full_attention": {"rope_type": "proportional", "rope_theta": 5e5,
                                                        "partial_rotary_factor": 1.0, "factor": 2.0}}),
}
