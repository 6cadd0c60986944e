"""`lfmc import model.gguf`: LFM2 / LFM2-MoE GGUFs written by the gguf package as llama.cpp's converter writes
them (tests/gguf_files.py). References: transformers' own GGUF loader (dense; it dequantizes Q8_0 / Q4_0 itself)
and transformers on the dequantized weights (MoE, which transformers' loader does not read); the kept blocks are
checked bit for bit against the gguf package's dequantization."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from lfmc.frontend.config import graph_from_config
from lfmc.frontend.gguf import GgufError, import_gguf
from lfmc.frontend.reference import build_hf_model, reference_logits
from lfmc.ir.errors import LfmcError
from lfmc.ir.interp import Interpreter
from lfmc.ir.model import Model, load_model, save_model
from lfmc.ir.quant import dequantize
from lfmc.ir.weights import random_weights
from tests.configs import ALL_CONFIGS, INIT_STD
from tests.gguf_files import byte_bpe_tokenizer, write_gguf

gguf = pytest.importorskip("gguf")

CORPUS = ["def add(a, b):\n    return a + b\n" * 8, "The quick brown fox jumps over the lazy dog. " * 8,
          "import os, sys\nprint(sys.argv)\n" * 8]
CHAT = "{{ bos_token }}{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
# widths that Q4_0 / Q8_0 blocks of 32 divide, and a vocabulary a byte-level BPE with merges fits in
CONFIGS = {"dense-a": {**ALL_CONFIGS["dense-a"], "vocab_size": 384},
           "moe-a": {**ALL_CONFIGS["moe-a"], "vocab_size": 384}}
PROMPTS = [[1], [1, 17, 300, 5, 99, 42, 7], list(range(1, 41))]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """(name, type) -> (GGUF path, the original model); plus the tokenizer."""
    d = tmp_path_factory.mktemp("gguf")
    tok = byte_bpe_tokenizer(384, CORPUS)
    out = {}
    for i, (name, cfg) in enumerate(CONFIGS.items()):
        g = graph_from_config(cfg, name)
        m = Model(g, random_weights(g, seed=500 + i, std=INIT_STD), {"source": "test", "config": cfg})
        for qt in ("F32", "F16", "BF16", "Q8_0", "Q4_0"):
            out[name, qt] = (write_gguf(m, d / f"{name}-{qt}.gguf", qt, tokenizer=tok, chat_template=CHAT), m)
    out["tokenizer"] = tok
    return out


def _tol(ref: np.ndarray) -> float:
    return 1e-4 * max(1.0, float(np.abs(ref).max()))


def _check_against(model_ref, im: Model, steps: int = 16) -> None:
    """Prefill logits of every prompt, then greedy decode steps, against a transformers model."""
    for prompt in PROMPTS:
        it = Interpreter(im.graph, im.weights)
        st = it.new_state()
        got = it.run(prompt, st)
        toks = []
        for _ in range(steps):
            toks.append(int(np.argmax(got[-1])))
            got = np.concatenate([got, it.run([toks[-1]], st)])
        ref = np.concatenate(reference_logits(model_ref, prompt, toks))
        assert np.abs(got - ref).max() <= _tol(ref), (prompt, np.abs(got - ref).max())
        assert [int(np.argmax(r)) for r in ref[len(prompt) - 1:-1]] == toks


@pytest.mark.parametrize("qt", ["F32", "Q8_0", "Q4_0", "BF16"])
def test_dense_equals_transformers_gguf_loader(files, qt):
    """transformers reads the same file with its own GGUF loader (and dequantizer): same logits, same tokens."""
    pytest.importorskip("accelerate")
    import torch
    import transformers

    path, _ = files["dense-a", qt]
    im = import_gguf(path)
    ref = transformers.Lfm2ForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                      dtype=torch.float32).eval()
    _check_against(ref, im)
    if qt in ("Q8_0", "Q4_0"):
        assert im.graph.attrs["quant"] == {"Q8_0": "q8g32", "Q4_0": "q4g32"}[qt]
        assert im.provenance["gguf"]["kept"][qt] == 35 and not im.provenance["gguf"]["dequantized"]


@pytest.mark.parametrize("qt", ["F32", "F16", "Q8_0", "Q4_0"])
def test_moe_equals_transformers_on_the_same_weights(files, qt):
    path, orig = files["moe-a", qt]
    im = import_gguf(path)
    w = {k: (dequantize(v, im.weights[k + ".scale"], None, im.graph.params()[k].type.dtype)
             if k + ".scale" in im.weights else v) for k, v in im.weights.items() if not k.endswith(".scale")}
    cfg = im.provenance["config"]
    for k in ("num_experts", "num_experts_per_tok", "num_dense_layers", "use_expert_bias", "norm_topk_prob",
              "routed_scaling_factor", "moe_intermediate_size", "layer_types", "conv_L_cache"):
        assert cfg[k] == CONFIGS["moe-a"][k], k
    if qt == "F32":
        for k, v in orig.weights.items():
            assert np.array_equal(w[k], v), k
    _check_against(build_hf_model(cfg, w), im, steps=8)


@pytest.mark.parametrize("name,qt", [("dense-a", "Q4_0"), ("dense-a", "Q8_0"), ("moe-a", "Q4_0")])
def test_kept_blocks_are_bit_exact(files, name, qt):
    """Every Q4_0 / Q8_0 tensor becomes lfmc codes + scales whose dequantization equals the gguf package's."""
    path, _ = files[name, qt]
    im = import_gguf(path)
    r = gguf.GGUFReader(str(path))
    by = {t.name: gguf.quants.dequantize(np.asarray(t.data), t.tensor_type) for t in r.tensors}
    checked = 0
    for k, p in im.graph.params().items():
        if k + ".scale" not in im.weights:
            continue
        ours = dequantize(im.weights[k], im.weights[k + ".scale"], None, p.type.dtype)
        assert p.type.dtype == {"Q4_0": "u4", "Q8_0": "i8"}[qt]
        if k.endswith("gate_up_proj"):
            b = k.split(".")[2]
            ref = np.concatenate([by[f"blk.{b}.ffn_gate_exps.weight"], by[f"blk.{b}.ffn_up_exps.weight"]], axis=1)
        elif k == "model.embed_tokens.weight":
            ref = by["token_embd.weight"]
        else:
            continue
        assert np.array_equal(ours, ref.reshape(ours.shape)), k
        checked += 1
    assert checked >= 1
    # and every kept tensor's scale is a float16 value (Q4_0 / Q8_0 store d in 16 bits)
    for k, v in im.weights.items():
        if k.endswith(".scale"):
            assert np.array_equal(v.astype(np.float16).astype(np.float32), v)


def test_tokenizer_and_chat_template(files):
    from tokenizers import Tokenizer

    path, _ = files["dense-a", "Q4_0"]
    im = import_gguf(path)
    ours = Tokenizer.from_str(im.tokenizer)
    orig = files["tokenizer"]
    for text in ["def add(a, b):\n    return a + b", "Hello, wörld! 123 456\t\n", "<|im_end|> fox", ""]:
        ids = ours.encode(text).ids
        assert ids == orig.encode(text).ids, text
        assert ours.decode(ids, skip_special_tokens=False) == text
    assert im.provenance["chat"] == {"template": CHAT, "bos_token": "<|startoftext|>", "eos_token": "<|im_end|>"}
    cfg = im.provenance["config"]
    assert (cfg["bos_token_id"], cfg["eos_token_id"], cfg["pad_token_id"]) == (1, 2, 0)


def test_saved_model_round_trip(files, tmp_path):
    path, _ = files["moe-a", "Q4_0"]
    im = import_gguf(path)
    back = load_model(save_model(im, tmp_path / "m.lfm"))
    assert back.graph.attrs == im.graph.attrs and back.tokenizer == im.tokenizer
    assert set(back.weights) == set(im.weights)
    for k, v in im.weights.items():
        assert back.weights[k].dtype == v.dtype and np.array_equal(back.weights[k], v), k


@pytest.mark.parametrize("qt", ["Q4_0", "Q8_0"])
def test_kept_blocks_compile_to_the_same_tokens(files, tmp_path, qt):
    """A Q4_0 / Q8_0 GGUF compiles for the host as it is (no --quant; q4g32 / q8g32 kernels): greedy tokens equal
    transformers' on the file, and the artifact holds the file's codes."""
    pytest.importorskip("accelerate")
    import torch
    import transformers

    from lfmc.compile import compile_model
    from lfmc.runtime import Engine

    path, _ = files["dense-a", qt]
    im = import_gguf(path)
    art = compile_model(im, tmp_path / "a.host", max_batch=1, max_context=128, prefill_chunk=16)
    import json

    man = json.loads((art / "manifest.json").read_text())
    assert ("int8" if qt == "Q8_0" else "uint8") in {v["dtype"] for v in man["plan"]["params"].values()}
    ref = transformers.Lfm2ForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                      dtype=torch.float32).eval()
    eng = Engine(art)
    for prompt in PROMPTS[1:]:
        got = eng.generate(prompt, max_new_tokens=12, stop=[]).tokens
        with torch.no_grad():
            want = ref.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False,
                                min_new_tokens=12)[0, len(prompt):].tolist()
        assert got == want, prompt


def _rewrite(path, tmp_path, edit) -> object:
    """A copy of ``path`` with ``edit(bytearray)`` applied."""
    raw = bytearray(path.read_bytes())
    edit(raw)
    out = tmp_path / "bad.gguf"
    out.write_bytes(bytes(raw))
    return out


def test_corrupt_files_are_clear_errors(files, tmp_path):
    path, orig = files["dense-a", "Q4_0"]
    raw = path.read_bytes()
    # truncated: header only, and the tensor data cut short
    for n in (10, len(raw) // 2, len(raw) - 7):
        bad = tmp_path / f"cut{n}.gguf"
        bad.write_bytes(raw[:n])
        with pytest.raises(GgufError, match=str(bad.name)):
            import_gguf(bad)
    # not a GGUF at all
    bad = tmp_path / "text.gguf"
    bad.write_text("hello")
    with pytest.raises(GgufError, match="not a readable GGUF"):
        import_gguf(bad)
    with pytest.raises(GgufError, match="no such GGUF file"):
        import_gguf(tmp_path / "missing.gguf")


def test_unknown_quant_type_names_it(files, tmp_path):
    path, _ = files["dense-a", "Q4_0"]
    r = gguf.GGUFReader(str(path))
    t = next(t for t in r.tensors if t.name == "blk.0.shortconv.in_proj.weight")
    type_off = t.field.offset + t.field.parts[0].nbytes + t.field.parts[1].nbytes + t.field.parts[2].nbytes \
        + t.field.parts[3].nbytes
    bad = _rewrite(path, tmp_path, lambda b: b.__setitem__(slice(type_off, type_off + 4),
                                                              (200).to_bytes(4, "little")))
    with pytest.raises(GgufError, match="200"):
        import_gguf(bad)


def test_wrong_architecture_and_shapes(files, tmp_path):
    cfg = CONFIGS["dense-a"]
    g = graph_from_config(cfg, "x")
    m = Model(g, random_weights(g, seed=1, std=INIT_STD), {"config": cfg})
    # an architecture lfmc does not read
    w = gguf.GGUFWriter(str(tmp_path / "llama.gguf"), "llama")
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.zeros((4, 32), np.float32))
    w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file(), w.close()
    with pytest.raises(GgufError, match="architecture 'llama'"):
        import_gguf(tmp_path / "llama.gguf")
    # metadata that disagrees with a tensor: hidden 64 in the tensors, 96 in the metadata
    wrong = Model(m.graph, m.weights, {"config": {**cfg, "hidden_size": 96}})
    with pytest.raises(GgufError, match=r"token_embd.weight.*\[384, 64\].*\[384, 96\]"):
        import_gguf(write_gguf(wrong, tmp_path / "wrong.gguf", "F32"))
    # a tensor missing
    part = Model(m.graph, {k: v for k, v in m.weights.items() if "layers.2.self_attn.k_proj" not in k},
                 {"config": cfg})
    with pytest.raises(GgufError, match=r"tensor 'blk.2.attn_k.weight' .*is missing"):
        import_gguf(write_gguf(part, tmp_path / "part.gguf", "F32"))


def test_k_quants_are_dequantized_and_noted(files, tmp_path):
    """A K-quant tensor (here Q6_K / Q4_K blocks of random codes with sane scales) is dequantized by the gguf package
    and noted; compiling with --quant quantizes it again."""
    cfg = {**ALL_CONFIGS["dense-a"], "vocab_size": 384, "hidden_size": 256, "intermediate_size": 512,
           "block_multiple_of": 256, "num_attention_heads": 4, "num_key_value_heads": 2}
    g = graph_from_config(cfg, "k")
    m = Model(g, random_weights(g, seed=3, std=INIT_STD), {"config": cfg})
    rng = np.random.default_rng(0)
    replace = {}
    for name, qt in (("blk.0.shortconv.in_proj.weight", gguf.GGMLQuantizationType.Q4_K),
                     ("blk.2.attn_v.weight", gguf.GGMLQuantizationType.Q6_K)):
        bs, ts = gguf.GGML_QUANT_SIZES[qt]
        rows, K = {"blk.0.shortconv.in_proj.weight": (3 * 256, 256), "blk.2.attn_v.weight": (2 * 64, 256)}[name]
        blk = rng.integers(0, 256, size=(rows, K // bs, ts), dtype=np.uint8)
        d = np.full((rows, K // bs, 1), 0.01, np.float16).view(np.uint8)
        if qt == gguf.GGMLQuantizationType.Q6_K:
            blk[..., -2:] = d                                               # d is the last field of block_q6_K
        else:
            blk[..., 0:2] = d                                               # d, dmin first in block_q4_K
            blk[..., 2:4] = d
        replace[name] = (blk.reshape(rows, -1), qt)
    write_gguf(m, tmp_path / "k6.gguf", "Q4_0", replace=replace)
    replaced = {k: gguf.quants.dequantize(v, qt) for k, (v, qt) in replace.items()}
    im = import_gguf(tmp_path / "k6.gguf")
    assert im.provenance["gguf"]["dequantized"] == {"Q4_K": ["blk.0.shortconv.in_proj.weight"],
                                                    "Q6_K": ["blk.2.attn_v.weight"]}
    assert np.array_equal(im.weights["model.layers.0.conv.in_proj.weight"],
                          replaced["blk.0.shortconv.in_proj.weight"])
    assert np.array_equal(im.weights["model.layers.2.self_attn.v_proj.weight"], replaced["blk.2.attn_v.weight"])
    assert im.graph.attrs["quant"] == "q4g32" and im.provenance["gguf"]["kept"]["Q4_0"] > 0
    # q / k kept as Q4_0 but v dequantized: one fused projection cannot mix them, and the error says what to do
    from lfmc.compile import lower_for_target

    with pytest.raises(LfmcError, match=r"share one quantization.*v_proj.weight: f32.*--quant"):
        lower_for_target(im)
    lower_for_target(im, quant="q4g32")                    # quantizes what was dequantized; the kept blocks stay


def test_cli_import_reports_what_was_kept(files, tmp_path):
    path, _ = files["dense-a", "Q4_0"]
    r = subprocess.run([sys.executable, "-m", "lfmc", "import", str(path), "-o", str(tmp_path / "m.lfm")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "35 Q4_0" in r.stdout and "q4g32" in r.stdout
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(path.read_bytes()[:1000])
    r = subprocess.run([sys.executable, "-m", "lfmc", "import", str(bad)], capture_output=True, text=True)
    assert r.returncode != 0 and "bad.gguf" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "bad.lfm").exists()


def test_huge_array_length_stops_at_the_end_of_the_file(files, tmp_path):
    """A corrupt array length (2^40 elements in a 100 KB file) is an error at once, not a loop that allocates for
    every element it claims (found by the atheris run: the gguf package's reader does not bound it)."""
    path, _ = files["dense-a", "Q4_0"]
    f = gguf.GGUFReader(str(path)).fields["lfm2.attention.head_count_kv"]
    at = f.offset + sum(int(p.nbytes) for p in f.parts[:4])            # key length, key, type, item type
    bad = _rewrite(path, tmp_path, lambda b: b.__setitem__(slice(at, at + 8), (2 ** 40).to_bytes(8, "little")))
    with pytest.raises(GgufError, match="runs past the end of the file"):
        import_gguf(bad)


def test_block_count_must_match_the_tensors(files, tmp_path):
    path, _ = files["dense-a", "Q4_0"]
    f = gguf.GGUFReader(str(path)).fields["lfm2.block_count"]
    at = f.offset + sum(int(p.nbytes) for p in f.parts[:3])            # key length, key, type
    bad = _rewrite(path, tmp_path, lambda b: b.__setitem__(slice(at, at + 4), (2 ** 31).to_bytes(4, "little")))
    with pytest.raises(GgufError, match="block_count"):
        import_gguf(bad)
