"""Write GGUF files of small LFM2 / LFM2-MoE models the way llama.cpp's convert_hf_to_gguf.py does (its metadata
keys, tensor names from the gguf package's TensorNameMap, the conv kernel squeezed to [D, L], MoE experts as
stacked gate / up / down tensors, 2-D projection weights quantized by the gguf package, norms, the conv kernel and
the router left float), for the GGUF importer's tests. transformers' own GGUF loader reads these files too."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from lfmc.frontend.config import dense_ff_width, layer_types


def byte_bpe_tokenizer(vocab_size: int, corpus: list[str]):
    """A byte-level BPE like LFM2's (llama-3 split regex, then bytes), trained on ``corpus``, with
    <|pad|>, <|startoftext|>, <|im_end|> as specials (ids 0, 1, 2)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_PRE_TOKENIZER_SPLITS

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(GGUF_PRE_TOKENIZER_SPLITS["lfm2"]), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    tr = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|pad|>", "<|startoftext|>", "<|im_end|>"],
                             initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus, tr)
    return tok


def write_gguf(model, path: Path, qtype: str = "F32", tokenizer=None, chat_template: str | None = None,
               replace: dict | None = None) -> Path:
    """``model`` (an lfmc Model with float32 weights and its config in the provenance) as a GGUF file;
    ``replace``: GGUF tensor name -> (raw blocks, quant type) written instead of that tensor."""
    import gguf

    cfg = model.provenance["config"]
    moe = cfg["architecture"] == "Lfm2MoeForCausalLM"
    arch = gguf.MODEL_ARCH.LFM2MOE if moe else gguf.MODEL_ARCH.LFM2
    name = gguf.MODEL_ARCH_NAMES[arch]
    Q = gguf.GGMLQuantizationType
    qt = getattr(Q, qtype)
    w = gguf.GGUFWriter(str(path), name)
    n = int(cfg["num_hidden_layers"])
    w.add_block_count(n)
    w.add_context_length(int(cfg["max_position_embeddings"]))
    w.add_embedding_length(int(cfg["hidden_size"]))
    w.add_feed_forward_length(int(cfg["intermediate_size"]) if moe else dense_ff_width(cfg))
    w.add_head_count(int(cfg["num_attention_heads"]))
    w.add_head_count_kv([int(cfg["num_key_value_heads"]) if t == "full_attention" else 0 for t in layer_types(cfg)])
    w.add_rope_freq_base(float(cfg["rope_theta"]))
    w.add_layer_norm_rms_eps(float(cfg["norm_eps"]))
    w.add_vocab_size(int(cfg["vocab_size"]))
    w.add_shortconv_l_cache(int(cfg["conv_L_cache"]))
    w.add_file_type({"F32": gguf.LlamaFileType.ALL_F32, "F16": gguf.LlamaFileType.MOSTLY_F16,
                     "BF16": gguf.LlamaFileType.MOSTLY_BF16, "Q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
                     "Q4_0": gguf.LlamaFileType.MOSTLY_Q4_0}.get(qtype, gguf.LlamaFileType.GUESSED))
    if moe:
        w.add_expert_count(int(cfg["num_experts"]))
        w.add_expert_used_count(int(cfg["num_experts_per_tok"]))
        w.add_expert_feed_forward_length(int(cfg["moe_intermediate_size"]))
        w.add_leading_dense_block_count(int(cfg["num_dense_layers"]))
        w.add_expert_gating_func(gguf.ExpertGatingFuncType.SIGMOID)
        w.add_expert_weights_norm(bool(cfg["norm_topk_prob"]))
        w.add_expert_weights_scale(float(cfg["routed_scaling_factor"]))
    if tokenizer is not None:
        _vocab(w, tokenizer, cfg)
    if chat_template:
        w.add_chat_template(chat_template)
    tmap = gguf.get_tensor_name_map(arch, n)
    for hf, a in model.weights.items():
        a = np.asarray(a, np.float32)
        if hf == "lm_head.weight":
            out = [("output.weight", a)]
        elif hf.endswith("experts.gate_up_proj"):
            b = hf.split(".")[2]
            F = a.shape[1] // 2
            out = [(f"blk.{b}.ffn_gate_exps.weight", a[:, :F]), (f"blk.{b}.ffn_up_exps.weight", a[:, F:])]
        elif hf.endswith("experts.down_proj"):
            out = [(f"blk.{hf.split('.')[2]}.ffn_down_exps.weight", a)]
        else:
            key = hf + ".bias" if hf.endswith("expert_bias") else hf
            out = [(tmap.get_name(key, try_suffixes=(".weight", ".bias")), a.squeeze(1) if a.ndim == 3 and ".conv.conv." in hf else a)]
        for gname, t in out:
            if replace and gname in replace:
                w.add_tensor(gname, replace[gname][0], raw_dtype=replace[gname][1])
                continue
            t = np.ascontiguousarray(t)
            quant = (qt not in (Q.F32,) and t.ndim >= 2 and t.shape[-1] % 32 == 0 and "ffn_gate_inp" not in gname
                     and "shortconv.conv" not in gname)
            if quant and qt in (Q.F16,):
                w.add_tensor(gname, t.astype(np.float16))
            elif quant:
                w.add_tensor(gname, gguf.quants.quantize(t, qt), raw_dtype=qt)
            else:
                w.add_tensor(gname, t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _vocab(w, tok, cfg) -> None:
    """llama.cpp's gpt2-style vocabulary: tokens in id order (padded to the model's vocabulary), types, merges."""
    import gguf
    import json

    vocab = tok.get_vocab(with_added_tokens=True)
    inv = {i: t for t, i in vocab.items()}
    special = {a.content for a in tok.get_added_tokens_decoder().values() if a.special}
    V = int(cfg["vocab_size"])
    tokens, types = [], []
    for i in range(V):
        t = inv.get(i, f"[PAD{i}]")
        tokens.append(t)
        types.append(gguf.TokenType.CONTROL if t in special else
                     gguf.TokenType.UNUSED if i not in inv else gguf.TokenType.NORMAL)
    merges = json.loads(tok.to_str())["model"]["merges"]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("lfm2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges([" ".join(m) if isinstance(m, list) else m for m in merges])
    w.add_bos_token_id(int(cfg["bos_token_id"]))
    w.add_eos_token_id(int(cfg["eos_token_id"]))
    w.add_pad_token_id(int(cfg["pad_token_id"]))
    w.add_add_bos_token(True)


def tiny_gguf(path: Path, qtype: str = "Q8_0") -> Path:
    """A very small LFM2 GGUF (2 layers, hidden 32, vocabulary 300 with a BPE tokenizer and a chat template): the
    fuzzers' seed."""
    from lfmc.frontend.config import graph_from_config
    from lfmc.ir.model import Model
    from lfmc.ir.weights import random_weights

    cfg = {"architecture": "Lfm2ForCausalLM", "vocab_size": 300, "max_position_embeddings": 256, "norm_eps": 1e-5,
           "rope_theta": 1e6, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2, "conv_bias": False,
           "tie_word_embeddings": True, "hidden_size": 32, "intermediate_size": 64, "block_auto_adjust_ff_dim": False,
           "num_attention_heads": 2, "num_key_value_heads": 1, "layer_types": ["conv", "full_attention"],
           "num_hidden_layers": 2, "conv_L_cache": 3}
    g = graph_from_config(cfg, "tiny")
    m = Model(g, random_weights(g, seed=0, std=0.25), {"config": cfg})
    tok = byte_bpe_tokenizer(300, ["def f(x):\n    return x + 1\n" * 4, "hello world " * 8])
    return write_gguf(m, path, qtype, tokenizer=tok, chat_template="{{ bos_token }}{{ messages[0].content }}")
