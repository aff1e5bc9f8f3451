#!/usr/bin/env bash
# The measurements a GPU machine's lease is for, as one device call each (run from the repository root there,
# after `bash bench/fetch_wheels.sh` here and with .whl — and .whl-inf for `serve` — carried):
#   bash bench/gpu_suite.sh tests     # pytest -m gpu, then the long-attention tilings probe      (~3 min)
#   bash bench/gpu_suite.sh engine    # bench.py: passages, long documents, cross-encoder, query, fp8 (~6 min)
#   bash bench/gpu_suite.sh serve     # bge serve at 1 and 64 clients against infinity-emb           (~4 min)
# Everything goes to $OUT (the device tool brings it back): <section>.log and each tool's JSON. Tokenizers keep
# their own threads, as a user's do: TOKENIZERS_PARALLELISM=false would make every system's host work slower.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu-suite}
mkdir -p "$OUT"
section=${1:?usage: bash bench/gpu_suite.sh tests|engine|serve}
log=$OUT/$section.log
unset TOKENIZERS_PARALLELISM
export PYTHONUNBUFFERED=1
# shellcheck source=bench/gpu_host.sh
. bench/gpu_host.sh >>"$log" 2>&1
{ date; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; nproc; } >>"$log" 2>&1
step() {  # step SECONDS COMMAND...: run it under a time limit, its output and exit status into the log
    local limit=$1
    shift
    timeout -k 5 "$limit" "$@" >>"$log" 2>&1
    echo "exit $? of '$*' at $(date +%T)" >>"$log"
}
case "$section" in
    tests)
        step 200 python3 -m pytest -m gpu tests/gpu -q --no-header -rfE
        mkdir -p "$OUT/longattn"
        OUT=$OUT/longattn step 60 python3 bench/probe_gpu.py longattn ;;
    engine)
        step 560 python3 bench/bench.py --only m3,rerank,latency,fp8 ;;
    serve)
        mkdir -p "$OUT/serve"
        OUT=$OUT/serve step 400 python3 bench/serve.py --clients 1,64 --infinity-clients 64 --singles 8192 \
            --batches 64 --server-arg=--workers --server-arg=4 --infinity /tmp/infinity/bin/python ;;
    *) echo "unknown section $section: tests, engine or serve" >&2; exit 2 ;;
esac
grep -v "it/s\]" "$log" | tail -c 11000
