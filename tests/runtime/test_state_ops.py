"""Engine state operations (issue 29): a snapshot restored into another slot continues exactly as the sequence
it was taken from, at positions inside and at the end of a prefill chunk, for conv + attention (dense), MoE,
recurrence (hybrid) and sliding-window (LFM3) models, on the cpu and opencl drivers; a tracked sequence rolled
back by n tokens (across decode steps and into the middle of a chunk) and decoded again equals the straight run;
bad snapshots and rollbacks are refused by name; the wafer simulator, which keeps sequence state inside its
mesh, refuses them all by name."""
from __future__ import annotations

import numpy as np
import pytest

from lfmc.compile import compile_model
from lfmc.frontend import import_preset
from lfmc.runtime import Engine
from lfmc.runtime.errors import EngineError
from tests.helpers import has_opencl

CHUNK = 16
TOL = dict(rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="module")
def models(tiny_models, lfm3_models):
    hy = import_preset("lfm2-hybrid-tiny", weights=True, seed=2, std=0.25)
    return {"dense-a": tiny_models["dense-a"], "moe-b": tiny_models["moe-b"], "hybrid": hy,
            "lfm3-b": lfm3_models["lfm3-b"]}


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory, models):
    root = tmp_path_factory.mktemp("stateops")
    cache: dict = {}

    def get(name: str, device: str):
        if (name, device) not in cache:
            if device == "opencl" and not has_opencl():
                pytest.skip("no OpenCL device (apt install pocl-opencl-icd)")
            target = {"opencl": "snapdragon-8gen3", "wafer": "wafer-small"}.get(device, "host")
            cache[name, device] = compile_model(models[name], root / f"{name}-{device}", target=target, max_batch=2,
                                                max_context=96, prefill_chunk=CHUNK)
        return cache[name, device]
    return get


def vocab(e: Engine) -> int:
    return min(e.vocab_size, 256)


def run(e: Engine, seq: int, rest: list[int], steps: int = 4) -> list[np.ndarray]:
    """Feed ``rest`` then decode ``steps`` greedy tokens: the logits after each call."""
    out = [e.prefill(seq, rest)]
    for _ in range(steps):
        out.append(e.decode([seq], [int(np.argmax(out[-1]))])[0])
    return out


CASES = [("dense-a", "cpu"), ("moe-b", "cpu"), ("hybrid", "cpu"), ("lfm3-b", "cpu"),
         ("dense-a", "opencl"), ("moe-b", "opencl"), ("hybrid", "opencl")]
STATE_CASES = CASES


@pytest.mark.parametrize("name,device", STATE_CASES)
def test_snapshot_restored_continues_as_if_never_stopped(name, device, artifacts):
    e = Engine(artifacts(name, device))
    toks = np.random.default_rng(1).integers(0, vocab(e), 40).tolist()
    for p in (23, 2 * CHUNK):                       # inside a chunk, at a chunk's end
        a = e.new_sequence()
        e.prefill(a, toks[:p])
        snap = e.snapshot(a)
        assert snap.length == p and snap.nbytes > 0
        want = run(e, a, toks[p:])                   # a keeps going: its slot's state moves on
        e.release(a)
        other = e.new_sequence()                     # the freed slot is reused and overwritten
        e.prefill(other, toks[::-1][:30])
        b = e.restore(snap)
        assert e.length(b) == p
        got = run(e, b, toks[p:])
        for x, y in zip(got, want):
            np.testing.assert_allclose(x, y, **TOL)
        e.release(b)
        c = e.new_sequence()                         # never stopped: one prefill of everything
        straight = run(e, c, toks)
        np.testing.assert_allclose(got[-1], straight[-1], **TOL)
        e.release(c)
        e.release(other)


@pytest.mark.parametrize("name,device", STATE_CASES)
def test_rollback_then_redecode_equals_straight_run(name, device, artifacts):
    e = Engine(artifacts(name, device))
    rng = np.random.default_rng(2)
    prompt = rng.integers(0, vocab(e), 19).tolist()
    gen = rng.integers(0, vocab(e), 6).tolist()
    draft = rng.integers(0, vocab(e), 5).tolist()
    a = e.new_sequence()
    e.prefill(a, prompt)
    e.track(a, 12)
    for t in gen:
        e.decode([a], [t])
    e.prefill(a, draft)                             # a verify call: 5 drafted tokens in one chunk
    e.rollback(a, 3)                                # 2 of them accepted: back into the chunk's middle
    assert e.length(a) == len(prompt) + len(gen) + 2
    x = int(rng.integers(0, vocab(e)))
    got = e.decode([a], [x])[0]
    b = e.new_sequence()
    e.prefill(b, prompt)
    for t in gen:
        e.decode([b], [t])
    e.prefill(b, draft[:2])
    np.testing.assert_allclose(got, e.decode([b], [x])[0], **TOL)
    e.release(b)
    e.rollback(a, 1 + 2 + 3)                        # across the chunk and back over decode steps
    assert e.length(a) == len(prompt) + 3
    got = e.decode([a], [x])[0]
    c = e.new_sequence()
    e.prefill(c, prompt)
    for t in gen[:3]:
        e.decode([c], [t])
    np.testing.assert_allclose(got, e.decode([c], [x])[0], **TOL)
    with pytest.raises(EngineError, match="can go back"):
        e.rollback(a, 20)                            # deeper than tracked
    with pytest.raises(EngineError, match="not tracked"):
        e.rollback(c, 1)


@pytest.mark.parametrize("name,device", [("dense-a", "cpu"), ("hybrid", "cpu"), ("lfm3-b", "cpu"), ("hybrid", "opencl")])
def test_tokens_a_rollback_leaves_are_fed_with_the_next_call(name, device, artifacts):
    """A rollback into a chunk's middle feeds the accepted part again with the sequence's next call, whatever it
    is: a verify or prefill takes it in its chunk, a batched decode feeds it first, a snapshot or fork first;
    rolling back within those tokens touches no state. Each gives the straight run's logits."""
    e = Engine(artifacts(name, device))
    rng = np.random.default_rng(9)
    prompt = rng.integers(0, vocab(e), 21).tolist()
    chunk = rng.integers(0, vocab(e), 6).tolist()
    nxt = rng.integers(0, vocab(e), 3).tolist()
    ref = e.new_sequence()
    e.prefill(ref, prompt + chunk[:4])
    want = [e.decode([ref], [t])[0] for t in nxt]
    e.release(ref)

    def rolled() -> int:
        a = e.new_sequence()
        e.prefill(a, prompt)
        e.track(a, 8)
        e.verify(a, chunk)
        e.rollback(a, 1)                            # all but one accepted ...
        e.rollback(a, 1)                            # ... then one fewer: back within the pending tokens
        assert e.length(a) == len(prompt) + 4
        return a

    a = rolled()
    for x, w in zip(e.verify(a, nxt), want):         # the pending tokens in the verify's chunk
        np.testing.assert_allclose(x, w, **TOL)
    e.release(a)
    a, b = rolled(), e.new_sequence()
    e.prefill(b, prompt)
    got = e.decode([a, b], [nxt[0], nxt[0]])         # a batched decode feeds them first
    np.testing.assert_allclose(got[0], want[0], **TOL)
    e.release(b)
    e.release(a)
    a = rolled()
    snap = e.snapshot(a)                             # the state as the sequence's tokens say
    assert snap.length == len(prompt) + 4
    c = e.restore(snap)
    np.testing.assert_allclose(e.decode([c], [nxt[0]])[0], want[0], **TOL)


def test_bad_snapshots_and_depths_are_refused(artifacts):
    dense, moe = Engine(artifacts("dense-a", "cpu")), Engine(artifacts("moe-b", "cpu"))
    s = dense.new_sequence()
    dense.prefill(s, [1, 2, 3])
    snap = dense.snapshot(s)
    with pytest.raises(EngineError, match="another model"):
        moe.restore(snap)
    with pytest.raises(EngineError, match="at least 1"):
        dense.track(s, 0)
    short = Engine(artifacts("dense-a", "cpu"), max_context=2)
    with pytest.raises(EngineError, match="max context"):
        short.restore(snap)
    lfm3 = Engine(artifacts("lfm3-b", "cpu"))
    q = lfm3.new_sequence()
    with pytest.raises(EngineError, match="prefill chunk"):
        lfm3.track(q, CHUNK + 1)                    # the ring holds window - 1 + chunk keys
    # a KV snapshot grows with the tokens it holds; fixed-size state does not
    dense.prefill(s, list(range(4, 40)))
    assert dense.snapshot(s).nbytes > snap.nbytes


def test_wafer_refuses_state_operations(artifacts):
    e = Engine(artifacts("dense-a", "wafer"))
    assert not e.state_ops
    s = e.new_sequence()
    e.prefill(s, [1, 2, 3])
    for op in (lambda: e.snapshot(s), lambda: e.fork(s), lambda: e.track(s, 2), lambda: e.verify(s, [4])):
        with pytest.raises(EngineError, match="wafer driver"):
            op()
