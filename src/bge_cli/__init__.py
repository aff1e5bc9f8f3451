"""bge-plugins' applications: the `bge` command line, its file readers/writers and the demo.

Layers point one way (each package imports only those below it):

    bge_cli (this package: `bge encode|index|search|demo|serve|eval|merge`, `bge_cli.io`, `bge_cli.demo`)
        ▼
    bge_server · bge_ray · bge_eval   (applications the commands start; none imports bge_cli or another)
        ▼
    bge_milvus · bge_langchain · bge_llamaindex · bge_haystack   (adapters: framework types ⇄ core calls)
        ▼
    bge_core   (the library: registry, loading, engine, families, models, compat, merge; no framework,
                Milvus, HTTP, Ray, click or file-format imports)

Example:
    >>> from bge_cli.main import main      # the console script `bge`
    >>> from bge_cli.demo import run_demo  # the main job as a function
"""
