#!/usr/bin/env bash
# bge-plugins set-up commands. Each creates .venv on first use (torch's CPU build first, then the project).
#   bash run.sh demo   — the main job: index a multilingual corpus into Milvus Lite, hybrid search, rerank
#   bash run.sh test   — the test suite (CPU)
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
if ! .venv/bin/python -c "import bge_core, FlagEmbedding" 2>/dev/null; then
    .venv/bin/pip install -q --upgrade pip
    .venv/bin/pip install -q torch==2.13.0          # the CPU build; an unpinned torch pulls a multi-GB CUDA build
    .venv/bin/pip install -q -e ".[test]"
fi
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-0} TOKENIZERS_PARALLELISM=false
case "${1:-demo}" in
    demo) shift || true; exec .venv/bin/bge demo "$@" ;;
    test) shift || true; exec .venv/bin/python -m pytest -q "$@" ;;
    *) echo "usage: bash run.sh [demo|test] [args…]" >&2; exit 2 ;;
esac
