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


