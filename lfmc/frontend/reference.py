"""The transformers reference: build Lfm2ForCausalLM / Lfm2MoeForCausalLM / Lfm3ForCausalLM with lfmc's weights
and run it.

The oracle the interpreter (and everything compiled) is checked against: prefill logits, then decode steps
through transformers' own cache.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ..ir.errors import LfmcError
from .config import architecture


def hf_config(cfg: dict[str, Any]):
    """A transformers config object for an lfmc config dict."""
    import transformers

    arch = architecture(cfg)
    cls = {"Lfm2MoeForCausalLM": transformers.Lfm2MoeConfig, "Lfm3ForCausalLM": transformers.Lfm3Config}.get(
        arch, transformers.Lfm2Config)
    kw = {k: v for k, v in cfg.items() if k not in ("architecture", "architectures", "model_type",
                                                    "transformers_version")}
    return cls(**kw)


def build_hf_model(cfg: dict[str, Any], weights: dict[str, np.ndarray] | None = None):
    """An eval-mode transformers model for ``cfg``, with ``weights`` (lfmc names = transformers names) loaded."""
    import torch
    import transformers

    arch = architecture(cfg)
    if arch == "LfmHybridForCausalLM":
        from .zoo import LfmHybridForCausalLM

        model = LfmHybridForCausalLM(cfg).eval()
        conf = model.config
    else:
        conf = hf_config(cfg)
        with torch.device("cpu"):
            model = getattr(transformers, arch)(conf).eval()
    if arch == "Lfm2MoeForCausalLM":
        model.set_experts_implementation("batched_mm")
    if weights is not None:
        sd = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in weights.items()}
        missing, unexpected = model.load_state_dict(sd, strict=False)
        tied = (set(getattr(model, "_tied_weights_keys", None) or {}) | {"lm_head.weight"}
                if conf.tie_word_embeddings else set())
        missing = [m for m in missing if m not in tied]
        if missing or unexpected:
            raise LfmcError(f"weights do not fit {arch}: missing {missing[:5]}, unexpected {unexpected[:5]}")
        if conf.tie_word_embeddings and hasattr(model, "tie_weights"):
            model.tie_weights()
    return model


def reference_logits(model, prompt: list[int], decode_tokens: list[int]) -> list[np.ndarray]:
    """[prefill logits [T, V], then one [1, V] per decode token], through transformers' cache."""
    import torch

    outs = []
    if getattr(model, "no_cache", False):                # zoo references recompute the whole prefix
        seq = list(prompt)
        with torch.no_grad():
            outs.append(model(torch.tensor([seq])).logits[0].float().numpy())
            for t in decode_tokens:
                seq.append(t)
                outs.append(model(torch.tensor([seq])).logits[0, -1:].float().numpy())
        return outs
    with torch.no_grad():
        out = model(torch.tensor([prompt]), use_cache=True)
        outs.append(out.logits[0].float().numpy())
        cache = out.cache
        for t in decode_tokens:
            out = model(torch.tensor([[t]]), cache=cache, use_cache=True)
            cache = out.cache
            outs.append(out.logits[0].float().numpy())
    return outs
