"""What every model handle (`Embedder`, `Reranker`) says about itself, and its tokenizer as a user sees it."""

from __future__ import annotations

import copy
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

from bge_core.engine.inputs import as_text_list, cut
from bge_core.loading import LoadedModel
from bge_core.types import Token

_CLONE_LOCK = threading.Lock()


class ModelHandle(ABC):
    """A name, and the loaded weights behind it (shared with every handle on the same checkpoint)."""

    name: str
    loaded: LoadedModel
    max_length: int

    def warm_up(self) -> float:
        """Pay now what first calls would pay: compiling the encoder, capturing the CUDA graph of every
        small-batch size bucket, growing the device memory pool to a full batch. Servers call it
        before they accept traffic, so no request waits for a capture. Cheap when already warm.
        Without a warm-up the encoder is never compiled (models/compiled.py says why).

        Returns:
            the seconds it took.

        Example:
            >>> Embedder("BAAI/bge-m3", device="cuda").warm_up()  # doctest: +SKIP
            6.2
        """
        from bge_core.engine.graphs import BUCKETS, SHORT_SPAN, SINGLE_BUCKETS, SLOTS
        from bge_core.models.compiled import allow_compiling

        start = time.perf_counter()
        allow_compiling()
        per_word = len(self.tokenize("warm " * 9)[0]) - len(self.tokenize("warm " * 8)[0]) or 1
        fixed = len(self.tokenize("")[0])

        def text(tokens: int) -> str:
            return "warm " * max(1, (tokens - fixed) // per_word)

        limit = min(self.max_length, 512)
        if "cuda" not in str(self.device):  # nothing to compile or capture: one short call loads the kernels
            self._warm_call([text(16)], limit)
        else:
            budget = getattr(self.loaded.engine, "token_budget", None) or 16384
            self._warm_call([text(limit)] * max(1, budget // limit), limit)  # a full batch
            if self.max_length > limit:  # and one long input (attention shapes, memory of long documents)
                self._warm_call([text(self.max_length)], self.max_length)
            if getattr(self.loaded.engine, "graphs", None) is not None:
                floor = 0
                for bucket in BUCKETS:  # a batch whose tokens fall inside each bucket
                    target = (floor + bucket) // 2
                    count = min(SLOTS, max(2, target // 8))
                    self._warm_call([text(max(fixed + 1, target // count))] * count, limit)
                    if bucket in SINGLE_BUCKETS:  # and one input of as many tokens
                        self._warm_call([text(min(max(fixed + 1, target), limit))], limit)
                    if SHORT_SPAN < bucket and SHORT_SPAN < limit:  # and inputs too long for a short-span graph
                        count = max(2, -(-target // limit))
                        size = target // count
                        self._warm_call([text(size)] * count if size > SHORT_SPAN else [text(target - 32), text(32)],
                                        limit)
                    floor = bucket
        self.loaded.warmed_up_s = time.perf_counter() - start
        return self.loaded.warmed_up_s

    def _warm_up_at_load(self, warm_up: bool | None) -> None:
        """The constructors' `warm_up` option: None warms models on CUDA, once per loaded checkpoint."""
        if warm_up or (warm_up is None and "cuda" in str(self.device) and self.loaded.warmed_up_s is None):
            self.warm_up()

    @abstractmethod
    def _warm_call(self, texts: list[str], max_length: int) -> None:
        """One call over `texts` with every output the model has (warm_up's building block)."""

    @property
    def path(self) -> str:
        """The local directory the weights were read from."""
        return self.loaded.path

    @property
    def device(self) -> str | list[str]:
        """Where the weights live: ``"cuda:0"``, or one entry per device for a multi-device model.

        Example:
            >>> Embedder("BAAI/bge-m3", device="cpu").device
            'cpu'
        """
        engines = getattr(self.loaded.engine, "engines", None)
        return [str(e.device) for e in engines] if engines else str(self.loaded.device)

    @property
    def dtype(self) -> str:
        """Precision of the weights, spelt as the ``dtype=`` option accepts it (``"float32"``, ``"bfloat16"``…)."""
        return str(next(self.loaded.family.model.parameters()).dtype).rpartition(".")[2]

    def _own_tokenizer(self) -> tuple[Any, threading.Lock]:
        # A private copy: the engine's tokenizer carries truncation state that its own threads set
        # under the engine's lock, so user-facing tokenization never touches it.
        with _CLONE_LOCK:
            own = self.__dict__.get("_user_tokenizer")
            if own is None:
                own = (copy.deepcopy(self.loaded.family.tokenizer), threading.Lock())
                self.__dict__["_user_tokenizer"] = own
        return own

    def tokenize(
        self, texts: str | Sequence[str], *, add_special_tokens: bool = True, max_length: int | None = None
    ) -> list[list[Token]]:
        """The tokens of each text, with their character spans (what a ``/tokenize`` endpoint shows).

        Texts are tokenized as given (no instruction is added). `max_length` cuts each text's tokens
        (special tokens included); None keeps them all. Safe from many threads.

        Returns:
            per text a list of `Token` (id, text, special, start, stop); a special token's text is
            the token itself, any other token's text is ``text[start:stop]``.

        Example:
            >>> [t.text for t in Embedder("BAAI/bge-m3").tokenize("hello world")[0]]
            ['<s>', 'hello', ' world', '</s>']
        """
        items, options = _user_inputs(texts, max_length)
        tokenizer, lock = self._own_tokenizer()
        with lock:
            encoded = tokenizer(
                items, add_special_tokens=add_special_tokens, return_offsets_mapping=True,
                return_special_tokens_mask=True, return_attention_mask=False, return_token_type_ids=False,
                **options,
            ) if items else {"input_ids": [], "offset_mapping": [], "special_tokens_mask": []}
            pieces = [tokenizer.convert_ids_to_tokens(ids) for ids in encoded["input_ids"]]
        out = []
        for text, ids, spans, specials, names in zip(
            items, encoded["input_ids"], encoded["offset_mapping"], encoded["special_tokens_mask"], pieces
        ):
            out.append([
                Token(int(i), name if special else text[start:stop], bool(special), int(start), int(stop))
                for i, (start, stop), special, name in zip(ids, spans, specials, names)
            ])
        return out

    def count_tokens(self, texts: str | Sequence[str], *, max_length: int | None = None) -> list[int]:
        """Tokens each text is read as, special tokens included (what a service reports as usage):
        ``len(t)`` of each row of `tokenize`, without building the tokens. Safe from many threads.

        Example:
            >>> Embedder("BAAI/bge-m3").count_tokens(["hello world"])
            [4]
        """
        items, options = _user_inputs(texts, max_length)
        if not items:
            return []
        tokenizer, lock = self._own_tokenizer()
        with lock:
            encoded = tokenizer(items, return_attention_mask=False, return_token_type_ids=False, **options)
        return [len(ids) for ids in encoded["input_ids"]]

    def decode(self, ids: Sequence[Sequence[int]], *, skip_special_tokens: bool = True) -> list[str]:
        """Text of each row of token ids (the inverse of `tokenize`, up to normalisation).

        Raises:
            TypeError: a row is not a list of non-negative ints (its index is named).
            ValueError: an id is outside the vocabulary (row and id named).

        Example:
            >>> m3 = Embedder("BAAI/bge-m3")
            >>> m3.decode([[t.id for t in m3.tokenize("hello")[0]]])
            ['hello']
        """
        tokenizer, lock = self._own_tokenizer()
        size = len(tokenizer)
        rows: list[list[int]] = []
        for r, row in enumerate(ids):
            if isinstance(row, (str, bytes)) or not isinstance(row, Sequence):
                raise TypeError(f"ids[{r}] must be a list of token ids, got {type(row).__name__}")
            for i in row:
                if not isinstance(i, int) or isinstance(i, bool):
                    raise TypeError(f"ids[{r}] holds {i!r}; token ids are ints")
                if not 0 <= i < size:
                    raise ValueError(f"ids[{r}] holds {i}, outside the vocabulary (0..{size - 1})")
            rows.append(list(row))
        with lock:
            return tokenizer.batch_decode(rows, skip_special_tokens=skip_special_tokens,
                                          clean_up_tokenization_spaces=False)


def _user_inputs(texts: str | Sequence[str], max_length: int | None) -> tuple[list[str], dict[str, Any]]:
    """The texts of a `tokenize` / `count_tokens` call, each cut near `max_length` tokens first (a 10 MB
    string costs O(max_length), as in the engine), and the tokenizer's truncation options."""
    items, _ = as_text_list(texts)
    if max_length is not None:
        items = [cut(t, max_length) for t in items]
    return items, {"truncation": True, "max_length": max_length} if max_length else {}
