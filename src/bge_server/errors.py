"""Errors in each API's own shape.

TEI routes answer ``{"error": message, "error_type": kind}`` (TEI's names: Validation, Empty, Overloaded,
Backend, Unhealthy, Tokenizer; ours add Unauthorized, PayloadTooLarge, NotFound, ModelNotFound).
OpenAI- and Cohere-style routes (``/v1/…``, ``/v2/…``, ``/embeddings``) answer OpenAI's
``{"error": {"message", "type", "param", "code"}}`` and repeat ``message``, ``type`` and ``code`` at
the top level as TEI's OpenAI route does, so the openai SDK, Cohere-style clients (which read
``message``) and TEI-route clients such as pymilvus' TEIEmbeddingFunction all find the message.
"""

from __future__ import annotations

from typing import Any

from starlette.responses import JSONResponse

#: HTTP status of each error kind.
STATUS = {
    "Empty": 400,
    "Unauthorized": 401,
    "NotFound": 404,
    "ModelNotFound": 404,
    "PayloadTooLarge": 413,
    "Validation": 422,
    "Tokenizer": 422,
    "Backend": 424,
    "Overloaded": 429,
    "Internal": 500,
    "Unhealthy": 503,
}


class ApiError(Exception):
    """An error the client gets as a response: its kind (see `STATUS`) and a message naming the problem.

    Example:
        >>> raise ApiError("Empty", "`inputs` cannot be empty")
    """

    def __init__(self, kind: str, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.status = status or STATUS[kind]


def api_family(path: str) -> str:
    """``"openai"`` for the OpenAI / Cohere-style routes, ``"tei"`` for the rest.

    Example:
        >>> api_family("/v1/embeddings"), api_family("/embed")
        ('openai', 'tei')
    """
    return "openai" if path.startswith(("/v1/", "/v2/")) or path == "/embeddings" else "tei"


def error_body(path: str, kind: str, message: str, status: int) -> dict[str, Any]:
    """The JSON body of an error on `path`, in that route's API shape."""
    if api_family(path) == "openai":
        kind_name = "invalid_request_error" if status < 500 and kind not in ("Overloaded",) else kind.lower()
        code: Any = "model_not_found" if kind == "ModelNotFound" else status
        return {
            "error": {"message": message, "type": kind_name, "param": None, "code": code},
            "message": message, "type": kind, "code": status,
        }
    return {"error": message, "error_type": kind}


def error_response(path: str, kind: str, message: str, status: int | None = None) -> JSONResponse:
    """A JSONResponse with `error_body`.

    Example:
        >>> error_response("/embed", "Empty", "`inputs` cannot be empty").status_code
        400
    """
    code = status or STATUS[kind]
    headers = {"WWW-Authenticate": "Bearer"} if code == 401 else None
    return JSONResponse(error_body(path, kind, message, code), status_code=code, headers=headers)
