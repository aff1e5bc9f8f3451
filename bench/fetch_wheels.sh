#!/usr/bin/env bash
# Downloads, here (where PyPI is reachable), the wheels that `bench/gpu_host.sh` installs on a GPU machine
# that has no network: .whl (this project's tests and benchmarks) and .whl-inf (infinity-emb in a site of its
# own). Both folders are git-ignored; a fresh checkout has neither, so run this once before the first device call:
#   bash bench/fetch_wheels.sh            # both sets
#   bash bench/fetch_wheels.sh .whl       # one set
# The GPU image (Python 3.12, torch 2.11, transformers 5.17, sentence-transformers 6, numpy 2, pandas, pyarrow,
# accelerate, scikit-learn, requests, aiohttp, uvloop) supplies everything not listed. Pins are those measured
# in BENCHMARKS.md; one version of each package per folder, or pip's install there stops.
set -euo pipefail
cd "$(dirname "$0")/.."

# FlagEmbedding (the oracle) and what it imports; the server stack; py-spy for `serve.py --profile`.
project=(
    FlagEmbedding==1.4.2 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 xxhash==4.1.0 peft==0.21.2
    fastapi==0.165.0 starlette==1.10.0 pydantic==2.14.4 pydantic-core==2.50.5 typing-extensions==4.16.0
    typing-inspection==0.4.5 annotated-types==0.8.0 annotated-doc==0.0.7 anyio==4.16.0 opentelemetry-api==1.45.3
    uvicorn==0.55.0 h11==0.16.0 httptools==0.9.0 orjson==3.13.0 prometheus-client==0.26.0 py-spy==0.4.3
)
# infinity-emb 0.0.78 needs transformers 4 (so huggingface_hub < 1 and tokenizers 0.22) and sentence-transformers 3;
# sentence-transformers 3 imports datasets, and datasets 5 needs huggingface_hub >= 1, hence datasets 4.4 here.
infinity=(
    infinity-emb==0.0.78 transformers==4.57.6 sentence-transformers==3.4.1 tokenizers==0.22.1
    huggingface-hub==0.36.0 datasets==4.4.1 click==8.1.8 typer==0.12.5 shellingham==1.5.4 rich==13.9.4
    markdown-it-py==4.3.0 mdurl==0.1.2 pygments==2.21.0 prometheus-fastapi-instrumentator==8.1.0
    posthog==7.91.1 backoff==2.2.1 distro==1.9.0 uvicorn==0.32.1
)
platforms=(manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64
           manylinux1_x86_64 any)

fetch() {  # fetch DEST PACKAGE...
    local dest=$1
    shift
    mkdir -p "$dest"
    grep -qxF "/$dest/" .git/info/exclude 2>/dev/null || echo "/$dest/" >>.git/info/exclude
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        "${platforms[@]/#/--platform=}" -d "$dest" "$@"
    du -sh "$dest"
}

case "${1:-all}" in
    .whl) fetch .whl "${project[@]}" ;;
    .whl-inf) fetch .whl-inf "${infinity[@]}" ;;
    all) fetch .whl "${project[@]}"; fetch .whl-inf "${infinity[@]}" ;;
    *) echo "usage: bash bench/fetch_wheels.sh [all|.whl|.whl-inf]" >&2; exit 2 ;;
esac
