"""Prometheus metrics, under TEI's ``te_*`` names where TEI has the same figure.

Each app has its own registry, so several servers (tests) can live in one process. When the server runs
several processes (``--workers N``), ``PROMETHEUS_MULTIPROC_DIR`` is set for all of them: prometheus_client
then keeps every value in a shared file and ``render`` adds up the processes.
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

_SECONDS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
_TOKENS = tuple(2**i for i in range(14))  # 1 … 8,192: TEI's powers of two up to the longest input
_BATCH_TOKENS = tuple(2**i for i in range(21))  # TEI's buckets for tokens per batch


class Metrics:
    """The server's counters, histograms and gauges.

    Example:
        >>> metrics = Metrics()
        >>> metrics.request_count.labels("single").inc()
        >>> b"te_request_count" in metrics.render()
        True
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.request_count = Counter("te_request_count", "Inference requests received", ["method"], registry=r)
        self.request_success = Counter("te_request_success", "Inference requests answered", ["method"], registry=r)
        self.request_failure = Counter("te_request_failure", "Requests refused or failed", ["err"], registry=r)
        # Per input, as TEI counts them: every input sent to a model, and every input answered.
        self.embed_count = Counter("te_embed_count", "Inputs sent to an embedding model", registry=r)
        self.embed_success = Counter("te_embed_success", "Inputs an embedding model answered", registry=r)
        self.predict_count = Counter("te_predict_count", "Pairs sent to a reranker", registry=r)
        self.predict_success = Counter("te_predict_success", "Pairs a reranker answered", registry=r)
        self.request_duration = Histogram("te_request_duration", "Request time, seconds", buckets=_SECONDS,
                                          registry=r)
        # Per request, as TEI records them: the mean over its inputs (the values of its x-*-time headers).
        self.tokenization_duration = Histogram("te_request_tokenization_duration",
                                               "Tokenizing in the engine call, seconds", buckets=_SECONDS, registry=r)
        self.queue_duration = Histogram("te_request_queue_duration", "Waiting for an engine call, seconds",
                                        buckets=_SECONDS, registry=r)
        self.inference_duration = Histogram("te_request_inference_duration",
                                            "Engine call after tokenizing, seconds", buckets=_SECONDS, registry=r)
        self.input_length = Histogram("te_request_input_length", "Tokens of each input", buckets=_TOKENS,
                                      registry=r)
        self.batch_size = Histogram("te_batch_next_size", "Inputs per merged engine call", buckets=_SIZES,
                                    registry=r)
        self.batch_tokens = Histogram("te_batch_next_tokens", "Tokens per merged engine call",
                                      buckets=_BATCH_TOKENS, registry=r)
        self.queue_size = Gauge("te_queue_size", "Inputs waiting for an engine call", ["model"], registry=r,
                                multiprocess_mode="livesum")
        self.in_flight = Gauge("bge_requests_in_flight", "Requests being served", registry=r,
                               multiprocess_mode="livesum")
        self.dropped = Counter("bge_dropped_jobs", "Jobs dropped because their client disconnected", registry=r)

    def render(self) -> bytes:
        """The text exposition format (the sum over every server process when there are several)."""
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            registry = CollectorRegistry()
            MultiProcessCollector(registry)
            return generate_latest(registry)
        return generate_latest(self.registry)


class EngineMetrics:
    """The engine host's own figures (``--workers N``, ``--engine-process``): the calls that every server
    process's calls were merged into — the batches the device sees, where ``te_batch_next_size`` counts one
    HTTP process's calls. An HTTP process's /metrics appends them (`render`), so they exist only where an
    engine host runs.

    Example:
        >>> metrics = EngineMetrics()
        >>> metrics.batch_size.observe(64)
        >>> b"bge_engine_batch_size_sum 64.0" in metrics.render()
        True
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.batch_size = Histogram("bge_engine_batch_size", "Inputs per engine call of the engine host",
                                    buckets=_SIZES, registry=self.registry)
        self.call_duration = Histogram("bge_engine_call_duration", "Engine call time in the engine host, seconds",
                                       buckets=_SECONDS, registry=self.registry)

    def render(self) -> bytes:
        """The text exposition format of this process's figures."""
        return generate_latest(self.registry)
