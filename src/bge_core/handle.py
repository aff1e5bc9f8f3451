"""What every model handle (`Embedder`, `Reranker`) says about itself."""

from __future__ import annotations

from bge_core.loading import LoadedModel


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
