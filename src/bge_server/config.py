"""`ServerConfig`: every setting of `bge serve`, with TEI's defaults where TEI has the same setting."""

from __future__ import annotations

import os
from dataclasses import dataclass, field


def calls_from_env(variable: str, default: int) -> int:
    """A number of calls at once, from environment variable `variable` (for measuring) or `default`.

    Example:
        >>> calls_from_env("BGE_SERVE_ENGINE_CALLS", 2)
        2
    """
    value = os.environ.get(variable, str(default))
    if not value.strip().isdigit() or int(value) < 1:
        raise ValueError(f"{variable} must be a whole number of at least 1, got {value!r}")
    return int(value)


def fraction_from_env(variable: str, default: float) -> float:
    """A non-negative number from environment variable `variable` (for measuring) or `default`.

    Example:
        >>> fraction_from_env("BGE_SERVE_REJOIN_WAIT", 0.0)
        0.0
    """
    value = os.environ.get(variable)
    if value is None:
        return default
    try:
        number = float(value)
    except ValueError:
        number = -1.0
    if not number >= 0:  # also refuses nan
        raise ValueError(f"{variable} must be a number of at least 0, got {value!r}")
    return number


#: Calls in flight at once: one is tokenized or answered while the device runs the other (a model on the
#: CPU runs one at a time, `ServerConfig.calls_for`).
CALLS_IN_FLIGHT = 2
#: Sets `ServerConfig.rejoin_wait` where the configuration leaves it unset (for measuring).
REJOIN_WAIT_ENV = "BGE_SERVE_REJOIN_WAIT"
#: TEI's `--payload-limit` default, in bytes.
DEFAULT_PAYLOAD_LIMIT = 2_000_000


@dataclass
class ServerConfig:
    """What `bge serve` was asked to serve and how.

    Args:
        models: embedding models (hub ids or local directories); the first answers requests that name no model.
        rerankers: reranker models, likewise.
        served_model_names: names for `models` then `rerankers`, in order (missing ones: the id as given).
        api_key: when set, every route but the health probes and /metrics needs ``Authorization: Bearer KEY``.
        max_batch_tokens: token budget of one forward batch (default: the engine's per-device choice).
        max_client_batch_size: most inputs one request may carry; larger requests are split, not refused.
        max_concurrent_requests: requests in flight at once; the next one gets 429.
        auto_truncate: cut over-long inputs when a request does not say (TEI's ``truncate: null``).
        payload_limit: largest request body in bytes (413 past it).
        batch_items: most inputs merged into one engine call (bigger requests are cut into pieces this size).
        calls_in_flight: engine calls in flight per model; None: 2 on a GPU (one tokenizes while the device
            runs the other), 1 on the CPU (see `calls_for`).
        rejoin_wait: after an engine call, the longest a batcher (and the engine host) waits for the clients
            it answered before the next call, as a fraction of the call (`MicroBatcher`); None:
            $BGE_SERVE_REJOIN_WAIT, else 0.
        processes: HTTP server processes sharing the listening socket; their requests are merged into the
            calls of one engine host (the models are loaded once). /metrics adds up all of them.
        device: one device, or several (each model then runs on all of them, one worker process each).
        engine_process: run the models in one engine host process (`bge_server.engine_host`) that the HTTP
            process(es) call over a Unix socket, so no engine thread competes with an event loop for a GIL.
            Several server processes (`processes` > 1) always share one engine host.
        engine_host: the engine host's socket path (set by `serve` for the HTTP processes; None: load here).
        gil_switch_interval_ms: Python's thread switch interval while serving (None keeps Python's 5 ms). A
            shorter one lets the engine thread take the GIL back sooner from the busy event loop.

    Example:
        >>> config = ServerConfig(models=["BAAI/bge-m3"], rerankers=["BAAI/bge-reranker-v2-m3"], port=0)
        >>> config.max_client_batch_size, config.host
        (1024, '127.0.0.1')
    """

    models: list[str] = field(default_factory=list)
    rerankers: list[str] = field(default_factory=list)
    served_model_names: list[str] = field(default_factory=list)
    host: str = "127.0.0.1"
    port: int = 8080
    api_key: str | None = None
    device: str | list[str] | None = None
    dtype: str | None = None
    max_batch_tokens: int | None = None
    max_client_batch_size: int = 1024
    max_concurrent_requests: int = 512
    auto_truncate: bool = True
    payload_limit: int = DEFAULT_PAYLOAD_LIMIT
    batch_items: int = 512
    calls_in_flight: int | None = None
    rejoin_wait: float | None = None
    processes: int = 1
    engine_process: bool = False
    engine_host: str | None = None
    gil_switch_interval_ms: float | None = None

    def __post_init__(self) -> None:
        if not self.models and not self.rerankers:
            raise ValueError("nothing to serve: give at least one --model or --reranker")
        if len(self.served_model_names) > len(self.models) + len(self.rerankers):
            raise ValueError(
                f"{len(self.served_model_names)} --served-model-name for "
                f"{len(self.models) + len(self.rerankers)} models"
            )
        for name in ("max_client_batch_size", "max_concurrent_requests", "payload_limit", "batch_items",
                     "calls_in_flight", "processes"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.rejoin_wait is not None and not self.rejoin_wait >= 0:
            raise ValueError(f"rejoin_wait must be at least 0, got {self.rejoin_wait}")

    def calls_for(self, device: str | list[str]) -> int:
        """Engine calls in flight for a model on `device`: `calls_in_flight` where set; else 1 on the CPU,
        where the model's arithmetic takes the host's cores and a second call in flight only splits the
        waiting requests into smaller, slower batches (16 single-query clients, bge-small shape, 2 cores:
        133 → 169 texts/s with one); else 2.

        Example:
            >>> ServerConfig(models=["m"]).calls_for("cpu"), ServerConfig(models=["m"]).calls_for("cuda:0")
            (1, 2)
        """
        if self.calls_in_flight is not None:
            return self.calls_in_flight
        return 1 if device == "cpu" else CALLS_IN_FLIGHT

    def batcher_rejoin_wait(self) -> float:
        """`rejoin_wait` where set, else $BGE_SERVE_REJOIN_WAIT, else 0 (each call starts at once). Off by
        default: on two CPU cores it merged twice the inputs per call but gained no throughput that the
        machine's noise did not also give (BENCHMARKS.md, twelfth session); on one H100, 64 single-query
        clients, 0.25 gave 9,821 against 6,435 texts/s in one run and 7,518 against 9,216 in another
        (fifteenth session): no gain that holds.

        Example:
            >>> ServerConfig(models=["m"], rejoin_wait=0.25).batcher_rejoin_wait()
            0.25
        """
        return self.rejoin_wait if self.rejoin_wait is not None else fraction_from_env(REJOIN_WAIT_ENV, 0.0)
