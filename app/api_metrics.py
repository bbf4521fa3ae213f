"""Prometheus metrics of the API: requests, errors by kind, per-stage latency, TTFT, tokens, cache.

One registry per app (not the process-global one), so several apps in one process (tests) never
clash and `/metrics` shows exactly this API.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from chains import TurnResult

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class ApiMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "rag_api_requests", "HTTP requests by route, method and status", ["route", "method", "status"], registry=r
        )
        self.request_seconds = Histogram(
            "rag_api_request_seconds", "HTTP request latency (streams: until the last byte)", ["route"],
            buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.errors = Counter("rag_api_errors", "Errors by kind", ["kind"], registry=r)
        self.turns = Counter(
            "rag_turns", "Chat turns by outcome (answered, cached, retrieval_only, stopped)", ["outcome"], registry=r
        )
        self.stage_seconds = Histogram(
            "rag_turn_stage_seconds", "Time per stage of a turn", ["stage"], buckets=_LATENCY_BUCKETS, registry=r
        )
        self.ttft_seconds = Histogram(
            "rag_ttft_seconds", "Time to the first answer text, inside the agent", buckets=_LATENCY_BUCKETS, registry=r
        )
        self.tokens = Counter("rag_tokens", "Tokens the model server reported, by kind", ["kind"], registry=r)
        self.cache = Counter(
            "rag_cache_lookups", "Semantic cache lookups by result (hit, miss)", ["result"], registry=r
        )
        self.active_streams = Gauge("rag_active_streams", "Streamed answers in progress", registry=r)

    def turn(self, result: TurnResult) -> None:
        """Count a finished turn and its stages (a turn that looked in the cache spent time there)."""
        outcome = (
            "cached"
            if result.cached
            else "retrieval_only"
            if result.retrieval_only
            else "interrupted"
            if result.interrupted
            else "answered"
        )
        self.turns.labels(outcome).inc()
        t = result.timings
        if result.cached or t.cache_lookup_s > 0:
            self.cache.labels("hit" if result.cached else "miss").inc()
        for stage, seconds in (
            ("cache_lookup", t.cache_lookup_s),
            ("condense", t.condense_s),
            ("retrieval", t.retrieval_s),
            ("llm", t.llm_s),
            ("generation", t.generation_s),
            ("total", t.total_s),
        ):
            if seconds:
                self.stage_seconds.labels(stage).observe(seconds)
        if t.ttft_s is not None:
            self.ttft_seconds.observe(t.ttft_s)
        self.tokens.labels("prompt").inc(result.tokens.prompt_tokens)
        self.tokens.labels("completion").inc(result.tokens.completion_tokens)

    def render(self) -> bytes:
        return generate_latest(self.registry)
