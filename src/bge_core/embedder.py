"""`Embedder`: the native API of every BGE embedding model (dense, BGE-M3, LLM embedders)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from bge_core.engine.inputs import as_text_list
from bge_core.families.m3 import M3Row
from bge_core.families.text import apply_instruction
from bge_core.handle import ModelHandle
from bge_core.loading import LoadedModel, load_model
from bge_core.registry import LLM_EMBEDDER_INSTRUCTIONS
from bge_core.types import Embeddings


class Embedder(ModelHandle):
    """A BGE embedding model ready to encode.

    Args:
        model: hub id (``"BAAI/bge-m3"``), local checkpoint directory, or another `Embedder`
            (shares its loaded weights).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``…; default: first GPU if any, else CPU.
        dtype: ``"bf16"`` / ``"fp16"`` / ``"fp32"``; default bf16 on CUDA, fp32 on CPU. ``"fp8"`` (opt-in,
            GPUs with FP8 tensor cores, BERT / XLM-R models): E4M3 linear layers, the rest in bf16;
            faster, with the small error docs/fp8.md measures.
        max_length: tokens per text (default: the model's, e.g. 512 for bge-*-v1.5, 8192 for BGE-M3).
        query_instruction: text put before queries; default from the model registry
            (e.g. bge-*-en-v1.5's retrieval instruction, none for BGE-M3). ``""`` turns it off.
        passage_instruction: text put before documents (default none).
        task: for BAAI/llm-embedder, one of qa / convsearch / chat / lrlm / icl / tool.
        examples: for bge-en-icl, in-context examples (dicts with instruct / query / response).
        normalize: L2-normalise dense vectors (default True).
        batch_tokens: token budget of one batch (default chosen per device).
        reuse_outputs: keep recent dense and sparse results so that asking for the other one
            with the same texts costs no forward (hybrid indexing through two framework objects).
        packed: force padding-free batches on or off (default: on where the device supports them).
        worker_process: run the model in a worker process even on one device (a list of devices always
            does), so the caller's own Python work never competes with the model for the GIL.
        family: force a family (``"dense"``, ``"m3"``, ``"llm_embedder"``, ``"icl"``) when a local
            checkpoint's name and files do not tell.
        text_model: for a Visualized-BGE ``.pth`` (images + texts), the BGE model it was trained from (hub id
            or directory: config and tokenizer); default the ``.pth``'s directory if it holds a config.json.
        warm_up: compile and capture CUDA graphs at load (`warm_up()`), so the first calls run at full speed
            (``False``: load fast and run the encoder uncompiled, ~9% slower, until `warm_up()` is called);
            default: on CUDA, once per loaded checkpoint.

    Example:
        >>> m3 = Embedder("BAAI/bge-m3")
        >>> out = m3.encode(["BGE-M3 is multilingual."], dense=True, sparse=True, colbert=True)
        >>> out.dense.shape, out.lexical_weights[0], out.colbert_vectors[0].shape
    """

    def __init__(
        self,
        model: str | Embedder,
        *,
        device: str | torch.device | list[str] | None = None,
        dtype: str | torch.dtype | None = None,
        max_length: int | None = None,
        query_instruction: str | None = None,
        query_instruction_format: str | None = None,
        passage_instruction: str | None = None,
        passage_instruction_format: str = "{}{}",
        task: str | None = None,
        examples: list[dict[str, str]] | None = None,
        examples_format: str = "<instruct>{}\n<query>{}\n<response>{}",
        normalize: bool | None = None,
        pooling: str | None = None,
        batch_tokens: int | None = None,
        reuse_outputs: bool = True,
        family: str | None = None,
        token: str | None = None,
        packed: bool | None = None,
        worker_process: bool = False,
        text_model: str | None = None,
        warm_up: bool | None = None,
    ) -> None:
        #: The hub id or path this model was opened by (adapters serialise it).
        self.name: str = model.name if isinstance(model, Embedder) else str(model)
        if isinstance(model, Embedder):
            self.loaded: LoadedModel = model.loaded
        else:
            self.loaded = load_model(model, device=device, dtype=dtype, family=family, token=token, packed=packed,
                                     worker_process=worker_process, text_model=text_model)
        if self.loaded.spec.family not in ("dense", "m3", "llm_embedder", "icl", "visualized"):
            raise ValueError(f"{self.loaded.path} is a {self.loaded.spec.family} model; use bge_core.Reranker")
        if task is not None:
            if task not in LLM_EMBEDDER_INSTRUCTIONS:
                raise ValueError(f"unknown task {task!r}; expected one of {sorted(LLM_EMBEDDER_INSTRUCTIONS)}")
            query_instruction, passage_instruction = LLM_EMBEDDER_INSTRUCTIONS[task]
        base = model.spec if isinstance(model, Embedder) else self.loaded.spec_for(model)
        spec = base.with_overrides(
            max_length=max_length, query_instruction_format=query_instruction_format, normalize=normalize,
            pooling=pooling,
        )
        if query_instruction is not None:  # "" turns the registry's instruction off
            spec = replace(spec, query_instruction=query_instruction or None)
        self.spec = spec
        # None keeps the registry's passage instruction; "" turns it off.
        chosen = spec.passage_instruction if passage_instruction is None else passage_instruction
        self.passage_instruction = chosen or None
        self.passage_instruction_format = passage_instruction_format
        self.examples = examples
        self.examples_format = examples_format
        self.batch_tokens = batch_tokens
        self.reuse_outputs = reuse_outputs
        self._warm_up_at_load(warm_up)

    @property
    def family(self) -> str:
        """``"dense"``, ``"m3"``, ``"llm_embedder"`` or ``"icl"``."""
        return self.spec.family

    @property
    def dim(self) -> int:
        """Length of a dense vector."""
        return int(self.loaded.family.model.config.hidden_size)

    @property
    def colbert_dim(self) -> int | None:
        """Length of a ColBERT vector (BGE-M3), None for models without a ColBERT head."""
        head = getattr(self.loaded.family, "colbert_linear", None)
        return None if head is None else int(head.out_features)

    @property
    def vocab_size(self) -> int:
        """Number of token ids (the width of a sparse vector)."""
        return int(self.loaded.family.model.config.vocab_size)

    @property
    def pad_token_id(self) -> int:
        """The id `bge_core.sparse.storable` uses as the placeholder of an empty sparse row."""
        return self.loaded.family.pad_token_id

    @property
    def max_length(self) -> int:
        return self.spec.max_length

    @property
    def tokenizer(self) -> Any:
        return self.loaded.family.tokenizer

    @property
    def query_instruction(self) -> str | None:
        return self.spec.query_instruction

    def encode(
        self,
        texts: str | Sequence[str],
        *,
        dense: bool = True,
        sparse: bool = False,
        colbert: bool = False,
        instruction: str | None = None,
        instruction_format: str = "{}{}",
        max_length: int | None = None,
        truncate: bool = True,
        show_progress: bool = False,
        on_tokens: Callable[[list[int], list[int]], None] | None = None,
        _options: dict[str, Any] | None = None,
    ) -> Embeddings:
        """Encode texts as they are (after an optional `instruction`); the one entry point.

        Args:
            texts: a string or a sequence of strings (``""`` is valid).
            dense / sparse / colbert: which outputs to compute; sparse and colbert need BGE-M3.
                All requested outputs come from one forward.
            instruction: put before every text with `instruction_format`.
            max_length: tokens per text; longer texts are cut (or rejected with ``truncate=False``).
            on_tokens: called with text indices and how many tokens each runs with (special tokens and
                instruction included, after truncation) as soon as they are tokenized, before their forward;
                texts answered from the output memo (``reuse_outputs``) are not tokenized and not reported.

        Returns:
            `Embeddings` with ``dense`` (n, dim) float32, ``lexical_weights`` list of
            ``{token_id: weight}``, ``colbert_vectors`` list of (tokens-1, dim) float32 arrays.

        Raises:
            TypeError: an item is not a str (its index is named).
            ValueError: ``truncate=False`` and items are too long (indices listed).

        Example:
            >>> Embedder("BAAI/bge-small-en-v1.5").encode(["hello world"]).dense.shape
            (1, 384)
        """
        items, _ = as_text_list(texts)
        if (sparse or colbert) and self.family != "m3":
            raise ValueError(f"{self.loaded.path} has no sparse or ColBERT head (only BGE-M3 has)")
        items = [apply_instruction(instruction, t, instruction_format) for t in items]
        limit = max_length or self.max_length
        options = {"normalize": self.spec.normalize, "pooling": self.spec.pooling, **(_options or {})}
        run = dict(max_length=limit, truncate=truncate, show_progress=show_progress, token_budget=self.batch_tokens,
                   on_tokens=on_tokens)
        if self.family != "m3":
            gather = DenseGather(len(items), self.dim)
            self.loaded.engine.run(items, options=options, on_batch=gather, **run)
            return Embeddings(dense=gather.matrix)
        return self._encode_m3(items, dense, sparse, colbert, options, run)

    def encode_token_states(
        self,
        texts: str | Sequence[str],
        *,
        prompt: str | None = None,
        max_length: int | None = None,
        truncate: bool = True,
        on_tokens: Callable[[list[int], list[int]], None] | None = None,
    ) -> list[np.ndarray]:
        """The last layer's state of every token of each text, special tokens included: one float32
        (tokens, dim) array per text, before any pooling, head or normalisation (TEI's ``/embed_all``,
        sentence-transformers' ``output_value="token_embeddings"``).

        Args:
            prompt: ``"query"`` or ``"document"`` formats the texts as `encode_queries` /
                `encode_documents` do (instructions, in-context examples); None takes them as they are.
            on_tokens: as in `encode`.

        Raises:
            ValueError: the model is a Visualized-BGE model, `prompt` is unknown, or ``truncate=False`` and a
                text is too long.

        Example:
            >>> states = Embedder("BAAI/bge-small-en-v1.5").encode_token_states(["hello world"])
            >>> states[0].shape  # [CLS] hello world [SEP]
            (4, 384)
        """
        items, _ = as_text_list(texts)
        if self.family == "visualized":
            raise ValueError(f"{self.loaded.path} is a Visualized-BGE model: token states are served for text models")
        instruction, template, options = self._prompt_format(prompt)
        items = [apply_instruction(instruction, t, template) for t in items]
        return self.loaded.engine.run(items, max_length=max_length or self.max_length,
                                      options={**options, "token_states": True}, truncate=truncate,
                                      token_budget=self.batch_tokens, on_tokens=on_tokens)

    def _prompt_format(self, prompt: str | None) -> tuple[str | None, str, dict[str, Any]]:
        """(instruction, instruction format, engine options) of texts sent as queries (``"query"``: the query
        instruction and, for bge-en-icl, its in-context examples), documents (``"document"``) or as they are
        (None)."""
        if prompt is None:
            return None, "{}{}", {}
        if prompt == "query":
            options: dict[str, Any] = {}
            if self.family == "icl":
                from bge_core.families.icl import examples_prefix

                prefix = examples_prefix(self.examples, self.query_instruction, self.examples_format)
                options = {"icl_query": True, "prefix": prefix, "suffix": self.spec.suffix}
            return self.query_instruction, self.spec.query_instruction_format, options
        if prompt == "document":
            return self.passage_instruction, self.passage_instruction_format, {}
        raise ValueError(f"unknown prompt {prompt!r}; expected 'query', 'document' or None")

    def _warm_call(self, texts: list[str], max_length: int) -> None:
        m3 = self.family == "m3"
        self.encode(texts, sparse=m3, colbert=m3, max_length=max_length)

    def encode_images(self, images: Any, *, show_progress: bool = False) -> Embeddings:
        """Visualized-BGE: one vector per image (paths, file bytes or PIL images), in the texts' space.

        Raises:
            TypeError / ValueError: an image is of the wrong type, unreadable, not an image or zero-size
                (its index is named).

        Example:
            >>> m = Embedder("Visualized_base_en_v1.5.pth", text_model="BAAI/bge-base-en-v1.5")
            >>> m.encode_images(["cat.jpg"]).dense.shape
            (1, 768)
        """
        return self._encode_visual(images, None, show_progress)

    def encode_multimodal(self, images: Any, texts: str | Sequence[str], *, show_progress: bool = False,
                          truncate: bool = True) -> Embeddings:
        """Visualized-BGE: one vector per (image, text) pair, e.g. a composed query "this dress, in red".

        Raises:
            ValueError: `images` and `texts` differ in length, or an image is unreadable (index named).

        Example:
            >>> m.encode_multimodal(["dress.jpg"], ["the same dress in red"]).dense.shape
            (1, 768)
        """
        items, _ = as_text_list(texts)
        return self._encode_visual(images, items, show_progress, truncate)

    def _encode_visual(self, images: Any, texts: list[str] | None, show_progress: bool,
                       truncate: bool = True) -> Embeddings:
        from bge_core.families.visualized import IMAGE_CHUNK, as_image_list, image_items

        if self.family != "visualized":
            raise ValueError(f"{self.loaded.path} is a text model; images need a Visualized-BGE checkpoint")
        pictures = as_image_list(images)
        if texts is not None and len(texts) != len(pictures):
            raise ValueError(f"{len(pictures)} images but {len(texts)} texts: pass one text per image "
                             f"(index {min(len(pictures), len(texts))} has no partner)")
        gather = DenseGather(len(pictures), self.dim)
        size = self.loaded.family.image_size
        options = {"normalize": self.spec.normalize}
        # Decoded pixels are held only a chunk at a time.
        for start in range(0, len(pictures), IMAGE_CHUNK):
            part = pictures[start:start + IMAGE_CHUNK]
            items = image_items(part, None if texts is None else texts[start:start + IMAGE_CHUNK], size, start)
            shift = _Shifted(gather, start)
            try:
                self.loaded.engine.run(items, max_length=self.max_length, options=options, truncate=truncate,
                                       show_progress=show_progress, token_budget=self.batch_tokens, on_batch=shift)
            except ValueError as error:
                if start == 0:
                    raise
                # the engine counts within this chunk: say where the chunk starts
                raise ValueError(f"{error} (indices counted from input {start})") from error
        return Embeddings(dense=gather.matrix)

    def encode_queries(self, texts: str | Sequence[str], **kwargs: Any) -> Embeddings:
        """`encode` with the query instruction (and, for bge-en-icl, the in-context examples).

        Example:
            >>> Embedder("BAAI/bge-base-en-v1.5").encode_queries(["what is BGE?"]).dense.shape
            (1, 768)
        """
        instruction, template, options = self._prompt_format("query")
        if options:
            kwargs["_options"] = options
        return self.encode(texts, instruction=instruction, instruction_format=template, **kwargs)

    def encode_documents(self, texts: str | Sequence[str], **kwargs: Any) -> Embeddings:
        """`encode` with the passage instruction, if the model has one.

        Example:
            >>> Embedder("BAAI/bge-m3").encode_documents(["a passage"], sparse=True).lexical_weights
        """
        instruction, template, _ = self._prompt_format("document")
        return self.encode(texts, instruction=instruction, instruction_format=template, **kwargs)

    def _encode_m3(
        self, items: list[str], dense: bool, sparse: bool, colbert: bool, options: dict[str, Any], run: dict[str, Any]
    ) -> Embeddings:
        engine, memo = self.loaded.engine, self.loaded.memo
        keys = [(t, run["max_length"], options["normalize"]) for t in items]
        rows: list[M3Row | None] = [None] * len(items)
        # Remembered outputs may come from truncated text: with truncate=False every text is checked anew.
        if self.reuse_outputs and not colbert and run["truncate"]:
            rows = memo.get(keys)
        todo = [i for i, row in enumerate(rows) if row is None]
        gather = DenseGather(len(items), self.dim, todo, pick=_dense_of) if dense else None
        if gather is not None and len(todo) < len(items):  # the remembered rows' dense vectors
            gather.put([i for i, row in enumerate(rows) if row is not None], [r for r in rows if r is not None])
        if todo:
            # The sparse head costs nothing next to the backbone: compute dense and sparse
            # together so the other half of a hybrid insert finds its result in the memo.
            wanted = {"dense": True, "sparse": True, "colbert": colbert} if self.reuse_outputs else \
                {"dense": dense, "sparse": sparse, "colbert": colbert}
            if run["on_tokens"] is not None and len(todo) < len(items):  # the engine counts within `todo`
                told = run["on_tokens"]
                run = {**run, "on_tokens": lambda indices, counts: told([todo[i] for i in indices], counts)}
            fresh = engine.run([items[i] for i in todo], options={**options, **wanted}, on_batch=gather, **run)
            for i, row in zip(todo, fresh):
                rows[i] = row
            if self.reuse_outputs:
                memo.put([(keys[i], M3Row(row.dense, row.lexical_weights, None)) for i, row in zip(todo, fresh)])
        return Embeddings(
            dense=None if gather is None else gather.matrix,
            # Remembered dicts are copied so a caller editing its result cannot change the memo.
            lexical_weights=[(dict(r.lexical_weights) if self.reuse_outputs else r.lexical_weights) for r in rows]
            if sparse else None,
            colbert_vectors=[r.colbert_vectors for r in rows] if colbert else None,
        )


class DenseGather:
    """Collects dense vectors into one (n, dim) float32 matrix batch by batch, while the engine runs
    (its `on_batch`), instead of stacking n rows after it returns: 0.1 s per 40,000 passages taken
    off the end of a call.

    `positions` maps the engine's item indices to rows of the matrix (default: the same);
    `pick` takes the vector out of an output (default: the output is the vector).

    Example:
        >>> gather = DenseGather(2, 3)
        >>> gather([1, 0], [np.ones(3), np.zeros(3)])
        >>> gather.matrix[:, 0].tolist()
        [0.0, 1.0]
    """

    def __init__(self, n: int, dim: int, positions: list[int] | None = None,
                 pick: Callable[[Any], np.ndarray] | None = None) -> None:
        self.matrix = np.empty((n, dim), dtype=np.float32)
        self._positions = None if positions is None else np.asarray(positions, dtype=np.int64)
        self._pick = pick

    def __call__(self, indices: list[int], outputs: list[Any]) -> None:
        """`on_batch`: the outputs of the engine's items `indices`."""
        rows = np.asarray(indices, dtype=np.int64)
        self.put(rows if self._positions is None else self._positions[rows], outputs)

    def put(self, rows: np.ndarray | list[int], outputs: list[Any]) -> None:
        """Write the vectors of `outputs` into matrix rows `rows`."""
        if outputs:
            self.matrix[rows] = np.stack(outputs if self._pick is None else [self._pick(o) for o in outputs])


class _Shifted:
    """`on_batch` of one chunk of a longer input: engine indices count from the chunk's `start`."""

    def __init__(self, gather: DenseGather, start: int) -> None:
        self.gather, self.start = gather, start

    def __call__(self, indices: list[int], outputs: list[Any]) -> None:
        self.gather([self.start + i for i in indices], outputs)


def _dense_of(row: M3Row) -> np.ndarray:
    return row.dense
