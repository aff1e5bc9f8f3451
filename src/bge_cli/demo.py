"""`bge demo`: the main job end to end — index a multilingual corpus into Milvus Lite, hybrid search, rerank.

The corpus (42 short factual passages in 16 languages, written for this project) ships with the
package as ``bge_cli/data/demo_corpus.jsonl``. The default models are BAAI/bge-m3 and
BAAI/bge-reranker-v2-m3, downloaded by huggingface_hub. When they cannot be had (no network, no
cache), the demo says so in one line and runs the same pipeline on tiny random checkpoints built on
the spot (`bge_core.tiny`), under a banner saying the results are meaningless: the run still proves
that the installation works.

Example:
    >>> from bge_cli.demo import run_demo
    >>> report = run_demo(db="./bge-demo.db")
    >>> report.queries[0].hits[0].id
    'zh-01'
"""

from __future__ import annotations

import json
import os
import re
import socket
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any
from urllib.parse import urlparse

from bge_cli.io import Record, excerpt, format_table, read_records
from bge_core.errors import ModelLoadError

DEFAULT_MODEL = "BAAI/bge-m3"
DEFAULT_RERANKER = "BAAI/bge-reranker-v2-m3"
COLLECTION = "bge_demo"

#: (language, query): each answered by passages in other languages too.
QUERIES: list[tuple[str, str]] = [
    ("en", "What do giant pandas eat?"),
    ("zh", "世界上最高的山是哪座？"),
    ("de", "Wer hat das Radium entdeckt?"),
    ("es", "¿Dónde desemboca el río Amazonas?"),
]

BANNER = "RANDOM WEIGHTS — results are meaningless; this only proves the installation"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def load_corpus() -> list[Record]:
    """The demo corpus shipped with the package: records with ``id``, ``text`` and ``metadata["lang"]``.

    Example:
        >>> len(load_corpus()), load_corpus()[0].id
        (42, 'en-01')
    """
    source = resources.files("bge_cli").joinpath("data", "demo_corpus.jsonl")
    with resources.as_file(source) as path:
        return list(read_records(path))


# -- the model hub ------------------------------------------------------------------------------


def is_hub_id(name: str) -> bool:
    """Whether `name` would be fetched from the hub: ``org/name`` or ``name`` that is not a local path.

    Example:
        >>> is_hub_id("BAAI/bge-m3"), is_hub_id("./checkpoints/bge-m3")
        (True, False)
    """
    name = os.fspath(name)
    return not os.path.exists(name) and bool(_HUB_ID.match(name))


def _offline_requested() -> bool:
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
               for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def hub_unreachable(timeout: float = 3.0) -> str | None:
    """Why the Hugging Face hub cannot be reached, or None if it can (or a proxy makes it impossible to tell).

    A plain TCP connect with a short timeout: without it huggingface_hub may spend most of a
    minute retrying before giving up on a network that drops packets.

    Example:
        >>> hub_unreachable()   # None when huggingface.co:443 answers
    """
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None  # only the proxy knows; let huggingface_hub try
    endpoint = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host = endpoint.hostname or "huggingface.co"
    port = endpoint.port or (80 if endpoint.scheme == "http" else 443)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as error:
        return f"{host}:{port} unreachable ({error.strerror or type(error).__name__})"
    return None


def prepare_hub(names: Sequence[str]) -> str | None:
    """Before loading hub ids: if the hub cannot be reached, switch huggingface_hub to offline mode.

    Offline, a model already in the local Hugging Face cache still loads, and one that is not fails
    at once instead of after a minute of retries. Returns the reason when offline mode was
    switched on (None when not needed, already on, or the hub answers).

    Example:
        >>> prepare_hub(["BAAI/bge-m3"])
        'huggingface.co:443 unreachable (Name or service not known)'
    """
    if _offline_requested() or not any(is_hub_id(n) for n in names if isinstance(n, str)):
        return None
    reason = hub_unreachable()
    if reason is not None:
        os.environ["HF_HUB_OFFLINE"] = "1"
        constants = sys.modules.get("huggingface_hub.constants")
        if constants is not None:  # already imported (bge_core imports it): it read the variable at import
            constants.HF_HUB_OFFLINE = True
    return reason


# -- the pipeline -------------------------------------------------------------------------------


@dataclass
class QueryResult:
    """One demo query: its reranked hits and timings."""

    lang: str
    query: str
    hits: list[Any]  # bge_milvus.Hit with score = reranker score; metadata["hybrid_score"] = fused score
    search_ms: float
    rerank_ms: float


@dataclass
class DemoReport:
    """What `run_demo` did (for tests and callers; the same facts are printed)."""

    model: str
    reranker: str
    random_weights: list[str]
    db: str
    indexed: int
    load_seconds: float
    index_seconds: float
    queries: list[QueryResult] = field(default_factory=list)
    total_seconds: float = 0.0


def load_models(
    model: str, reranker: str, *, device: str | None, dtype: str | None, fallback: bool, texts: Sequence[str],
    echo: Callable[[str], None],
) -> tuple[Any, Any, list[str]]:
    """The core `Embedder` and `Reranker`; hub ids that cannot be had become tiny random checkpoints.

    Returns:
        (embedder, reranker, names of the models replaced by random checkpoints).

    Raises:
        ModelLoadError: a local path cannot be loaded, or a hub id cannot and `fallback` is off.

    Example:
        >>> embedder, reranker, replaced = load_models("BAAI/bge-m3", "BAAI/bge-reranker-v2-m3", device=None,
        ...                                            dtype=None, fallback=True, texts=["a"], echo=print)
    """
    from bge_core import Embedder, Reranker
    from bge_core.tiny import tiny_cross_encoder, tiny_m3

    offline_reason = prepare_hub([model, reranker])
    loaded: list[Any] = []
    failed: dict[str, str] = {}
    for name, cls in ((model, Embedder), (reranker, Reranker)):
        try:
            loaded.append(cls(name, device=device, dtype=dtype))
        except ModelLoadError as error:
            if not (fallback and is_hub_id(name)):
                raise
            loaded.append(None)
            failed[name] = str(error)
    if not failed:
        return loaded[0], loaded[1], []
    if offline_reason:
        why = f"the Hugging Face hub is not reachable: {offline_reason}"
    elif _offline_requested():
        why = "HF_HUB_OFFLINE=1 and not in the local Hugging Face cache"
    else:
        why = "; ".join(failed.values())
    echo(f"bge demo: cannot get {' and '.join(failed)} ({why}); running the same pipeline on tiny "
         "RANDOM checkpoints instead (pass --model/--reranker DIR for local weights).")
    embedder = loaded[0] if loaded[0] is not None else Embedder(tiny_m3(texts), device=device, dtype=dtype)
    rr = loaded[1] if loaded[1] is not None else Reranker(tiny_cross_encoder(texts), device=device, dtype=dtype)
    return embedder, rr, list(failed)


def banner(replaced: Sequence[str]) -> str:
    """The loud notice printed around a run on random weights.

    Example:
        >>> print(banner(["BAAI/bge-m3"]))
    """
    lines = [BANNER, f"(random stand-ins for: {', '.join(replaced)})"]
    width = max(len(s) for s in lines) + 4
    rule = "#" * (width + 2)
    return "\n".join([rule] + [f"#  {s.ljust(width - 2)}#" for s in lines] + [rule])


def fresh_collection(db: str, embedder: Any) -> Any:
    """An empty `HybridCollection` named `COLLECTION` in `db` (a previous demo's is dropped first,
    whatever model it was built with).

    Example:
        >>> fresh_collection("./bge-demo.db", Embedder("BAAI/bge-m3")).count()
        0
    """
    from bge_milvus import HybridCollection
    from bge_milvus.backend import open_client

    client = open_client(db, "", "")
    try:
        if client.has_collection(COLLECTION):
            client.drop_collection(COLLECTION)
    finally:
        client.close()
    return HybridCollection(COLLECTION, embedder, uri=db)


def run_demo(
    model: str = DEFAULT_MODEL,
    reranker: str = DEFAULT_RERANKER,
    *,
    db: str = "./bge-demo.db",
    device: str | None = None,
    dtype: str | None = None,
    k: int = 3,
    candidates: int = 10,
    fallback: bool = True,
    echo: Callable[[str], None] = print,
) -> DemoReport:
    """Index the demo corpus into Milvus Lite with BGE-M3 (dense + sparse), search each demo query in
    hybrid mode, rerank the candidates with the cross-encoder, and print tables and timings.

    Args:
        model / reranker: hub ids or local directories (a BGE-M3 and a BGE reranker).
        db: the Milvus Lite file (its `COLLECTION` is rebuilt) or a Milvus server URI.
        k: hits shown per query; candidates: hits fetched by hybrid search for the reranker.
        fallback: replace hub ids that cannot be downloaded by tiny random checkpoints.
        echo: where lines go.

    Raises:
        ModelLoadError: a model cannot be loaded (and no fallback applies).

    Example:
        >>> run_demo(model="./bge-m3", reranker="./bge-reranker-v2-m3", db="/tmp/demo.db").indexed
        42
    """
    start = time.perf_counter()
    corpus = load_corpus()
    texts = [r.text for r in corpus] + [q for _, q in QUERIES]
    embedder, rr, replaced = load_models(
        model, reranker, device=device, dtype=dtype, fallback=fallback, texts=texts, echo=echo
    )
    load_seconds = time.perf_counter() - start
    if replaced:
        echo(banner(replaced))
    echo(f"embedder   {embedder.name}  ({embedder.device}, {embedder.dtype})")
    echo(f"reranker   {rr.name}")
    echo(f"database   {db} (Milvus Lite), collection {COLLECTION!r}")
    echo(f"models loaded in {load_seconds:.1f} s")

    collection = fresh_collection(db, embedder)
    try:
        t0 = time.perf_counter()
        collection.add([r.text for r in corpus], ids=[r.id for r in corpus], metadata=[r.metadata for r in corpus])
        index_seconds = time.perf_counter() - t0
        languages = len({r.metadata.get("lang") for r in corpus})
        echo(f"\nindexed {collection.count()} passages in {languages} languages (dense + sparse, one forward each) "
             f"in {index_seconds:.2f} s — {len(corpus) / max(index_seconds, 1e-9):.1f} texts/s")
        report = DemoReport(model=embedder.name, reranker=rr.name, random_weights=replaced, db=db,
                            indexed=collection.count(), load_seconds=load_seconds, index_seconds=index_seconds)
        for lang, query in QUERIES:
            result = _ask(collection, rr, lang, query, k, candidates)
            report.queries.append(result)
            _print_query(result, len(report.queries), candidates, echo)
    finally:
        collection.close()
    report.total_seconds = time.perf_counter() - start
    searches = [q.search_ms for q in report.queries]
    reranks = [q.rerank_ms for q in report.queries]
    echo(f"\n{len(report.queries)} queries: hybrid search {sum(searches) / len(searches):.1f} ms and rerank "
         f"{sum(reranks) / len(reranks):.1f} ms on average; total {report.total_seconds:.1f} s")
    if replaced:
        echo(banner(replaced))
    return report


def _ask(collection: Any, rr: Any, lang: str, query: str, k: int, candidates: int) -> QueryResult:
    from dataclasses import replace

    t0 = time.perf_counter()
    found = collection.search(query, k=candidates, mode="hybrid")
    t1 = time.perf_counter()
    ranked = rr.rerank(query, [h.text for h in found], top_k=k, normalize=True)
    t2 = time.perf_counter()
    # The reranker's score becomes the hit's score; the fused hybrid score stays in its metadata.
    hits = [replace(found[h.index], score=h.score, metadata={**found[h.index].metadata,
                                                             "hybrid_score": found[h.index].score}) for h in ranked]
    return QueryResult(lang=lang, query=query, hits=hits, search_ms=(t1 - t0) * 1e3, rerank_ms=(t2 - t1) * 1e3)


def _print_query(result: QueryResult, number: int, candidates: int, echo: Callable[[str], None]) -> None:
    echo(f"\nquery {number} [{result.lang}]  {result.query}")
    echo(f"hybrid search {result.search_ms:.1f} ms ({candidates} candidates), rerank {result.rerank_ms:.1f} ms")
    rows = [
        [str(i), f"{h.score:.4f}", f"{h.metadata['hybrid_score']:.4f}", h.id, str(h.metadata.get("lang", "")),
         excerpt(h.text, 70)]
        for i, h in enumerate(result.hits, start=1)
    ]
    echo(format_table(["rank", "rerank", "hybrid", "id", "lang", "text"], rows, right={0, 1, 2}))


def report_json(report: DemoReport) -> str:
    """The report as JSON (for ``bge demo --json``).

    Example:
        >>> json.loads(report_json(run_demo()))["queries"][0]["hits"][0]["id"]
    """
    return json.dumps({
        "model": report.model, "reranker": report.reranker, "random_weights": report.random_weights,
        "db": report.db, "indexed": report.indexed, "load_seconds": report.load_seconds,
        "index_seconds": report.index_seconds, "total_seconds": report.total_seconds,
        "queries": [
            {"lang": q.lang, "query": q.query, "search_ms": q.search_ms, "rerank_ms": q.rerank_ms,
             "hits": [{"id": h.id, "score": h.score, "hybrid_score": h.metadata["hybrid_score"], "text": h.text,
                       "lang": h.metadata.get("lang")} for h in q.hits]}
            for q in report.queries
        ],
    }, ensure_ascii=False, indent=2)
