"""Continuous batching over one Engine: requests join and leave the shared decode step between steps.

One worker thread owns the engine (engines are not thread-safe). Each step runs one batched decode for every
request that is generating, samples each one's next token with its own settings, then spends a prefill budget
(prompt tokens per step, the chunked prefill of vLLM and llama.cpp's server) on the requests still reading their
prompts, oldest first, so that a long prompt arriving does not stall the running streams for its whole prefill.
The default budget follows the measured costs: as many prompt tokens as take about ``PREFILL_SHARE`` times the
step's decode time at the prefill rate seen so far (at least ``MIN_CHUNK``), so that a step carrying prefill
takes about 2.5x a plain decode step however big the model, the batch or the CPU; a fixed number of tokens can
be set instead. A request's first token is sampled when its prompt is done. A request ends on a stop token,
the end of its grammar, its token limit, the context limit or cancellation (a client that went away); its slot
is released at once and the next waiting request takes it. The waiting queue is bounded: a full queue is
:class:`Overloaded`, which a server turns into HTTP 429 rather than piling up work it cannot finish.

Sampling per request: logit bias, presence / frequency / repetition penalties, a grammar's token mask
(:mod:`lfmc.runtime.structured`; the masks of a step's constrained requests computed in one batched call while
the engine decodes), then temperature / top-k / top-p; log-probabilities are of the model's own
distribution (log-softmax of the engine's logits). ``n`` > 1: sibling requests (``forks``) share the first
request's prefill through :meth:`Engine.fork`.

Speculative decoding (``speculate="ngram"`` or a draft Engine): a generating request with plain sampling (no
grammar, bias or penalties) may, instead of taking a row of the batched decode, verify its drafts in one call of
its own (:meth:`Engine.verify`) and emit every accepted token at once; requests of one step accept different
counts, and the rest decode together as usual. Each request's draft length adapts (``SpecControl``), weighing
its tokens per second of drafting + verifying against the batch's aggregate rate per decode step: with one or two
sequences it can pay, with a full batch (where a row costs a fraction of a step) it switches itself off.
"""
from __future__ import annotations

import collections
import copy
import itertools
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from .drafting import Drafter, SpecControl, new_drafter
from .engine import Engine
from .errors import EngineError
from .sampling import log_softmax, penalize, sample, token_logprob, top_logprobs

Event = tuple  # ("token", id, logprobs | None) | ("done", reason) | ("error", message)


class Overloaded(EngineError):
    """The waiting queue is full."""


@dataclass
class Request:
    """One generation: prompt ids, limits and sampling; events go to ``sink`` (called from the worker thread).
    ``logprobs``: None, or how many top alternatives to report with each token's log-probability.
    ``constraint``: a :class:`lfmc.runtime.structured.Constraint` masking every step. ``forks``: sibling requests
    with the same prompt (OpenAI's ``n``) that start from this one's prefill."""

    prompt: list[int]
    max_tokens: int
    sink: Callable[[Event], None]
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None
    stop_ids: frozenset[int] = frozenset()
    images: list = field(default_factory=list)        # preprocessed images of the prompt's image tokens
    logit_bias: dict[int, float] = field(default_factory=dict)
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logprobs: int | None = None
    constraint: Any = None
    forks: list["Request"] = field(default_factory=list)
    id: int = 0
    cancelled: threading.Event = field(default_factory=threading.Event)
    generated: int = 0
    seq: int | None = None
    last: int = -1
    rng: np.random.Generator | None = None
    submitted: float = 0.0
    prefilled: int = 0                  # prompt tokens read so far
    counts: dict[int, int] = field(default_factory=dict)
    output: list[int] = field(default_factory=list)   # the tokens generated so far
    cached: int = 0                     # prompt tokens restored from the prefix cache
    first_token_at: float = 0.0
    last_token_at: float = 0.0
    image_rows: Any = None
    drafter: Drafter | None = None      # speculative decoding: this request's drafter and draft-length control
    spec: SpecControl | None = None

    def cancel(self) -> None:
        """Ask the worker to end this request at its next step (safe from any thread)."""
        self.cancelled.set()


class Observer:
    """What a server's metrics want to hear from the worker (every method is called from the worker thread)."""

    def first_token(self, seconds: float) -> None: ...
    def next_token(self, seconds: float) -> None: ...
    def step(self, decode_rows: int, prefill_tokens: int, seconds: float) -> None: ...
    def finished(self, reason: str, prompt_tokens: int, generated: int) -> None: ...
    def speculated(self, drafted: int, accepted: int, emitted: int) -> None: ...


PREFILL_SHARE = 1.5     # "auto" budget: prefill time per step, as a multiple of the step's decode time
MIN_CHUNK = 16          # ... but at least this many prompt tokens per step, so that arrivals always progress


class Batcher:
    """Serve many :class:`Request` objects through ``engine`` with one worker thread."""

    def __init__(self, engine: Engine, max_queue: int = 64, prefill_budget: int | str | None = "auto",
                 observer: Observer | None = None, prefix_cache: Any = None,
                 speculate: str | Engine | None = None, draft_k: int = 4, adaptive: bool = True):
        """``prefill_budget``: prompt tokens prefilled per step while other requests generate: a number, or
        ``"auto"`` / None (the default: sized from the measured decode step and prefill rate, see the module
        docstring); with nothing generating, a prompt is read whole. ``prefix_cache``: a
        :class:`lfmc.runtime.prefix_cache.PrefixCache` of ``engine``: requests resume from the longest cached
        prefix of their prompt, and their states are stored at every block of the prompt and at their end.
        ``speculate``: "ngram" or a draft :class:`Engine` sharing ``engine``'s tokenizer (checked here), with up to
        ``draft_k`` tokens drafted per request and step (see the module docstring); ``adaptive=False``: always
        ``draft_k``, whether it pays or not."""
        self.engine = engine
        self.draft_k, self.adaptive = int(draft_k), adaptive
        self._new_drafter = new_drafter(engine, speculate, self.draft_k) if speculate is not None else None
        self._spec_prior: SpecControl | None = None     # the last finished request's control: where the next starts
        self.prefix_cache = prefix_cache
        self.max_queue = int(max_queue)
        if prefill_budget is None or prefill_budget == "auto":
            self.prefill_budget: int | None = None
        elif isinstance(prefill_budget, bool) or not isinstance(prefill_budget, int) or prefill_budget < 1:
            raise EngineError(f"prefill_budget must be a positive number of tokens or 'auto', not {prefill_budget!r}")
        else:
            self.prefill_budget = prefill_budget
        self._decode_s = 0.0            # running averages behind the "auto" budget: last decode steps' seconds,
        self._token_s = 0.0             # and seconds per prompt token in chunked prefill
        self.observer = observer or Observer()
        self.on_step_end: Callable[[], None] | None = None   # after every step (a server hands its events over)
        self._waiting: collections.deque[Request] = collections.deque()
        self._prefilling: list[Request] = []
        self._active: list[Request] = []
        self._cv = threading.Condition()
        self._stop = False
        self._ids = itertools.count(1)
        self.stats = {"steps": 0, "decode_rows": 0, "completed": 0, "cancelled": 0, "rejected": 0, "errors": 0,
                      "prefill_tokens": 0, "prefill_calls": 0, "mixed_steps": 0, "verify_calls": 0, "drafted": 0,
                      "accepted": 0}
        self._thread = threading.Thread(target=self._loop, name="lfmc-batcher", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ API (any thread)
    def submit(self, req: Request) -> Request:
        """Queue ``req``; raises :class:`Overloaded` when the queue is full, EngineError when it can never fit."""
        if not req.prompt:
            raise EngineError("the prompt is empty")
        if req.max_tokens < 1:
            raise EngineError("max_tokens must be at least 1")
        need = len(req.prompt) + req.max_tokens
        if need > self.engine.max_context:
            raise EngineError(f"prompt ({len(req.prompt)} tokens) + max_tokens ({req.max_tokens}) exceeds the "
                              f"context limit {self.engine.max_context}")
        if req.seed is not None and not (isinstance(req.seed, int) and req.seed >= 0):
            raise EngineError(f"seed must be a non-negative integer, not {req.seed!r}")
        bad = [t for t in req.prompt if not 0 <= int(t) < self.engine.vocab_size]
        if bad:
            raise EngineError(f"token id {bad[0]} is outside [0, {self.engine.vocab_size})")
        if 1 + len(req.forks) > self.engine.max_batch:
            raise EngineError(f"n = {1 + len(req.forks)} sequences exceed the server's {self.engine.max_batch} "
                              "slots")
        with self._cv:
            if self._stop:
                raise EngineError("the batcher is shut down")
            if len(self._waiting) >= self.max_queue:
                self.stats["rejected"] += 1
                raise Overloaded(f"{len(self._waiting)} requests are already waiting (limit {self.max_queue})")
            now = time.perf_counter()
            for r in [req, *req.forks]:
                r.id = next(self._ids)
                r.rng = np.random.default_rng(r.seed)
                r.submitted = now
            self._waiting.append(req)
            self._cv.notify()
        return req

    def load(self) -> dict[str, int]:
        with self._cv:
            return {"waiting": len(self._waiting), "active": len(self._active) + len(self._prefilling),
                    "prefilling": len(self._prefilling), "max_batch": self.engine.max_batch,
                    "max_queue": self.max_queue}

    def close(self, timeout: float = 10.0) -> None:
        """Stop the worker; requests still waiting or running end with an error event."""
        with self._cv:
            self._stop = True
            self._cv.notify()
        self._thread.join(timeout)

    # ------------------------------------------------------------------ worker
    def _finish(self, r: Request, reason: str) -> None:
        if r.seq is not None and self.prefix_cache is not None and reason != "error":
            # the state holds the prompt and every generated token but the last (sampled, not fed yet); not so
            # when a stop came among accepted drafts (the state holds drafts past it): nothing stored then
            fed = r.prompt[:r.prefilled] + (r.output[:-1] if r.prefilled == len(r.prompt) else [])
            try:
                if self.engine.length(r.seq) == len(fed):
                    self.prefix_cache.store(r.seq, fed)
            except Exception:                              # noqa: BLE001  a cache failure never fails a request
                pass
        if r.drafter is not None:
            r.drafter.close()
            r.drafter = None
        if r.spec is not None:
            self._spec_prior, r.spec = r.spec, None
        if r.seq is not None:
            try:
                self.engine.release(r.seq)
            except EngineError:
                pass
            r.seq = None
        for group in (self._active, self._prefilling):
            if r in group:
                group.remove(r)
        self.stats[{"cancelled": "cancelled", "error": "errors"}.get(reason, "completed")] += 1
        self.observer.finished(reason, len(r.prompt), r.generated)
        r.sink(("done", reason))

    def _fail(self, r: Request, e: Exception) -> None:
        r.sink(("error", f"{type(e).__name__}: {e}"))
        self._finish(r, "error")

    def _emit(self, r: Request, tok: int, info: Any) -> None:
        now = time.perf_counter()
        if r.generated == 0:
            r.first_token_at = now
            self.observer.first_token(now - r.submitted)
        else:
            self.observer.next_token(now - r.last_token_at)
        r.last_token_at = now
        r.generated += 1
        r.output.append(tok)
        r.last = tok
        r.counts[tok] = r.counts.get(tok, 0) + 1
        r.sink(("token", tok, info))
        # under a grammar the grammar decides the end (a stop id may be an ordinary byte inside a string)
        if (r.constraint.finished if r.constraint is not None else tok in r.stop_ids):
            self._finish(r, "stop")
        elif r.generated >= r.max_tokens or self.engine.length(r.seq) >= self.engine.max_context:
            self._finish(r, "length")

    def _choose(self, r: Request, logits: np.ndarray) -> tuple[int, Any]:
        """The next token of ``r`` from the model's ``logits`` [V] and, when asked, its log-probabilities."""
        x = logits
        if r.logit_bias:
            x = x.astype(np.float32, copy=True)
            ids = np.fromiter(r.logit_bias.keys(), np.int64)
            x[ids] += np.fromiter(r.logit_bias.values(), np.float32)
        x = penalize(x, r.counts, frozenset(r.prompt) if r.repetition_penalty != 1.0 else frozenset(),
                     r.presence_penalty, r.frequency_penalty, r.repetition_penalty)
        if r.constraint is not None:
            x = r.constraint.apply(x, r.max_tokens - r.generated)
        tok = sample(x, r.temperature, r.top_k, r.top_p, r.rng)
        if r.constraint is not None:
            r.constraint.consume(tok)
        return tok, self._info(r, logits, tok)

    @staticmethod
    def _info(r: Request, logits: np.ndarray, tok: int) -> Any:
        """What ``r`` asked to hear about ``tok`` besides its id: its log-probability and the top alternatives."""
        if r.logprobs:
            lp = log_softmax(logits)
            return float(lp[tok]), top_logprobs(lp, r.logprobs)
        if r.logprobs is not None:                      # the token's own only: no alternatives to rank
            return token_logprob(logits, tok), []
        return None

    def _next(self, r: Request, logits: np.ndarray) -> None:
        try:
            tok, info = self._choose(r, logits)
        except Exception as e:                             # noqa: BLE001  a grammar error ends this request only
            self._fail(r, e)
            return
        self._emit(r, tok, info)

    def _free_slots(self) -> int:
        return self.engine.max_batch - len(self._active) - len(self._prefilling) \
            - sum(len(r.forks) for r in self._prefilling)

    def _admit(self) -> None:
        """Move waiting requests to prefilling while slots are free (a request with forks takes one for each)."""
        while True:
            with self._cv:
                if not self._waiting or 1 + len(self._waiting[0].forks) > self._free_slots():
                    return
                r = self._waiting.popleft()
            if r.cancelled.is_set() and all(f.cancelled.is_set() for f in r.forks):
                for x in [r, *r.forks]:
                    self._finish(x, "cancelled")
                continue
            try:
                r.seq = self.engine.new_sequence()
                if self.prefix_cache is not None and not r.images:
                    snap = self.prefix_cache.lookup(r.prompt)
                    if snap is not None:
                        self.engine.restore(snap, r.seq)
                        r.prefilled = r.cached = snap.length
                        for f in r.forks:
                            f.cached = snap.length
                self._prefilling.append(r)
            except Exception as e:                         # noqa: BLE001  one bad request must not stop the rest
                for x in [r, *r.forks]:
                    self._fail(x, e)

    def _prefill(self, r: Request, budget: int | None) -> int:
        """Read up to ``budget`` more prompt tokens of ``r`` (all with None); tokens read. When the prompt is done,
        its forks take copies of its state and every one of them samples its first token."""
        e = self.engine
        if r.images and r.image_rows is None:           # a VL request: its images encoded before its first chunk
            r.image_rows = e.encode_images(r.images)
        take = len(r.prompt) - r.prefilled if budget is None else min(budget, len(r.prompt) - r.prefilled)
        pc = self.prefix_cache
        if pc is not None and not r.images:         # stop at the next block boundary: its state is cached there
            take = min(take, (r.prefilled // pc.block + 1) * pc.block - r.prefilled)
        chunk = r.prompt[r.prefilled:r.prefilled + take]
        rows = None
        if r.image_rows is not None:
            tok = e.plan["image"]["image_token"]
            k0 = sum(1 for t in r.prompt[:r.prefilled] if t == tok)
            rows = r.image_rows[k0:k0 + sum(1 for t in chunk if t == tok)]
        t0 = time.perf_counter()
        logits = e.prefill(r.seq, chunk) if rows is None or not len(rows) else e.prefill(r.seq, chunk, rows)
        per = (time.perf_counter() - t0) / max(take, 1)
        self._token_s = per if not self._token_s else 0.7 * self._token_s + 0.3 * per
        r.prefilled += take
        self.stats["prefill_tokens"] += take
        self.stats["prefill_calls"] += 1
        if pc is not None and not r.images and r.prefilled % pc.block == 0 and r.prefilled < len(r.prompt):
            try:
                pc.store(r.seq, r.prompt[:r.prefilled])
            except Exception:                              # noqa: BLE001  a cache failure never fails a request
                pass
        if r.prefilled == len(r.prompt):
            self._prefilling.remove(r)
            group = [r]
            for f in r.forks:                           # OpenAI's n: the prompt's state copied, not re-read
                if f.cancelled.is_set():
                    self._finish(f, "cancelled")
                    continue
                f.seq = e.fork(r.seq)
                f.prefilled = r.prefilled
                group.append(f)
            r.forks = []
            for x in group:
                self._active.append(x)
                self._start_speculation(x)
                self._next(x, logits)
        return take

    def _start_speculation(self, r: Request) -> None:
        """Give ``r`` a drafter if the batcher speculates and its sampling allows (a grammar, a logit bias and
        penalties change the distribution token by token, which the drafts' verification does not follow)."""
        if self._new_drafter is None or r.constraint is not None or r.logit_bias or r.images \
                or (r.presence_penalty, r.frequency_penalty, r.repetition_penalty) != (0.0, 0.0, 1.0):
            return
        self.engine.track(r.seq, self.draft_k + 1)
        r.drafter = self._new_drafter()
        r.spec = copy.copy(self._spec_prior) if self._spec_prior is not None else \
            SpecControl(self.draft_k, self.adaptive)

    def _speculate(self, r: Request) -> bool:
        """One speculative step of ``r``: drafts verified in one call, the accepted ones and the next token
        emitted, the rest rolled back. False when it drafted nothing (then ``r`` decodes with the batch)."""
        e, ctl = self.engine, r.spec
        want = min(ctl.want(), r.max_tokens - r.generated - 1, e.max_context - e.length(r.seq) - 2)
        if want < 1:
            return False
        sp = (r.temperature, r.top_k, r.top_p)
        t = time.perf_counter()
        context = r.prompt + r.output
        try:
            draft, qs = r.drafter.draft(context, want, sp, r.rng)
        except EngineError:                                # the draft engine is full: this request decodes plainly
            r.drafter.close()
            r.drafter = None
            return False
        if not draft:
            return False
        got, rows = e.check_drafts(r.seq, r.last, draft, sp, r.rng, qs)
        j = len(got) - 1
        ctl.verified(time.perf_counter() - t, len(draft), j)
        self.stats["verify_calls"] += 1
        self.stats["drafted"] += len(draft)
        self.stats["accepted"] += j
        emitted = 0
        for i, tok in enumerate(got):
            self._emit(r, tok, self._info(r, rows[i], tok))
            emitted += 1
            if r not in self._active:
                break
        self.observer.speculated(len(draft), j, emitted)
        return True

    def _speculate_safely(self, r: Request) -> bool:
        try:
            return self._speculate(r)
        except Exception as e:                             # noqa: BLE001  one request's failure ends it alone
            self._fail(r, e)
            return True

    @staticmethod
    def _start_masks(constraints: list) -> threading.Thread | None:
        """Compute the next-token masks of ``constraints`` in one batched call, in a thread (None: none to do).
        A failure is left for the request's own sampling to meet (it computes its mask alone and reports)."""
        if not constraints:
            return None
        from .structured import compute_masks

        def run() -> None:
            try:
                compute_masks(constraints)
            except Exception:                              # noqa: BLE001  reported by the request's sampling
                pass

        t = threading.Thread(target=run, name="lfmc-masks", daemon=True)
        t.start()
        return t

    def step_budget(self) -> int:
        """Prompt tokens to prefill in a step that also decodes: the fixed budget, or the "auto" one."""
        if self.prefill_budget is not None:
            return self.prefill_budget
        if not self._token_s:
            return MIN_CHUNK
        return max(MIN_CHUNK, min(self.engine.prefill_chunk, int(PREFILL_SHARE * self._decode_s / self._token_s)))

    def _step(self) -> None:
        t0 = time.perf_counter()
        for r in [r for r in self._active + self._prefilling if r.cancelled.is_set()]:
            if r.forks and not all(f.cancelled.is_set() for f in r.forks):
                continue                                # its siblings still want the prefill
            for f in r.forks:
                self._finish(f, "cancelled")
            self._finish(r, "cancelled")
        live = [r for r in self._active if r.drafter is None or not self._speculate_safely(r)]
        if live:
            t1 = time.perf_counter()
            # grammar masks of this step, batched, computed while the engine decodes
            masks = self._start_masks([r.constraint for r in live if r.constraint is not None])
            try:
                logits = self.engine.decode([r.seq for r in live], [r.last for r in live])
            except Exception as e:                         # noqa: BLE001
                for r in live:
                    self._fail(r, e)
                return
            finally:
                if masks is not None:
                    masks.join()
            dt = time.perf_counter() - t1
            self._decode_s = dt if not self._decode_s else 0.7 * self._decode_s + 0.3 * dt
            for r in self._active:                      # what a speculating request has to beat: a token per
                if r.spec is not None:                  # row of this step, the batch's aggregate rate
                    r.spec.decoded(dt / len(live))
            self.stats["steps"] += 1
            self.stats["decode_rows"] += len(live)
            for r, lg in zip(live, logits):
                if r in self._active:
                    self._next(r, lg)
        budget = self.step_budget() if live else None   # nothing generating: read a whole prompt at once
        spent = 0
        for r in list(self._prefilling):
            if budget is not None and spent >= budget:
                break
            try:
                spent += self._prefill(r, None if budget is None else budget - spent)
            except Exception as e:                         # noqa: BLE001
                for x in [r, *r.forks]:
                    self._fail(x, e)
            if budget is None:
                break
        if live and spent:
            self.stats["mixed_steps"] += 1
        if live or spent:
            self.observer.step(len(live), spent, time.perf_counter() - t0)

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._stop and not self._waiting and not self._active and not self._prefilling:
                    self._cv.wait()
                if self._stop:
                    pending = list(self._waiting) + list(self._active) + list(self._prefilling)
                    pending += [f for r in list(self._waiting) + list(self._prefilling) for f in r.forks]
                    self._waiting.clear()
                    break
            self._admit()
            self._step()
            self._step_end()
        for r in pending:
            if r.seq is not None:
                try:
                    self.engine.release(r.seq)
                except EngineError:
                    pass
            r.sink(("error", "the server is shutting down"))
        self._step_end()

    def _step_end(self) -> None:
        if self.on_step_end is not None:
            try:
                self.on_step_end()
            except Exception:                              # noqa: BLE001  a consumer's failure must not stop the worker
                pass


def generate_all(batcher: Batcher, prompts: Sequence[Sequence[int]], max_tokens: int, **sampling) -> list[list[int]]:
    """Run ``prompts`` through ``batcher`` concurrently and wait for all (for tests and benchmarks)."""
    done = threading.Semaphore(0)
    outs: list[list[int]] = [[] for _ in prompts]
    errors: list[str] = []

    def sink_for(i: int):
        def sink(ev: Event) -> None:
            if ev[0] == "token":
                outs[i].append(int(ev[1]))
            elif ev[0] == "error":
                errors.append(ev[1])
            if ev[0] == "done":
                done.release()
        return sink

    for i, p in enumerate(prompts):
        batcher.submit(Request(list(p), max_tokens, sink_for(i), **sampling))
    for _ in prompts:
        done.acquire()
    if errors:
        raise EngineError(f"{len(errors)} requests failed: {errors[0]}")
    return outs
