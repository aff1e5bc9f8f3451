"""The models one server process serves, each behind its own `MicroBatcher`, and their engine calls."""

from __future__ import annotations

import logging
import time
from collections.abc import Hashable, Iterator
from dataclasses import dataclass, fields
from functools import partial
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, NamedTuple, Self

import numpy as np

from bge_core import Embedder, Reranker
from bge_server.batcher import MicroBatcher
from bge_server.config import CALLS_IN_FLIGHT, ServerConfig, calls_from_env
from bge_server.errors import ApiError
from bge_server.metrics import Metrics

if TYPE_CHECKING:
    from bge_server.engine_host import HostClient

log = logging.getLogger(__name__)


class EmbedKey(NamedTuple):
    """Options that must be equal for requests to share an engine call."""

    prompt: str | None  # None, "query" or "document"
    normalize: bool
    truncate: bool
    dense: bool = True
    sparse: bool = False
    colbert: bool = False
    token_states: bool = False  # every token's last-layer state instead of the outputs above (/embed_all)


class EmbedRow(NamedTuple):
    """One input's outputs (parts not asked for are None)."""

    dense: np.ndarray | None
    sparse: dict[int, float] | None
    colbert: np.ndarray | None
    tokens: int | None = None
    token_states: np.ndarray | None = None
    tokenization_s: float | None = None


@dataclass(frozen=True)
class Columns:
    """The results of consecutive inputs, one column per output: one (n, dim) matrix rather than a value
    per input, so a reply of the engine host pickles one array (a row each cost ~5 µs of the host's main
    thread) and a route writes the matrix as it is. Sliced and joined like a list of rows (the batchers
    and the engine host cut a merged call's results per request that way); columns not computed are None.
    Subclasses declare the columns as fields after `count`.
    """

    count: int

    def __len__(self) -> int:
        return self.count

    def columns(self) -> list[Any]:
        """The columns in field order (None for one not computed)."""
        return [getattr(self, f.name) for f in fields(self)[1:]]

    def __getitem__(self, part: slice) -> Self:
        if not isinstance(part, slice) or part.step not in (None, 1):
            raise TypeError(f"{type(self).__name__} are sliced in order (rows[a:b]); iterate them for single rows")
        start, stop, _ = part.indices(self.count)
        return type(self)(max(stop - start, 0),
                          *(None if column is None else column[start:stop] for column in self.columns()))

    @classmethod
    def join(cls, parts: list[Self]) -> Self:
        """The rows of `parts`, in order (the pieces of a request that was split across engine calls)."""

        def joined(pieces: tuple[Any, ...]) -> Any:
            if pieces[0] is None:
                return None
            if isinstance(pieces[0], np.ndarray):
                return np.concatenate(pieces)
            return [value for piece in pieces for value in piece]

        return cls(sum(p.count for p in parts), *map(joined, zip(*(p.columns() for p in parts))))


@dataclass(frozen=True)
class EmbedRows(Columns):
    """An embedding call's outputs, iterated as `EmbedRow`s.

    `tokens` is each input's token count and `tokenization_s` the time its engine call took to tokenize
    (the same for every input of a call), both from the engine (`Embedder.encode`'s ``on_tokens``).

    Example:
        >>> rows = EmbedRows(3, np.zeros((3, 4), np.float32), None, None, [2, 5, 1])
        >>> len(rows[1:]), sum(rows[1:].tokens), next(iter(rows)).dense.shape
        (2, 6, (4,))
    """

    dense: np.ndarray | None
    sparse: list[dict[int, float]] | None
    colbert: list[np.ndarray] | None
    tokens: list[int] | None = None
    token_states: list[np.ndarray] | None = None
    tokenization_s: list[float] | None = None

    def __iter__(self) -> Iterator[EmbedRow]:
        columns = self.columns()
        for i in range(self.count):
            yield EmbedRow(*(None if column is None else column[i] for column in columns))


@dataclass(frozen=True)
class ScoreRows(Columns):
    """A reranker call's scores, with each pair's token count and its call's tokenization time (as in
    `EmbedRows`).

    Example:
        >>> rows = ScoreRows(2, [0.9, 0.1], [12, 30], [1e-4, 1e-4])
        >>> rows[1:].scores, sum(rows.tokens)
        ([0.1], 42)
    """

    scores: list[float]
    tokens: list[int] | None = None
    tokenization_s: list[float] | None = None


class _TokenClock:
    """An engine call's `on_tokens` hook: each input's token count, and when the first inputs were tokenized
    (the rest of a large call is tokenized while the device runs the first batches)."""

    def __init__(self, count: int) -> None:
        self.started = time.perf_counter()
        self.tokens = np.zeros(count, dtype=np.int64)
        self.tokenized: float | None = None

    def __call__(self, indices: list[int], counts: list[int]) -> None:
        self.tokens[indices] = counts
        if self.tokenized is None:
            self.tokenized = time.perf_counter()

    def counts(self) -> list[int]:
        """Each input's token count (lists: a request's slice of a call pickles in half the time of arrays)."""
        return self.tokens.tolist()

    def tokenization_s(self) -> list[float]:
        """The call's time to its first tokenized inputs, once per input (a mean over inputs is the call's)."""
        return [(self.tokenized or self.started) - self.started] * len(self.tokens)


@dataclass
class ServedEmbedder:
    """An embedding model under its served name; `raw` shares its weights without L2 normalisation."""

    name: str
    model_id: str
    embedder: Embedder
    raw: Embedder
    batcher: MicroBatcher
    host: HostClient | None = None  # set when the engine host runs the model (then `embedder` is a RemoteHandle)

    kind = "embedding"

    def run(self, key: Hashable, texts: list[str]) -> EmbedRows:
        """The engine call of merged requests (runs in a worker thread)."""
        assert isinstance(key, EmbedKey)
        handle = self.embedder if key.normalize else self.raw
        clock = _TokenClock(len(texts))
        if key.token_states:
            states = handle.encode_token_states(texts, prompt=key.prompt, truncate=key.truncate, on_tokens=clock)
            return EmbedRows(len(texts), None, None, None, clock.counts(), states, clock.tokenization_s())
        encode = {None: handle.encode, "query": handle.encode_queries, "document": handle.encode_documents}[key.prompt]
        out = encode(texts, dense=key.dense, sparse=key.sparse, colbert=key.colbert, truncate=key.truncate,
                     on_tokens=clock)
        return EmbedRows(len(texts), out.dense, out.lexical_weights, out.colbert_vectors, clock.counts(), None,
                         clock.tokenization_s())


@dataclass
class ServedReranker:
    """A reranker under its served name."""

    name: str
    model_id: str
    reranker: Reranker
    batcher: MicroBatcher
    host: HostClient | None = None

    kind = "reranker"

    def run(self, key: Hashable, pairs: list[tuple[str, str]]) -> ScoreRows:
        """Scores of merged (query, passage) pairs; key = (sigmoid, truncate)."""
        sigmoid, truncate = key  # type: ignore[misc]
        clock = _TokenClock(len(pairs))
        scores = self.reranker.score(pairs, normalize=sigmoid, truncate=truncate, on_tokens=clock)
        if scores.ndim == 2:  # several cutoff layers: the last one decides, as in Reranker.rerank
            scores = scores[-1]
        return ScoreRows(len(pairs), [float(s) for s in scores], clock.counts(), clock.tokenization_s())


class ModelSet:
    """Every served model, found by name for each request.

    Example:
        >>> models = ModelSet.load(ServerConfig(models=["BAAI/bge-m3"]), Metrics())
        >>> models.embedding(None).name
        'BAAI/bge-m3'
    """

    def __init__(self, embedders: list[ServedEmbedder], rerankers: list[ServedReranker]) -> None:
        self.embedders = embedders
        self.rerankers = rerankers

    @classmethod
    def load(cls, config: ServerConfig, metrics: Metrics) -> ModelSet:
        """Load every model of `config` (weights shared where two entries name the same checkpoint)."""
        names = list(config.served_model_names)
        options: dict[str, Any] = {"device": config.device, "dtype": config.dtype,
                                   "batch_tokens": config.max_batch_tokens}
        embedders, rerankers = [], []
        rejoin_wait = config.batcher_rejoin_wait()
        for model_id in config.models:
            name = names.pop(0) if names else model_id
            # No output memo: a server computes what each request asks for (dense alone is cheaper than
            # dense + sparse) and keeps no per-text state between clients.
            # Warmed at load (compiling, graph capture): no request pays for it.
            embedder = Embedder(model_id, reuse_outputs=False, warm_up=True, **options)
            raw = Embedder(embedder, normalize=False, reuse_outputs=False, warm_up=False)
            served = ServedEmbedder(name, model_id, embedder, raw, None)  # type: ignore[arg-type]
            served.batcher = MicroBatcher(served.run, max_items=config.batch_items,
                                          workers=config.calls_for(embedder.device), metrics=metrics, name=name,
                                          join=EmbedRows.join, rejoin_wait=rejoin_wait)
            embedders.append(served)
        for model_id in config.rerankers:
            name = names.pop(0) if names else model_id
            reranker = Reranker(model_id, warm_up=True, **options)
            served_rr = ServedReranker(name, model_id, reranker, None)  # type: ignore[arg-type]
            served_rr.batcher = MicroBatcher(served_rr.run, max_items=config.batch_items,
                                             workers=config.calls_for(reranker.device), metrics=metrics, name=name,
                                             join=ScoreRows.join, rejoin_wait=rejoin_wait)
            rerankers.append(served_rr)
        seen: set[str] = set()
        for served_model in [*embedders, *rerankers]:
            if served_model.name in seen:
                raise ValueError(f"two models are served as {served_model.name!r}; use --served-model-name")
            seen.add(served_model.name)
        for served_model in [*embedders, *rerankers]:
            handle = served_model.embedder if served_model.kind == "embedding" else served_model.reranker
            log.info("%s warmed up in %.1f s", served_model.name, handle.loaded.warmed_up_s or 0.0)
        return cls(embedders, rerankers)

    @classmethod
    def remote(cls, config: ServerConfig, host: HostClient, metrics: Metrics) -> ModelSet:
        """The models the engine host serves, as this HTTP process sees them: their descriptions, and
        batchers whose engine calls the host makes.

        Example:
            >>> ModelSet.remote(config, HostClient(path), Metrics()).embedding(None).embedder.dim
            1024
        """
        embedders, rerankers = [], []
        # Calls this process has at the host at once; BGE_SERVE_HTTP_CALLS overrides it (for measuring).
        in_flight = calls_from_env("BGE_SERVE_HTTP_CALLS", config.calls_in_flight or CALLS_IN_FLIGHT)
        rejoin_wait = config.batcher_rejoin_wait()
        for described in host.call_blocking("", "describe_all"):
            handle = RemoteHandle(host, described)
            batcher = MicroBatcher(partial(host.run, described["name"]), max_items=config.batch_items,
                                   workers=in_flight, metrics=metrics, name=described["name"], remote=True,
                                   join=EmbedRows.join if described["kind"] == "embedding" else ScoreRows.join,
                                   rejoin_wait=rejoin_wait)
            if described["kind"] == "embedding":
                embedders.append(ServedEmbedder(described["name"], described["model_id"], handle, handle,  # type: ignore[arg-type]
                                                batcher, host))
            else:
                rerankers.append(ServedReranker(described["name"], described["model_id"], handle, batcher,  # type: ignore[arg-type]
                                                host))
        return cls(embedders, rerankers)

    @property
    def batchers(self) -> list[MicroBatcher]:
        return [m.batcher for m in [*self.embedders, *self.rerankers]]

    def all(self) -> list[ServedEmbedder | ServedReranker]:
        return [*self.embedders, *self.rerankers]

    def _find(self, name: str | None, kind: str) -> ServedEmbedder | ServedReranker:
        pool: list[Any] = self.embedders if kind == "embedding" else self.rerankers
        if name is None or name == "":
            if not pool:
                raise ApiError("Backend", f"this server has no {kind} model")
            return pool[0]
        for model in self.all():
            if name in (model.name, model.model_id):
                if model.kind != kind:
                    raise ApiError("Validation", f"model {name!r} is a {model.kind} model, not an {kind} model"
                                   if kind == "embedding" else f"model {name!r} is not a reranker")
                return model
        served = ", ".join(repr(m.name) for m in pool) or "none"
        raise ApiError("ModelNotFound", f"model {name!r} is not served here; {kind} models: {served}")

    def embedding(self, name: str | None) -> ServedEmbedder:
        """The embedding model called `name` (served name or id), or the first one for None."""
        found = self._find(name, "embedding")
        assert isinstance(found, ServedEmbedder)
        return found

    def reranker(self, name: str | None) -> ServedReranker:
        """The reranker called `name`, or the first one for None."""
        found = self._find(name, "reranker")
        assert isinstance(found, ServedReranker)
        return found


class RemoteHandle:
    """What an HTTP process knows of a model that the engine host runs: its description as attributes
    (family, dim, max_length, dtype, device …) and `tokenize` / `decode` answered by the host."""

    def __init__(self, host: HostClient, described: dict[str, Any]) -> None:
        self._host = host
        self._name = described["name"]
        self.__dict__.update({k: v for k, v in described.items() if k not in ("name", "kind")})
        self.name = described["model_id"]
        self.spec = SimpleNamespace(pooling=described.get("pooling"))

    def tokenize(self, texts: list[str], **options: Any) -> Any:
        return self._host.call_blocking(self._name, "tokenize", texts, **options)

    def decode(self, rows: list[list[int]], **options: Any) -> Any:
        return self._host.call_blocking(self._name, "decode", rows, **options)
