"""Prometheus metrics of one server (its own registry, so several apps can live in one process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class ServerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("mixmerge_requests", "Requests by endpoint, route and status",
                                ["endpoint", "deployment", "adapter", "status"], registry=r)
        self.errors = Counter("mixmerge_errors", "Errors by type", ["type"], registry=r)
        self.latency = Histogram("mixmerge_request_latency_seconds", "End-to-end latency",
                                 ["endpoint", "deployment", "adapter"], buckets=LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram("mixmerge_time_to_first_token_seconds", "Time to first streamed token",
                              ["deployment", "adapter"], buckets=LATENCY_BUCKETS, registry=r)
        self.tokens = Counter("mixmerge_tokens", "Tokens by kind", ["kind", "deployment", "adapter"], registry=r)
        self.queue_depth = Gauge("mixmerge_queue_depth", "Requests waiting per engine", ["engine"], registry=r)
        self.adapter_loads = Counter("mixmerge_adapter_loads", "Adapter loads and unloads", ["action"], registry=r)
        self.fallbacks = Counter("mixmerge_fallbacks", "Fallback steps taken", ["from_deployment", "to_deployment"],
                                 registry=r)
        self.routes = Counter("mixmerge_routes", "Routing decisions", ["deployment", "task", "adapter"], registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
