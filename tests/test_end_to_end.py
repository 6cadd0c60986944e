"""From an HF checkpoint directory with a tokenizer to generated text, through the CLI."""
from __future__ import annotations

import json

from lfmc.cli import main
from lfmc.frontend.reference import build_hf_model


def _tokenizer_json(vocab_size: int) -> str:
    """A small word-level tokenizer (the `tokenizers` library) whose ids stay inside the model's vocabulary."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = ["<unk>", "<s>", "</s>", "liquid", "models", "run", "on", "the", "edge", "fast", "and", "small"]
    vocab = {w: i for i, w in enumerate(words)} | {f"w{i}": i for i in range(len(words), vocab_size)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return tok.to_str()


def test_checkpoint_dir_to_text(tmp_path, tiny_models, capsys):
    m = tiny_models["dense-c"]
    ckpt = tmp_path / "ckpt"
    build_hf_model(m.provenance["config"], m.weights).save_pretrained(ckpt)
    (ckpt / "tokenizer.json").write_text(_tokenizer_json(m.provenance["config"]["vocab_size"]))
    art = tmp_path / "art"
    assert main(["compile", str(ckpt), "-o", str(art), "-q"]) == 0
    assert (art / "tokenizer.json").exists()
    capsys.readouterr()
    assert main(["run", str(art), "--prompt", "liquid models run on the edge", "--max-new-tokens", "6",
                 "--ignore-eos", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["prompt_tokens"] == 6 and len(r["tokens"]) == 6
    assert r["text"] and all(w in r["text"].split() or w.startswith("w") for w in r["text"].split())
    man = json.loads((art / "manifest.json").read_text())
    assert man["model"]["source"]["source"] == "hf" and man["tokenizer"] == {"kind": "json"}
