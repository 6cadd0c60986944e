"""Kernel definitions shared by every target family: one TensorIR function per fused op group.

Each ``make_*`` takes the op's static shape parameters and a :class:`Knobs` (what a target family chooses:
vector lanes, register tiles, whether loops run in parallel) and returns a PrimFunc. How an operator is computed
lives here, once; targets differ in the knobs, the codegen and the packaging.

Conventions: activations are row-major ``[rows, cols]`` float32; ``rows`` is symbolic (the tokens of a prefill
chunk, or the sequences of a decode batch). Matmul weights are packed ``[N / lanes, K, lanes]`` so that each
output block streams one contiguous panel. Per-row ``slots`` / ``pos`` (int32) say which sequence a row belongs to
and its absolute position: attention and the KV cache work the same way for prefill and for batched decode.
Caches are ``[S, C, KV, hd]`` (S sequence slots, C max context), conv state ``[S, D, L-1]``.
"""
from __future__ import annotations

from .attention import make_attention, make_qk_rope, make_rope_attention
from .conv_scan import (make_conv_decode, make_conv_prefill, make_recurrence_decode, make_recurrence_prefill,
                        make_recurrence_scan)
from .matmul import make_matmul, schedule_matmul
from .matmul_a8 import a8_layout, make_matmul_a8
from .matmul_bf16 import bf16_layout, make_matmul_bf16
from .peak import make_peak, make_read_peak
from .moe import make_moe_down, make_moe_gate_up, make_moe_route
from .vision import (make_encoder_attention, make_encoder_qkv, make_encoder_qkv_rope, make_gather_rows, make_gelu, make_grid_conv,
                     make_image_merge, make_layernorm)
from .rows import make_add, make_add_rmsnorm, make_embedding, make_rmsnorm, make_silu_mul, make_take_last
from ..knobs import A8_GROUP, Knobs, a8_interleave, pick_cols, pick_lanes  # noqa: F401  (the makers' knobs)

__all__ = ["make_add", "make_add_rmsnorm", "make_attention", "make_conv_decode", "make_conv_prefill", "make_embedding", "make_matmul",
           "make_matmul_a8", "make_matmul_bf16", "bf16_layout", "make_peak", "make_read_peak", "make_moe_down", "make_moe_gate_up", "make_moe_route", "make_qk_rope",
           "make_recurrence_decode", "make_recurrence_prefill", "make_recurrence_scan", "make_rmsnorm",
           "make_rope_attention", "make_silu_mul", "make_take_last", "a8_layout", "schedule_matmul",
           "make_encoder_attention", "make_encoder_qkv", "make_encoder_qkv_rope", "make_grid_conv", "make_gather_rows", "make_gelu",
           "make_image_merge", "make_layernorm"]
