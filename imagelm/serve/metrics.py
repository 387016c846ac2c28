"""Prometheus metrics of one server (`GET /metrics`, text format, via prometheus-client).

    imagelm_requests_total{route, status}       HTTP answers (refusals too; unknown paths as route="other")
    imagelm_request_seconds{route}              histogram: arrival to last byte
    imagelm_queue_wait_seconds                  histogram: accepted to admitted into engine rows
    imagelm_decode_seconds                      histogram: admitted to images ready (sampling + tokenizer decode)
    imagelm_queue_depth                         requests accepted and waiting for rows
    imagelm_requests_pending                    requests accepted and not answered (queued, sampling, decoding)
    imagelm_engine_rows_busy / imagelm_engine_rows   cache rows in use / in all
    imagelm_generated_tokens_total, imagelm_generated_images_total
    imagelm_tokens_per_second, imagelm_images_per_second   over the last 10 s (rate() of the totals works too)

Each app has its own registry, so several servers in one process (tests) never share counters.
"""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
THROUGHPUT_WINDOW_S = 10.0


class _Totals:
    """Counters the worker keeps (tokens and images made), read at scrape time."""

    def __init__(self, worker):
        self.worker = worker

    def collect(self):
        yield CounterMetricFamily("imagelm_generated_tokens", "Tokens sampled (per image, all images)",
                                  value=self.worker.tokens_total)
        yield CounterMetricFamily("imagelm_generated_images", "Images decoded and answered",
                                  value=self.worker.images_total)


class ServerMetrics:
    """The metrics of one app over its `worker` (EngineWorker) and `engine`; `routes` are the paths
    counted by name (anything else is route="other", so junk paths cannot grow the label set)."""

    def __init__(self, worker, engine, routes):
        self.registry = r = CollectorRegistry()
        self.routes = set(routes)
        self.requests = Counter("imagelm_requests", "HTTP requests answered, by route and status",
                                ["route", "status"], registry=r)
        self.latency = Histogram("imagelm_request_seconds", "Time from a request's arrival to its last byte",
                                 ["route"], buckets=LATENCY_BUCKETS, registry=r)
        self.queue_wait = Histogram("imagelm_queue_wait_seconds", "Time from acceptance to admission into engine rows",
                                    buckets=LATENCY_BUCKETS, registry=r)
        self.decode = Histogram("imagelm_decode_seconds", "Time from admission to images ready (sampling and "
                                "tokenizer decode)", buckets=LATENCY_BUCKETS, registry=r)
        Gauge("imagelm_queue_depth", "Requests accepted and waiting for engine rows",
              registry=r).set_function(lambda: worker.queued)
        Gauge("imagelm_requests_pending", "Requests accepted and not yet answered",
              registry=r).set_function(lambda: worker.pending)
        Gauge("imagelm_engine_rows_busy", "Engine cache rows in use", registry=r).set_function(lambda: engine.rows_in_use)
        Gauge("imagelm_engine_rows", "Engine cache rows in all", registry=r).set(engine.rows)
        Gauge("imagelm_tokens_per_second", f"Tokens sampled per second over the last {THROUGHPUT_WINDOW_S:g} s",
              registry=r).set_function(lambda: worker.throughput(THROUGHPUT_WINDOW_S)[0])
        Gauge("imagelm_images_per_second", f"Images made per second over the last {THROUGHPUT_WINDOW_S:g} s",
              registry=r).set_function(lambda: worker.throughput(THROUGHPUT_WINDOW_S)[1])
        r.register(_Totals(worker))

    def observe_request(self, route: str, status: int, seconds: float) -> None:
        route = route if route in self.routes else "other"
        self.requests.labels(route, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def observe_job(self, job) -> None:
        """A job's queue wait and decode time, once it is answered (those it reached)."""
        if job.admitted is not None:
            self.queue_wait.observe(job.admitted - job.submitted)
            if job.finished is not None:
                self.decode.observe(job.finished - job.admitted)

    def render(self) -> bytes:
        return generate_latest(self.registry)
