"""Model presets: published LFM2 shapes (from transformers configs), LFM2.5 (the LFM2 architectures at Liquid's
newer checkpoints), LFM3 (transformers' Lfm3Config defaults) and tiny ones for tests and the demo.

``assumed`` lists the fields that are not published and were chosen by lfmc; ``published_parameters`` is the
published parameter count where one is known.
"""
from __future__ import annotations

import copy
from typing import Any

from ..ir.errors import LfmcError

_PUBLISHED: dict[str, dict[str, Any]] = {
 "lfm2-350m": {
  "architecture": "Lfm2ForCausalLM",
  "config": {
   "vocab_size": 65536,
   "num_key_value_heads": 8,
   "max_position_embeddings": 128000,
   "norm_eps": 1e-05,
   "conv_L_cache": 3,
   "conv_bias": False,
   "block_multiple_of": 256,
   "block_ffn_dim_multiplier": 1.0,
   "block_auto_adjust_ff_dim": True,
   "tie_word_embeddings": True,
   "rope_theta": 1000000.0,
   "pad_token_id": 0,
   "bos_token_id": 1,
   "eos_token_id": 7,
   "hidden_size": 1024,
   "intermediate_size": 6656,
   "num_attention_heads": 16,
   "num_hidden_layers": 16,
   "layer_types": [
    "conv",
    "conv",
    "full_attention",
    "conv",
    "conv",
    "full_attention",
    "conv",
    "conv",
    "full_attention",
    "conv",
    "full_attention",
    "conv",
    "full_attention",
    "conv",
    "full_attention",
    "conv"
   ]
  },
  "published_parameters": 354483968,
  "assumed": []
 },
 "lfm2-700m": {
  "architecture": "Lfm2ForCausalLM",
  "config": {
   "vocab_size": 65536,
   "num_key_value_heads": 8,
   "max_position_embeddings": 128000,
   "norm_eps": 1e-05,
   "conv_L_cache": 3,
   "conv_bias": False,
   "block_multiple_of": 256,
   "block_ffn_dim_multiplier": 1.0,
   "block_auto_adjust_ff_dim": True,
   "tie_word_embeddings": True,
   "rope_theta": 1000000.0,
   "pad_token_id": 0,
   "bos_token_id": 1,
   "eos_token_id": 7,
   "hidden_size": 1536,
   "intermediate_size": 10240,
   "num_attention_heads": 24,
   "num_hidden_layers": 16,
   "layer_types": [
    "conv",
    "conv",
    "full_attention",
    "conv",
    "conv",
    "full_attention",
    "conv",
    "conv",
    "full_attention",
    "conv",
    "full_attention",
    "conv",
    "full_attention",
    "conv",
    "full_attention",
    "conv"
   ]
  },
  "published_parameters": 742489344,
  "assumed": []
 },
 "lfm2-1.2b": {
  "architecture": "Lfm2ForCausalLM",
  "config": {
   "vocab_size": 65536,
   "num_key_value_heads": 8,
   "max_position_embeddings": 128000,
   "norm_eps": 1e-05,
   "conv_L_cache": 3,
   "conv_bias": False,
   "block_multiple_of": 256,
   "block_ffn_dim_multiplier": 1.0,
   "block_auto_adjust_ff_dim": True,
   "tie_word_embeddings": True,
   "rope_theta": 1000000.0,
   "pad_token_id": 0,
   "bos_token_id": 1,
   "eos_token_id": 7,
   "hidden_size": 2048,
   "intermediate_size": 12288,
   "num_attention_heads": 32,
   "num_hidden_layers": 16,
   "layer_types": [
    "conv",
    "conv",
    "full_attention",
    "conv",
    "conv",
    "full_attention",
    "conv",
    "conv",
    "full_attention",
    "conv",
    "full_attention",
    "conv",
    "full_attention",
    "conv",
    "full_attention",
    "conv"
   ]
  },
  "published_parameters": 1170340608,
  "assumed": []
 },
 "lfm2-8b-a1b": {
  "architecture": "Lfm2MoeForCausalLM",
  "config": {
   "vocab_size": 65536,
   "hidden_size": 2048,
   "num_attention_heads": 32,
   "num_key_value_heads": 8,
   "num_hidden_layers": 24,
   "layer_types": [
    "conv",
    "conv",
    "full_attention",
    "conv",
    "conv",
    "conv",
    "full_attention",
    "conv",
    "conv",
    "conv",
    "full_attention",
    "conv",
    "conv",
    "conv",
    "full_attention",
    "conv",
    "conv",
    "conv",
    "full_attention",
    "conv",
    "conv",
    "full_attention",
    "conv",
    "conv"
   ],
   "intermediate_size": 7168,
   "moe_intermediate_size": 1792,
   "num_experts": 32,
   "num_experts_per_tok": 4,
   "num_dense_layers": 2,
   "use_expert_bias": True,
   "norm_topk_prob": True,
   "routed_scaling_factor": 1.0,
   "conv_L_cache": 3,
   "norm_eps": 1e-05,
   "tie_word_embeddings": True,
   "max_position_embeddings": 128000
  },
  "published_parameters": 8339929856,
  "assumed": []
 }
}

def _lt(n: int, attn: list[int]) -> list[str]:
    return ["full_attention" if i in attn else "conv" for i in range(n)]


_BASE = dict(_PUBLISHED["lfm2-1.2b"]["config"])
_ASSUMED_AND_DERIVED: dict[str, dict[str, Any]] = {
    "lfm2-2.6b": {
        "architecture": "Lfm2ForCausalLM",
        # 30 layers (22 conv + 8 attention), hidden 2048 and the FFN width 10752 (= 2/3 of 16128) are derived from
        # the published 2,569,272,320 parameters; which layers are attention is not published here.
        "config": _BASE | {"num_hidden_layers": 30, "intermediate_size": 16128,
                           "layer_types": _lt(30, [2, 6, 10, 14, 18, 21, 24, 27])},
        "published_parameters": 2569272320,
        "assumed": ["layer_types (attention at 2, 6, 10, 14, 18, 21, 24, 27)", "num_attention_heads 32",
                    "num_key_value_heads 8"],
    },
    "lfm2-24b-a2b": {
        "architecture": "Lfm2MoeForCausalLM",
        "config": dict(_PUBLISHED["lfm2-8b-a1b"]["config"]) | {
            "num_hidden_layers": 40, "num_experts": 64, "moe_intermediate_size": 1536,
            "layer_types": _lt(40, [2, 6, 10, 14, 18, 22, 26, 30, 34, 38])},
        "published_parameters": None,
        "assumed": ["hidden_size 2048", "num_attention_heads 32", "num_key_value_heads 8",
                    "layer_types (10 attention layers at 2, 6, ..., 38)", "intermediate_size 7168",
                    "num_dense_layers 2"],
    },
    # Tiny models: byte-level vocabulary (256), fast enough for every test.
    "lfm2-tiny": {
        "architecture": "Lfm2ForCausalLM",
        "config": {"vocab_size": 256, "hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 6,
                   "num_attention_heads": 4, "num_key_value_heads": 2, "layer_types": _lt(6, [2, 4]),
                   "max_position_embeddings": 2048, "norm_eps": 1e-5, "conv_L_cache": 3, "conv_bias": False,
                   "block_multiple_of": 32, "block_ffn_dim_multiplier": 1.0, "block_auto_adjust_ff_dim": True,
                   "tie_word_embeddings": True, "rope_theta": 1000000.0, "pad_token_id": 0, "bos_token_id": 1,
                   "eos_token_id": 2},
        "published_parameters": None, "assumed": ["everything: a test model"],
    },
    "lfm2-moe-tiny": {
        "architecture": "Lfm2MoeForCausalLM",
        "config": {"vocab_size": 256, "hidden_size": 64, "intermediate_size": 160, "moe_intermediate_size": 32,
                   "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2,
                   "layer_types": _lt(4, [1, 3]), "num_experts": 8, "num_experts_per_tok": 2,
                   "num_dense_layers": 1, "use_expert_bias": True, "norm_topk_prob": True,
                   "routed_scaling_factor": 1.0, "max_position_embeddings": 2048, "norm_eps": 1e-5,
                   "conv_L_cache": 3, "conv_bias": False, "tie_word_embeddings": True, "rope_theta": 1000000.0,
                   "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2},
        "published_parameters": None, "assumed": ["everything: a test model"],
    },
}
HYBRID_TINY = {
    "architecture": "LfmHybridForCausalLM", "vocab_size": 256, "hidden_size": 64, "intermediate_size": 160,
    "moe_intermediate_size": 32, "num_attention_heads": 4, "num_key_value_heads": 2,
    "layer_types": ["conv", "recurrence", "full_attention", "recurrence", "conv", "full_attention"],
    "num_hidden_layers": 6, "num_experts": 8, "num_experts_per_tok": 2, "num_dense_layers": 2,
    "use_expert_bias": True, "norm_topk_prob": True, "routed_scaling_factor": 1.0, "max_position_embeddings": 2048,
    "norm_eps": 1e-5, "conv_L_cache": 3, "conv_bias": False, "tie_word_embeddings": True, "rope_theta": 1000000.0,
    "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2,
}


def _hybrid() -> dict[str, Any]:
    cfg = {k: v for k, v in HYBRID_TINY.items() if k != "architecture"}
    return {"architecture": HYBRID_TINY["architecture"], "config": cfg, "published_parameters": None,
            "assumed": ["everything: a test model from lfmc's zoo (conv, recurrence, attention, MoE layers)"]}


_ASSUMED_AND_DERIVED["lfm2-hybrid-tiny"] = _hybrid()


def _lfm25(base: str, context: int, published: str) -> dict[str, Any]:
    """An LFM2.5 preset: LFM2.5 checkpoints use the LFM2 / LFM2-MoE architectures (served as Lfm2ForCausalLM /
    Lfm2MoeForCausalLM); their configs are not recorded in ../shared/data, so every field but the published
    context length is the same-size LFM2 model's, and says so."""
    p = copy.deepcopy(_PUBLISHED[base])
    p["config"]["max_position_embeddings"] = context
    p["published_parameters"] = None
    p["assumed"] = [f"every field but max_position_embeddings ({context}, published) is {base}'s config "
                    f"({published})"]
    return p


# LFM2.5 (Liquid, 2026): 350M and 1.2B dense (32K context), 8B-A1B MoE (128K context). The 1.2B's published
# figures (1.17B parameters; 16 layers, 10 conv + 6 attention; vocabulary 65,536) match LFM2-1.2B's config.
_ASSUMED_AND_DERIVED["lfm2.5-350m"] = _lfm25("lfm2-350m", 32768, "published: 350M, dense, 32K context")
_ASSUMED_AND_DERIVED["lfm2.5-1.2b"] = _lfm25(
    "lfm2-1.2b", 32768, "published: 1.17B parameters, 16 layers (10 conv + 6 attention), vocabulary 65,536, "
    "which this config reproduces")
_ASSUMED_AND_DERIVED["lfm2.5-8b-a1b"] = _lfm25("lfm2-8b-a1b", 128000,
                                               "published: 8B total / about 1B active, MoE, 128K context")
# LFM3-1.7B: transformers 5.24's Lfm3Config defaults, documented there as the LFM3-1.7B configuration (24 layers:
# 13 conv, 6 full and 5 sliding-window attention; hidden 2048, head_dim 128, GQA 16 / 4, FFN 7680, vocabulary
# 128,000, window 256, gates and sandwich norms).
_ASSUMED_AND_DERIVED["lfm3-1.7b"] = {
    "architecture": "Lfm3ForCausalLM",
    "config": {"vocab_size": 128000, "hidden_size": 2048, "intermediate_size": 7680, "num_hidden_layers": 24,
               "num_attention_heads": 16, "num_key_value_heads": 4, "head_dim": 128, "max_position_embeddings": 128000,
               "norm_eps": 1e-5, "pad_token_id": 124893, "bos_token_id": 124894, "eos_token_id": 124900,
               "tie_word_embeddings": True, "conv_bias": False, "conv_L_cache": 7, "sliding_window": 256,
               "use_sandwich_norm": True, "use_attention_gate": True, "attention_bias": False,
               "rope_parameters": {"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                                   "full_attention": {"rope_type": "proportional", "rope_theta": 1000000.0,
                                                      "partial_rotary_factor": 0.5}},
               "layer_types": ["full_attention" if i % 4 == 2 else "sliding_attention" if i % 4 == 0 and i > 0
                               else "conv" for i in range(24)]},
    "published_parameters": None,
    "assumed": ["every field: transformers 5.24's Lfm3Config defaults (its docstring names them the LFM3-1.7B "
                "configuration); no LFM3 config is recorded in ../shared/data"],
}
# a tiny LFM3 for tests and the demo: every layer type, window 8
_ASSUMED_AND_DERIVED["lfm3-tiny"] = {
    "architecture": "Lfm3ForCausalLM",
    "config": _ASSUMED_AND_DERIVED["lfm3-1.7b"]["config"] | {
        "vocab_size": 256, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 6,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "max_position_embeddings": 2048,
        "sliding_window": 8, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2,
        "layer_types": ["conv", "conv", "full_attention", "conv", "sliding_attention", "conv"]},
    "published_parameters": None, "assumed": ["everything: a test model"],
}


def _vl(text: str, vision: dict[str, Any], assumed: list[str], processor: dict[str, Any] | None = None,
        **top: Any) -> dict[str, Any]:
    """An LFM2-VL preset: a text preset's config as ``text_config``, a SigLIP2 NaFlex ``vision_config``."""
    tc = {k: v for k, v in PRESETS_TEXT[text]["config"].items() if k != "architecture"} | {"model_type": "lfm2"}
    cfg = {"model_type": "lfm2_vl", "text_config": tc, "vision_config": {"model_type": "siglip2_vision_model",
                                                                         "vision_use_head": False, **vision},
           "image_token_id": 396, "projector_hidden_act": "gelu", "projector_hidden_size": 2560,
           "projector_bias": True, "projector_use_layernorm": True, "downsample_factor": 2,
           "tie_word_embeddings": True, "eos_token_id": tc.get("eos_token_id"), "bos_token_id": tc.get("bos_token_id"),
           "max_position_embeddings": tc.get("max_position_embeddings")} | top
    return {"architecture": "Lfm2VlForConditionalGeneration", "config": cfg, "published_parameters": None,
            "assumed": assumed, "processor": dict(processor or {})}


PRESETS_TEXT = _PUBLISHED | _ASSUMED_AND_DERIVED
_SIGLIP2_BASE = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
                 "patch_size": 16, "num_patches": 256, "num_channels": 3, "hidden_act": "gelu_pytorch_tanh",
                 "layer_norm_eps": 1e-6}
_SIGLIP2_SO400M = _SIGLIP2_BASE | {"hidden_size": 1152, "intermediate_size": 4304, "num_attention_heads": 16,
                                   "num_hidden_layers": 26}
_VL_NOTE = ("published: LFM2-VL = a SigLIP2 NaFlex encoder (base 86M for 450M, shape-optimized 400M for 1.6B), "
            "pixel unshuffle 2, a 2-layer GELU projector, into LFM2-{}; assumed: projector_hidden_size 2560, "
            "the encoder's layer count ({} of SigLIP2's {}), image_token_id 396 and transformers' processor "
            "defaults (no config.json recorded in ../shared/data)")
_ASSUMED_AND_DERIVED["lfm2-vl-450m"] = _vl("lfm2-350m", _SIGLIP2_BASE, [_VL_NOTE.format("350M", 12, 12)])
_ASSUMED_AND_DERIVED["lfm2-vl-1.6b"] = _vl("lfm2-1.2b", _SIGLIP2_SO400M, [_VL_NOTE.format("1.2B", 26, 27)])
# a tiny VL model for tests and the demo: byte vocabulary, the image token is byte 255 (never in UTF-8 text)
_ASSUMED_AND_DERIVED["lfm2-vl-tiny"] = _vl(
    "lfm2-tiny", _SIGLIP2_BASE | {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 3,
                                  "num_attention_heads": 2, "num_patches": 16},
    ["everything: a test model"], image_token_id=255, projector_hidden_size=48)


def _vl3(text: str, vision: dict[str, Any], assumed: list[str], **top: Any) -> dict[str, Any]:
    """An LFM3-VL preset: an LFM3 text preset's config as ``text_config``, an LFM3-VL ``vision_config``."""
    tc = {k: v for k, v in _ASSUMED_AND_DERIVED[text]["config"].items() if k != "architecture"} | {"model_type": "lfm3"}
    cfg = {"model_type": "lfm3_vl", "text_config": tc, "vision_config": {"model_type": "lfm3_vl_vision", **vision},
           "image_token_id": 125_030, "projector_hidden_act": "gelu", "projector_hidden_size": 4096,
           "projector_bias": True, "tie_word_embeddings": True, "eos_token_id": tc.get("eos_token_id"),
           "bos_token_id": tc.get("bos_token_id"), "max_position_embeddings": tc.get("max_position_embeddings")} | top
    return {"architecture": "Lfm3VlForConditionalGeneration", "config": cfg, "published_parameters": None,
            "assumed": assumed, "processor": {"patch_size": vision.get("patch_size", 16)}}


_ASSUMED_AND_DERIVED["lfm3-vl-2b"] = _vl3("lfm3-1.7b", {}, [
    "every field: transformers 5.24's Lfm3VlConfig / Lfm3VlVisionConfig defaults (their docstrings name "
    "LiquidAI/LFM3-VL-2B) with the lfm3-1.7b text config; the processor: Qwen2-VL's defaults with patch 16"])
# a tiny LFM3-VL for tests: byte vocabulary, the image token is byte 255
_ASSUMED_AND_DERIVED["lfm3-vl-tiny"] = _vl3(
    "lfm3-tiny", {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 4, "num_attention_heads": 4,
                  "num_key_value_heads": 2}, ["everything: a test model"], image_token_id=255,
    projector_hidden_size=48)
PRESETS: dict[str, dict[str, Any]] = _PUBLISHED | _ASSUMED_AND_DERIVED


def preset(name: str) -> dict[str, Any]:
    """A deep copy of preset ``name``: {architecture, config, published_parameters, assumed}."""
    if name not in PRESETS:
        raise LfmcError(f"unknown preset {name!r} (known: {', '.join(sorted(PRESETS))})")
    p = copy.deepcopy(PRESETS[name])
    p["config"]["architecture"] = p["architecture"]
    return p
