#!/usr/bin/env bash
# bge-plugins set-up commands. Each creates .venv on first use (torch's CPU build first, then the project).
#   bash run.sh demo   — the main job: index a multilingual corpus into Milvus Lite, hybrid search, rerank
#   bash run.sh test   — the test suite (CPU)
#   bash run.sh test-pymilvus3 — the Milvus-facing tests again on the pymilvus 3 / milvus-lite 3 line
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
if ! .venv/bin/python -c "import bge_core, bge_cli, FlagEmbedding, fastapi, ray, pytrec_eval, LM_Cocktail, PIL" 2>/dev/null; then
    .venv/bin/pip install -q --upgrade pip
    .venv/bin/pip install -q torch==2.13.0          # the CPU build; an unpinned torch pulls a multi-GB CUDA build
    .venv/bin/pip install -q -e ".[test]"
fi
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-0} TOKENIZERS_PARALLELISM=false
case "${1:-demo}" in
    demo) shift || true; exec .venv/bin/bge demo "$@" ;;
    test) shift || true; exec .venv/bin/python -m pytest -q "$@" ;;
    test-pymilvus3)
        shift || true
        if [ ! -x .venv-pymilvus3/bin/python ]; then
            "$PY" -m venv .venv-pymilvus3
            .venv-pymilvus3/bin/pip install -q --upgrade pip
            .venv-pymilvus3/bin/pip install -q torch==2.13.0
            .venv-pymilvus3/bin/pip install -q -r requirements/pymilvus3.txt
            .venv-pymilvus3/bin/pip install -q --no-deps llama-index-vector-stores-milvus==1.2.0
            .venv-pymilvus3/bin/pip install -q --no-deps -e .
        fi
        exec .venv-pymilvus3/bin/python -m pytest -q tests/milvus tests/langchain tests/haystack tests/llamaindex tests/server/test_milvus_lite3.py "$@" ;;
    *) echo "usage: bash run.sh [demo|test|test-pymilvus3] [args…]" >&2; exit 2 ;;
esac
