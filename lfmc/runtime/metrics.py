"""The server's Prometheus metrics (``GET /metrics``): queue length, running sequences, tokens, time to first
token and inter-token latency histograms, through the maintained ``prometheus_client`` (one registry per server,
so that two servers in one process do not share counters)."""
from __future__ import annotations

import time
from typing import Any

from .batcher import Observer

_LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)
_ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.5)


class Metrics(Observer):
    """Counters and histograms fed by the batcher's worker (:class:`lfmc.runtime.batcher.Observer`); gauges
    read from the batcher when scraped."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        r = self.registry = CollectorRegistry()
        self.queue = Gauge("lfmc_queue_length", "requests waiting for a sequence slot", registry=r)
        self.running = Gauge("lfmc_running_sequences", "sequences prefilling or generating", registry=r)
        self.rate = Gauge("lfmc_generation_tokens_per_second", "generated tokens/s over the last 10 s", registry=r)
        self.generated = Counter("lfmc_generation_tokens", "tokens generated", registry=r)
        self.prompt = Counter("lfmc_prompt_tokens", "prompt tokens of finished requests", registry=r)
        self.prefilled = Counter("lfmc_prefill_tokens", "prompt tokens prefilled (n > 1 choices share one)",
                                 registry=r)
        self.drafted = Counter("lfmc_speculative_drafted_tokens", "tokens drafted for verification", registry=r)
        self.accepted = Counter("lfmc_speculative_accepted_tokens", "drafted tokens the model accepted", registry=r)
        self.requests = Counter("lfmc_requests", "finished requests by reason", ["reason"], registry=r)
        self.steps = Counter("lfmc_steps", "engine steps by kind", ["kind"], registry=r)
        self.ttft = Histogram("lfmc_time_to_first_token_seconds", "submission to first token",
                              buckets=_LATENCY_BUCKETS, registry=r)
        self.itl = Histogram("lfmc_inter_token_latency_seconds", "time between a stream's tokens",
                             buckets=_ITL_BUCKETS, registry=r)
        self.step_time = Histogram("lfmc_step_seconds", "one engine step (decode and its prefill budget)",
                                   buckets=_ITL_BUCKETS, registry=r)
        self._batcher: Any = None
        self._recent: list[tuple[float, int]] = []

    def watch(self, batcher: Any) -> None:
        self._batcher = batcher

    # ---------------------------------------------------------------- Observer (worker thread)
    def first_token(self, seconds: float) -> None:
        self.ttft.observe(seconds)
        self.generated.inc()

    def next_token(self, seconds: float) -> None:
        self.itl.observe(seconds)

    def step(self, decode_rows: int, prefill_tokens: int, seconds: float) -> None:
        self.steps.labels("mixed" if decode_rows and prefill_tokens else
                          "decode" if decode_rows else "prefill").inc()
        self.step_time.observe(seconds)
        self.prefilled.inc(prefill_tokens)
        if decode_rows:
            self._count(decode_rows)

    def speculated(self, drafted: int, accepted: int, emitted: int) -> None:
        self.drafted.inc(drafted)
        self.accepted.inc(accepted)
        self._count(emitted)

    def _count(self, tokens: int) -> None:
        self.generated.inc(tokens)
        now = time.monotonic()
        self._recent.append((now, tokens))
        while self._recent and self._recent[0][0] < now - 10.0:
            self._recent.pop(0)

    def finished(self, reason: str, prompt_tokens: int, generated: int) -> None:
        self.requests.labels(reason).inc()
        self.prompt.inc(prompt_tokens)

    # ---------------------------------------------------------------- scrape
    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        if self._batcher is not None:
            load = self._batcher.load()
            self.queue.set(load["waiting"])
            self.running.set(load["active"])
        recent = list(self._recent)
        now = time.monotonic()
        span = now - recent[0][0] if recent else 0.0
        self.rate.set(sum(n for _, n in recent) / span if span > 0 else 0.0)
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
