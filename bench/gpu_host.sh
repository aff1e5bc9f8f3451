# Prepares a GPU machine that has torch and transformers but no network for the GPU tests and benchmarks.
# Source it from the repository root:  . bench/gpu_host.sh
#
# Wheels it expects, downloaded here beforehand by `bash bench/fetch_wheels.sh`:
#   .whl/*.whl          what the image lacks for this project's tests and benchmarks (FlagEmbedding,
#                       fastapi, uvicorn, orjson, py-spy, …); installed under /tmp/site
#   .whl-inf/*.whl      optional: infinity-emb 0.0.78 with its own transformers 4.57.6 and
#                       sentence-transformers 3.4.1; installed under /tmp/infinity-site, apart from the
#                       project's packages, with a launcher /tmp/infinity/bin/infinity_emb for
#                       `bench/serve.py --infinity /tmp/infinity/bin/python`
#   .carry/site         optional: `python bench/carry_minilm.py .carry/site` (real MiniLM weights)

python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD/src:$PWD/bench:$PWD/.carry/site PATH=/tmp/site/bin:$PATH  # py-spy's binary
if ls .whl-inf/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/infinity-site .whl-inf/*.whl
    mkdir -p /tmp/infinity/bin
    ln -sf "$(command -v python3)" /tmp/infinity/bin/python
    # infinity-emb's packages first, then the project's carried server stack it shares (fastapi, pydantic,
    # orjson), then the image's torch: never the project's own source or transformers 5.
    printf '#!/bin/sh\nPYTHONPATH=/tmp/infinity-site:/tmp/site exec python3 -c "from infinity_emb.cli import cli; cli()" "$@"\n' \
        >/tmp/infinity/bin/infinity_emb
    chmod +x /tmp/infinity/bin/infinity_emb
fi
