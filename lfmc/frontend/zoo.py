"""lfmc's model zoo: PyTorch reference modules for LIV operators transformers does not ship, and a hybrid
model that puts every operator class in one network (conv, recurrence, attention, MoE).

These are references for tests and examples: plain, readable PyTorch, checked against lfmc's interpreter and
compiled artifacts. The hybrid reuses transformers' LFM2-MoE blocks for conv, attention and MoE.
"""
from __future__ import annotations

from typing import Any

ARCHITECTURE = "LfmHybridForCausalLM"


def _torch():
    import torch

    return torch


class LinearRecurrence(_torch().nn.Module):
    """A diagonal linear recurrence (semi-separable LIV operator), Liquid-S4 / CfC / Mamba style:
    a, b, c, x = in_proj(u).chunk(4);  h_t = sigmoid(a_t) * h_{t-1} + b_t * x_t;  y_t = out_proj(c_t * h_t)."""

    def __init__(self, hidden: int, bias: bool = False):
        super().__init__()
        torch = _torch()
        self.in_proj = torch.nn.Linear(hidden, 4 * hidden, bias=bias)
        self.out_proj = torch.nn.Linear(hidden, hidden, bias=bias)

    def forward(self, u):
        torch = _torch()
        a, b, c, x = self.in_proj(u).chunk(4, dim=-1)
        a = torch.sigmoid(a)
        bx = b * x
        h = torch.zeros_like(bx[:, 0])
        ys = []
        for t in range(u.shape[1]):                       # the scan, one step per token
            h = a[:, t] * h + bx[:, t]
            ys.append(c[:, t] * h)
        return self.out_proj(torch.stack(ys, dim=1))


class _Layer(_torch().nn.Module):
    def __init__(self, conf, i: int, kind: str):
        super().__init__()
        from transformers.models.lfm2_moe import modeling_lfm2_moe as M

        self.kind = kind
        D = conf.hidden_size
        if kind == "conv":
            self.conv = M.Lfm2MoeShortConv(conf, i)
        elif kind == "recurrence":
            self.recurrence = LinearRecurrence(D)
        else:
            self.self_attn = M.Lfm2MoeAttention(conf, i)
        self.feed_forward = (M.Lfm2MoeMLP(conf, intermediate_size=conf.intermediate_size)
                             if i < conf.num_dense_layers else M.Lfm2MoeSparseMoeBlock(conf))
        self.operator_norm = M.Lfm2MoeRMSNorm(D, eps=conf.norm_eps)
        self.ffn_norm = M.Lfm2MoeRMSNorm(D, eps=conf.norm_eps)

    def forward(self, h, pos_emb):
        x = self.operator_norm(h)
        if self.kind == "conv":
            y = self.conv(hidden_states=x)
        elif self.kind == "recurrence":
            y = self.recurrence(x)
        else:
            y, _ = self.self_attn(hidden_states=x, position_embeddings=pos_emb, attention_mask=None)
        h = y + h
        return h + self.feed_forward(self.ffn_norm(h))


class _Base(_torch().nn.Module):
    def __init__(self, conf, kinds: list[str]):
        super().__init__()
        from transformers.models.lfm2_moe import modeling_lfm2_moe as M

        torch = _torch()
        self.embed_tokens = torch.nn.Embedding(conf.vocab_size, conf.hidden_size)
        self.layers = torch.nn.ModuleList([_Layer(conf, i, k) for i, k in enumerate(kinds)])
        self.rotary_emb = M.Lfm2MoeRotaryEmbedding(conf)
        self.embedding_norm = M.Lfm2MoeRMSNorm(conf.hidden_size, eps=conf.norm_eps)

    def forward(self, ids):
        torch = _torch()
        h = self.embed_tokens(ids)
        pos = torch.arange(ids.shape[1]).unsqueeze(0)
        pe = self.rotary_emb(h, pos)
        for layer in self.layers:
            h = layer(h, pe)
        return self.embedding_norm(h)


class LfmHybridForCausalLM(_torch().nn.Module):
    """Embedding, layers of kinds 'conv' / 'recurrence' / 'full_attention' (each with a dense or MoE FFN as
    in LFM2-MoE), final norm, tied LM head. No cache: every call recomputes its whole input (a reference)."""

    no_cache = True

    def __init__(self, cfg: dict[str, Any]):
        super().__init__()
        import transformers

        torch = _torch()
        kinds = list(cfg["layer_types"])
        hf = {k: v for k, v in cfg.items() if k not in ("architecture", "layer_types")}
        # transformers' blocks only need to know conv vs attention; recurrence layers pose as conv
        hf["layer_types"] = ["full_attention" if k == "full_attention" else "conv" for k in kinds]
        self.lfmc_config = dict(cfg, architecture=ARCHITECTURE)   # the real layer kinds, for lfmc's provenance
        self.config = transformers.Lfm2MoeConfig(**hf)
        self.config._experts_implementation = "batched_mm"
        self.config._attn_implementation = "sdpa"     # causal without a mask
        self.model = _Base(self.config, kinds)
        self.lm_head = torch.nn.Linear(cfg["hidden_size"], cfg["vocab_size"], bias=False)
        self.lm_head.weight = self.model.embed_tokens.weight
        for layer in self.model.layers:
            ff = layer.feed_forward
            if hasattr(ff, "experts"):
                ff.experts.gate_up_proj.data.normal_(0, 0.02)
                ff.experts.down_proj.data.normal_(0, 0.02)

    def forward(self, input_ids, use_cache: bool = False, **_: Any):
        from transformers.modeling_outputs import CausalLMOutputWithPast   # a registered pytree: exportable

        return CausalLMOutputWithPast(logits=self.lm_head(self.model(input_ids)))
