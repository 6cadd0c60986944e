"""GGUF files (llama.cpp's format) of LFM2 / LFM2-MoE, read with the maintained ``gguf`` package.

What a GGUF holds and what lfmc makes of it:

- the config from the metadata (``lfm2.*`` / ``lfm2moe.*``: the per-layer KV-head list says which layers are
  attention, ``shortconv.l_cache``, RoPE base, norm epsilon, the MoE fields), checked against every tensor's shape;
- float tensors (F32, F16, BF16) as float32;
- **quantized blocks kept as they are** where lfmc has the same format: Q4_0 is lfmc's q4g32 (unsigned 4-bit codes,
  w = (q - 8) * d, an f16 scale per 32 inputs) and Q8_0 is q8g32 (int8 codes, w = q * d per 32), bit for bit;
- every other quantized type (K-quants, IQ, Q4_1, Q5_*) dequantized to float32 by the ``gguf`` package, recorded in
  the provenance (``gguf.dequantized``), so that ``lfmc compile --quant`` re-quantizes it; a type the package cannot
  dequantize is refused naming the tensor and the type. Weights that lfmc never quantizes (norms, the conv kernel,
  the MoE router) are float32 whatever the file stores;
- the tokenizer (a ``tokenizer.json`` built from the metadata by transformers' GGUF conversion), the chat template
  and the BOS / EOS / pad ids.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ..ir.errors import LfmcError
from ..ir.graph import Graph
from ..ir.model import Model
from ..ir.ops import SCHEMAS
from ..ir.quant import quantized_params, set_quantized
from ..progress import task
from .config import graph_from_config

ARCHITECTURES = {"lfm2": "Lfm2ForCausalLM", "lfm2moe": "Lfm2MoeForCausalLM"}
_MISSING = object()


class GgufError(LfmcError):
    """A GGUF file lfmc cannot import, with the file and the key or tensor at fault."""


def _reader(path: Path):
    import gguf

    class Bounded(gguf.GGUFReader):
        """The package's reader, refusing reads past the end of the file: a corrupt array length then stops at
        the end of the file instead of looping (and allocating) for every element it claims."""

        def _get(self, offset, dtype, count=1, override_order=None):
            end = int(offset) + int(np.dtype(dtype).itemsize) * int(count)
            if end > len(self.data):
                raise ValueError(f"a field at byte {int(offset)} runs past the end of the file ({len(self.data)} "
                                 "bytes)")
            return super()._get(offset, dtype, count, override_order)

    if not path.is_file():
        raise GgufError(f"{path}: no such GGUF file")
    try:
        return Bounded(str(path), "r")
    except Exception as e:                                # noqa: BLE001  truncated, not GGUF, unknown types
        raise GgufError(f"{path}: not a readable GGUF file ({type(e).__name__}: {e})") from None


class _File:
    """A GGUF's metadata and tensors, with errors that name the file and the key or tensor."""

    def __init__(self, path: Path):
        self.path = path
        self.r = _reader(path)
        self.tensors = {t.name: t for t in self.r.tensors}
        self.arch = self.field("general.architecture")
        if self.arch not in ARCHITECTURES:
            raise GgufError(f"{path}: architecture {self.arch!r} is not an LFM that lfmc reads "
                            f"(supported: {', '.join(ARCHITECTURES)})")

    def field(self, key: str, default: Any = _MISSING) -> Any:
        f = self.r.get_field(key)
        if f is None:
            if default is _MISSING:
                raise GgufError(f"{self.path}: metadata key {key!r} is missing")
            return default
        try:
            return f.contents()
        except Exception as e:                            # noqa: BLE001  a malformed value
            raise GgufError(f"{self.path}: metadata key {key!r} is malformed ({type(e).__name__}: {e})") from None

    def hp(self, name: str, default: Any = _MISSING) -> Any:
        """The architecture's hyperparameter ``name`` (``lfm2.block_count`` ...)."""
        return self.field(f"{self.arch}.{name}", default)

    def shape(self, name: str) -> tuple[int, ...]:
        """The tensor's shape in row-major (numpy / torch) order: GGUF lists dimensions innermost first."""
        return tuple(int(d) for d in reversed(self.tensors[name].shape.tolist()))


def config_from_gguf(f: _File) -> dict[str, Any]:
    """The transformers config (as lfmc keeps it) that the GGUF metadata describes."""
    n = _int(f, "block_count")
    kv = f.hp("attention.head_count_kv")
    kv = list(kv) if isinstance(kv, list) else [kv] * n
    heads = f.hp("attention.head_count")
    heads = max(heads) if isinstance(heads, list) else heads
    if len(kv) != n:
        raise GgufError(f"{f.path}: {f.arch}.attention.head_count_kv lists {len(kv)} layers, block_count is {n}")
    blocks = {k.split(".")[1] for k in f.tensors if k.startswith("blk.")}
    if blocks != {str(i) for i in range(n)}:
        raise GgufError(f"{f.path}: {f.arch}.block_count is {n}, but the file has tensors for {len(blocks)} blocks")
    if "token_embd.weight" not in f.tensors:
        raise GgufError(f"{f.path}: tensor 'token_embd.weight' is missing")
    vocab = f.hp("vocab_size", None) or f.shape("token_embd.weight")[0]
    ff = _int(f, "feed_forward_length")
    cfg: dict[str, Any] = {
        "architecture": ARCHITECTURES[f.arch], "vocab_size": int(vocab), "hidden_size": _int(f, "embedding_length"),
        "intermediate_size": ff, "block_ff_dim": ff, "block_auto_adjust_ff_dim": False, "num_hidden_layers": n,
        "num_attention_heads": int(heads), "num_key_value_heads": int(max(kv) or 1),
        "layer_types": ["full_attention" if h else "conv" for h in kv],
        "norm_eps": float(f.hp("attention.layer_norm_rms_epsilon")), "conv_L_cache": _int(f, "shortconv.l_cache"),
        "conv_bias": any(k.endswith("shortconv.in_proj.bias") for k in f.tensors),
        "rope_theta": float(f.hp("rope.freq_base", 1e6)), "max_position_embeddings": _int(f, "context_length"),
        "tie_word_embeddings": "output.weight" not in f.tensors,
        "bos_token_id": f.field("tokenizer.ggml.bos_token_id", None),
        "eos_token_id": f.field("tokenizer.ggml.eos_token_id", None),
        "pad_token_id": f.field("tokenizer.ggml.padding_token_id", None)}
    if f.arch == "lfm2moe":
        gating = f.hp("expert_gating_func", 2)
        if gating != 2:                                   # llama.cpp's LLAMA_EXPERT_GATING_FUNC_TYPE_SIGMOID
            raise GgufError(f"{f.path}: {f.arch}.expert_gating_func is {gating}; LFM2-MoE routes with sigmoid (2)")
        cfg |= {"num_experts": _int(f, "expert_count"), "num_experts_per_tok": _int(f, "expert_used_count"),
                "moe_intermediate_size": _int(f, "expert_feed_forward_length"),
                "num_dense_layers": _int(f, "leading_dense_block_count"),
                "use_expert_bias": any(k.endswith("exp_probs_b.bias") for k in f.tensors),
                "norm_topk_prob": bool(f.hp("expert_weights_norm", True)),
                "routed_scaling_factor": float(f.hp("expert_weights_scale", 1.0))}
    return cfg


def _int(f: _File, name: str) -> int:
    v = f.hp(name)
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise GgufError(f"{f.path}: {f.arch}.{name} must be a non-negative integer, not {v!r}")
    return int(v)


def _sources(f: _File, g: Graph) -> dict[str, list[str]]:
    """For each IR parameter, the GGUF tensor(s) that hold it (the MoE's gate_up is two: gate and up experts)."""
    import gguf

    arch = {"lfm2": gguf.MODEL_ARCH.LFM2, "lfm2moe": gguf.MODEL_ARCH.LFM2MOE}[f.arch]
    tmap = gguf.get_tensor_name_map(arch, len(g.nodes))
    out: dict[str, list[str]] = {}
    for name in g.params():
        parts = name.split(".")
        if name == "lm_head.weight":
            src = ["output.weight"]
        elif name.endswith("experts.gate_up_proj"):
            src = [f"blk.{parts[2]}.ffn_gate_exps.weight", f"blk.{parts[2]}.ffn_up_exps.weight"]
        elif name.endswith("experts.down_proj"):
            src = [f"blk.{parts[2]}.ffn_down_exps.weight"]
        else:
            m = tmap.get_name(name + ".bias" if name.endswith("expert_bias") else name,
                              try_suffixes=(".weight", ".bias"))
            if m is None:
                raise GgufError(f"{f.path}: lfmc has no GGUF name for parameter {name!r}")
            src = [m]
        for s in src:
            if s not in f.tensors:
                raise GgufError(f"{f.path}: tensor {s!r} (lfmc's {name!r}) is missing")
        out[name] = src
    return out


def _blocks(t) -> np.ndarray:
    """The raw blocks of a quantized tensor: [..., rows, blocks per row, bytes per block] (uint8)."""
    import gguf

    bs, ts = gguf.GGML_QUANT_SIZES[t.tensor_type]
    raw = np.asarray(t.data).view(np.uint8)
    return raw.reshape(*raw.shape[:-1], raw.shape[-1] // ts, ts), bs


def _kept(t) -> tuple[str, np.ndarray, np.ndarray]:
    """(IR code dtype, codes [..., K], scales [..., K / 32]) of a Q4_0 / Q8_0 tensor, exactly as stored."""
    import gguf

    b, bs = _blocks(t)
    d = np.ascontiguousarray(b[..., :2]).view(np.float16)[..., 0].astype(np.float32)
    if t.tensor_type == gguf.GGMLQuantizationType.Q8_0:
        codes = np.ascontiguousarray(b[..., 2:]).view(np.int8)
        return "i8", codes.reshape(*codes.shape[:-2], -1), d
    qs = b[..., 2:]                                       # element j in the low nibble of byte j, j + 16 in the high
    codes = np.concatenate([qs & np.uint8(15), qs >> np.uint8(4)], axis=-1)
    return "u4", codes.reshape(*codes.shape[:-2], -1).astype(np.uint8), d


def _dequantized(f: _File, t) -> np.ndarray:
    import gguf

    try:
        return np.asarray(gguf.quants.dequantize(np.asarray(t.data), t.tensor_type), np.float32)
    except NotImplementedError:
        raise GgufError(f"{f.path}: tensor {t.name!r} is stored as {t.tensor_type.name}, which lfmc cannot "
                        "dequantize; convert the model to another type (F16, Q8_0, Q4_0, a K-quant)") from None


def _quant_roles(g: Graph) -> dict[str, bool]:
    """Per parameter: whether lfmc may store it quantized (a projection weight of its op)."""
    out: dict[str, bool] = {}
    for n in g.nodes:
        for role, p in n.params.items():
            out[p.name] = out.get(p.name, True) and role in SCHEMAS[n.op].quant_roles
    return out


def import_gguf(path: str | os.PathLike, name: str | None = None) -> Model:
    """An LFM2 / LFM2-MoE GGUF as an lfmc model (see the module docstring for what is kept and converted)."""
    import gguf

    p = Path(path)
    f = _File(p)
    cfg = config_from_gguf(f)
    try:
        g = graph_from_config(cfg, name or p.stem)
    except LfmcError as e:
        raise GgufError(f"{p}: the metadata does not describe a valid {cfg['architecture']}: {e}") from None
    sources = _sources(f, g)
    quantizable = _quant_roles(g)
    Q = gguf.GGMLQuantizationType
    floats = {Q.F32, Q.F16, Q.BF16}
    weights: dict[str, np.ndarray] = {}
    kept: dict[str, tuple] = {}
    kept_types: dict[str, int] = {}
    dequantized: dict[str, list[str]] = {}
    params = g.params()
    with task(f"reading {p.name}", len(params), "tensor") as bar:
        for pname, prm in params.items():
            bar.update()
            want = tuple(int(d) for d in prm.type.shape)
            ts = [f.tensors[s] for s in sources[pname]]
            shapes = [f.shape(t.name) for t in ts]
            got = _joined_shape(shapes)
            if got is None or int(np.prod(got)) != int(np.prod(want)) or (
                    got != want and not (len(want) == 3 and want[1] == 1 and got == (want[0], want[2]))):
                raise GgufError(f"{p}: tensor {', '.join(t.name for t in ts)} has shape "
                                f"{' + '.join(str(list(s)) for s in shapes)}; the metadata's config needs "
                                f"{list(want)} for {pname!r}")
            types = {t.tensor_type for t in ts}
            if len(types) == 1 and types <= {Q.Q4_0, Q.Q8_0} and quantizable[pname]:
                parts = [_kept(t) for t in ts]
                codes = np.concatenate([c for _, c, _ in parts], axis=-2) if len(parts) > 1 else parts[0][1]
                scale = np.concatenate([s for _, _, s in parts], axis=-2) if len(parts) > 1 else parts[0][2]
                kept[pname] = (parts[0][0], codes.reshape(want), scale.reshape(*want[:-1], -1))
                kept_types[ts[0].tensor_type.name] = kept_types.get(ts[0].tensor_type.name, 0) + 1
                continue
            arrs = []
            for t in ts:
                if t.tensor_type in floats:
                    arrs.append(np.asarray(gguf.quants.dequantize(np.asarray(t.data), t.tensor_type), np.float32))
                else:
                    arrs.append(_dequantized(f, t))
                    dequantized.setdefault(t.tensor_type.name, []).append(t.name)
            w = np.concatenate(arrs, axis=-2) if len(arrs) > 1 else arrs[0]
            weights[pname] = np.array(w.reshape(want), dtype=np.float32)         # a copy: not a view of the file
    schemes = set()
    for n in g.nodes:
        for role, prm in list(n.params.items()):
            if prm.name in kept:
                dt, codes, scale = kept[prm.name]
                set_quantized(n, role, quantized_params(prm.name, prm.type.shape, dt, scale.shape))
                schemes.add(("q8g" if dt == "i8" else "q4g") + str(prm.type.shape[-1] // scale.shape[-1]))
    for pname, (dt, codes, scale) in kept.items():
        weights[pname], weights[pname + ".scale"] = np.ascontiguousarray(codes), np.ascontiguousarray(scale)
    if schemes:
        g.attrs = {**g.attrs, "quant": "+".join(sorted(schemes))}
    file_type = f.field("general.file_type", None)
    prov: dict[str, Any] = {"source": "gguf", "path": str(p.resolve()), "architecture": cfg["architecture"],
                            "config": cfg, "gguf": {"architecture": f.arch, "kept": kept_types,
                                                    "dequantized": dequantized,
                                                    "file_type": file_type}}
    m = Model(g, weights, prov)
    m.tokenizer = _tokenizer(f)
    chat = f.field("tokenizer.chat_template", None)
    if isinstance(chat, str) and chat:
        tokens = f.r.get_field("tokenizer.ggml.tokens")
        bos, eos = cfg.get("bos_token_id"), cfg.get("eos_token_id")
        m.provenance["chat"] = {"template": chat,
                                "bos_token": tokens.contents(bos) if tokens is not None and bos is not None else "",
                                "eos_token": tokens.contents(eos) if tokens is not None and eos is not None else ""}
    return m


def _joined_shape(shapes: list[tuple[int, ...]]) -> tuple[int, ...] | None:
    """The shape of tensors joined along their second-to-last axis (the MoE's gate and up experts)."""
    if len(shapes) == 1:
        return shapes[0]
    if any(len(s) != len(shapes[0]) or s[:-2] != shapes[0][:-2] or s[-1] != shapes[0][-1] for s in shapes):
        return None
    return (*shapes[0][:-2], sum(s[-2] for s in shapes), shapes[0][-1])


def _tokenizer(f: _File) -> str | None:
    """The GGUF's tokenizer as tokenizer.json text (transformers' GGUF conversion), or None without one."""
    if f.r.get_field("tokenizer.ggml.tokens") is None:
        return None
    try:
        from transformers.integrations.gguf.gguf_tokenizer_mapping import (convert_gguf_tokenizer,
                                                                           get_gguf_tokenizer)

        arch, tok, _ = get_gguf_tokenizer(str(f.path))
        backend, _ = convert_gguf_tokenizer(arch, tok)
        return backend.to_str()
    except Exception as e:                                # noqa: BLE001  an unsupported or malformed vocabulary
        raise GgufError(f"{f.path}: cannot build a tokenizer from the metadata ({type(e).__name__}: {e})") from None
