"""The core's error types."""

from __future__ import annotations


class BgeCoreError(Exception):
    """Base class of errors raised by bge_core."""


class ModelLoadError(BgeCoreError, OSError):
    """A checkpoint cannot be found or read; the message names the path or file."""
