"""Scheduling: length sort, token-budget batches, out-of-memory split-and-retry.

All ordering logic of the project lives here: items are sorted longest first, cut into
batches whose cost stays under a token budget, and results are put back in input order.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import torch

log = logging.getLogger(__name__)

T = TypeVar("T")


def length_order(lengths: Sequence[int]) -> list[int]:
    """Indices sorted by length, longest first; ties keep input order (stable)."""
    return sorted(range(len(lengths)), key=lambda i: -lengths[i])


def token_budget_batches(
    order: Sequence[int], lengths: Sequence[int], token_budget: int, padded: bool, max_items: int | None = None
) -> Iterator[list[int]]:
    """Cut `order` into batches whose cost stays within `token_budget`.

    The cost of a padded batch is rows × longest row; of a packed one, the sum of lengths.
    A single item longer than the budget forms its own batch.

    Example:
        >>> list(token_budget_batches([0, 1, 2], [5, 4, 1], token_budget=8, padded=True))
        [[0], [1], [2]]
    """
    batch: list[int] = []
    cost = 0
    longest = 0
    for i in order:
        n = lengths[i]
        if padded:
            new_cost = max(longest, n) * (len(batch) + 1)
        else:
            new_cost = cost + n
        if batch and (new_cost > token_budget or (max_items is not None and len(batch) >= max_items)):
            yield batch
            batch, cost, longest = [], 0, 0
            new_cost = n
        batch.append(i)
        cost = new_cost
        longest = max(longest, n)
    if batch:
        yield batch


def is_out_of_memory(error: BaseException) -> bool:
    """True only for a device out-of-memory error (never for other RuntimeErrors)."""
    return isinstance(error, torch.OutOfMemoryError)


def run_with_oom_split(items: list[int], run: Callable[[list[int]], list[T]]) -> list[T]:
    """Run `run(items)`; on out-of-memory split the batch in halves and retry each.

    Any other error propagates unchanged. A single item that still does not fit re-raises.
    """
    try:
        return run(items)
    except Exception as error:  # noqa: BLE001 - filtered just below
        if not is_out_of_memory(error) or len(items) == 1:
            raise
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    half = len(items) // 2
    log.warning("out of memory on a batch of %d items; retrying as %d + %d", len(items), half, len(items) - half)
    return run_with_oom_split(items[:half], run) + run_with_oom_split(items[half:], run)


def restore_order(order: Sequence[int], results: Sequence[Any]) -> list[Any]:
    """Put results computed in `order` back in input order."""
    out: list[Any] = [None] * len(order)
    for position, index in enumerate(order):
        out[index] = results[position]
    return out
