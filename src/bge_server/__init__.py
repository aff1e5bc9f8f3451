"""bge_server: `bge serve`, one HTTP server for TEI, OpenAI and Cohere clients on the bge_core engine.

Layer: application. It imports `bge_core` only (no other application); `bge serve` in `bge_cli`
starts it.

Routes: TEI's ``/embed`` (also ``/`` and ``/invocations``), ``/embed_sparse``, ``/rerank``, ``/predict``,
``/similarity``, ``/tokenize``, ``/decode``, ``/info``, ``/health``, ``/metrics``; OpenAI's
``/v1/embeddings``; Cohere/Jina's ``/v1/rerank`` and ``/v2/rerank``; and ``/embed_m3`` (BGE-M3 dense +
sparse + ColBERT from one forward). Requests of all clients are merged into engine calls per model.

Example:
    >>> from bge_server import ServerConfig, serve
    >>> serve(ServerConfig(models=["BAAI/bge-m3"], rerankers=["BAAI/bge-reranker-v2-m3"], port=8080))
"""

from __future__ import annotations

from bge_server.app import create_app
from bge_server.config import ServerConfig
from bge_server.server import serve

__all__ = ["ServerConfig", "create_app", "serve"]
