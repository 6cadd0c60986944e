"""Continuous batching over one Engine: requests join and leave the shared decode step between steps.

One worker thread owns the engine (engines are not thread-safe). Each step it admits waiting requests while slots
are free (a prefill each; its first token is sampled at once), then runs one batched decode for every live
request and samples each one's next token with its own settings. A request ends on a stop token, its token
limit, the context limit or cancellation (a client that went away); its slot is released at once and the next
waiting request takes it. The waiting queue is bounded: a full queue is :class:`Overloaded`, which a server
turns into HTTP 429 rather than piling up work it cannot finish.
"""
from __future__ import annotations

import collections
import itertools
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from .engine import Engine
from .errors import EngineError
from .sampling import sample

Event = tuple  # ("token", id) | ("done", reason) | ("error", message)


class Overloaded(EngineError):
    """The waiting queue is full."""


@dataclass
class Request:
    """One generation: prompt ids, limits and sampling; events go to ``sink`` (called from the worker thread)."""

    prompt: list[int]
    max_tokens: int
    sink: Callable[[Event], None]
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None
    stop_ids: frozenset[int] = frozenset()
    images: list = field(default_factory=list)        # preprocessed images of the prompt's image tokens
    id: int = 0
    cancelled: threading.Event = field(default_factory=threading.Event)
    generated: int = 0
    seq: int | None = None
    last: int = -1
    rng: np.random.Generator | None = None
    submitted: float = 0.0

    def cancel(self) -> None:
        """Ask the worker to end this request at its next step (safe from any thread)."""
        self.cancelled.set()


class Batcher:
    """Serve many :class:`Request` objects through ``engine`` with one worker thread."""

    def __init__(self, engine: Engine, max_queue: int = 64):
        self.engine = engine
        self.max_queue = int(max_queue)
        self._waiting: collections.deque[Request] = collections.deque()
        self._active: list[Request] = []
        self._cv = threading.Condition()
        self._stop = False
        self._ids = itertools.count(1)
        self.stats = {"steps": 0, "decode_rows": 0, "completed": 0, "cancelled": 0, "rejected": 0, "errors": 0}
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
        with self._cv:
            if self._stop:
                raise EngineError("the batcher is shut down")
            if len(self._waiting) >= self.max_queue:
                self.stats["rejected"] += 1
                raise Overloaded(f"{len(self._waiting)} requests are already waiting (limit {self.max_queue})")
            req.id = next(self._ids)
            req.rng = np.random.default_rng(req.seed)
            req.submitted = time.perf_counter()
            self._waiting.append(req)
            self._cv.notify()
        return req

    def load(self) -> dict[str, int]:
        with self._cv:
            return {"waiting": len(self._waiting), "active": len(self._active), "max_batch": self.engine.max_batch,
                    "max_queue": self.max_queue}

    def close(self, timeout: float = 10.0) -> None:
        """Stop the worker; requests still waiting or running end with an error event."""
        with self._cv:
            self._stop = True
            self._cv.notify()
        self._thread.join(timeout)

    # ------------------------------------------------------------------ worker
    def _finish(self, r: Request, reason: str) -> None:
        if r.seq is not None:
            try:
                self.engine.release(r.seq)
            except EngineError:
                pass
            r.seq = None
        if r in self._active:
            self._active.remove(r)
        self.stats[{"cancelled": "cancelled", "error": "errors"}.get(reason, "completed")] += 1
        r.sink(("done", reason))

    def _fail(self, r: Request, e: Exception) -> None:
        r.sink(("error", f"{type(e).__name__}: {e}"))
        self._finish(r, "error")

    def _emit(self, r: Request, tok: int) -> None:
        r.generated += 1
        r.last = tok
        r.sink(("token", tok))
        if tok in r.stop_ids:
            self._finish(r, "stop")
        elif r.generated >= r.max_tokens or self.engine.length(r.seq) >= self.engine.max_context:
            self._finish(r, "length")

    def _sample(self, r: Request, logits: np.ndarray) -> int:
        return sample(logits, r.temperature, r.top_k, r.top_p, r.rng)

    def _admit(self) -> None:
        while self._waiting and len(self._active) < self.engine.max_batch:
            with self._cv:
                if not self._waiting:
                    return
                r = self._waiting.popleft()
            if r.cancelled.is_set():
                self._finish(r, "cancelled")
                continue
            try:
                r.seq = self.engine.new_sequence()
                self._active.append(r)
                if r.images:            # a VL request: encode its images, prefill with their embeddings
                    logits = self.engine.prefill(r.seq, r.prompt, self.engine.encode_images(r.images))
                else:
                    logits = self.engine.prefill(r.seq, r.prompt)
            except Exception as e:                         # noqa: BLE001  one bad request must not stop the rest
                self._fail(r, e)
                continue
            self._emit(r, self._sample(r, logits))

    def _step(self) -> None:
        for r in [r for r in self._active if r.cancelled.is_set()]:
            self._finish(r, "cancelled")
        live = list(self._active)
        if not live:
            return
        try:
            logits = self.engine.decode([r.seq for r in live], [r.last for r in live])
        except Exception as e:                             # noqa: BLE001
            for r in live:
                self._fail(r, e)
            return
        self.stats["steps"] += 1
        self.stats["decode_rows"] += len(live)
        for r, lg in zip(live, logits):
            if r in self._active:
                self._emit(r, self._sample(r, lg))

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._stop and not self._waiting and not self._active:
                    self._cv.wait()
                if self._stop:
                    pending = list(self._waiting) + list(self._active)
                    self._waiting.clear()
                    break
            self._admit()
            self._step()
        for r in pending:
            if r.seq is not None:
                try:
                    self.engine.release(r.seq)
                except EngineError:
                    pass
            r.sink(("error", "the server is shutting down"))


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
