"""Drafters for speculative decoding: what proposes the tokens that the target model then verifies in one call
(:meth:`lfmc.runtime.engine.Engine.verify`).

- :class:`NgramDrafter`: prompt lookup, no model: the tokens that followed the latest earlier occurrence of the
  context's last 3, 2 or 1 tokens; its draft distribution is one-hot.
- :class:`ModelDrafter`: a smaller artifact (``--draft ART``) sharing the target's tokenizer: its own engine keeps
  one sequence in step with the target's tokens (rolled back over its rejected drafts, fed what it has not
  seen) and samples each draft token from its distribution under the request's temperature / top-k / top-p,
  which the target's speculative sampling needs (:func:`lfmc.runtime.sampling.accept_drafts`).

Both answer ``draft(context, k, sp, rng) -> (tokens, distributions or None)``; :func:`new_drafter` checks what a
``speculate`` argument names once and makes them. :class:`SpecControl` decides how many to ask for.
"""
from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Callable, Protocol

import numpy as np

from .errors import EngineError
from .sampling import probs

if TYPE_CHECKING:
    from .engine import Engine

Sampling = tuple[float, int, float]                  # temperature, top-k, top-p


class Drafter(Protocol):
    key: Any                                          # what a draft-length control is kept per (SpecControl)

    def draft(self, context: Sequence[int], k: int, sp: Sampling,
              rng: np.random.Generator) -> tuple[list[int], list[np.ndarray] | None]: ...

    def close(self) -> None: ...


def ngram_draft(context: Sequence[int], k: int, max_n: int = 3) -> list[int]:
    """Prompt-lookup drafting: the up to ``k`` tokens that followed the latest earlier occurrence of the
    context's last ``max_n`` (then fewer) tokens; [] when the context never repeated them. One vectorized pass
    per n-gram length (a server runs this for every speculating request each step, over contexts of thousands)."""
    L = len(context)
    if L < 2 or k < 1:
        return []
    a = np.asarray(context, dtype=np.int64)
    for n in range(min(max_n, L - 1), 0, -1):
        windows = np.lib.stride_tricks.sliding_window_view(a[:L - 1], n)     # starts 0 .. L - n - 1
        hits = np.flatnonzero((windows == a[L - n:]).all(axis=1))
        if hits.size:
            i = int(hits[-1]) + n
            return [int(t) for t in a[i:i + k]]
    return []


class NgramDrafter:
    """Drafts looked up in the context itself (:func:`ngram_draft`); one-hot draft distributions (None)."""

    key = "ngram"

    def draft(self, context: Sequence[int], k: int, sp: Sampling,
              rng: np.random.Generator) -> tuple[list[int], list[np.ndarray] | None]:
        return ngram_draft(context, k), None

    def close(self) -> None:
        pass


class SpecControl:
    """How many tokens to draft next, from what speculation measurably gains: tokens per verify call (drafts
    accepted + 1) per second of drafting + verifying, against plain decoding's seconds per token (a decode step's
    time, or in a batch the step's time per row: the aggregate rate the batch gives up). It drafts fewer when none
    is accepted and more when all are; when it loses to plain decoding it stops drafting for a while (8 steps,
    doubling each time) and then tries again. ``adaptive=False``: always ``k_max``."""

    def __init__(self, k_max: int, adaptive: bool = True):
        self.k_max, self.adaptive, self.k = k_max, adaptive, k_max
        self.t_decode = self.t_verify = 0.0
        self.gain, self.verifies, self.off, self.backoff = 1.0, 0, 0, 8

    def want(self) -> int:
        if not self.adaptive:
            return self.k_max
        if not self.t_decode:                       # a plain step first: what drafting has to beat
            return 0
        if self.off:
            self.off -= 1
            return 0
        return self.k

    def decoded(self, seconds: float) -> None:
        self.t_decode = seconds if not self.t_decode else 0.8 * self.t_decode + 0.2 * seconds

    def verified(self, seconds: float, drafted: int, accepted: int) -> None:
        self.t_verify = seconds if not self.t_verify else 0.7 * self.t_verify + 0.3 * seconds
        self.gain = 0.7 * self.gain + 0.3 * (accepted + 1) if self.verifies else accepted + 1.0
        self.verifies += 1
        self.k = min(self.k_max, self.k + 1) if accepted == drafted else max(1, self.k - 1) if not accepted else self.k
        if self.adaptive and self.verifies >= 3 and self.gain / self.t_verify < 1.0 / self.t_decode:
            self.off, self.backoff, self.verifies = self.backoff, min(2 * self.backoff, 256), 0


def tokenizer_identity(e: Engine) -> tuple:
    """What two artifacts must share for one to draft for the other: the vocabulary size, the tokenizer's kind
    and the digest of its file, and the special tokens."""
    spec = e.manifest.get("tokenizer") or {}
    path = e.root / "tokenizer.json"
    digest = hashlib.sha256(path.read_bytes()).hexdigest() if spec.get("kind") == "json" and path.is_file() else None
    return e.vocab_size, spec.get("kind"), digest, e.eos_token_id


def check_draft(target: Engine, draft: Engine) -> None:
    """Refuse a draft artifact that cannot draft for ``target``, saying what differs."""
    if not draft.state_ops:
        raise EngineError(f"the draft {draft.root} runs on the {draft.driver.name} driver, which cannot roll "
                          "a sequence back: it cannot draft")
    t, d = tokenizer_identity(target), tokenizer_identity(draft)
    what = ("vocabulary size", "tokenizer kind", "tokenizer.json (sha256)", "EOS token")
    for name, a, b in zip(what, t, d):
        if a != b:
            raise EngineError(f"the draft {draft.root} does not share the target's tokenizer: its {name} is {b}, "
                              f"the target's ({target.root}) is {a}")


class ModelDrafter:
    """Drafts sampled from a smaller model (another :class:`Engine`) with the target's tokenizer. Its sequence
    follows the target's context lazily: each :meth:`draft` rolls back the tokens the context no longer has (the
    rejected drafts it fed itself), feeds what it has not seen (one call) and then decodes ``k - 1`` more."""

    def __init__(self, draft: Engine, k_max: int):
        """``draft``: checked against the target by :func:`new_drafter`."""
        self.e, self.k_max, self.key = draft, k_max, id(draft)
        self.seq: int | None = None
        self.fed: list[int] = []

    def _sync(self, context: Sequence[int]) -> np.ndarray:
        """Bring the draft's sequence to ``context`` and return its logits after the last token."""
        ctx = [int(t) for t in context]
        common = 0
        for a, b in zip(self.fed, ctx):
            if a != b:
                break
            common += 1
        common = min(common, len(ctx) - 1)                # the last token is fed again: its logits are wanted
        if self.seq is not None and common < len(self.fed):
            try:
                self.e.rollback(self.seq, len(self.fed) - common)
            except EngineError:                           # further back than tracked: start over
                self.e.release(self.seq)
                self.seq = None
        if self.seq is None:
            self.seq, common = self.e.new_sequence(), 0
            self.e.track(self.seq, self.k_max + 1)
        rest = ctx[common:]
        self.fed = ctx
        return self.e.decode([self.seq], rest)[0] if len(rest) == 1 else self.e.prefill(self.seq, rest)

    def draft(self, context: Sequence[int], k: int, sp: Sampling,
              rng: np.random.Generator) -> tuple[list[int], list[np.ndarray] | None]:
        k = min(k, self.k_max, self.e.max_context - len(context))
        if k <= 0:
            return [], []
        logits = self._sync(context)
        toks: list[int] = []
        qs: list[np.ndarray] = []
        for i in range(k):
            q = probs(logits, *sp)
            d = int(np.argmax(q)) if q.max() >= 1.0 else int(rng.choice(q.size, p=q))
            toks.append(d)
            qs.append(q)
            if i < k - 1:
                logits = self.e.decode([self.seq], [d])[0]
                self.fed.append(d)
        return toks, qs

    def close(self) -> None:
        if self.seq is not None:
            self.e.release(self.seq)
            self.seq, self.fed = None, []


def new_drafter(target: Engine, speculate: str | Engine, k: int) -> Callable[[], Drafter]:
    """What makes the drafters ``speculate`` names for ``target`` ("ngram", or a draft :class:`Engine`), each
    drafting up to ``k`` tokens; checked here, once: the target can roll back, ``k`` fits a verify chunk (and the
    draft's), the draft shares the target's tokenizer."""
    from .engine import Engine

    target._need_state_ops("speculative decoding")
    if not 1 <= k < target.prefill_chunk:
        raise EngineError(f"draft_k must lie in [1, {target.prefill_chunk - 1}] (the prefill chunk less one)")
    if isinstance(speculate, Engine):
        check_draft(target, speculate)
        if not k < speculate.prefill_chunk:
            raise EngineError(f"draft_k must lie in [1, {speculate.prefill_chunk - 1}] for the draft {speculate.root}")
        return lambda: ModelDrafter(speculate, k)
    if speculate == "ngram":
        return NgramDrafter
    raise EngineError(f"unknown speculation {speculate!r} (known: 'ngram', or a draft Engine)")
