"""`bge serve`: TEI-, OpenAI- and Cohere-compatible HTTP server on the engine (`bge_server`)."""

from __future__ import annotations

import click

from bge_cli.common import DTYPES, user_errors
from bge_cli.demo import prepare_hub


@click.command()
@click.option("--model", "models", multiple=True, metavar="ID_OR_DIR",
              help="Embedding model to serve (repeatable; the first answers requests that name no model).")
@click.option("--reranker", "rerankers", multiple=True, metavar="ID_OR_DIR", help="Reranker to serve (repeatable).")
@click.option("--served-model-name", "served_model_names", multiple=True, metavar="NAME",
              help="Name of each --model then each --reranker, in order (default: the id as given).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(0, 65535),
              help="Port; 0 picks a free one (the address is printed on start).")
@click.option("--api-key", envvar="BGE_API_KEY", help="Require 'Authorization: Bearer KEY' (env BGE_API_KEY).")
@click.option("--device", "devices", multiple=True,
              help="cpu, cuda, cuda:1… (default: first GPU, else CPU); repeat it to run every model on several "
                   "GPUs, one worker process each.")
@click.option("--engine-process/--engine-in-server", default=False, show_default=True,
              help="Run the models in an engine host process that the HTTP side calls over a Unix socket (no engine "
                   "thread beside the event loop; always so with --workers > 1).")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(min=1),
              help="HTTP server processes sharing the port; one engine host process runs the models for all "
                   "of them (spreads the Python work of many small requests over cores).")
@click.option("--dtype", type=DTYPES, help="Default bf16 on GPU, fp32 on CPU.")
@click.option("--max-batch-tokens", type=click.IntRange(min=1), help="Token budget of one forward batch.")
@click.option("--max-client-batch-size", default=1024, show_default=True, type=click.IntRange(min=1),
              help="Most inputs in one request (larger requests are refused; smaller ones are split as needed).")
@click.option("--max-concurrent-requests", default=512, show_default=True, type=click.IntRange(min=1),
              help="Requests in flight at once; the next one gets 429.")
@click.option("--auto-truncate/--no-auto-truncate", default=True, show_default=True,
              help="Cut over-long inputs when a request does not say (truncate: null).")
@click.option("--payload-limit", default=2_000_000, show_default=True, type=click.IntRange(min=1),
              help="Largest request body in bytes (413 past it).")
@click.option("--gil-switch-ms", type=click.FloatRange(min=0.01), help="Python's thread switch interval in ms "
              "(default: Python's 5 ms); shorter lets the engine take the GIL back sooner from the event loop.")
@click.option("--log-level", default="warning", show_default=True,
              type=click.Choice(["critical", "error", "warning", "info", "debug"]), help="Server log level.")
def serve(models: tuple[str, ...], rerankers: tuple[str, ...], served_model_names: tuple[str, ...], host: str,
          port: int, api_key: str | None, devices: tuple[str, ...], engine_process: bool, workers: int,
          dtype: str | None, max_batch_tokens: int | None,
          max_client_batch_size: int, max_concurrent_requests: int, auto_truncate: bool, payload_limit: int,
          gil_switch_ms: float | None, log_level: str) -> None:
    """Serve embedding models and rerankers over HTTP: TEI routes (/embed, /embed_sparse, /rerank, …),
    OpenAI /v1/embeddings, Cohere /v1/rerank and /embed_m3 (BGE-M3 dense + sparse + ColBERT).
    SIGTERM or Ctrl-C finishes the requests in flight, then exits."""
    try:
        from bge_server import ServerConfig
        from bge_server import serve as run_server
    except ImportError as error:
        raise click.ClickException(f"{error}; install it with: pip install 'bge-plugins[server]'") from None
    with user_errors():
        config = ServerConfig(
            models=list(models), rerankers=list(rerankers), served_model_names=list(served_model_names), host=host,
            port=port, api_key=api_key or None, engine_process=engine_process, processes=workers,
            device=list(devices) if len(devices) > 1 else (devices[0] if devices else None),
            dtype=dtype, max_batch_tokens=max_batch_tokens,
            max_client_batch_size=max_client_batch_size, max_concurrent_requests=max_concurrent_requests,
            auto_truncate=auto_truncate, payload_limit=payload_limit, gil_switch_interval_ms=gil_switch_ms,
        )
        prepare_hub([*models, *rerankers])
        run_server(config, log_level=log_level)
