"""What every model handle (`Embedder`, `Reranker`) says about itself, and its tokenizer as a user sees it."""

from __future__ import annotations

import copy
import threading
from collections.abc import Sequence
from typing import Any

from bge_core.engine.inputs import as_text_list, cut
from bge_core.loading import LoadedModel
from bge_core.types import Token

_CLONE_LOCK = threading.Lock()


class ModelHandle:
    """A name, and the loaded weights behind it (shared with every handle on the same checkpoint)."""

    name: str
    loaded: LoadedModel

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
        items, _ = as_text_list(texts)
        if max_length is not None:  # a 10 MB string costs O(max_length), as in the engine
            items = [cut(t, max_length) for t in items]
        tokenizer, lock = self._own_tokenizer()
        options: dict[str, Any] = {"truncation": True, "max_length": max_length} if max_length else {}
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
