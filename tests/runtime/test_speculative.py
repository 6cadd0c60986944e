"""Speculative decoding (issue 29, first part): ``Engine.verify`` returns the logits after every token of a chunk,
equal to decoding them one by one, on dense, MoE, hybrid and LFM3 models (cpu) and on opencl; greedy decoding
with n-gram drafts (verify + rollback) gives exactly the tokens of plain greedy decoding."""
from __future__ import annotations

import numpy as np
import pytest

from lfmc.runtime import Engine
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


@pytest.mark.parametrize("name", ["dense-a", "hybrid", "lfm3-b"])
def test_accepted_drafts_and_partial_rollbacks(name, artifacts, monkeypatch):  # noqa: F811
    """Random weights never repeat their input, so the drafts are made to be right: an oracle proposes the plain
    run's next tokens, one of them wrong every other call (accepted prefixes of 0-3 tokens, rollbacks into the
    verify chunk's middle); the output is still plain greedy's, and fewer calls made it."""
    e = Engine(artifacts(name, "cpu"))
    prompt = np.random.default_rng(5).integers(0, vocab(e), 17).tolist()
    plain = e.generate(prompt, 40, stop=[]).tokens
    calls = [0]

    def oracle(context, k, max_n=3):
        p = len(context) - len(prompt)
        d = list(plain[p:p + k])
        calls[0] += 1
        if calls[0] % 2 and len(d) > 1:
            d[calls[0] % len(d)] = (d[calls[0] % len(d)] + 1) % vocab(e)
        return d

    monkeypatch.setattr(Engine, "ngram_draft", staticmethod(oracle))
    assert e.generate(prompt, 40, stop=[], speculate="ngram", draft_k=4, adaptive=False).tokens == plain
    st = e.last_speculation
    assert st["accepted"] > 10 and st["verify_calls"] + st["decode_calls"] < len(plain) - 10


def test_speculative_sampling_matches_the_target_distribution():
    """accept_drafts on a 5-token vocabulary, 40,000 trials, fixed seed: the first token's distribution is the
    target's whether the draft is likely, unlikely or impossible, and the second token's (given the first draft
    accepted) is the target's next distribution; Pearson's chi-square, each at significance 0.001."""
    from lfmc.runtime.sampling import accept_drafts

    crit = {3: 16.266, 4: 18.467}                  # chi-square quantiles at 0.999 for 3 and 4 degrees of freedom

    def fits(counts: np.ndarray, p: np.ndarray) -> bool:
        want = p * counts.sum()
        return float(((counts - want) ** 2 / want).sum()) < crit[counts.size - 1]

    rng = np.random.default_rng(0)
    p0 = np.array([0.1, 0.4, 0.2, 0.25, 0.05])
    p1 = np.array([0.3, 0.0, 0.3, 0.2, 0.2])
    p2 = np.array([0.2, 0.2, 0.2, 0.2, 0.2])
    N = 40_000
    for d0 in (1, 4, 3):
        first, second = np.zeros(5), np.zeros(5)
        for _ in range(N):
            out = accept_drafts([p0, p1, p2], [d0, 1], rng)            # draft 1 is impossible under p1
            first[out[0]] += 1
            if out[0] == d0 and len(out) > 1:
                second[out[1]] += 1
        assert fits(first, p0)
        nz = p1 > 0
        assert second[~nz].sum() == 0 and fits(second[nz], p1[nz])
    greedy = [np.eye(5)[2], np.eye(5)[0]]
    assert accept_drafts(greedy, [2], rng) == [2, 0] and accept_drafts(greedy, [3], rng) == [2]


def test_draft_control_adapts_and_turns_itself_off():
    from lfmc.runtime.engine import _SpecControl

    c = _SpecControl(4)
    assert c.want() == 0                          # a plain step first
    c.decoded(0.010)
    assert c.want() == 4
    for _ in range(3):                            # nothing accepted, a verify costs 1.5 steps: it does not pay
        c.verified(0.015, c.want(), 0)
    assert c.k == 1 and [c.want() for _ in range(8)] == [0] * 8 and c.want() == 1   # paused 8 steps, then again
    c = _SpecControl(4)
    c.decoded(0.010)
    for _ in range(5):                            # all accepted: 5 tokens per 1.5 steps, it pays
        c.verified(0.015, c.want(), c.want())
    assert c.want() == 4 and c.off == 0
    assert _SpecControl(3, adaptive=False).want() == 3
