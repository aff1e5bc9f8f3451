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
    order: Sequence[int], lengths: Sequence[int], token_budget: int, padded: bool, max_items: int | None = None,
    batch_overhead: int | None = None,
) -> Iterator[list[int]]:
    """Cut `order` into batches whose cost stays within `token_budget`.

    The cost of a padded batch is rows × longest row; of a packed one, the sum of lengths.
    A single item longer than the budget forms its own batch. With `batch_overhead` (what running one
    more batch costs, in padded tokens), each padded batch of `order` sorted longest first is cut further
    where that wastes less on padding than the extra batches cost (`split_padding`).

    Example:
        >>> list(token_budget_batches([0, 1, 2], [5, 4, 1], token_budget=8, padded=True))
        [[0], [1, 2]]
    """
    if padded and batch_overhead is not None:
        for batch in token_budget_batches(order, lengths, token_budget, padded, max_items):
            yield from split_padding(batch, lengths, batch_overhead)
        return
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


def split_padding(batch: list[int], lengths: Sequence[int], batch_overhead: int) -> list[list[int]]:
    """A padded batch (indices sorted longest first) cut into the runs of lengths that cost least in all:
    each part costs `batch_overhead` plus its rows × its longest row (padded tokens).

    A merged call of short queries of mixed lengths pads every row to the longest: 21 queries of 4–40 words
    cost ~3× their real tokens in one batch. Parts start only where the length changes (moving equal
    rows to the later part never costs more), so the search runs over distinct lengths.

    Example:
        >>> split_padding([0, 1, 2, 3], [40, 38, 6, 5], batch_overhead=16)
        [[0, 1], [2, 3]]
        >>> split_padding([0, 1, 2, 3], [40, 38, 6, 5], batch_overhead=200)
        [[0, 1, 2, 3]]
    """
    starts = [k for k in range(len(batch)) if k == 0 or lengths[batch[k]] != lengths[batch[k - 1]]]
    if len(starts) < 2:
        return [batch]
    starts.append(len(batch))
    # best[g]: least cost of the rows before distinct length g; cut[g]: where its last part starts
    best, cut = [0] * len(starts), [0] * len(starts)
    for g in range(1, len(starts)):
        end = starts[g]
        best[g], cut[g] = min((best[a] + batch_overhead + (end - starts[a]) * lengths[batch[starts[a]]], a)
                              for a in range(g))
    parts, g = [], len(starts) - 1
    while g > 0:
        parts.append(batch[starts[cut[g]] : starts[g]])
        g = cut[g]
    return parts[::-1]


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
