"""The `bge` command: the group and its subcommands (one module each under `bge_cli.commands`).

    bge encode MODEL INPUT -o OUTPUT [--sparse] [--colbert]      vectors of a .txt/.jsonl/.parquet file
    bge index INPUT --collection NAME [--uri ./bge.db]            BGE-M3 dense + sparse into Milvus
    bge search QUERY --collection NAME [--mode hybrid] [--rerank MODEL] [-k 10] [--json]
    bge demo                                                       the main job on a bundled corpus
    bge merge MODEL… --weights 0.3,0.7|--data EXAMPLES.jsonl -o OUT   LM-Cocktail model merging
    bge eval DATASET_DIR --model M [--mode dense|sparse|colbert|hybrid|all]   retrieval metrics (BEIR / custom)

A thin layer: reading and writing files is `bge_cli.io`, models are `bge_core.Embedder` /
`bge_core.Reranker`, collections are `bge_milvus.HybridCollection`, the demo is `bge_cli.demo`.
Errors a user can fix (bad input file, unknown model, wrong option) print one line and exit 1.
"""

from __future__ import annotations

import gc
import sys
from typing import Any

import click

from bge_cli.commands.demo import demo
from bge_cli.commands.encode import encode
from bge_cli.commands.eval import eval_command
from bge_cli.commands.index import index
from bge_cli.commands.merge import merge
from bge_cli.commands.search import search
from bge_cli.commands.serve import serve
from bge_cli.common import quiet_libraries


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="bge-plugins", prog_name="bge")
def main() -> None:
    """BGE embedders, BGE-M3 hybrid search on Milvus and BGE rerankers from the command line."""
    quiet_libraries()


@main.result_callback()
def _before_exit(*_: Any, **__: Any) -> None:
    """The process ends once a command returns: freezing the heap spares the interpreter's last
    collection a walk over every object of torch and transformers (~1 s of a `bge eval` run on a
    2-core machine, 1.4–2.3 s on a GPU host, all of it spent after the results were written). Not
    after Milvus Lite ran: it deletes its database's lock file in a finalizer, which must still run."""
    if "milvus_lite" not in sys.modules:
        gc.freeze()


for command in (encode, index, search, demo, merge, serve, eval_command):
    main.add_command(command)

if __name__ == "__main__":
    main()
