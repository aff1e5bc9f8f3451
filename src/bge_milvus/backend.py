"""The Milvus side of `HybridCollection`: which backend, schema, index and search parameters, rankers, hits.

Everything here works on both pymilvus lines (2.6 with native Milvus Lite 2.5, 3.x with the
pure-Python Milvus Lite 3) and on a Milvus server. Milvus Lite accepts fewer index types than a
server (no HNSW on Lite 2.5, no sparse AUTOINDEX or SPARSE_WAND, no non-zero ``drop_ratio_*`` on
Lite 3), so the default indexes are chosen per backend.
"""

from __future__ import annotations

import os
import pathlib
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

import pymilvus
from pymilvus import DataType, MilvusClient, MilvusException, RRFRanker, WeightedRanker

ID, TEXT, DENSE, SPARSE, METADATA = "id", "text", "dense", "sparse", "metadata"
OUTPUT_FIELDS = [TEXT, METADATA]
ID_MAX_LENGTH = 512
#: Milvus's VARCHAR limit (bytes); longer texts are refused before anything is written.
TEXT_MAX_LENGTH = 65535

LITE_DENSE_INDEX: dict[str, Any] = {"index_type": "FLAT", "params": {}}
SERVER_DENSE_INDEX: dict[str, Any] = {"index_type": "HNSW", "params": {"M": 16, "efConstruction": 200}}
#: No drop ratio: Milvus Lite 3 rejects a non-zero one, and BGE-M3's small weights still count.
SPARSE_INDEX: dict[str, Any] = {"index_type": "SPARSE_INVERTED_INDEX", "params": {}}
#: Retries of a failed request to Milvus Lite. Its server is a local process: one that refuses
#: connections has exited (killed, crashed) and will not come back, and pymilvus's default (75 retries
#: with back-off) makes each call on it wait about 3.5 minutes before failing.
LITE_RETRY_TIMES = 3


@dataclass
class Hit:
    """One search result: the row's id, text and metadata, and its score (higher is better).

    The score is the inner product in ``"dense"`` and ``"sparse"`` mode, the ranker's fused score in
    ``"hybrid"`` mode, and the reranker's score when a rerank stage ran.

    Example:
        >>> Hit(id="a1", text="Alan Turing", metadata={"page": 3}, score=0.93).metadata["page"]
        3
    """

    id: str
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)
    score: float = 0.0


@dataclass(frozen=True)
class RRF:
    """Reciprocal rank fusion of the dense and sparse result lists: score = Σ 1 / (k + rank).

    Example:
        >>> RRF(k=60).to_pymilvus()
        <pymilvus...RRFRanker...>
    """

    k: int = 60

    def to_pymilvus(self) -> RRFRanker:
        return RRFRanker(self.k)


@dataclass(frozen=True)
class Weighted:
    """Weighted sum of the dense and sparse scores (each first squashed to [0, 1] unless ``normalize=False``).

    Example:
        >>> Weighted(dense=0.7, sparse=0.3).to_pymilvus()
        <pymilvus...WeightedRanker...>
    """

    dense: float = 0.5
    sparse: float = 0.5
    normalize: bool = True

    def to_pymilvus(self) -> WeightedRanker:
        return WeightedRanker(self.dense, self.sparse, norm_score=self.normalize)


def to_ranker(ranker: Any) -> Any:
    """A pymilvus ranker from `RRF`, `Weighted`, a ``(w_dense, w_sparse)`` pair, None (RRF(60)) or a pymilvus ranker.

    Example:
        >>> to_ranker((0.7, 0.3))
        <pymilvus...WeightedRanker...>
    """
    if ranker is None:
        return RRF().to_pymilvus()
    if isinstance(ranker, (RRF, Weighted)):
        return ranker.to_pymilvus()
    if isinstance(ranker, (tuple, list)):
        if len(ranker) != 2:
            raise ValueError(f"weights must be (w_dense, w_sparse), got {len(ranker)} values")
        return Weighted(float(ranker[0]), float(ranker[1])).to_pymilvus()
    return ranker  # a pymilvus RRFRanker / WeightedRanker / rerank Function, used as given


def is_lite(uri: str | os.PathLike) -> bool:
    """Whether `uri` names a Milvus Lite database file rather than a server.

    Example:
        >>> is_lite("./bge.db"), is_lite("http://localhost:19530")
        (True, False)
    """
    uri = os.fspath(uri)
    return urlparse(uri).scheme.lower() not in ("http", "https", "tcp", "grpc", "unix") and uri.endswith(".db")


def request_options(uri: str | os.PathLike) -> dict[str, Any]:
    """Keywords for every request to `uri`: few retries on Milvus Lite (see `LITE_RETRY_TIMES`), pymilvus's own
    policy on a server.

    Example:
        >>> request_options("./bge.db")
        {'retry_times': 3}
    """
    return {"retry_times": LITE_RETRY_TIMES} if is_lite(uri) else {}


def open_client(uri: str | os.PathLike, token: str, db_name: str) -> MilvusClient:
    """A `MilvusClient` of our own; for Milvus Lite the database's folder is created first (pymilvus requires it).

    pymilvus 2.x shares one connection among all clients of the same URI, and closing any of them
    closes it for all: a private alias keeps `HybridCollection.close` from cutting off the user's
    other clients. pymilvus 3 counts the clients of a shared connection itself.

    Raises:
        MilvusException: a Milvus Lite file that another process has open (the message says so).

    Example:
        >>> client = open_client("./data/bge.db", token="", db_name="")
    """
    uri = os.fspath(uri)
    extra = {"alias": f"bge-milvus-{uuid.uuid4().hex}"} if pymilvus.__version__.split(".")[0] in ("1", "2") else {}
    if not is_lite(uri):
        return MilvusClient(uri=uri, token=token, db_name=db_name, **extra)
    os.makedirs(os.path.dirname(os.path.abspath(uri)), exist_ok=True)
    forget_dead_lite_server(uri)
    try:
        return MilvusClient(uri=uri, **extra)
    except MilvusException as error:
        if "Open local milvus failed" not in str(error):
            raise
        raise MilvusException(message=(
            f"{uri}: cannot open the Milvus Lite database: another process has it open (Milvus Lite serves a "
            "file to one process at a time), or its server failed to start"
        )) from error


def forget_dead_lite_server(uri: str) -> None:
    """Drop milvus-lite 2's record of this file's server process if that process has exited.

    milvus-lite 2 keeps one server process per database file for the life of the Python process and
    hands its socket to every later client of the file, even after the server was killed or crashed:
    every later open then fails. Forgetting the dead server (`release_server`, which also frees the
    file lock) lets the next open start a new one, so a rerun in the same process resumes the work.
    milvus-lite 3 serves from a thread of this process and has no such record.
    """
    try:
        from milvus_lite.server_manager import server_manager_instance as manager
    except ImportError:
        return
    server = getattr(manager, "_servers", {}).get(str(pathlib.Path(uri).absolute().resolve()))
    process = getattr(server, "_p", None)
    if process is not None and process.poll() is not None:
        manager.release_server(uri)


def dense_search_params(index_type: str, limit: int) -> dict[str, Any]:
    """IP search parameters for the dense index; HNSW needs ``ef`` ≥ the number of results.

    Example:
        >>> dense_search_params("HNSW", 100)
        {'metric_type': 'IP', 'params': {'ef': 100}}
    """
    if index_type == "HNSW":
        return {"metric_type": "IP", "params": {"ef": max(limit, 64)}}
    if index_type.startswith("IVF"):
        return {"metric_type": "IP", "params": {"nprobe": 16}}
    return {"metric_type": "IP", "params": {}}


SPARSE_SEARCH_PARAMS: dict[str, Any] = {"metric_type": "IP", "params": {}}


def create_collection(
    client: MilvusClient, name: str, dim: int, dense_index: dict[str, Any], sparse_index: dict[str, Any],
    text_max_length: int,
) -> None:
    """Fields id (VARCHAR primary key), text, dense FLOAT_VECTOR(dim), sparse, metadata (JSON); IP indexes.

    Example:
        >>> create_collection(client, "docs", 1024, LITE_DENSE_INDEX, SPARSE_INDEX, TEXT_MAX_LENGTH)
    """
    schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field(ID, DataType.VARCHAR, is_primary=True, max_length=ID_MAX_LENGTH)
    schema.add_field(TEXT, DataType.VARCHAR, max_length=text_max_length)
    schema.add_field(DENSE, DataType.FLOAT_VECTOR, dim=dim)
    schema.add_field(SPARSE, DataType.SPARSE_FLOAT_VECTOR)
    schema.add_field(METADATA, DataType.JSON)
    indexes = client.prepare_index_params()
    for field_name, spec in ((DENSE, dense_index), (SPARSE, sparse_index)):
        indexes.add_index(
            field_name=field_name, index_type=spec["index_type"], metric_type="IP", params=dict(spec.get("params", {}))
        )
    # Strong consistency: a search or count right after `add` sees what was written.
    client.create_collection(name, schema=schema, index_params=indexes, consistency_level="Strong")


def check_collection(client: MilvusClient, name: str, dim: int) -> None:
    """Raise `ValueError` unless the existing collection has our fields and a dense field of `dim`.

    Example:
        >>> check_collection(client, "docs", 1024)  # ValueError if "docs" holds 768-dim vectors
    """
    fields = {f["name"]: f for f in client.describe_collection(name)["fields"]}
    missing = [f for f in (ID, TEXT, DENSE, SPARSE, METADATA) if f not in fields]
    if missing:
        raise ValueError(f"collection {name!r} lacks the field(s) {missing}; it was not made by HybridCollection")
    stored = int(fields[DENSE].get("params", {}).get("dim", -1))
    if stored != dim:
        raise ValueError(
            f"collection {name!r} stores {stored}-dimensional dense vectors but the model makes {dim}-dimensional "
            "ones; open it with the model it was built with, or use another collection name"
        )


def count(client: MilvusClient, name: str, **options: Any) -> int:
    """Number of rows (``count(*)``: collection statistics also count rows an upsert replaced).

    Example:
        >>> count(client, "docs")
        1003
    """
    return int(client.query(name, filter="", output_fields=["count(*)"], **options)[0]["count(*)"])


def to_hits(results: list[Any]) -> list[Hit]:
    """`Hit` objects from one query's pymilvus results (the keys differ a little between pymilvus lines).

    Example:
        >>> to_hits([{"id": "a", "distance": 0.9, "entity": {"text": "t", "metadata": {}}}])
        [Hit(id='a', text='t', metadata={}, score=0.9)]
    """
    hits = []
    for raw in results:
        entity = raw.get("entity") or raw
        hits.append(
            Hit(
                id=str(raw.get(ID, entity.get(ID))),
                text=entity.get(TEXT, ""),
                metadata=entity.get(METADATA) or {},
                score=float(raw.get("distance", raw.get("score", 0.0))),
            )
        )
    return hits
