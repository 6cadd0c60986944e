"""Build IR straight from a transformers config dict (LFM2 / LFM2-MoE / LFM3), without torch.

Used for presets (config-only imports of models too large to instantiate, e.g. the 8B MoE in float32) and as
the independent cross-check of the torch lifter: both must print the same IR for the same config.
"""
from __future__ import annotations

from typing import Any

from ..ir.errors import LfmcError
from ..ir.graph import Graph
from .build import GraphBuilder

ARCHITECTURES = ("Lfm2ForCausalLM", "Lfm2MoeForCausalLM", "Lfm3ForCausalLM", "LfmHybridForCausalLM")
MODEL_TYPES = {"lfm2": "Lfm2ForCausalLM", "lfm2_moe": "Lfm2MoeForCausalLM", "lfm3": "Lfm3ForCausalLM"}
KINDS = {"Lfm2ForCausalLM": ("conv", "full_attention"), "Lfm2MoeForCausalLM": ("conv", "full_attention"),
         "Lfm3ForCausalLM": ("conv", "full_attention", "sliding_attention"),
         "LfmHybridForCausalLM": ("conv", "full_attention", "recurrence")}
# Lfm3Config's defaults (transformers 5.24) where they differ from LFM2's, and its RoPE per layer type
LFM3_DEFAULTS: dict[str, Any] = {
    "vocab_size": 128_000, "hidden_size": 2048, "intermediate_size": 7680, "num_hidden_layers": 24,
    "num_attention_heads": 16, "num_key_value_heads": 4, "head_dim": 128, "conv_L_cache": 7, "sliding_window": 256,
    "use_sandwich_norm": True, "use_attention_gate": True, "attention_bias": False, "max_position_embeddings": 128_000,
}
LFM3_ROPE = {"sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
             "full_attention": {"rope_type": "proportional", "rope_theta": 1_000_000.0, "partial_rotary_factor": 0.5}}
# transformers' defaults for the fields the IR needs (Lfm2Config / Lfm2MoeConfig, 5.24).
DEFAULTS: dict[str, Any] = {
    "norm_eps": 1e-5, "conv_L_cache": 3, "conv_bias": False, "tie_word_embeddings": True, "rope_theta": 1e6,
    "block_multiple_of": 256, "block_ffn_dim_multiplier": 1.0, "block_auto_adjust_ff_dim": True,
    "num_dense_layers": 2, "use_expert_bias": True, "routed_scaling_factor": 1.0, "norm_topk_prob": True,
}


def _get(cfg: dict[str, Any], key: str) -> Any:
    if key in cfg and cfg[key] is not None:
        return cfg[key]
    if cfg.get("architecture") == "Lfm3ForCausalLM" and key in LFM3_DEFAULTS:
        return LFM3_DEFAULTS[key]
    if key == "rope_theta" and isinstance(cfg.get("rope_parameters"), dict):
        return cfg["rope_parameters"].get("rope_theta", DEFAULTS["rope_theta"])
    if key in DEFAULTS:
        return DEFAULTS[key]
    raise LfmcError(f"config is missing the field {key!r}")


def dense_ff_width(cfg: dict[str, Any]) -> int:
    """The SwiGLU width transformers' Lfm2MLP uses (block_auto_adjust_ff_dim: 2/3, multiplier, round up)."""
    ff = int(_get(cfg, "intermediate_size"))
    if cfg.get("architecture") != "Lfm3ForCausalLM" and _get(cfg, "block_auto_adjust_ff_dim"):
        ff = int(2 * ff / 3)
        mult = cfg.get("block_ffn_dim_multiplier", DEFAULTS["block_ffn_dim_multiplier"])
        if mult is not None:
            ff = int(mult * ff)
            m = int(_get(cfg, "block_multiple_of"))
            ff = m * ((ff + m - 1) // m)
    return ff


def layer_types(cfg: dict[str, Any]) -> list[str]:
    n = int(_get(cfg, "num_hidden_layers"))
    lt = cfg.get("layer_types")
    if lt is None and cfg.get("architecture") == "Lfm3ForCausalLM":      # Lfm3Config's default pattern
        lt = ["full_attention" if i % 4 == 2 else "sliding_attention" if i % 4 == 0 and i > 0 else "conv"
              for i in range(n)]
    if lt is None:
        raise LfmcError("config has no layer_types: say which layers are 'conv' and which 'full_attention' "
                        "(transformers would silently make every layer attention)")
    kinds = KINDS.get(cfg.get("architecture") or "", ("conv", "full_attention"))
    if len(lt) != n or any(t not in kinds for t in lt):
        raise LfmcError(f"layer_types must list {n} entries of {' / '.join(repr(k) for k in kinds)}, got {lt}")
    return list(lt)


def read_json_object(path) -> dict[str, Any]:
    """A JSON file holding one object (a config.json, a processor config); a clear error naming the file."""
    import json

    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise LfmcError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(raw, dict):
        raise LfmcError(f"{path}: not a JSON object")
    return raw


def architecture(cfg: dict[str, Any]) -> str:
    arch = cfg.get("architecture") or (cfg.get("architectures") or [None])[0]
    if arch is None:
        arch = MODEL_TYPES.get(cfg.get("model_type", ""))
    if arch not in ARCHITECTURES:
        raise LfmcError(f"unsupported architecture {arch!r} (supported: {', '.join(ARCHITECTURES)})")
    return arch


def rope_attrs(cfg: dict[str, Any], kind: str, hd: int) -> dict[str, Any]:
    """The attention attributes of layer type ``kind``'s rotary embedding: ``rope_theta`` and, where they differ
    from a full rotation, ``rope_angles`` / ``rope_factor`` (transformers' "default" and "proportional" types;
    LFM2 has one theta for every layer)."""
    if cfg.get("architecture") != "Lfm3ForCausalLM":
        return {"rope_theta": float(_get(cfg, "rope_theta"))}
    rp = cfg.get("rope_parameters") or LFM3_ROPE
    r = rp.get(kind) if isinstance(rp, dict) else None
    if not isinstance(r, dict) or "rope_theta" not in r:
        raise LfmcError(f"rope_parameters has no entry with a rope_theta for the {kind!r} layers (an LFM3 config "
                        "gives one per attention layer type)")
    typ = r.get("rope_type", "default")
    out: dict[str, Any] = {"rope_theta": float(r["rope_theta"])}
    if typ == "proportional":              # transformers' _compute_proportional_rope_parameters
        angles = int(float(r.get("partial_rotary_factor", 1.0)) * hd // 2)
        if angles != hd // 2:
            out["rope_angles"] = angles
        if float(r.get("factor", 1.0)) != 1.0:
            out["rope_factor"] = float(r["factor"])
    elif typ != "default":                 # Lfm3's default type ignores partial_rotary_factor and factor
        raise LfmcError(f"rope_type {typ!r} of the {kind!r} layers is not supported (supported: default, "
                        "proportional)")
    return out


def _lfm3_checks(cfg: dict[str, Any]) -> None:
    if _get(cfg, "attention_bias"):
        raise LfmcError("attention_bias: biases on the attention projections are not supported")
    if "sliding_attention" in layer_types(cfg):
        w = _get(cfg, "sliding_window")
        if not isinstance(w, int) or isinstance(w, bool) or w < 1:
            raise LfmcError(f"sliding_window must be a positive integer for sliding_attention layers, not {w!r}")


def graph_from_config(cfg: dict[str, Any], name: str = "model") -> Graph:
    """The IR of an LFM2 / LFM2-MoE / LFM3 model with this transformers config."""
    arch = architecture(cfg)
    cfg = {**cfg, "architecture": arch}
    moe = arch in ("Lfm2MoeForCausalLM", "LfmHybridForCausalLM")
    lfm3 = arch == "Lfm3ForCausalLM"
    if lfm3:
        _lfm3_checks(cfg)
    sandwich = lfm3 and bool(_get(cfg, "use_sandwich_norm"))
    V, D = int(_get(cfg, "vocab_size")), int(_get(cfg, "hidden_size"))
    H, KV = int(_get(cfg, "num_attention_heads")), int(_get(cfg, "num_key_value_heads"))
    hd = int(_get(cfg, "head_dim") if lfm3 else cfg.get("head_dim") or D // H)
    eps, L = float(_get(cfg, "norm_eps")), int(_get(cfg, "conv_L_cache"))
    bias = bool(_get(cfg, "conv_bias"))
    b = GraphBuilder(name)
    emb = ("model.embed_tokens.weight", (V, D))
    h = b.embedding(b.tokens, emb)
    for i, kind in enumerate(layer_types(cfg)):
        p = f"model.layers.{i}."
        x = b.rmsnorm(h, (p + "operator_norm.weight", (D,)), eps)
        if kind == "conv":
            c = p + "conv."
            params = {"in_proj": (c + "in_proj.weight", (3 * D, D)), "conv": (c + "conv.weight", (D, 1, L)),
                      "out_proj": (c + "out_proj.weight", (D, D))}
            if bias:
                params |= {"in_proj_bias": (c + "in_proj.bias", (3 * D,)), "conv_bias": (c + "conv.bias", (D,)),
                           "out_proj_bias": (c + "out_proj.bias", (D,))}
            y = b.short_conv(x, params, L)
        elif kind == "recurrence":
            r = p + "recurrence."
            y = b.node("linear_recurrence", [x], {"in_proj": (r + "in_proj.weight", (4 * D, D)),
                                                  "out_proj": (r + "out_proj.weight", (D, D))})
        else:
            y = _attention_layer(b, cfg, kind, p + "self_attn.", x, (D, H, KV, hd), eps)
        if sandwich:
            y = b.rmsnorm(y, (p + "post_operator_norm.weight", (D,)), eps)
        h = b.add(h, y) if lfm3 else b.add(y, h)         # the operand order of each model's modeling code
        x = b.rmsnorm(h, (p + "ffn_norm.weight", (D,)), eps)
        f = p + "feed_forward."
        if moe and i >= int(_get(cfg, "num_dense_layers")):
            E, F = int(_get(cfg, "num_experts")), int(_get(cfg, "moe_intermediate_size"))
            params = {"router": (f + "gate.weight", (E, D)), "gate_up": (f + "experts.gate_up_proj", (E, 2 * F, D)),
                      "down": (f + "experts.down_proj", (E, D, F))}
            if _get(cfg, "use_expert_bias"):
                params["expert_bias"] = (f + "expert_bias", (E,))
            y = b.moe(x, params, num_experts=E, top_k=int(_get(cfg, "num_experts_per_tok")), scoring="sigmoid",
                      use_expert_bias=bool(_get(cfg, "use_expert_bias")),
                      norm_topk_prob=bool(_get(cfg, "norm_topk_prob")),
                      routed_scaling_factor=float(_get(cfg, "routed_scaling_factor")))
        else:
            F = int(_get(cfg, "intermediate_size")) if moe else dense_ff_width(cfg)
            y = b.gated_mlp(x, {"w1": (f + "w1.weight", (F, D)), "w3": (f + "w3.weight", (F, D)),
                                "w2": (f + "w2.weight", (D, F))})
        if sandwich:
            y = b.rmsnorm(y, (p + "post_ffn_norm.weight", (D,)), eps)
        h = b.add(h, y)
    h = b.rmsnorm(h, ("model.embedding_norm.weight", (D,)), eps)
    head = emb if _get(cfg, "tie_word_embeddings") else ("lm_head.weight", (V, D))
    return b.finish(b.lm_head(h, head))


def _attention_layer(b: GraphBuilder, cfg: dict[str, Any], kind: str, a: str, x: str, dims: tuple[int, ...],
                     eps: float) -> str:
    """An attention layer of type ``kind`` (LFM2's names: out_proj, q_layernorm; LFM3's: o_proj, q_norm, and
    its sliding window, output gate and RoPE per layer type)."""
    D, H, KV, hd = dims
    lfm3 = cfg.get("architecture") == "Lfm3ForCausalLM"
    out, qn, kn = ("o_proj", "q_norm", "k_norm") if lfm3 else ("out_proj", "q_layernorm", "k_layernorm")
    params = {"q_proj": (a + "q_proj.weight", (H * hd, D)), "k_proj": (a + "k_proj.weight", (KV * hd, D)),
              "v_proj": (a + "v_proj.weight", (KV * hd, D)), "out_proj": (a + out + ".weight", (D, H * hd)),
              "q_norm": (a + qn + ".weight", (hd,)), "k_norm": (a + kn + ".weight", (hd,))}
    extra = rope_attrs(cfg, kind, hd)
    if lfm3 and _get(cfg, "use_attention_gate"):
        params["g_proj"] = (a + "g_proj.weight", (H, D))
    if kind == "sliding_attention":
        extra["window"] = int(_get(cfg, "sliding_window"))
    return b.attention(x, params, H, KV, hd, extra.pop("rope_theta"), eps, **extra)


def _lfm3_fields(att: list, names: set[str]) -> dict[str, Any]:
    """The LFM3 config fields of a graph (attention nodes ``att``, parameter names ``names``): the window, head_dim,
    the gate and sandwich norms, and rope_parameters per attention layer type (the inverse of :func:`rope_attrs`)."""
    out: dict[str, Any] = {"architecture": "Lfm3ForCausalLM", "attention_bias": False,
                           "use_attention_gate": any("g_proj" in n.params for n in att),
                           "use_sandwich_norm": any(".post_operator_norm." in k for k in names)}
    rope = dict(LFM3_ROPE)
    for n in att:
        kind = "sliding_attention" if "window" in n.attrs else "full_attention"
        a = n.attrs
        out["head_dim"] = a["head_dim"]
        if "window" in a:
            out["sliding_window"] = a["window"]
        r: dict[str, Any] = {"rope_type": "default", "rope_theta": a["rope_theta"]}
        if "rope_angles" in a or "rope_factor" in a:
            r = {"rope_type": "proportional", "rope_theta": a["rope_theta"],
                 "partial_rotary_factor": 2 * a.get("rope_angles", a["head_dim"] // 2) / a["head_dim"]}
            if "rope_factor" in a:
                r["factor"] = a["rope_factor"]
        rope[kind] = r
    out["rope_parameters"] = rope
    return out


def config_from_graph(g: Graph, extra: dict[str, Any] | None = None, where: str | None = None) -> dict[str, Any]:
    """The transformers config of an LFM2 / LFM2-MoE graph (the inverse of :func:`graph_from_config`), for
    imports that carry no config (ONNX). ``extra`` (a ``config.json`` found beside the file) is used instead
    when it describes the same graph, which is checked; either way ``graph_from_config`` of the result must
    print the same IR as ``g``."""
    from ..ir.text import print_graph

    emb = next((n for n in g.nodes if n.op == "embedding"), None)
    head = next((n for n in g.nodes if n.op == "lm_head"), None)
    if emb is None or head is None:
        raise LfmcError(f"graph {g.name!r} has no embedding or no lm_head: not an LFM2 causal LM")
    V, D = emb.params["weight"].type.shape
    kinds = {"short_conv": "conv", "attention": "full_attention", "linear_recurrence": "recurrence"}
    mixers = [n for n in g.nodes if n.op in kinds]
    ffns = [n for n in g.nodes if n.op in ("gated_mlp", "moe")]
    moes = [n for n in ffns if n.op == "moe"]
    norms = [n for n in g.nodes if n.op == "rmsnorm"]
    cfg: dict[str, Any] = {
        "architecture": ("LfmHybridForCausalLM" if any(n.op == "linear_recurrence" for n in mixers)
                         else "Lfm2MoeForCausalLM" if moes else "Lfm2ForCausalLM"),
        "vocab_size": int(V), "hidden_size": int(D), "num_hidden_layers": len(mixers),
        "layer_types": [kinds[n.op] for n in mixers], "norm_eps": norms[0].attrs["eps"] if norms else 1e-5,
        "tie_word_embeddings": head.params["weight"].name == emb.params["weight"].name,
        "block_auto_adjust_ff_dim": False,
    }
    att = [n for n in mixers if n.op == "attention"]
    if att:
        a = att[0].attrs
        cfg |= {"num_attention_heads": a["heads"], "num_key_value_heads": a["kv_heads"], "rope_theta": a["rope_theta"]}
        if a["head_dim"] * a["heads"] != D:
            cfg["head_dim"] = a["head_dim"]
    else:
        cfg |= {"num_attention_heads": 1, "num_key_value_heads": 1}
    names = {p.name for n in g.nodes for p in n.params.values()}
    if any(".o_proj." in k or ".post_operator_norm." in k or ".post_ffn_norm." in k for k in names):
        cfg |= _lfm3_fields(att, names)
        cfg["layer_types"] = [("sliding_attention" if "window" in n.attrs else "full_attention")
                              if n.op == "attention" else kinds[n.op] for n in mixers]
    conv = [n for n in mixers if n.op == "short_conv"]
    if conv:
        cfg |= {"conv_L_cache": conv[0].attrs["L_cache"], "conv_bias": "in_proj_bias" in conv[0].params}
    dense = [n for n in ffns if n.op == "gated_mlp"]
    if dense:
        cfg["intermediate_size"] = int(dense[0].params["w1"].type.shape[0])
    if moes:
        m = moes[0].attrs
        cfg |= {"num_experts": m["num_experts"], "num_experts_per_tok": m["top_k"],
                "moe_intermediate_size": int(moes[0].params["gate_up"].type.shape[1]) // 2,
                "num_dense_layers": len(ffns) - len(moes), "use_expert_bias": m["use_expert_bias"],
                "norm_topk_prob": m["norm_topk_prob"], "routed_scaling_factor": m["routed_scaling_factor"]}
        cfg.setdefault("intermediate_size", cfg["moe_intermediate_size"])
    want = print_graph(g)

    def first_difference(c: dict[str, Any]) -> str | None:
        try:
            got = print_graph(graph_from_config(c, g.name))
        except LfmcError as e:
            return str(e)
        if got == want:
            return None
        for a, b in zip(want.splitlines(), got.splitlines()):
            if a != b:
                return f"graph has {a.strip()[:160]!r}, config gives {b.strip()[:160]!r}"
        return "the number of nodes differs"

    if extra:
        side = {k: v for k, v in extra.items() if k not in ("architectures", "model_type", "transformers_version",
                                                             "dtype", "torch_dtype", "_name_or_path")}
        side["architecture"] = architecture(extra | {"architecture": extra.get("architecture")})
        diff = first_difference(side)
        if diff:
            raise LfmcError(f"{where or 'config.json'} describes a different model than the graph: {diff}")
        return side
    diff = first_difference(cfg)
    if diff:
        raise LfmcError(f"graph {g.name!r} is not expressible as a transformers LFM2 config: {diff}")
    return cfg
