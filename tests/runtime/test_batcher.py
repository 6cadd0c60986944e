"""Continuous batching: requests that share decode steps get exactly what each gets alone; the queue is bounded;
cancelled and failing requests free their slots."""
from __future__ import annotations

import threading

import numpy as np
import pytest

from lfmc.runtime import Engine
from lfmc.runtime.batcher import Batcher, Overloaded, Request, generate_all
from lfmc.runtime.errors import EngineError


@pytest.fixture(scope="module")
def engine(served_artifact):
    return Engine(served_artifact)


def test_batched_equals_alone_greedy_and_sampled(engine):
    rng = np.random.default_rng(0)
    prompts = [rng.integers(0, 256, n).tolist() for n in (1, 3, 9, 17, 5, 12, 2, 30, 7, 4)]  # more than max_batch
    b = Batcher(engine)
    try:
        got = generate_all(b, prompts, 12)
        want = [engine.generate(p, 12).tokens for p in prompts]
        assert got == want
        assert b.stats["decode_rows"] > b.stats["steps"]              # steps really were shared
        # seeded sampling: each request keeps its own generator
        got = generate_all(b, prompts[:5], 10, temperature=0.9, top_k=20, seed=7)
        want = [engine.generate(p, 10, temperature=0.9, top_k=20, seed=7).tokens for p in prompts[:5]]
        assert got == want
    finally:
        b.close()


def test_queue_is_bounded_and_bad_requests_refused(engine):
    b = Batcher(engine, max_queue=2)
    done = threading.Semaphore(0)
    try:
        accepted, rejected = [], 0
        for i in range(12):
            try:
                accepted.append(b.submit(Request([i + 1], 300, lambda ev: ev[0] == "done" and done.release())))
            except Overloaded:
                rejected += 1
        assert rejected >= 12 - 2 - engine.max_batch and b.stats["rejected"] == rejected
        with pytest.raises(EngineError, match="exceeds the context"):
            b.submit(Request([1] * 500, 100, lambda ev: None))
        with pytest.raises(EngineError, match="outside"):
            b.submit(Request([999], 4, lambda ev: None))
        with pytest.raises(EngineError, match="empty"):
            b.submit(Request([], 4, lambda ev: None))
        for r in accepted:
            r.cancel()
        for _ in accepted:
            assert done.acquire(timeout=30)
        assert b.load()["active"] == 0 and b.load()["waiting"] == 0
        assert not engine._seqs                                        # every slot released
    finally:
        b.close()


def test_a_failing_request_does_not_stop_the_others(engine, monkeypatch):
    b = Batcher(engine)
    real = engine.prefill

    def flaky(seq, tokens):
        if tokens[0] == 13:
            raise RuntimeError("injected")
        return real(seq, tokens)

    monkeypatch.setattr(engine, "prefill", flaky)
    try:
        with pytest.raises(EngineError, match="injected"):
            generate_all(b, [[13, 1], [5, 6]], 4)
        assert generate_all(b, [[5, 6]], 4) == [engine.generate([5, 6], 4).tokens]
        assert b.stats["errors"] == 1 and not engine._seqs
    finally:
        b.close()


def test_auto_prefill_budget_follows_measured_costs(engine):
    """The default ("auto") chunk is sized from the measured decode step and prefill rate: 1.5x the decode time
    worth of prompt tokens, at least MIN_CHUNK and at most a prefill chunk; bad fixed budgets are refused."""
    from lfmc.runtime import batcher as B

    b = Batcher(engine)
    try:
        assert b.prefill_budget is None and b.step_budget() == B.MIN_CHUNK        # nothing measured yet
        b._decode_s, b._token_s = 0.040, 0.001                                   # 40 ms steps, 1 ms per token
        assert b.step_budget() == min(engine.prefill_chunk, int(B.PREFILL_SHARE * 40))
        b._decode_s = 0.001
        assert b.step_budget() == B.MIN_CHUNK
        b._decode_s = 10.0
        assert b.step_budget() == engine.prefill_chunk
        # a real run measures both: long prompts arriving beside running streams
        rng = np.random.default_rng(1)
        prompts = [rng.integers(0, 256, n).tolist() for n in (3, 4, 150, 120)]
        assert generate_all(b, prompts, 20) == [engine.generate(p, 20).tokens for p in prompts]
        assert b._decode_s > 0 and b._token_s > 0 and b.stats["mixed_steps"] > 0
    finally:
        b.close()
    fixed = Batcher(engine, prefill_budget=24)
    fixed.close()
    assert fixed.step_budget() == 24
    for bad in (0, -3, "lots", 2.5, True):
        with pytest.raises(EngineError, match="prefill_budget"):
            Batcher(engine, prefill_budget=bad)


def test_speculative_batches_accept_different_counts_and_equal_plain_greedy(engine, monkeypatch):
    """Speculation inside continuous batching: drafts are made right (an oracle proposing each request's plain
    greedy continuation, with one wrong token at a position that differs by request and call), so requests of
    one step accept different counts, verify in calls of their own and roll back in different places, while the
    others decode together; every output is still plain greedy's. Then a draft model (the same artifact: all
    accepted), ngram lookup with adaptive control, and requests whose sampling cannot speculate."""
    from lfmc.runtime import drafting
    from lfmc.runtime import engine as engine_mod

    rng = np.random.default_rng(11)
    prompts = [rng.integers(0, 256, n).tolist() for n in (3, 9, 17, 5, 12, 2, 8)]
    plain = {tuple(p): engine.generate(p, 24, stop=[]).tokens for p in prompts}
    calls = [0]

    def oracle(context, k, max_n=3):
        for p, out in plain.items():
            if tuple(context[:len(p)]) == p:
                d = list(out[len(context) - len(p):][:k])
                calls[0] += 1
                if len(d) > 1 and calls[0] % 3:
                    d[(calls[0] + len(p)) % len(d)] ^= 1
                return d
        raise AssertionError("a context of no prompt")

    counts: list[int] = []
    real = engine_mod.accept_drafts

    def recording(ps, draft, rng, qs=None):
        got = real(ps, draft, rng, qs)
        counts.append(len(got) - 1)
        return got

    monkeypatch.setattr(drafting, "ngram_draft", oracle)
    monkeypatch.setattr(engine_mod, "accept_drafts", recording)   # Engine.check_drafts
    b = Batcher(engine, speculate="ngram", draft_k=4, adaptive=False)
    try:
        assert generate_all(b, prompts, 24) == [plain[tuple(p)] for p in prompts]
        st = b.stats
        assert st["verify_calls"] == len(counts) > 10 and st["accepted"] == sum(counts) > 20
        assert len(set(counts)) >= 3                       # different requests, different counts accepted
        assert st["decode_rows"] > 0                       # the plain steps (each request's first) stayed batched
    finally:
        b.close()
    monkeypatch.undo()
    draft = Engine(engine.root)
    b = Batcher(engine, speculate=draft, draft_k=3, adaptive=False)
    try:
        assert generate_all(b, prompts, 24, stop_ids=frozenset()) == [plain[tuple(p)] for p in prompts]
        assert b.stats["accepted"] == b.stats["drafted"] > 0
        # a logit bias or a penalty changes the distribution token by token: those requests decode plainly
        got = generate_all(b, prompts[:2], 8, logit_bias={5: 100.0})
        assert got == [[5] * 8, [5] * 8]
    finally:
        b.close()
    for s in [draft.new_sequence() for _ in range(draft.max_batch)]:   # every draft sequence was released
        draft.release(s)
    b = Batcher(engine, speculate="ngram")                 # adaptive: random weights, drafting pauses itself
    try:
        assert generate_all(b, prompts, 24) == [plain[tuple(p)] for p in prompts]
    finally:
        b.close()
    with pytest.raises(EngineError, match="unknown speculation"):
        Batcher(engine, speculate="eagle")
