"""Vision-language models (LFM2-VL, LFM3-VL): the decoder and the image encoder + projector as two IR graphs, built
from a transformers config (no torch), with the checkpoint's weights mapped onto them by name.

The decoder is the text model's graph (``graph_from_config``) with an ``image_merge`` after the embedding: a
second input carries image embeddings aligned with the tokens, read at image-token positions. LFM2-VL's vision
graph takes one image's patches ``f32[T, C*p*p]`` (T patches, row-major in its patch grid), the weights that resize
the learned position table to that grid (``lfmc.mixers.resize_weights``) and the patches' merge order
(``lfmc.mixers.merge_order``); LFM3-VL's takes the patches in merge-block order and the grid ``i32[2]``; both
return the image-token embeddings ``f32[M, D_text]``. Weight names: the vision tower and projector keep
transformers' names; the text model's are the LFM2 / LFM3 names (``model.language_model.X`` -> ``model.X``) so
that every pass and lowering sees an ordinary decoder.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from pathlib import Path

from ..ir.errors import LfmcError
from ..ir.graph import Graph, Node
from ..ir.model import Model
from ..ir.weights import random_weights
from ..ir.types import TensorType, f32
from .build import GraphBuilder
from .config import graph_from_config, read_json_object

VL_ARCHITECTURES = ("Lfm2VlForConditionalGeneration", "Lfm3VlForConditionalGeneration")
VL_MODEL_TYPES = {"lfm2_vl": "Lfm2VlForConditionalGeneration", "lfm3_vl": "Lfm3VlForConditionalGeneration"}
# transformers 5.24's Lfm3VlVisionConfig / Lfm3VlConfig defaults
LFM3_VISION_DEFAULTS: dict[str, Any] = {"hidden_size": 1024, "intermediate_size": 2560, "num_hidden_layers": 14,
                                        "num_attention_heads": 16, "num_key_value_heads": 8, "in_channels": 3,
                                        "patch_size": 16, "spatial_merge_size": 2, "temporal_patch_size": 2,
                                        "conv_kernel_size": 3, "norm_eps": 1e-5,
                                        "rope_parameters": {"rope_type": "axial", "rope_theta": 1e6}}
LFM3_VL_DEFAULTS: dict[str, Any] = {"image_token_id": 125_030, "projector_hidden_act": "gelu",
                                    "projector_hidden_size": 4096, "projector_bias": True, "tie_word_embeddings": True}
# transformers 5.24's Siglip2VisionConfig and Lfm2VlConfig defaults, for fields a config leaves out
SIGLIP2_DEFAULTS: dict[str, Any] = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
                                    "num_attention_heads": 12, "num_channels": 3, "patch_size": 16,
                                    "hidden_act": "gelu_pytorch_tanh", "layer_norm_eps": 1e-6, "num_patches": 256}
LFM2_VL_DEFAULTS: dict[str, Any] = {"image_token_id": 396, "projector_hidden_act": "gelu",
                                    "projector_hidden_size": 2560, "projector_bias": True,
                                    "projector_use_layernorm": True, "downsample_factor": 2,
                                    "tie_word_embeddings": True}
ACTS = {"gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu"}
TEXT_PREFIX = "model.language_model."


def vl_architecture(cfg: dict[str, Any]) -> str | None:
    """The VL architecture of a config (``Lfm2VlForConditionalGeneration`` / ``Lfm3Vl...``), or None."""
    arch = cfg.get("architecture") or (cfg.get("architectures") or [None])[0]
    return arch if arch in VL_ARCHITECTURES else VL_MODEL_TYPES.get(cfg.get("model_type", ""))


def is_vl(cfg: dict[str, Any]) -> bool:
    return vl_architecture(cfg) is not None


def _lfm3(cfg: dict[str, Any]) -> bool:
    return vl_architecture(cfg) == "Lfm3VlForConditionalGeneration"


def _vl(cfg: dict[str, Any], key: str) -> Any:
    return cfg[key] if cfg.get(key) is not None else (LFM3_VL_DEFAULTS if _lfm3(cfg) else LFM2_VL_DEFAULTS)[key]


def text_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """The decoder's config (an LFM2 config) of a VL config; embeddings tied as the VL config says."""
    t = dict(cfg.get("text_config") or {})
    t.setdefault("model_type", "lfm3" if _lfm3(cfg) else "lfm2")
    t["architecture"] = {"lfm2": "Lfm2ForCausalLM", "lfm3": "Lfm3ForCausalLM"}.get(t["model_type"])
    if t["architecture"] is None:
        raise LfmcError(f"VL text model type {t['model_type']!r} is not supported (supported: lfm2, lfm3)")
    t["tie_word_embeddings"] = bool(_vl(cfg, "tie_word_embeddings"))
    return t


def vision_config(cfg: dict[str, Any]) -> dict[str, Any]:
    v = dict(SIGLIP2_DEFAULTS) | {k: x for k, x in (cfg.get("vision_config") or {}).items() if x is not None}
    if v.get("vision_use_head"):
        raise LfmcError("a vision tower with a pooling head (vision_use_head) is not an LFM2-VL tower")
    if v["hidden_act"] not in ACTS:
        raise LfmcError(f"vision hidden_act {v['hidden_act']!r} is not supported (supported: {', '.join(ACTS)})")
    return v


def vl_graphs(cfg: dict[str, Any], name: str = "model") -> tuple[Graph, Graph]:
    """(decoder, vision) graphs of an ``Lfm2VlForConditionalGeneration`` / ``Lfm3Vl...`` config."""
    dec = graph_from_config(text_config(cfg), name)
    return with_image_input(dec, int(_vl(cfg, "image_token_id"))), vision_graph(cfg, name + ".vision")


def with_image_input(g: Graph, image_token: int) -> Graph:
    """``g`` with a second input ``image`` f32[T, D] merged into the token embeddings at ``image_token``."""
    emb = g.nodes[0]
    if emb.op != "embedding":
        raise LfmcError(f"graph {g.name} does not start with its token embedding")
    D = int(emb.type.shape[1])
    g.inputs.append(("image", f32("T", D)))
    merge = Node("merge", "image_merge", [emb.name, g.inputs[0][0], "image"], emb.type, {"image_token": image_token})
    for n in g.nodes[1:]:
        n.inputs = ["merge" if i == emb.name else i for i in n.inputs]
    g.outputs = ["merge" if o == emb.name else o for o in g.outputs]
    g.nodes.insert(1, merge)
    return g


def vision_graph(cfg: dict[str, Any], name: str = "vision") -> Graph:
    """The vision tower and projector of a VL config: LFM2-VL's SigLIP2 NaFlex tower, pixel unshuffle and
    projector, or LFM3-VL's (:func:`lfm3_vision_graph`)."""
    if _lfm3(cfg):
        return lfm3_vision_graph(cfg, name)
    v = vision_config(cfg)
    D, F, H = int(v["hidden_size"]), int(v["intermediate_size"]), int(v["num_attention_heads"])
    if D % H:
        raise LfmcError(f"vision hidden_size {D} is not a multiple of its {H} heads")
    C, p, eps = int(v["num_channels"]), int(v["patch_size"]), float(v["layer_norm_eps"])
    npos = int(v["num_patches"])
    grid = int(round(npos ** 0.5))
    if grid * grid != npos:
        raise LfmcError(f"vision num_patches {npos} is not a square grid")
    f = int(_vl(cfg, "downsample_factor"))
    Dt = int(text_config(cfg)["hidden_size"])
    Ph = int(_vl(cfg, "projector_hidden_size"))
    bias = bool(_vl(cfg, "projector_bias"))
    b = GraphBuilder(name, inputs=[("patches", f32("T", C * p * p)), ("pos_weights", f32("T", grid * grid)),
                                   ("order", TensorType("i32", ("T",)))])
    t = "model.vision_tower."
    e = t + "embeddings."
    h = b.node("linear", ["patches"], {"weight": (e + "patch_embedding.weight", (D, C * p * p)),
                                       "weight_bias": (e + "patch_embedding.bias", (D,))})
    h = b.node("pos_embed", [h, "pos_weights"], {"table": (e + "position_embedding.weight", (npos, D))},
               {"grid": grid})

    def ln(x: str, w: str, width: int, eps: float) -> str:
        return b.node("layernorm", [x], {"weight": (w + ".weight", (width,)), "bias": (w + ".bias", (width,))},
                      {"eps": eps})

    act = ACTS[v["hidden_act"]]
    for i in range(int(v["num_hidden_layers"])):
        L = f"{t}encoder.layers.{i}."
        x = ln(h, L + "layer_norm1", D, eps)
        a = L + "self_attn."
        params = {}
        for r in ("q_proj", "k_proj", "v_proj", "out_proj"):
            params[r] = (a + r + ".weight", (D, D))
            params[r + "_bias"] = (a + r + ".bias", (D,))
        y = b.node("bidir_attention", [x], params, {"heads": H, "head_dim": D // H})
        h = b.add(h, y)
        x = ln(h, L + "layer_norm2", D, eps)
        m = L + "mlp."
        y = b.node("mlp", [x], {"fc1": (m + "fc1.weight", (F, D)), "fc1_bias": (m + "fc1.bias", (F,)),
                                "fc2": (m + "fc2.weight", (D, F)), "fc2_bias": (m + "fc2.bias", (D,))}, {"act": act})
        h = b.add(h, y)
    h = ln(h, t + "post_layernorm", D, eps)
    h = b.node("pixel_unshuffle", [h, "order"], {}, {"factor": f})
    pr = "model.multi_modal_projector."
    if _vl(cfg, "projector_use_layernorm"):
        h = ln(h, pr + "layer_norm", D * f * f, 1e-5)          # nn.LayerNorm's default eps
    params = {"fc1": (pr + "linear_1.weight", (Ph, D * f * f)), "fc2": (pr + "linear_2.weight", (Dt, Ph))}
    if bias:
        params |= {"fc1_bias": (pr + "linear_1.bias", (Ph,)), "fc2_bias": (pr + "linear_2.bias", (Dt,))}
    pact = _vl(cfg, "projector_hidden_act")
    if pact not in ACTS:
        raise LfmcError(f"projector_hidden_act {pact!r} is not supported (supported: {', '.join(ACTS)})")
    return b.finish(b.node("mlp", [h], params, {"act": ACTS[pact]}))


def lfm3_vision_graph(cfg: dict[str, Any], name: str = "vision") -> Graph:
    """LFM3-VL's vision tower, an LIV hybrid over one image's patches in merge-block order: a linear patch
    embedding and RMSNorm, then layers of gated 3x3 depthwise convolutions over the patch grid (``grid_conv``) or
    bidirectional GQA with q / k RMSNorm and axial 2-D RoPE (``vision_attention``), each followed by a SwiGLU;
    the projector normalizes each patch (LayerNorm), merges each block of merge x merge into one token and maps
    it through a GELU MLP into the decoder's width."""
    v = LFM3_VISION_DEFAULTS | {k: x for k, x in (cfg.get("vision_config") or {}).items() if x is not None}
    D, F, H, KV = (int(v[k]) for k in ("hidden_size", "intermediate_size", "num_attention_heads",
                                         "num_key_value_heads"))
    if D % H:
        raise LfmcError(f"vision hidden_size {D} is not a multiple of its {H} heads")
    hd = D // H
    C, p, tp, f = (int(v[k]) for k in ("in_channels", "patch_size", "temporal_patch_size", "spatial_merge_size"))
    K, eps = int(v["conv_kernel_size"]), float(v["norm_eps"])
    rope = v.get("rope_parameters") or {}
    if rope.get("rope_type", "axial") != "axial":
        raise LfmcError(f"LFM3-VL vision rope_type {rope.get('rope_type')!r} is not supported (axial)")
    theta = float(rope.get("rope_theta", 1e6))
    kinds = v.get("layer_types") or ["conv" if i < 2 or i % 2 else "full_attention"
                                     for i in range(int(v["num_hidden_layers"]))]
    Dt, Ph = int(text_config(cfg)["hidden_size"]), int(_vl(cfg, "projector_hidden_size"))
    b = GraphBuilder(name, inputs=[("patches", f32("T", C * tp * p * p)), ("grid", TensorType("i32", (2,)))])
    t = "model.vision_tower."
    h = b.node("linear", ["patches"], {"weight": (t + "patch_embed.weight", (D, C * tp * p * p))})
    h = b.rmsnorm(h, (t + "embedding_norm.weight", (D,)), eps)
    for i, kind in enumerate(kinds):
        L = f"{t}layers.{i}."
        x = b.rmsnorm(h, (L + "operator_norm.weight", (D,)), eps)
        if kind == "conv":
            c = L + "conv."
            y = b.node("grid_conv", [x, "grid"], {"in_proj": (c + "in_proj.weight", (3 * D, D)),
                                                  "conv": (c + "spatial_conv.weight", (D, 1, K, K)),
                                                  "out_proj": (c + "out_proj.weight", (D, D))},
                       {"kernel": K, "merge": f})
        elif kind == "full_attention":
            a = L + "self_attn."
            y = b.node("vision_attention", [x, "grid"], {
                "q_proj": (a + "q_proj.weight", (H * hd, D)), "k_proj": (a + "k_proj.weight", (KV * hd, D)),
                "v_proj": (a + "v_proj.weight", (KV * hd, D)), "out_proj": (a + "out_proj.weight", (D, H * hd)),
                "q_norm": (a + "q_norm.weight", (hd,)), "k_norm": (a + "k_norm.weight", (hd,))},
                {"heads": H, "kv_heads": KV, "head_dim": hd, "eps": eps, "rope_theta": theta, "merge": f})
        else:
            raise LfmcError(f"LFM3-VL vision layer type {kind!r} is not supported (conv, full_attention)")
        h = b.add(y, h)
        x = b.rmsnorm(h, (L + "ffn_norm.weight", (D,)), eps)
        m = L + "feed_forward."
        y = b.gated_mlp(x, {"w1": (m + "w1.weight", (F, D)), "w3": (m + "w3.weight", (F, D)),
                            "w2": (m + "w2.weight", (D, F))})
        h = b.add(h, y)
    pr = "model.multi_modal_projector."
    h = b.node("layernorm", [h], {"weight": (pr + "layer_norm.weight", (D,)), "bias": (pr + "layer_norm.bias", (D,))},
               {"eps": 1e-6})
    h = b.node("merge_tokens", [h], {}, {"factor": f})
    params = {"fc1": (pr + "linear_1.weight", (Ph, D * f * f)), "fc2": (pr + "linear_2.weight", (Dt, Ph))}
    if _vl(cfg, "projector_bias"):
        params |= {"fc1_bias": (pr + "linear_1.bias", (Ph,)), "fc2_bias": (pr + "linear_2.bias", (Dt,))}
    pact = _vl(cfg, "projector_hidden_act")
    if pact not in ACTS:
        raise LfmcError(f"projector_hidden_act {pact!r} is not supported (supported: {', '.join(ACTS)})")
    return b.finish(b.node("mlp", [h], params, {"act": ACTS[pact]}))


def map_hf_weights(sd: dict[str, np.ndarray], dec: Graph, vis: Graph, where: str) -> dict[str, np.ndarray]:
    """A checkpoint's state dict under lfmc's names: text weights lose ``model.language_model.`` (and
    ``lm_head.weight`` is dropped when the decoder ties it); missing or unexpected tensors are an error naming
    ``where``."""
    out: dict[str, np.ndarray] = {}
    tied = "lm_head.weight" not in dec.params()
    for k, v in sd.items():
        if k.startswith(TEXT_PREFIX):
            k = "model." + k[len(TEXT_PREFIX):]
        elif k == "lm_head.weight" and tied:
            continue
        out[k] = np.asarray(v, dtype=np.float32) if np.asarray(v).dtype != np.float32 else np.asarray(v)
    want = set(dec.params()) | set(vis.params())
    missing, extra = sorted(want - set(out)), sorted(set(out) - want)
    if missing or extra:
        raise LfmcError(f"{where}: the weights do not fit the VL config: missing {missing[:5]}, "
                        f"unexpected {extra[:5]}")
    return out


def provenance_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """The VL config as lfmc stores it: the text model's ids and context limit lifted to the top level (where the
    manifest and ``lfmc run`` look for them)."""
    out = {k: v for k, v in cfg.items() if k not in ("architectures",)}
    out["architecture"] = vl_architecture(cfg)
    t = text_config(cfg)
    for k in ("eos_token_id", "bos_token_id", "pad_token_id", "max_position_embeddings"):
        if out.get(k) is None and t.get(k) is not None:
            out[k] = t[k]
    return out


def vl_model(cfg: dict[str, Any], name: str, weights: dict[str, np.ndarray] | None = None,
             processor: dict[str, Any] | None = None, provenance: dict[str, Any] | None = None,
             seed: int | None = None, std: float = 0.02) -> Model:
    """A VL model: both graphs, ``weights`` (lfmc names) or seeded random ones when ``seed`` is given."""
    dec, vis = vl_graphs(cfg, name)
    if weights is None and seed is not None:
        weights = random_weights(dec, seed, std) | random_weights(vis, seed, std)
    prov = {"architecture": vl_architecture(cfg), "config": provenance_config(cfg),
            "processor": dict(processor or {})} | (provenance or {})
    return Model(dec, weights, prov, vision=vis).check()


def processor_config(d: Path) -> dict[str, Any]:
    """The image processor settings of a checkpoint directory: ``preprocessor_config.json``, then
    ``processor_config.json``'s (its own keys and its ``image_processor`` object)."""
    out: dict[str, Any] = {}
    for f in ("preprocessor_config.json", "processor_config.json"):
        p = d / f
        if p.is_file():
            raw = read_json_object(p)
            out |= {k: v for k, v in raw.items() if not isinstance(v, dict)}
            if isinstance(raw.get("image_processor"), dict):
                out |= raw["image_processor"]
    return out


def import_vl_dir(d: Path, raw: dict[str, Any], name: str) -> Model:
    """An LFM2-VL / LFM3-VL checkpoint directory: config.json, the safetensors files (read without torch) and the
    processor settings; config-only without weight files."""
    files = sorted(d.glob("*.safetensors"))
    w = None
    if files:
        from safetensors import SafetensorError
        from safetensors.numpy import load_file

        sd: dict[str, np.ndarray] = {}
        for f in files:
            try:
                sd |= _load_any(f, load_file)
            except (SafetensorError, OSError, ValueError) as e:
                raise LfmcError(f"{f}: not a readable safetensors file ({e})") from None
        dec, vis = vl_graphs(raw, name)
        w = map_hf_weights(sd, dec, vis, str(d))
    elif any(d.glob("*.bin")):
        raise LfmcError(f"{d}: VL weights are read from .safetensors files; this directory has only .bin")
    return vl_model(raw, name, w, processor_config(d), {"source": "hf", "path": str(d.resolve())})


_SAFETENSORS_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32,
                      "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}


def _load_any(f: Path, load_file) -> dict[str, np.ndarray]:
    """A safetensors file's tensors as numpy arrays; bf16 ones (what checkpoints ship) widened to float32, exactly:
    numpy has no bfloat16, so safetensors' numpy reader refuses those files and they are decoded here."""
    try:
        return load_file(str(f))
    except TypeError:                       # "data type 'bfloat16' not understood"
        pass
    from safetensors import deserialize

    out = {}
    for name, t in deserialize(f.read_bytes()):
        if t["dtype"] == "BF16":
            a = (np.frombuffer(t["data"], np.uint16).astype(np.uint32) << 16).view(np.float32)
        elif t["dtype"] in _SAFETENSORS_DTYPES:
            a = np.frombuffer(t["data"], _SAFETENSORS_DTYPES[t["dtype"]])
        else:
            raise ValueError(f"tensor {name}: dtype {t['dtype']} is not supported")
        out[name] = a.reshape(t["shape"]).copy()
    return out


def import_vl_torch(model, name: str) -> Model:
    """A transformers ``Lfm2VlForConditionalGeneration`` / ``Lfm3Vl...`` object (its config and state dict)."""
    cfg = model.config.to_dict()
    sd = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    dec, vis = vl_graphs(cfg, name)
    return vl_model(cfg, name, map_hf_weights(sd, dec, vis, type(model).__name__), provenance={"source": "torch"})
