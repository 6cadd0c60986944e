"""``lfmc check``: the interpreter against transformers' own modeling code, prefill and decode.

Tolerance (float32): max |Δ logit| ≤ rtol · max(1, max |logit|) for every call, rtol = 1e-4.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from .ir.errors import LfmcError
from .ir.interp import Interpreter
from .ir.model import Model

RTOL = 1e-4


@dataclass
class CheckCase:
    prefill: int
    step: int                   # 0 = the prefill call, k = the k-th decode step
    max_abs_diff: float
    max_abs_logit: float

    @property
    def limit(self) -> float:
        return RTOL * max(1.0, self.max_abs_logit)

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= self.limit


@dataclass
class CheckResult:
    cases: list[CheckCase] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.cases) and all(c.ok for c in self.cases)

    @property
    def max_abs_diff(self) -> float:
        return max(c.max_abs_diff for c in self.cases)

    def worst(self) -> CheckCase:
        return max(self.cases, key=lambda c: c.max_abs_diff / c.limit)

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "rtol": RTOL, "max_abs_diff": self.max_abs_diff,
                "cases": [c.__dict__ | {"ok": c.ok} for c in self.cases]}


def compare(model: Model, prefill_lens: tuple[int, ...] = (1, 7, 64), decode_steps: int = 16, seed: int = 0,
            progress: Callable[[str], None] | None = None) -> CheckResult:
    """Interpreter vs transformers on random prompts: each prefill length, then ``decode_steps`` greedy steps."""
    from .frontend.reference import build_hf_model, reference_logits

    if model.weights is None:
        raise LfmcError("the model was imported config-only (no weights): import it with --random-weights "
                        "or from a checkpoint to check numerics")
    cfg = model.provenance.get("config")
    if not cfg:
        raise LfmcError("the model's provenance has no reference config: cannot rebuild the transformers model")
    ref = build_hf_model(cfg, model.weights)
    interp = Interpreter(model.graph, model.weights)
    vocab = int(cfg["vocab_size"])
    rng = np.random.default_rng(seed)
    res = CheckResult()
    for T in prefill_lens:
        prompt = rng.integers(0, vocab, T).tolist()
        st = interp.new_state()
        mine = [interp.run(prompt, st)]
        toks = []
        for _ in range(decode_steps):             # greedy on lfmc's logits; the reference is teacher-forced
            toks.append(int(np.argmax(mine[-1][-1])))
            mine.append(interp.run([toks[-1]], st))
        theirs = reference_logits(ref, prompt, toks)
        for i, (a, b) in enumerate(zip(mine, theirs)):
            res.cases.append(CheckCase(T, i, float(np.abs(a - b).max()), float(np.abs(b).max())))
        if progress:
            progress(f"prefill {T} + {decode_steps} decode steps: max |diff| "
                     f"{max(c.max_abs_diff for c in res.cases if c.prefill == T):.3g}")
    return res
