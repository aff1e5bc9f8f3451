"""`bge merge`: LM-Cocktail model merging, with weights given by hand or computed from a few examples."""

from __future__ import annotations

import json
import math
import os
from typing import Any

import click

from bge_cli.common import user_errors
from bge_cli.io import InputError, format_table


@click.command()
@click.argument("models", nargs=-1, required=True, metavar="MODEL...")
@click.option("-o", "--output", required=True, help="Directory for the merged model (must be new or empty).")
@click.option("--weights", help="One weight per model, comma-separated, summing to 1 (e.g. 0.3,0.7).")
@click.option("--data", "data_path", help="JSONL examples to compute the weights from: "
              '{"query","pos","neg"} (encoder, reranker) or {"input","output"} (decoder).')
@click.option("--temperature", default=5.0, show_default=True, type=float,
              help="With --data: softmax temperature of -loss (lower: sharper weights).")
@click.option("--model-type", type=click.Choice(["encoder", "reranker", "decoder"]),
              help="Default: from config.json (*ForCausalLM: decoder, *ForSequenceClassification: reranker).")
@click.option("--batch-size", default=2, show_default=True, type=click.IntRange(min=1),
              help="With --data: examples per forward batch.")
@click.option("--max-length", default=2048, show_default=True, type=click.IntRange(min=1),
              help="With --data: tokens per text.")
@click.option("--neg-number", default=7, show_default=True, type=click.IntRange(min=0),
              help="With --data: negatives sampled per example (encoder, reranker).")
@click.option("--seed", default=0, show_default=True, type=int, help="With --data: seed of the negative sampling.")
@click.option("--device", help="With --data: where losses are computed (default: first GPU, else CPU).")
@click.option("--overwrite", is_flag=True, help="Replace OUTPUT if it is not empty.")
def merge(models: tuple[str, ...], output: str, weights: str | None, data_path: str | None, temperature: float,
          model_type: str | None, batch_size: int, max_length: int, neg_number: int, seed: int,
          device: str | None, overwrite: bool) -> None:
    """Merge MODEL... (same architecture) into OUTPUT: a weighted sum of their parameters (LM-Cocktail).

    Weights come from --weights, or from --data: softmax(-loss/temperature) of each model's loss on a
    few examples. The weights are printed and saved as OUTPUT/merge_weights.json; BGE-M3 heads are
    merged too; config and tokenizer come from the first MODEL. Nothing is written on error.
    """
    from bge_core.merge import mix_models, mix_models_with_data

    with user_errors():
        if (weights is None) == (data_path is None):
            raise click.UsageError("give exactly one of --weights and --data")
        if weights is not None:
            result = mix_models(list(models), parse_weights(weights), output, model_type, overwrite=overwrite)
        else:
            kind = model_type or _detect(models[0])
            examples = read_examples(data_path, kind, neg_number)
            result = mix_models_with_data(list(models), examples, output, temperature, model_type, overwrite=overwrite,
                                          batch_size=batch_size, max_input_length=max_length, neg_number=neg_number,
                                          seed=seed, device=device)
    headers, rows = ["model", "weight"], [[m, f"{w:.6f}"] for m, w in zip(result.models, result.weights)]
    if result.losses is not None:
        headers.insert(1, "loss")
        for row, loss in zip(rows, result.losses):
            row.insert(1, f"{loss:.6f}")
    click.echo(format_table(headers, rows, right=set(range(1, len(headers)))))
    click.echo(f"merged {len(result.models)} {result.model_type} models into {result.output_path} "
               f"(weights in {os.path.join(result.output_path, 'merge_weights.json')})")
    if result.skipped_files:
        click.echo(f"not copied (other weight formats of the first model): {', '.join(result.skipped_files)}")


def parse_weights(text: str) -> list[float]:
    """``"0.3,0.7"`` → ``[0.3, 0.7]``; a part that is not a finite number is an error naming it.

    Example:
        >>> parse_weights("0.3, 0.7")
        [0.3, 0.7]
    """
    values = []
    for position, part in enumerate(text.split(","), start=1):
        try:
            value = float(part.strip())
        except ValueError:
            raise InputError(f"--weights: weight {position} ({part.strip()!r}) is not a number") from None
        if not math.isfinite(value):
            raise InputError(f"--weights: weight {position} is {part.strip()}; weights must be finite")
        values.append(value)
    return values


def _detect(model: str) -> str:
    from bge_core.merge.weights import detect_model_type, read_checkpoint

    return detect_model_type(read_checkpoint(model).config)


def read_examples(path: str, model_type: str, neg_number: int) -> list[dict[str, Any]]:
    """The examples of a JSONL file (blank lines skipped), each checked for `model_type`.

    Raises:
        InputError: the file is missing or unreadable, or a line is not a valid example (``path:line: …``).

    Example:
        >>> len(read_examples("examples.jsonl", "encoder", neg_number=7))
        5
    """
    from bge_core.merge import MergeError, check_example

    try:
        with open(path, encoding="utf-8") as fh:
            lines = fh.read().splitlines()
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"{path}: cannot read ({error})") from None
    examples = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            example = json.loads(line)
        except json.JSONDecodeError as error:
            raise InputError(f"{path}:{number}: invalid JSON ({error.msg} at column {error.colno})") from None
        try:
            check_example(example, model_type, neg_number, f"{path}:{number}")
        except MergeError as error:
            raise InputError(str(error)) from None
        examples.append(example)
    if not examples:
        raise InputError(f"{path}: no examples")
    return examples
