"""bge-plugins' applications: the `bge` command line, its file readers/writers and the demo.

Layers point one way (each package imports only those below it):

    bge_cli (this package: `bge encode|index|search|demo`, `bge_cli.io`, `bge_cli.demo`)
        ▼
    bge_milvus · bge_langchain · bge_llamaindex · bge_haystack   (adapters: framework types ⇄ core calls)
        ▼
    bge_core   (the library: registry, loading, engine, families, models, compat; no framework, Milvus,
                HTTP, click or file-format imports)

Example:
    >>> from bge_cli.main import main      # the console script `bge`
    >>> from bge_cli.demo import run_demo  # the main job as a function
"""
