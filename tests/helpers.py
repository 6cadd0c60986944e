"""Checks shared by the tests: a compiled engine followed step by step against the interpreter, and greedy
generation with a PyTorch reference model."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from lfmc.check import RTOL


def interpreter_greedy(it, prompt: Sequence[int], n: int) -> list[int]:
    """``n`` greedy tokens of the IR interpreter ``it`` after ``prompt`` (prefill, then one token per call)."""
    st = it.new_state()
    lg = it.run(prompt, st)[-1]
    out: list[int] = []
    for _ in range(n):
        out.append(int(lg.argmax()))
        lg = it.run([out[-1]], st)[-1]
    return out


def assert_follows_interpreter(it, eng, prompt: Sequence[int], steps: int, rtol: float = RTOL,
                               where: tuple = ()) -> None:
    """Prefill ``prompt`` in both, then ``steps`` greedy decode steps (the interpreter's argmax fed to both):
    the engine's logits stay within ``rtol * max(1, |logit|)`` of the interpreter's at every step."""
    st, seq = it.new_state(), eng.new_sequence()
    prompt = np.asarray(prompt)
    ref, got = it.run(prompt, st)[-1], eng.prefill(seq, prompt.tolist())
    for step in range(steps):
        assert np.abs(got - ref).max() <= rtol * max(1.0, np.abs(ref).max()), (*where, step)
        tok = int(np.argmax(ref))
        ref, got = it.run([tok], st)[-1], eng.decode([seq], [tok])[0]
    eng.release(seq)


def torch_greedy(model, prompt: Sequence[int], n: int) -> list[int]:
    """``n`` greedy tokens of a PyTorch causal LM, each step re-running the whole sequence (no cache)."""
    import torch

    seq = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            seq.append(int(model(torch.tensor([seq])).logits[0, -1].argmax()))
    return seq[len(prompt):]


def has_opencl() -> bool:
    """Whether pyopencl sees an OpenCL device (PoCL on this machine kind)."""
    try:
        import pyopencl as cl

        return any(p.get_devices() for p in cl.get_platforms())
    except Exception:                               # noqa: BLE001
        return False
