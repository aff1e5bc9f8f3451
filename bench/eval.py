"""`bge eval` against FlagEmbedding's evaluation runner, end to end, same dataset, same model, one run.

    python bench/eval.py --device cuda:0                      # one GPU: 100,000 passages x 1,000 queries
    python bench/eval.py --device cuda:0 --arch base          # bge-base-en-v1.5 shape instead of bge-small
    python bench/eval.py --device cpu --quick                 # a minute on a CPU: tiny BERT, 1,000 x 50

Workload: synthetic MS MARCO-like passages (median 90 words, word-level tokenizer: one token a word),
written once in FlagEmbedding's custom layout (``corpus.jsonl``, ``test_queries.jsonl``,
``test_qrels.jsonl``, string ids, every row with a title), which `bge eval` reads as well. Each query is
ten words of one passage, judged relevant to it. The model is a random-weight BERT of bge-small-en-v1.5's
shape (12 x 384; ``--arch base``: 12 x 768), CLS pooling, normalised: the same vectors in both systems.

Both rows are whole command lines timed from start to exit (imports, model load, encoding, search,
metrics, result files):

* ``bge eval DIR --model M --dtype fp16 --k 1,10,100 --top-k 1000 -o …``
* ``python -m FlagEmbedding.evaluation.custom --dataset_dir DIR --embedder_name_or_path M
  --embedder_model_class encoder-only-base --pooling_method cls --use_fp16 True --devices cuda:0
  --search_top_k 1000 --k_values 1 10 100 …`` (its defaults otherwise: batch 3000, faiss flat IP index
  on all GPUs when faiss has GPU support, else on the CPU).

Before the timed runs, each system runs once untimed on a 2,000 x 100 dataset with byte-code caching on
(``PYTHONPYCACHEPREFIX`` under the checkpoint folder): a timed run then finds its modules compiled, as in an
installed environment. Without it, on an image whose packages carry no ``.pyc`` files and cannot get
them, every process compiles transformers' sources again: a py-spy profile of `bge eval` on the GPU host
(2026-12-04, run 5) spent ~8 s of its ~13 s of imports in ``SourceLoader.source_to_code``.

Both runs' nDCG@10 and recall@100 are printed next to the times (they agree up to fp16 noise).
Results: a table on stdout and $OUT/eval.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import workloads as W  # noqa: E402

OUT = os.environ.get("OUT", "/tmp")
CK = os.environ.get("BENCH_CHECKPOINTS", "/tmp/bge-bench")


def build_dense(path: str, hidden: int, layers: int, heads: int) -> str:
    """A random BERT of the given shape with the word-level tokenizer (pooling: CLS, FlagEmbedding's default)."""
    import torch
    from transformers import BertConfig, BertModel

    if os.path.exists(os.path.join(path, "config.json")):
        return path
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=W.VOCAB_WORDS + 4, hidden_size=hidden, num_hidden_layers=layers,
                         num_attention_heads=heads, intermediate_size=4 * hidden, pad_token_id=1,
                         initializer_range=0.3),  # large random weights: texts get distinct vectors
              add_pooling_layer=False).save_pretrained(path)
    W.word_tokenizer(path)
    return path


def write_dataset(folder: str, passages: int, queries: int) -> str:
    """FlagEmbedding's custom layout (which `bge eval` also reads); kept between runs of the same size."""
    done = os.path.join(folder, "test_qrels.jsonl")
    if os.path.exists(done):
        return folder
    os.makedirs(folder, exist_ok=True)
    texts = W.corpus(passages, 8, 510, 90, 0.6, 11)
    rng = random.Random(12)
    with open(os.path.join(folder, "corpus.jsonl"), "w") as handle:
        for i, text in enumerate(texts):
            handle.write(json.dumps({"id": f"d{i}", "title": "", "text": text}) + "\n")
    targets = rng.sample(range(passages), queries)
    with open(os.path.join(folder, "test_queries.jsonl"), "w") as handle:
        for j, i in enumerate(targets):
            words = texts[i].split()
            start = rng.randrange(max(1, len(words) - 10))
            handle.write(json.dumps({"id": f"q{j}", "text": " ".join(words[start:start + 10])}) + "\n")
    with open(done + ".tmp", "w") as handle:
        for j, i in enumerate(targets):
            handle.write(json.dumps({"qid": f"q{j}", "docid": f"d{i}", "relevance": 1}) + "\n")
    os.replace(done + ".tmp", done)
    return folder


def timed(command: list[str], env: dict[str, str], stages: dict[str, float] | None = None) -> float:
    """Run `command` to its end; its wall time. `bge eval`'s own ``seconds:`` line goes into `stages`."""
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.stderr.write(done.stdout[-4000:] + done.stderr[-8000:])
        raise SystemExit(f"failed ({done.returncode}): {' '.join(command)}")
    if stages is not None:
        for line in done.stderr.splitlines():
            if line.startswith("seconds: "):
                for item in line[len("seconds: "):].split(", "):
                    stage, _, value = item.rpartition(" ")
                    stages[stage] = float(value)
    return seconds


# `bge` with three time stamps written to $BENCH_PHASES: before its imports, after them, and after the
# command returned; with the parent's launch and exit times they split a run into start-up, command, exit.
PHASED_BGE = """import json, os, sys, time
t0 = time.time()
from bge_cli.main import main
t1 = time.time()
try:
    main(sys.argv[1:])
finally:
    json.dump({"python": t0, "imported": t1, "returned": time.time()}, open(os.environ["BENCH_PHASES"], "w"))
"""


def run_bge(model: str, data: str, work: str, device: str, fp16: bool, env: dict[str, str],
            profile: str | None = None) -> tuple[float, dict, dict[str, float]]:
    """`bge eval` end to end: (seconds, its dense metrics, its per-stage seconds: its own ``seconds:``
    line, plus start-up (interpreter and imports), command and exit). With `profile`, the run is
    sampled by py-spy (all threads, native frames off) into that raw flame-graph file."""
    out = os.path.join(work, "bge.json")
    phases = os.path.join(work, "phases.json")
    command = [sys.executable, "-c", PHASED_BGE, "eval", data, "--model", model, "--device", device,
               "--k", "1,10,100", "--top-k", "1000", "-o", out, "-q"]
    if fp16:
        command += ["--dtype", "fp16"]
    if profile:
        command = ["py-spy", "record", "-r", "100", "--format", "raw", "-o", profile, "--", *command]
    stages: dict[str, float] = {}
    launched = time.time()
    seconds = timed(command, {**env, "BENCH_PHASES": phases}, stages)
    stamps = json.load(open(phases))
    stages.update({"start-up and imports": stamps["imported"] - launched,
                   "command": stamps["returned"] - stamps["imported"],
                   "exit": launched + seconds - stamps["returned"]})
    metrics = json.load(open(out))
    return seconds, next(iter(metrics.values()))["dense"]["NoReranker"]["test"], stages


def run_flagembedding(model: str, data: str, work: str, device: str, fp16: bool,
                      env: dict[str, str]) -> tuple[float, dict]:
    out = os.path.join(work, "fe.json")
    command = [sys.executable, "-m", "FlagEmbedding.evaluation.custom", "--eval_name", "bench", "--dataset_dir", data,
               "--splits", "test", "--output_dir", os.path.join(work, "fe_results"), "--overwrite", "True",
               "--cache_path", os.path.join(work, "fe_cache"), "--search_top_k", "1000", "--k_values", "1", "10",
               "100", "--eval_output_method", "json", "--eval_output_path", out,
               "--embedder_name_or_path", model, "--embedder_model_class", "encoder-only-base",
               "--pooling_method", "cls", "--normalize_embeddings", "True", "--use_fp16", str(fp16),
               "--devices", device]
    seconds = timed(command, env)
    metrics = json.load(open(out))
    return seconds, next(iter(metrics.values()))["NoReranker"]["test"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda:0")
    parser.add_argument("--quick", action="store_true", help="Tiny BERT, 2,000 passages x 100 queries (CPU smoke).")
    parser.add_argument("--arch", choices=["small", "base"], default="small")
    parser.add_argument("--passages", type=int)
    parser.add_argument("--queries", type=int)
    parser.add_argument("--skip-flagembedding", action="store_true")
    parser.add_argument("--repeat", type=int, default=1,
                        help="Run each system this many times (the first run on a fresh machine also pays "
                             "cold compiler caches).")
    parser.add_argument("--no-prime", action="store_true",
                        help="Skip the untimed first run of each system (byte-code, page cache, compiler caches).")
    parser.add_argument("--profile", action="store_true",
                        help="Also run `bge eval` once more under py-spy ($OUT/eval-pyspy.txt, not timed).")
    args = parser.parse_args()
    passages = args.passages or (2_000 if args.quick else 100_000)
    queries = args.queries or (100 if args.quick else 1_000)
    if args.quick:
        model, arch = build_dense(f"{CK}/eval-tiny", 64, 2, 2), "tiny 2x64"
    elif args.arch == "base":
        model, arch = build_dense(f"{CK}/eval-base", 768, 12, 12), "bge-base 12x768"
    else:
        model, arch = build_dense(f"{CK}/eval-small", 384, 12, 12), "bge-small 12x384"
    data = write_dataset(f"{CK}/eval-data-{passages}-{queries}", passages, queries)
    work = os.path.join(OUT, "eval-work")
    os.makedirs(work, exist_ok=True)
    fp16 = args.device.startswith("cuda")
    # Both systems as a user runs them: tokenizers' own threads allowed (no TOKENIZERS_PARALLELISM=false).
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "PYTHONPYCACHEPREFIX": os.path.join(CK, "pycache")}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    card = "cpu"
    if args.device.startswith("cuda"):
        import torch

        card = torch.cuda.get_device_name(torch.device(args.device))
    if not args.no_prime:
        small = write_dataset(f"{CK}/eval-data-2000-100", 2_000, 100)
        run_bge(model, small, work, args.device, fp16, env)
        if not args.skip_flagembedding:
            run_flagembedding(model, small, work, args.device, fp16, env)
    rows = []
    for attempt in range(1, args.repeat + 1):
        seconds, metrics, stages = run_bge(model, data, work, args.device, fp16, env)
        rows.append({"system": f"bge eval (run {attempt})", "seconds": seconds,
                     **{k: metrics[k] for k in ("ndcg_at_10", "recall_at_100")}, "stages": stages})
        print("bge eval stages (s): " + ", ".join(f"{k} {v:.2f}" for k, v in stages.items()), flush=True)
    if args.profile:
        run_bge(model, data, work, args.device, fp16, env, profile=os.path.join(OUT, "eval-pyspy.txt"))
    if not args.skip_flagembedding:
        for attempt in range(1, args.repeat + 1):
            seconds, metrics = run_flagembedding(model, data, work, args.device, fp16, env)
            rows.append({"system": f"FlagEmbedding.evaluation.custom (run {attempt})", "seconds": seconds,
                         **{k: metrics[k] for k in ("ndcg_at_10", "recall_at_100")}})
    print(f"{card}; {arch}; {passages:,} passages x {queries:,} queries; dense; fp16={fp16}")
    print(f"{'system':44} {'seconds':>9} {'ndcg@10':>8} {'recall@100':>10} {'speed-up':>8}")
    for row in rows:
        print(f"{row['system']:44} {row['seconds']:9.2f} {row['ndcg_at_10']:8.4f} {row['recall_at_100']:10.4f} "
              f"{rows[-1]['seconds'] / row['seconds']:7.2f}x")
    print("speed-up: against the last row")
    report = {"card": card, "arch": arch, "passages": passages, "queries": queries, "fp16": fp16, "rows": rows}
    with open(os.path.join(OUT, "eval.json"), "w") as handle:
        json.dump(report, handle, indent=2)


if __name__ == "__main__":
    main()
