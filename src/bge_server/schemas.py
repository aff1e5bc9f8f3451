"""Request bodies of every route (pydantic), and the input checks TEI applies to `inputs`.

Unknown fields are ignored, as TEI's serde structs ignore them: clients such as huggingface_hub send
extra generation parameters at the top level.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from bge_server.errors import ApiError

#: TEI spells the direction "Right"/"Left"; lower case is accepted too.
Direction = Literal["Right", "Left", "right", "left"]


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore", protected_namespaces=())


class TextOptions(_Body):
    """Fields every text route shares."""

    truncate: bool | None = None
    """Cut over-long inputs; None: the server's ``--auto-truncate``."""
    truncation_direction: Direction = "Right"
    prompt_name: str | None = None
    """``"query"`` adds the model's query instruction, ``"document"``/``"passage"`` its passage instruction."""
    model: str | None = None
    """Served model name or id; None: the first model of the right kind."""


class EmbedRequest(TextOptions):
    """TEI ``POST /embed`` (also ``/`` and ``/invocations``)."""

    inputs: Any = None
    normalize: bool = True
    dimensions: int | None = Field(default=None, ge=1)


class SparseRequest(TextOptions):
    """TEI ``POST /embed_sparse``."""

    inputs: Any = None


class M3Request(TextOptions):
    """``POST /embed_m3``: which BGE-M3 outputs to return, all from one forward."""

    inputs: Any = None
    dense: bool = True
    sparse: bool = True
    colbert: bool = False
    normalize: bool = True


class RerankRequest(_Body):
    """``POST /rerank``: TEI's body (``texts``) or Cohere's (``documents``, ``top_n``)."""

    query: Any = None
    texts: Any = None
    documents: Any = None
    truncate: bool | None = None
    truncation_direction: Direction = "Right"
    raw_scores: bool = False
    return_text: bool = False
    top_n: int | None = Field(default=None, ge=0)
    return_documents: bool | None = None
    model: str | None = None


class PredictRequest(_Body):
    """TEI ``POST /predict`` on a reranker: one pair or a list of pairs."""

    inputs: Any = None
    truncate: bool | None = None
    truncation_direction: Direction = "Right"
    raw_scores: bool = False
    model: str | None = None


class SimilarityInputs(_Body):
    source_sentence: str
    sentences: list[str]


class SimilarityParameters(_Body):
    truncate: bool | None = None
    truncation_direction: Direction = "Right"
    prompt_name: str | None = None


class SimilarityRequest(_Body):
    """TEI ``POST /similarity``: cosine of `source_sentence` with each of `sentences`."""

    inputs: SimilarityInputs
    parameters: SimilarityParameters | None = None
    model: str | None = None


class TokenizeRequest(_Body):
    """TEI ``POST /tokenize``."""

    inputs: Any = None
    add_special_tokens: bool = True
    prompt_name: str | None = None
    model: str | None = None


class DecodeRequest(_Body):
    """TEI ``POST /decode``."""

    ids: list[int] | list[list[int]]
    skip_special_tokens: bool = True
    model: str | None = None


class VertexRequest(_Body):
    """TEI ``POST /vertex`` (Vertex AI's prediction shape): each instance is the body of another route."""

    instances: list[Any]


class OpenAIEmbeddingRequest(_Body):
    """OpenAI ``POST /v1/embeddings``."""

    input: Any = None
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1)
    user: str | None = None


def text_inputs(value: Any, field: str = "inputs", *, limit: int) -> tuple[list[str], bool]:
    """The texts of a request field (a string or a list of strings) and whether a bare string was sent.

    Raises `ApiError`: Empty (400) for a missing or empty list, Validation (422) for token-id inputs,
    non-strings (index named) or more than `limit` items.

    Example:
        >>> text_inputs("hello", limit=32)
        (['hello'], True)
    """
    if isinstance(value, str):
        return [value], True
    if value is None or (isinstance(value, list) and not value):
        raise ApiError("Empty", f"`{field}` cannot be empty")
    if not isinstance(value, list):
        raise ApiError("Validation", f"`{field}` must be a string or a list of strings, got {type(value).__name__}")
    if len(value) > limit:
        raise ApiError("Validation", f"batch size {len(value)} > maximum allowed batch size {limit}")
    for i, item in enumerate(value):
        if isinstance(item, str):
            continue
        if all(isinstance(x, int) for x in value) or (isinstance(item, list) and all(isinstance(x, int) for x in item)):
            raise ApiError(
                "Validation",
                f"`{field}[{i}]` is token ids; this server takes text only (LangChain's OpenAIEmbeddings: "
                "pass check_embedding_ctx_length=False)",
            )
        raise ApiError("Validation", f"`{field}[{i}]` must be a string, got {type(item).__name__}")
    return list(value), False


def check_direction(direction: str) -> None:
    """Only right truncation exists in the engine; Left is refused rather than silently ignored."""
    if direction.lower() == "left":
        raise ApiError("Validation", "truncation_direction Left is not supported; inputs are cut on the right")
