"""Frontends: presets and transformers configs (no torch), torch models and HF checkpoint directories
(torch.export + pattern lifting), ONNX files (pattern lifting of the dynamo exporter's graph), GGUF files (llama.cpp's
format, through the gguf package). Produces :class:`lfmc.ir.Model`; never imports passes, targets or runtime."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..ir.errors import LfmcError
from ..ir.model import Model
from ..ir.weights import random_weights
from .config import architecture, graph_from_config
from .presets import PRESETS, preset
from .vision import VL_ARCHITECTURES, import_vl_dir, import_vl_torch, is_vl, vl_model

_DROP = {"id2label", "label2id", "_name_or_path", "transformers_version", "architectures", "return_dict",
         "output_hidden_states", "output_attentions", "dtype", "torch_dtype", "chunk_size_feed_forward",
         "is_encoder_decoder", "problem_type", "full_attn_idxs"}


def import_preset(name: str, weights: bool = False, seed: int = 0, std: float | None = None) -> Model:
    """A preset as IR; config-only unless ``weights`` (seeded random, N(0, std))."""
    p = preset(name)
    cfg = p["config"]
    if is_vl(cfg):
        std = float(std if std is not None else 0.02)
        prov = {"source": "preset", "preset": name, "assumed": p["assumed"],
                "published_parameters": p["published_parameters"]} | ({"seed": seed, "init_std": std} if weights else {})
        return vl_model(cfg, name, None, p.get("processor"), prov, seed if weights else None, std)
    g = graph_from_config(cfg, name)
    std = float(std if std is not None else cfg.get("initializer_range", 0.02))
    prov: dict[str, Any] = {"source": "preset", "preset": name, "architecture": p["architecture"], "config": cfg,
                            "assumed": p["assumed"], "published_parameters": p["published_parameters"]}
    w = None
    if weights:
        w = random_weights(g, seed=seed, std=std)
        prov |= {"seed": seed, "init_std": std}
    return Model(g, w, prov)


def clean_config(conf) -> dict[str, Any]:
    """A transformers config as a plain dict lfmc can store and rebuild from."""
    d = {k: v for k, v in conf.to_dict().items() if k not in _DROP}
    d["architecture"] = architecture({"architectures": getattr(conf, "architectures", None),
                                      "model_type": getattr(conf, "model_type", "")})
    return d


def import_torch_model(model, name: str = "model") -> Model:
    """Trace and lift a transformers Lfm2ForCausalLM / Lfm2MoeForCausalLM object."""
    from .torch_lift import lift

    if type(model).__name__ in VL_ARCHITECTURES:
        return import_vl_torch(model, name)
    cfg = dict(model.lfmc_config) if hasattr(model, "lfmc_config") else clean_config(model.config)
    cfg["architecture"] = type(model).__name__
    architecture(cfg)
    g, w = lift(model, name)
    return Model(g, w, {"source": "torch", "architecture": cfg["architecture"], "config": cfg})


def import_hf_dir(path: str | os.PathLike, name: str | None = None) -> Model:
    """A local HF checkpoint directory (config.json + safetensors): load with transformers, trace, lift.
    Without weight files the import is config-only (built from config.json, no torch)."""
    p = Path(path)
    cfg_file = p / "config.json"
    if not cfg_file.is_file():
        raise LfmcError(f"{p}: not an HF checkpoint directory (no config.json)")
    try:
        raw = json.loads(cfg_file.read_text())
    except ValueError as e:
        raise LfmcError(f"{cfg_file}: not valid JSON ({e})") from None
    name = name or p.name
    if is_vl(raw):
        m = import_vl_dir(p, raw, name)
        if (p / "tokenizer.json").is_file():
            m.tokenizer = (p / "tokenizer.json").read_text()
        chat = chat_template_of(p)
        if chat:
            m.provenance["chat"] = chat
        return m
    arch = architecture(raw)
    has_weights = any(p.glob("*.safetensors")) or any(p.glob("*.bin"))
    tok = p / "tokenizer.json"
    if not has_weights:
        conf = _hf_conf(raw)
        cfg = clean_config(conf) | {"architecture": arch}
        m = Model(graph_from_config(cfg, name), None, {"source": "hf", "path": str(p.resolve()),
                                                       "architecture": arch, "config": cfg})
    else:
        import torch
        import transformers

        try:
            model = getattr(transformers, arch).from_pretrained(str(p), dtype=torch.float32, local_files_only=True)
        except Exception as e:
            raise LfmcError(f"{p}: transformers could not load the checkpoint ({type(e).__name__}: {e})") from None
        m = import_torch_model(model, name)
        m.provenance |= {"source": "hf", "path": str(p.resolve())}
    if tok.is_file():
        m.tokenizer = tok.read_text()
    chat = chat_template_of(p)
    if chat:
        m.provenance["chat"] = chat
    return m


def chat_template_of(d: Path) -> dict[str, Any] | None:
    """The chat template of a checkpoint directory (``chat_template.jinja`` or ``tokenizer_config.json``'s
    ``chat_template``) with its bos / eos token strings, or None."""
    conf: dict[str, Any] = {}
    f = d / "tokenizer_config.json"
    if f.is_file():
        try:
            conf = json.loads(f.read_text())
        except ValueError as e:
            raise LfmcError(f"{f}: not valid JSON ({e})") from None
    tpl = conf.get("chat_template")
    if isinstance(tpl, list):                       # [{name, template}, ...]: the default one
        tpl = next((t.get("template") for t in tpl if isinstance(t, dict) and t.get("name") == "default"), None)
    if (d / "chat_template.jinja").is_file():
        tpl = (d / "chat_template.jinja").read_text()
    if not isinstance(tpl, str) or not tpl:
        return None

    def tok(v: Any) -> str:
        return v.get("content", "") if isinstance(v, dict) else (v or "")

    return {"template": tpl, "bos_token": tok(conf.get("bos_token")), "eos_token": tok(conf.get("eos_token"))}


def _hf_conf(raw: dict[str, Any]):
    from .reference import hf_config

    return hf_config(raw | {"architecture": architecture(raw)})


def import_source(source: str, weights: bool = False, seed: int = 0, std: float | None = None) -> Model:
    """Whatever ``lfmc import`` accepts: a preset name, an HF checkpoint directory, an ONNX or a GGUF file."""
    if source in PRESETS:
        return import_preset(source, weights, seed, std)
    p = Path(source)
    if p.is_dir():
        return import_hf_dir(p)
    if p.suffix == ".onnx":
        from .onnx import import_onnx

        return import_onnx(p)
    if p.suffix == ".gguf":
        from .gguf import import_gguf

        return import_gguf(p)
    raise LfmcError(f"{source!r} is neither a preset ({', '.join(sorted(PRESETS))}), an HF checkpoint "
                    "directory, an .onnx nor a .gguf file")


__all__ = ["PRESETS", "graph_from_config", "import_hf_dir", "import_preset", "import_source",
           "import_torch_model", "preset"]
