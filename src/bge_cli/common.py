"""What every `bge` subcommand shares: option types, model loading, and turning user errors into one line.

Errors a user can fix (bad input file, unknown model, wrong option) print one ``Error: …`` line and
exit 1; bugs keep their traceback.
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from collections.abc import Iterator
from typing import Any

import click

from bge_cli.demo import DEFAULT_MODEL, prepare_hub
from bge_cli.io import InputError
from bge_core.errors import BgeCoreError

DTYPES = click.Choice(["fp32", "fp16", "bf16", "fp8"], case_sensitive=False)


def quiet_libraries() -> None:
    """Keep the terminal for our own output: no weight-loading bars or library chatter."""
    warnings.filterwarnings("ignore", message="pkg_resources is deprecated")  # milvus-lite 2.x imports it
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hook = getattr(hf_logging, "set_tqdm_hook", None)  # transformers' own bars only; downloads keep theirs
    if hook is not None:
        hook(lambda factory, args, kwargs: factory(*args, **{**kwargs, "disable": True}))


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Errors a user can fix become one ``Error: …`` line and exit status 1 (bugs keep their traceback)."""
    try:
        yield
    except Exception as error:
        pymilvus = sys.modules.get("pymilvus")  # imported only by the commands that talk to Milvus
        from_milvus = pymilvus is not None and isinstance(error, pymilvus.MilvusException)
        if isinstance(error, (BgeCoreError, ValueError, OSError)) or from_milvus:
            raise click.ClickException(str(error) or type(error).__name__) from None
        raise


def milvus() -> Any:
    """The `bge_milvus` module, or a one-line hint when the Milvus extra is not installed."""
    try:
        import bge_milvus
    except ImportError as error:
        raise click.ClickException(f"{error}; install it with: pip install 'bge-plugins[milvus]'") from None
    return bge_milvus


#: One-shot commands load without a warm-up: no compiling (5–7 s), no CUDA graphs for online batch
#: sizes; `bge serve` warms its models itself.
ONE_SHOT = {"warm_up": False}
#: A one-shot job warms its model up (compiles the encoder) from this many characters of text on:
#: compiling costs 5–7 s and saves 9% of bge-m3's passage time (767k → 836k tok/s on an H200,
#: bench/probe_gpu.py compile), which pays after about a minute of encoding: ~50M tokens.
COMPILE_PAYS_CHARS = 200_000_000


def warm_up_if_large(model: Any, work: int | str) -> None:
    """Compile `model`'s encoder (a warm-up) when a job pays for it: `work` is its characters of text,
    or its input file (whose size stands for them).

    Example:
        >>> warm_up_if_large(embedder, "corpus.jsonl")  # doctest: +SKIP
    """
    chars = work if isinstance(work, int) else os.path.getsize(work) if os.path.isfile(work) else 0
    if chars >= COMPILE_PAYS_CHARS:
        model.warm_up()


def load_embedder(model: str, *, m3: bool = False, **options: Any) -> Any:
    """The core `Embedder` for `model` (a BGE-M3 when `m3`: Milvus collections need its sparse head),
    loaded for a one-shot command (no warm-up)."""
    from bge_core import Embedder

    prepare_hub([model])
    embedder = Embedder(model, **ONE_SHOT, **{k: v for k, v in options.items() if v is not None})
    if m3 and embedder.family != "m3":
        raise InputError(f"{model}: a {embedder.family} model; dense + sparse collections need a BGE-M3 model")
    return embedder


def milvus_options(f: Any) -> Any:
    """The options of every subcommand that opens a collection (`index`, `search`)."""
    for option in reversed([
        click.option("--collection", required=True, help="Collection name."),
        click.option("--uri", default="./bge.db", show_default=True,
                     help="Milvus Lite file, or a Milvus server (http://host:19530)."),
        click.option("--token", default="", envvar="MILVUS_TOKEN", help="Server token (user:password or API key)."),
        click.option("--model", default=DEFAULT_MODEL, show_default=True, envvar="BGE_MODEL",
                     help="BGE-M3 hub id or directory (the one the collection was indexed with)."),
        click.option("--device", help="cpu, cuda, cuda:1… (default: first GPU, else CPU)."),
        click.option("--dtype", type=DTYPES, help="Default bf16 on GPU, fp32 on CPU."),
        click.option("--max-length", type=click.IntRange(min=1), help="Tokens per text (default: the model's)."),
    ]):
        f = option(f)
    return f
