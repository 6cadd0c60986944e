"""Prefix cache (issue 29): a request resumed from a cached prefix gives the same greedy tokens as one that
prefilled everything (hit = miss), resuming from a block boundary or from the end of an earlier request (a chat
turn) that ended off a boundary; the cache stays within its byte budget (least recently used leaves out); the
server reports ``usage.prompt_tokens_details.cached_tokens`` through the openai client."""
from __future__ import annotations

import numpy as np
import pytest

from lfmc.runtime import Engine
from lfmc.runtime.batcher import Batcher, generate_all
from lfmc.runtime.errors import EngineError
from lfmc.runtime.prefix_cache import PrefixCache


@pytest.fixture(scope="module")
def engine(served_artifact):
    return Engine(served_artifact)


def test_lookup_returns_the_exact_state_of_the_longest_resumable_prefix(engine):
    rng = np.random.default_rng(0)
    toks = rng.integers(0, 256, 150).tolist()
    pc = PrefixCache(engine, 1 << 26, block=32)
    s = engine.new_sequence()
    for end in (32, 64, 100):                       # two block boundaries, then a request's end off a boundary
        engine.prefill(s, toks[engine.length(s):end])
        pc.store(s, toks[:end])
    want = engine.snapshot(s)
    assert pc.lookup(toks[:5]) is None                              # shorter than any resume point
    assert pc.lookup(toks[:64]).length == 32                        # all but the last token: the block before
    assert pc.lookup(toks[:65]).length == 64
    assert pc.lookup(toks[:90] + [999]).length == 64                # diverges inside the leaf: the block end
    hit = pc.lookup(toks[:120])
    assert hit.length == 100
    for k, a in want.arrays.items():
        np.testing.assert_array_equal(hit.arrays[k], a)
    other = list(toks)
    other[40] = (other[40] + 1) % 256                               # diverges in block 2
    assert pc.lookup(other).length == 32
    # a restored hit continues exactly as the original sequence
    b = engine.restore(hit)
    np.testing.assert_array_equal(engine.prefill(b, toks[100:120]), engine.prefill(s, toks[100:120]))
    engine.release(b)
    engine.release(s)
    assert pc.info()["hits"] == 5
    q = engine.new_sequence()
    assert pc.store(q, []) == 0 and pc.store(q, toks[:3]) == 0     # nothing, or not what the sequence holds
    engine.release(q)
    with pytest.raises(EngineError):
        PrefixCache(engine, -1)


def test_hit_gives_the_same_tokens_as_a_miss(engine):
    """Turn 2 of a conversation = turn 1's prompt and answer + a new message: with the cache it resumes from turn
    1's end (a position off a block boundary) and generates what a cold batcher generates."""
    rng = np.random.default_rng(1)
    cold = Batcher(engine)
    warm = Batcher(engine, prefix_cache=PrefixCache(engine, 1 << 26))
    try:
        p1 = rng.integers(0, 256, 150).tolist()
        a1 = generate_all(warm, [p1], 20)[0]
        assert a1 == generate_all(cold, [p1], 20)[0]
        p2 = p1 + a1 + rng.integers(0, 256, 30).tolist()
        p3 = p1[:100] + rng.integers(0, 256, 40).tolist()            # shares 100 tokens: resumes at block 64
        got = generate_all(warm, [p2, p3], 16)
        assert got == generate_all(cold, [p2, p3], 16)
        info = warm.prefix_cache.info()
        assert info["hits"] >= 2 and info["hit_tokens"] >= 150 + 19 + 64
        assert warm.stats["prefill_tokens"] < cold.stats["prefill_tokens"]
    finally:
        cold.close()
        warm.close()


def test_budget_is_kept_by_evicting_least_recently_used(engine):
    rng = np.random.default_rng(2)
    pc = PrefixCache(engine, 1 << 30, block=16)
    seqs = []
    for i in range(4):
        q = engine.new_sequence()
        t = rng.integers(0, 256, 48).tolist()
        engine.prefill(q, t)
        pc.store(q, t)
        seqs.append((q, t))
    full = pc.nbytes
    assert pc.info()["nodes"] == 12
    pc.lookup(seqs[0][1] + [1])                                     # the first is now the most recently used
    pc.budget = full * 3 // 4
    pc._evict()
    assert pc.nbytes <= pc.budget and pc.stats["evicted"] > 0
    assert pc.lookup(seqs[0][1] + [1]).length == 48                 # kept: recently used
    assert pc.lookup(seqs[1][1] + [1]) is None or pc.lookup(seqs[1][1] + [1]).length < 48
    for q, _ in seqs:
        engine.release(q)


def test_server_reports_cached_tokens(served_artifact):
    openai = pytest.importorskip("openai")
    from .test_server import Server

    s = Server(served_artifact)
    try:
        c = openai.OpenAI(base_url=s.url + "/v1", api_key="-", max_retries=0, timeout=60)
        prompt = list(range(1, 130))
        r1 = c.completions.create(model="tiny", prompt=prompt, max_tokens=4, temperature=0)
        assert r1.usage.prompt_tokens_details.cached_tokens == 0
        r2 = c.completions.create(model="tiny", prompt=prompt + [7, 8, 9], max_tokens=4, temperature=0)
        assert r2.usage.prompt_tokens_details.cached_tokens >= 128
    finally:
        s.stop()


def test_engine_generate_uses_the_cache(engine):
    """Engine.generate(prefix_cache=...): the second turn resumes from the first turn's end; same tokens."""
    pc = PrefixCache(engine, 1 << 26)
    p1 = np.random.default_rng(4).integers(0, 256, 90).tolist()
    r1 = engine.generate(p1, 12, stop=[], prefix_cache=pc)
    assert r1.tokens == engine.generate(p1, 12, stop=[]).tokens and pc.info()["stored"] == 1
    p2 = p1 + r1.tokens + [5, 6, 7]
    r2 = engine.generate(p2, 12, stop=[], prefix_cache=pc)
    assert pc.stats["hit_tokens"] == len(p1) + len(r1.tokens) - 1
    assert r2.tokens == engine.generate(p2, 12, stop=[]).tokens
