"""Op schemas: for every IR op, what it takes, what it declares and what it produces.

The verifier, the text parser and the interpreter all go through this one table, so an op is defined in one
place. ``infer`` returns the output type and the declared state from the inputs, attributes and parameters;
it raises ``ValueError`` with a plain message when they do not fit together.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from .errors import ShapeError
from .graph import Gate, Node
from .types import TensorType, f32

Infer = Callable[[Node, list[TensorType]], tuple[TensorType, dict[str, TensorType]]]


@dataclass(frozen=True)
class OpSchema:
    name: str
    arity: int
    attrs: dict[str, type | tuple[type, ...]]          # required attributes and their Python types
    params: tuple[str, ...]                              # required parameter roles
    infer: Infer
    optional_params: tuple[str, ...] = ()
    liv_class: str | None = None                         # token-mixing class for LIV ops
    gates: tuple[str, ...] = ()                          # featurizer gate names an LIV op must declare
    doc: str = ""
    optional_attrs: dict[str, type | tuple[type, ...]] = field(default_factory=dict)
    buffer_roles: tuple[str, ...] = ()                   # non-trained tensors (transformers buffers)
    # traits: what passes and lowerings ask instead of keeping their own lists of op names
    quant_roles: tuple[str, ...] = ()                    # projection weights a quantization may store as codes
    residual_producer: bool = False                      # its output projection can accumulate into the residual
    norm_consumer: bool = False                          # can take its input RMSNorm folded into its projection
    token_mixer: bool = False                            # mixes tokens (opens a decoder layer: conv, attention, scan)
    fusions: frozenset[str] = frozenset()                # fusion annotations it accepts (lfmc/ir/fusion.py)
    state_kind: str | None = None                        # what it carries between calls: conv | recurrence | kv


def _want(cond: bool, msg: str) -> None:
    if not cond:
        raise ShapeError(msg)


def _shape(node: Node, role: str) -> tuple:
    return node.params[role].type.shape


def _hidden(t: TensorType) -> int:
    _want(t.dtype == "f32" and len(t.shape) == 2 and t.shape[0] in ROWS and isinstance(t.shape[1], int),
          f"expected an activation f32[T, D] (or f32[M, D] after a pixel unshuffle), got {t}")
    return int(t.shape[1])


ROWS = ("T", "M")     # rows of an activation: tokens (an image's patches in a vision graph), merged image tokens


def _linear(node: Node, role: str, out: int | None, inp: int) -> int:
    s = _shape(node, role)
    _want(len(s) == 2 and s[1] == inp and (out is None or s[0] == out),
          f"param {role} has shape {list(s)}, expected [{out if out is not None else 'N'}, {inp}]")
    bias = role + "_bias"
    if bias in node.params:
        _want(_shape(node, bias) == (s[0],), f"param {bias} has shape {list(_shape(node, bias))}, expected [{s[0]}]")
    return int(s[0])


def _embedding(node: Node, ins: list[TensorType]) -> tuple[TensorType, dict]:
    t = ins[0]
    _want(t.dtype in ("i64", "i32") and t.shape == ("T",), f"embedding takes token ids i64[T], got {t}")
    s = _shape(node, "weight")
    _want(len(s) == 2, f"embedding weight must be 2-d, got {list(s)}")
    return f32("T", s[1]), {}


def _rmsnorm(node: Node, ins: list[TensorType]) -> tuple[TensorType, dict]:
    d = _hidden(ins[0])
    _want(_shape(node, "weight") == (d,), f"rmsnorm weight {list(_shape(node, 'weight'))} does not match width {d}")
    _want(node.attrs["eps"] > 0, "eps must be positive")
    return ins[0], {}


def _add(node: Node, ins: list[TensorType]) -> tuple[TensorType, dict]:
    _hidden(ins[0])
    _want(ins[0] == ins[1], f"add of different types {ins[0]} and {ins[1]}")
    return ins[0], {}


def _linear_op(node: Node, ins: list[TensorType]) -> tuple[TensorType, dict]:
    return f32(ins[0].shape[0], _linear(node, "weight", None, _hidden(ins[0]))), {}


def _short_conv(node: Node, ins: list[TensorType]) -> tuple[TensorType, dict]:
    d = _hidden(ins[0])
    L = node.attrs["L_cache"]
    _want(L >= 1, f"L_cache must be >= 1, got {L}")
    _linear(node, "in_proj", 3 * d, d)
    _linear(node, "out_proj", d, d)
    _want(_shape(node, "conv") == (d, 1, L), f"param conv has shape {list(_shape(node, 'conv'))}, expected [{d}, 1, {L}]")
    if "conv_bias" in node.params:
        _want(_shape(node, "conv_bias") == (d,), "conv_bias must be [D]")
    return ins[0], {"conv": f32(d, L - 1)}


def _gqa(node: Node, d: int, rope_multiple: int = 2, qk_norm: bool = True) -> tuple[int, int, int]:
    """Check a GQA operator's heads and projections (q, k, v, out; q / k norms): its (heads, kv_heads, head_dim)."""
    a = node.attrs
    h, kv, hd = a["heads"], a.get("kv_heads", a["heads"]), a["head_dim"]
    _want(h > 0 and kv > 0 and h % kv == 0, f"heads {h} must be a multiple of kv_heads {kv}")
    _want(hd % rope_multiple == 0, f"head_dim {hd} must be a multiple of {rope_multiple} for its rotary embedding")
    _linear(node, "q_proj", h * hd, d)
    _linear(node, "k_proj", kv * hd, d)
    _linear(node, "v_proj", kv * hd, d)
    _linear(node, "out_proj", d, h * hd)
    for r in ("q_norm", "k_norm") if qk_norm else ():
        _want(_shape(node, r) == (hd,), f"param {r} has shape {list(_shape(node, r))}, expected [{hd}]")
    return h, kv, hd


def _attention(node: Node, ins: list[TensorType]) -> tuple[TensorType, dict]:
    d = _hidden(ins[0])
    a = node.attrs
    h, kv, hd = _gqa(node, d)
    if "g_proj" in node.params:
        _linear(node, "g_proj", h, d)
    _want(0 <= a.get("rope_angles", hd // 2) <= hd // 2,
          f"rope_angles {a.get('rope_angles')} must be in 0..head_dim/2 ({hd // 2})")
    _want(a.get("rope_factor", 1.0) > 0, f"rope_factor must be positive, not {a.get('rope_factor')}")
    _want(a.get("window", 1) >= 1, f"window must be at least 1, not {a.get('window')}")
    kvd = a.get("kv_dtype", "f32")
    _want(kvd in KV_DTYPES, f"kv_dtype must be one of {', '.join(KV_DTYPES)}, not {kvd!r}")
    rows = "ring" if "window" in a else "ctx"       # a sliding window keeps a ring of keys, not the whole context
    return ins[0], {"k": kv_state_type(kvd, rows, kv, hd), "v": kv_state_type(kvd, rows, kv, hd)}


KV_DTYPES = ("f32", "f16", "i8")
KV_SCALE_BYTES = 4          # an i8 cache row's float32 scale, stored after its head_dim codes


def kv_state_type(kvd: str, rows: str, kv: int, hd: int) -> TensorType:
    """The type of an attention node's K or V cache stored as ``kvd``: [rows, kv heads, head_dim] of f32 / f16, or
    for i8 each (position, head) row's head_dim int8 codes followed by the 4 bytes of its float32 scale (absmax /
    127), so that the scale travels with its row through every state copy (fork, snapshot, prefix cache)."""
    if kvd == "i8":
        return TensorType("i8", (rows, kv, hd + KV_SCALE_BYTES))
    return TensorType(kvd, (rows, kv, hd))


def _gated_mlp(node: Node, ins: list[TensorType]) -> tuple[TensorType, dict]:
    d = _hidden(ins[0])
    f = _linear(node, "w1", None, d)
    _linear(node, "w3", f, d)
    _linear(node, "w2", d, f)
    return ins[0], {}


def _moe(node: Node, ins: list[TensorType]) -> tuple[TensorType, dict]:
    d = _hidden(ins[0])
    e, k = node.attrs["num_experts"], node.attrs["top_k"]
    _want(0 < k <= e, f"top_k {k} must be in 1..num_experts ({e})")
    _want(node.attrs["scoring"] in ("sigmoid", "softmax"), f"scoring must be sigmoid or softmax, not {node.attrs['scoring']!r}")
    _linear(node, "router", e, d)
    if node.attrs["use_expert_bias"]:
        _want("expert_bias" in node.params, "use_expert_bias is true but there is no expert_bias param")
        _want(_shape(node, "expert_bias") == (e,), f"expert_bias must be [{e}]")
    else:
        _want("expert_bias" not in node.params, "expert_bias param given but use_expert_bias is false")
    gu, dn = _shape(node, "gate_up"), _shape(node, "down")
    _want(len(gu) == 3 and gu[0] == e and gu[2] == d and gu[1] % 2 == 0,
          f"param gate_up has shape {list(gu)}, expected [{e}, 2F, {d}]")
    _want(dn == (e, d, gu[1] // 2), f"param down has shape {list(dn)}, expected [{e}, {d}, {gu[1] // 2}]")
    return ins[0], {}


def _linear_recurrence(node: Node, ins: list[TensorType]) -> tuple[TensorType, dict]:
    d = _hidden(ins[0])
    _linear(node, "in_proj", 4 * d, d)
    _linear(node, "out_proj", d, d)
    return ins[0], {"h": f32(d)}


def _layernorm(node: Node, ins: list[TensorType]) -> tuple[TensorType, dict]:
    d = _hidden(ins[0])
    for r in ("weight", "bias"):
        _want(_shape(node, r) == (d,), f"layernorm {r} {list(_shape(node, r))} does not match width {d}")
    _want(node.attrs["eps"] > 0, "eps must be positive")
    return ins[0], {}


def _pos_embed(node: Node, ins: list[TensorType]) -> tuple[TensorType, dict]:
    d = _hidden(ins[0])
    g = _shape(node, "table")
    _want(len(g) == 2 and g[1] == d, f"table {list(g)} must be [grid*grid, {d}]")
    side = node.attrs["grid"]
    _want(side * side == g[0], f"grid {side} does not fit a table of {g[0]} positions")
    _want(ins[1] == f32(ins[0].shape[0], g[0]), f"the resize weights must be f32[{ins[0].shape[0]}, {g[0]}], got {ins[1]}")
    return ins[0], {}


def _bidir_attention(node: Node, ins: list[TensorType]) -> tuple[TensorType, dict]:
    _gqa(node, _hidden(ins[0]), rope_multiple=1, qk_norm=False)
    return ins[0], {}


MLP_ACTS = ("gelu_tanh", "gelu")


def _mlp(node: Node, ins: list[TensorType]) -> tuple[TensorType, dict]:
    d = _hidden(ins[0])
    _want(node.attrs["act"] in MLP_ACTS, f"act must be one of {', '.join(MLP_ACTS)}, not {node.attrs['act']!r}")
    f = _linear(node, "fc1", None, d)
    n = _linear(node, "fc2", None, f)
    return f32(ins[0].shape[0], n), {}


def _pixel_unshuffle(node: Node, ins: list[TensorType]) -> tuple[TensorType, dict]:
    d = _hidden(ins[0])
    f = node.attrs["factor"]
    _want(f >= 1, f"factor must be at least 1, not {f}")
    _want(ins[0].shape[0] == "T" and ins[1] == TensorType("i32", ("T",)),
          f"pixel_unshuffle takes patches f32[T, D] and their merge order i32[T], got {ins[0]}, {ins[1]}")
    return f32("M", d * f * f), {}


def _image_merge(node: Node, ins: list[TensorType]) -> tuple[TensorType, dict]:
    d = _hidden(ins[0])
    _want(ins[1].dtype in ("i64", "i32") and ins[1].shape == ("T",), f"image_merge takes token ids, got {ins[1]}")
    _want(ins[2] == f32("T", d), f"the image rows must be f32[T, {d}], got {ins[2]}")
    _want(node.attrs["image_token"] >= 0, "image_token must be a token id")
    return ins[0], {}


def _grid(t: TensorType) -> None:
    _want(t == TensorType("i32", (2,)), f"the patch grid input must be i32[2] (rows, columns), got {t}")


def _grid_conv(node: Node, ins: list[TensorType]) -> tuple[TensorType, dict]:
    d = _hidden(ins[0])
    _grid(ins[1])
    K = node.attrs["kernel"]
    _want(K >= 1 and K % 2 == 1, f"kernel must be odd, not {K}")
    _want(node.attrs["merge"] >= 1, "merge must be at least 1")
    _linear(node, "in_proj", 3 * d, d)
    _linear(node, "out_proj", d, d)
    _want(_shape(node, "conv") == (d, 1, K, K), f"param conv has shape {list(_shape(node, 'conv'))}, expected "
                                                f"[{d}, 1, {K}, {K}]")
    return ins[0], {}


def _vision_attention(node: Node, ins: list[TensorType]) -> tuple[TensorType, dict]:
    _grid(ins[1])
    _gqa(node, _hidden(ins[0]), rope_multiple=4)          # an axial 2-D rotary embedding: 4 | head_dim
    return ins[0], {}


def _merge_tokens(node: Node, ins: list[TensorType]) -> tuple[TensorType, dict]:
    d = _hidden(ins[0])
    f = node.attrs["factor"]
    _want(f >= 1 and ins[0].shape[0] == "T", f"merge_tokens takes patches f32[T, D] in merge-block order, factor >= 1")
    return f32("M", d * f * f), {}


def _lm_head(node: Node, ins: list[TensorType]) -> tuple[TensorType, dict]:
    return f32("T", _linear(node, "weight", None, _hidden(ins[0]))), {}


NUM = (int, float)
ACT = {"act_quant": int,       # int8 activations for the node's quantized projections, per group of this size
       "act_dtype": str}       # "bf16": activations rounded to bf16 for the node's bf16 projections
SCHEMAS: dict[str, OpSchema] = {s.name: s for s in [
    OpSchema("embedding", 1, {}, ("weight",), _embedding, quant_roles=("weight",), doc="token ids -> rows of the embedding table"),
    OpSchema("rmsnorm", 1, {"eps": NUM}, ("weight",), _rmsnorm, fusions=frozenset({"into", "post"}), doc="weight * x / sqrt(mean(x^2) + eps)"),
    OpSchema("add", 2, {}, (), _add, fusions=frozenset({"into"}), doc="residual add"),
    OpSchema("linear", 1, {}, ("weight",), _linear_op, quant_roles=("weight",), residual_producer=True, optional_params=("weight_bias",), doc="dense x @ W^T",
             optional_attrs=ACT),
    OpSchema("lm_head", 1, {}, ("weight",), _lm_head, quant_roles=("weight",), doc="logits = x @ W^T (often tied to the embedding)",
             optional_attrs=ACT),
    OpSchema("short_conv", 1, {"L_cache": int}, ("in_proj", "conv", "out_proj"), _short_conv,
             quant_roles=("in_proj", "out_proj"), residual_producer=True, norm_consumer=True, token_mixer=True,
             state_kind="conv",
             optional_params=("in_proj_bias", "conv_bias", "out_proj_bias"), liv_class="scaled_toeplitz",
             gates=("B", "C", "x"),
             doc="out_proj(C * causal_depthwise_conv(B * x)); B, C, x from in_proj; state: last L_cache-1 of B*x",
             optional_attrs=ACT),
    OpSchema("attention", 1, {"heads": int, "kv_heads": int, "head_dim": int, "rope_theta": NUM, "eps": NUM},
             ("q_proj", "k_proj", "v_proj", "out_proj", "q_norm", "k_norm"), _attention, liv_class="low_rank",
             optional_params=("g_proj",),
             quant_roles=("q_proj", "k_proj", "v_proj", "out_proj", "g_proj"), residual_producer=True, norm_consumer=True,
             token_mixer=True, fusions=frozenset({"rope"}), state_kind="kv",
             gates=("q", "k", "v"),
             doc="causal GQA softmax attention with per-head RMSNorm on q, k and NeoX RoPE; state: KV cache "
                 "(kv_dtype f32, f16, or i8: int8 codes with a float32 scale per position and head). window: a query sees itself and the window - 1 positions before it (a "
                 "ring of keys instead of the whole context); g_proj: a sigmoid gate per head of the input scales "
                 "each head's output; rope_angles: how many of the head_dim / 2 angles rotate (frequencies "
                 "theta^(-2i/head_dim) / rope_factor, the rest zero)",
             optional_attrs={"kv_dtype": str, "window": int, "rope_angles": int, "rope_factor": NUM, **ACT}),
    OpSchema("linear_recurrence", 1, {}, ("in_proj", "out_proj"), _linear_recurrence,
             quant_roles=("in_proj", "out_proj"), residual_producer=True, norm_consumer=True, token_mixer=True,
             state_kind="recurrence",
             optional_params=("in_proj_bias", "out_proj_bias"), liv_class="semi_separable", gates=("a", "b", "c", "x"),
             doc="h_t = a_t * h_{t-1} + b_t * x_t, y_t = out_proj(c_t * h_t); a = sigmoid(.), b, c, x from in_proj; "
                 "state: h", optional_attrs=ACT),
    OpSchema("gated_mlp", 1, {}, ("w1", "w3", "w2"), _gated_mlp, liv_class="diagonal", gates=("gate", "up"),
             quant_roles=("w1", "w3", "w2"), residual_producer=True, norm_consumer=True, fusions=frozenset({"swiglu"}),
             doc="w2(silu(w1 x) * w3 x)", optional_attrs=ACT),
    OpSchema("layernorm", 1, {"eps": NUM}, ("weight", "bias"), _layernorm,
             doc="weight * (x - mean) / sqrt(var + eps) + bias (vision encoders, projectors)"),
    OpSchema("pos_embed", 2, {"grid": int}, ("table",), _pos_embed,
             doc="x + R @ table: learned 2-D position embeddings (a grid x grid table) resized to the image's patch "
                 "grid; R [T, grid*grid] holds the resize weights of this image's grid (lfmc.mixers.resize_weights)"),
    OpSchema("bidir_attention", 1, {"heads": int, "head_dim": int}, ("q_proj", "k_proj", "v_proj", "out_proj"),
             _bidir_attention, liv_class="low_rank", gates=("q", "k", "v"),
             quant_roles=("q_proj", "k_proj", "v_proj", "out_proj"),
             optional_params=("q_proj_bias", "k_proj_bias", "v_proj_bias", "out_proj_bias"),
             optional_attrs={"kv_heads": int},
             doc="bidirectional (non-causal) softmax attention over one image's patches: no state, no position "
                 "rotation (a vision encoder's; its positions come from pos_embed)"),
    OpSchema("mlp", 1, {"act": str}, ("fc1", "fc2"), _mlp, optional_params=("fc1_bias", "fc2_bias"),
             quant_roles=("fc1", "fc2"),
             doc="fc2(act(fc1 x)), act gelu_tanh or gelu (erf): a vision encoder's or a projector's MLP"),
    OpSchema("pixel_unshuffle", 2, {"factor": int}, (), _pixel_unshuffle,
             doc="patches taken in merge order (factor x factor blocks, row-major within a block) and each block's "
                 "factor^2 patches concatenated: f32[T, D] -> f32[M, D*factor^2], M = T / factor^2"),
    OpSchema("grid_conv", 2, {"kernel": int, "merge": int}, ("in_proj", "conv", "out_proj"), _grid_conv,
             liv_class="scaled_toeplitz", gates=("B", "C", "x"), quant_roles=("in_proj", "out_proj"),
             doc="out_proj(C * conv2d(B * x)): a gated depthwise kernel x kernel convolution over one image's patch "
                 "grid (zero padded, no state); patches in merge-block order (blocks of merge x merge), the grid "
                 "(rows, columns) from the second input (LFM3-VL)"),
    OpSchema("vision_attention", 2, {"heads": int, "kv_heads": int, "head_dim": int, "eps": NUM, "rope_theta": NUM,
                                     "merge": int},
             ("q_proj", "k_proj", "v_proj", "out_proj", "q_norm", "k_norm"), _vision_attention, liv_class="low_rank",
             gates=("q", "k", "v"), quant_roles=("q_proj", "k_proj", "v_proj", "out_proj"),
             doc="bidirectional GQA over one image's patches with per-head RMSNorm on q, k and an axial 2-D rotary "
                 "embedding (row angles, then column angles, over head_dim / 4 frequencies each, rotate-half); "
                 "patches in merge-block order, the grid from the second input (LFM3-VL)"),
    OpSchema("merge_tokens", 1, {"factor": int}, (), _merge_tokens,
             doc="patches already in merge-block order: each factor^2 consecutive rows become one image token "
                 "(f32[T, D] -> f32[M, D*factor^2], a reshape)"),
    OpSchema("image_merge", 3, {"image_token": int}, (), _image_merge,
             doc="token embeddings with the rows at image-token positions replaced by the image's embeddings "
                 "(inputs: embeddings, token ids, image rows aligned with the tokens)"),
    OpSchema("moe", 1, {"num_experts": int, "top_k": int, "scoring": str, "use_expert_bias": bool,
                        "norm_topk_prob": bool, "routed_scaling_factor": NUM, "topk_norm_eps": NUM},
             ("router", "gate_up", "down"), _moe, optional_params=("expert_bias",), liv_class="diagonal",
             quant_roles=("gate_up", "down"), residual_producer=True,
             gates=("router", "gate", "up"), buffer_roles=("expert_bias",), optional_attrs={"pruned": dict},
             doc="top-k routed SwiGLU experts; router picks on score + expert_bias, weighs by the unbiased score"),
]}

# The featurizer each LIV op implements; the verifier checks a node's declared featurizer against it, and the
# frontends fill it in from what they found in the traced graph.
CANONICAL_FEATURIZERS: dict[str, dict[str, Gate]] = {
    "short_conv": {"B": Gate("in_proj", 0, 3), "C": Gate("in_proj", 1, 3), "x": Gate("in_proj", 2, 3)},
    "attention": {"q": Gate("q_proj", act="rmsnorm_rope"), "k": Gate("k_proj", act="rmsnorm_rope"),
                  "v": Gate("v_proj")},
    "gated_mlp": {"gate": Gate("w1", act="silu"), "up": Gate("w3")},
    "linear_recurrence": {"a": Gate("in_proj", 0, 4, "sigmoid"), "b": Gate("in_proj", 1, 4),
                          "c": Gate("in_proj", 2, 4), "x": Gate("in_proj", 3, 4)},
    "moe": {"router": Gate("router", act="sigmoid"), "gate": Gate("gate_up", 0, 2, "silu"),
            "up": Gate("gate_up", 1, 2)},
    "bidir_attention": {"q": Gate("q_proj"), "k": Gate("k_proj"), "v": Gate("v_proj")},
    "grid_conv": {"B": Gate("in_proj", 0, 3), "C": Gate("in_proj", 1, 3), "x": Gate("in_proj", 2, 3)},
    "vision_attention": {"q": Gate("q_proj", act="rmsnorm_rope"), "k": Gate("k_proj", act="rmsnorm_rope"),
                         "v": Gate("v_proj")},
}
LIV_MIXING = {"short_conv": "dense", "attention": "dense", "gated_mlp": "dense", "moe": "dense",
              "linear_recurrence": "dense", "bidir_attention": "dense",
              "grid_conv": "dense", "vision_attention": "dense"}


def ops_with(trait: str) -> tuple[str, ...]:
    """The ops whose schema has ``trait`` set (e.g. ``residual_producer``), in table order."""
    return tuple(name for name, s in SCHEMAS.items() if getattr(s, trait))


def state_types(node: Node) -> dict[str, TensorType]:
    """The per-sequence state ``node`` carries, by name (``conv``, ``h``, ``k``, ``v``), as its schema infers it:
    the one place a state's shape is computed ("ctx" = the context length, "ring" = a sliding window's ring of
    keys, :func:`lfmc.plan.ring_slots`). Stateful ops keep their input's type."""
    return SCHEMAS[node.op].infer(node, [node.type])[1] if SCHEMAS[node.op].state_kind else {}


def schema(op: str) -> OpSchema:
    try:
        return SCHEMAS[op]
    except KeyError:
        raise KeyError(f"unknown op {op!r} (known: {', '.join(sorted(SCHEMAS))})") from None


def attr_value(v: Any) -> Any:
    """Normalize an attribute value (numpy scalars, tuples) to the plain types the printer knows."""
    import numpy as np

    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, tuple):
        return [attr_value(x) for x in v]
    return v
