"""Speculative decoding (issue 29): ``Engine.verify`` returns the logits after every token of a chunk, equal to
decoding them one by one, on dense, MoE, hybrid and LFM3 models (cpu) and on opencl; greedy decoding with n-gram
drafts or a draft model's (verify + rollback) gives exactly the tokens of plain greedy decoding; speculative
sampling keeps the target's distribution."""
from __future__ import annotations

import numpy as np
import pytest

from lfmc.runtime import Engine, drafting
from lfmc.runtime.errors import EngineError

from .test_state_ops import CASES, TOL, artifacts, models, vocab  # noqa: F401  (fixtures)


@pytest.mark.parametrize("name,device", CASES)
def test_verify_equals_decoding_one_by_one(name, device, artifacts):  # noqa: F811
    e = Engine(artifacts(name, device))
    rng = np.random.default_rng(3)
    prompt = rng.integers(0, vocab(e), 21).tolist()
    chunk = rng.integers(0, vocab(e), 6).tolist()
    a, b = e.new_sequence(), e.new_sequence()
    e.prefill(a, prompt)
    got = e.verify(a, chunk)
    assert got.shape == (len(chunk), e.vocab_size) and e.length(a) == len(prompt) + len(chunk)
    e.prefill(b, prompt)
    want = [e.decode([b], [t])[0] for t in chunk]
    for x, y in zip(got, want):
        np.testing.assert_allclose(x, y, **TOL)
    with pytest.raises(EngineError, match="verify takes"):
        e.verify(a, [])


def test_ngram_draft():
    assert Engine.ngram_draft([1, 2, 3, 4, 1, 2, 3], 3) == [4, 1, 2]
    assert Engine.ngram_draft([5, 6, 7], 2) == []
    assert Engine.ngram_draft([9, 1, 9], 4) == [1, 9]                # a 1-gram match, to the end

    def plain(context, k, max_n=3):                                   # the definition, position by position
        for n in range(min(max_n, len(context) - 1), 0, -1):
            for i in range(len(context) - n - 1, -1, -1):
                if context[i:i + n] == context[len(context) - n:]:
                    return context[i + n:i + n + k]
        return []

    rng = np.random.default_rng(8)
    for _ in range(2000):                                           # the vectorized search agrees with it
        c = rng.integers(0, 4, int(rng.integers(0, 30))).tolist()
        k = int(rng.integers(1, 6))
        assert Engine.ngram_draft(c, k) == plain(c, k), (c, k)


@pytest.mark.parametrize("name", ["dense-a", "moe-b", "hybrid", "lfm3-b"])
def test_speculative_greedy_equals_plain_greedy(name, artifacts):  # noqa: F811
    e = Engine(artifacts(name, "cpu"))
    rng = np.random.default_rng(4)
    part = rng.integers(0, vocab(e), 12).tolist()
    prompt = part + rng.integers(0, vocab(e), 5).tolist() + part[:8]  # an input-copying prompt
    plain = e.generate(prompt, 48, stop=[]).tokens
    spec = e.generate(prompt, 48, stop=[], speculate="ngram", draft_k=4, adaptive=False)
    assert spec.tokens == plain
    st = e.last_speculation
    assert st["verify_calls"] > 0 and st["drafted"] >= st["accepted"] >= 0
    assert st["verify_calls"] + st["decode_calls"] + 1 + st["accepted"] >= len(plain)   # every token accounted
    # adaptive (the default): random weights accept nothing, so drafting pauses and plain decoding takes over
    assert e.generate(prompt, 64, stop=[], speculate="ngram").tokens == e.generate(prompt, 64, stop=[]).tokens
    st = e.last_speculation
    if st["accepted"] == 0:
        assert st["decode_calls"] > 2 * st["verify_calls"]
    sampled = e.generate(prompt, 24, stop=[], temperature=0.8, top_k=20, seed=1, speculate="ngram")
    assert len(sampled.tokens) == 24 and all(0 <= t < e.vocab_size for t in sampled.tokens)
    with pytest.raises(EngineError, match="unknown speculation"):
        e.generate(prompt, 4, speculate="draft-model")


@pytest.mark.parametrize("name,draft", [("dense-a", "dense-a"), ("dense-a", "hybrid"), ("lfm3-b", "dense-a")])
def test_draft_model_greedy_equals_plain_greedy(name, draft, artifacts):  # noqa: F811
    """A draft artifact (another engine) proposes; greedy output is plain greedy's whatever it proposes. The
    target drafting for itself has every draft accepted; another model's drafts are mostly rejected (random
    weights) and rolled back in both engines."""
    e, d = Engine(artifacts(name, "cpu")), Engine(artifacts(draft, "cpu"))
    prompt = np.random.default_rng(6).integers(0, vocab(e), 19).tolist()
    plain = e.generate(prompt, 40, stop=[]).tokens
    for k in (1, 3, 5):
        assert e.generate(prompt, 40, stop=[], speculate=d, draft_k=k, adaptive=False).tokens == plain
        st = e.last_speculation
        assert st["verify_calls"] > 0 and st["draft_s"] > 0
        assert st["verify_calls"] + st["decode_calls"] + 1 + st["accepted"] == len(plain)
        if name == draft:
            assert st["accepted"] == st["drafted"]
    for s in [d.new_sequence() for _ in range(d.max_batch)]:     # the draft let go of its sequences
        d.release(s)
    kw = dict(stop=[], temperature=0.9, top_p=0.9, seed=2, speculate=d, draft_k=3, adaptive=False)
    sampled, again = e.generate(prompt, 24, **kw), e.generate(prompt, 24, **kw)
    assert sampled.tokens == again.tokens and len(sampled.tokens) == 24          # seeded, fixed k: reproducible


def test_a_draft_with_another_tokenizer_is_refused(artifacts, tmp_path):  # noqa: F811
    import json
    import shutil

    dense = Engine(artifacts("dense-a", "cpu"))
    other = tmp_path / "other-eos"
    shutil.copytree(artifacts("dense-a", "cpu"), other)
    m = json.loads((other / "manifest.json").read_text())
    m["model"]["eos_token_id"] = 7
    (other / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(EngineError, match=r"does not share the target's tokenizer: its EOS token is 7, the "
                                          rf"target's \(.*\) is {dense.eos_token_id}"):
        dense.generate([1, 2, 3], 4, speculate=Engine(other))
    with pytest.raises(EngineError, match="draft_k must lie in"):
        dense.generate([1, 2, 3], 4, speculate=dense, draft_k=0)
