"""Prometheus metrics of one server: requests by outcome, latency, queue, images, engine stages.

Each app has its own registry, so that several apps in one process (tests) count apart.
"""

import time

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

# What became of an img2img request: ok, or the status it was refused with, or why it ended.
OUTCOMES = ("ok", "400", "401", "413", "415", "422", "429", "503", "timeout", "disconnected",
            "error")  # fmt: skip
SECONDS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600)
BATCH_SIZES = (1, 2, 3, 4, 6, 8, 12, 16)
STAGE_SECONDS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class Metrics:
    """The server's counters; `queue_depth` and `running` are read from `admission` when
    scraped."""

    def __init__(self, admission):
        self.registry = registry = CollectorRegistry()
        self.requests = Counter(
            "fastimg_requests", "img2img requests by outcome", ["outcome"], registry=registry
        )
        for outcome in OUTCOMES:
            self.requests.labels(outcome)
        self.latency = Histogram(
            "fastimg_request_seconds",
            "Seconds from arrival to response of img2img requests answered with images",
            buckets=SECONDS,
            registry=registry,
        )
        self.queue_wait = Histogram(
            "fastimg_queue_wait_seconds",
            "Seconds requests waited in the queue before running",
            buckets=SECONDS,
            registry=registry,
        )
        self.stage = Histogram(
            "fastimg_stage_seconds",
            "Seconds per engine call, by component (CPU backends only)",
            ["stage"],
            buckets=STAGE_SECONDS,
            registry=registry,
        )
        self.batch = Histogram(
            "fastimg_batch_requests",
            "Requests run together in one batch of engine calls",
            buckets=BATCH_SIZES,
            registry=registry,
        )
        self.images = Counter("fastimg_images", "Images returned", registry=registry)
        queue = Gauge("fastimg_queue_depth", "Requests waiting to run", registry=registry)
        queue.set_function(lambda: admission.waiting)
        running = Gauge("fastimg_running", "Requests running on the engines", registry=registry)
        running.set_function(lambda: admission.running)

    def count(self, outcome: str) -> None:
        """One more request answered with `outcome` (ok, a status code, timeout, ...)."""
        self.requests.labels(outcome).inc()

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def timed(self, component: str, session) -> "TimedSession":
        """`session` with each run observed under `component` (for Img2ImgPipeline's
        wrap_sessions)."""
        return TimedSession(session, self.stage.labels(component))


class TimedSession:
    """An engine session whose run() is observed in a histogram (host wall-clock seconds, so
    only meaningful where run() is synchronous: the CPU backends)."""

    def __init__(self, session, histogram):
        self._session, self._histogram = session, histogram

    def run(self, feeds):
        """The session's run, timed."""
        start = time.perf_counter()
        try:
            return self._session.run(feeds)
        finally:
            self._histogram.observe(time.perf_counter() - start)

    def __getattr__(self, name):
        return getattr(self._session, name)
