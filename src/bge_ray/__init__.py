"""bge_ray: BGE embedders and rerankers on Ray Data, a Milvus sink, and Milvus bulk-import files.

Layer: application. It imports `bge_core` and `bge_milvus` (no other application); `bge encode --ray`
and `bge index --ray` in `bge_cli` call it.

The same engine as the rest of the project (`bge_core.Embedder` / `bge_core.Reranker`), one model load
per Ray actor, one actor per GPU by default.

Example:
    >>> import ray, bge_ray
    >>> ds = ray.data.read_json("corpus.jsonl", lines=True)                 # {"id": …, "text": …}
    >>> bge_ray.encode(ds, "BAAI/bge-m3", sparse=True).write_parquet("vectors/")
    >>> bge_ray.index(ds, "BAAI/bge-m3", "docs", uri="http://milvus:19530").count   # dense + sparse into Milvus
"""

from __future__ import annotations

from bge_ray.bulk import BulkWriterDatasink, collection_schema, start_bulk_import, write_bulk_files
from bge_ray.encode import BGEEncoder, BGEReranker, encode, rerank, validate
from bge_ray.milvus import MilvusDatasink, index, milvus_rows
from bge_ray.rows import BadRowError

__all__ = [
    "BGEEncoder",
    "BGEReranker",
    "BadRowError",
    "BulkWriterDatasink",
    "MilvusDatasink",
    "collection_schema",
    "encode",
    "index",
    "milvus_rows",
    "rerank",
    "start_bulk_import",
    "validate",
    "write_bulk_files",
]
