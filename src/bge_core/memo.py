"""A small LRU of recent per-text outputs, so dense and sparse asked for in two calls cost one forward.

Frameworks ask for a hybrid store's dense and sparse vectors through two separate objects, one
call after the other, with the same texts. BGE-M3 computes both in the same forward (the sparse
head is a 1-wide linear layer), so the first call keeps both and the second finds them here.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable
from typing import Any


class OutputMemo:
    """Thread-safe LRU mapping a key to one text's outputs.

    Example:
        >>> memo = OutputMemo(capacity=2)
        >>> memo.put([("a", 1)]); memo.get(["a", "b"])
        [1, None]
    """

    def __init__(self, capacity: int = 4096) -> None:
        self.capacity = capacity
        self._items: OrderedDict[Hashable, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, keys: list[Hashable]) -> list[Any]:
        with self._lock:
            out = []
            for key in keys:
                value = self._items.get(key)
                if value is not None:
                    self._items.move_to_end(key)
                out.append(value)
            return out

    def put(self, entries: list[tuple[Hashable, Any]]) -> None:
        with self._lock:
            for key, value in entries[-self.capacity:]:
                self._items[key] = value
                self._items.move_to_end(key)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
