"""`torch.compile` with a fallback: the fused encoder's functions run eagerly where compiling fails.

Compiling starts with a process's first warm-up (`warm_up()`, run at load on CUDA by default), never in
a call: it costs 5–7 s (the fused layer tail, on an H200) and the compiled tail runs bge-m3 passages 9%
faster (767k → 836k tok/s, `bench/probe_gpu.py compile`), which pays only after a minute of encoding. A
model loaded with ``warm_up=False`` (a one-shot job) runs the same functions eagerly until then.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

import torch

log = logging.getLogger(__name__)

#: Set to "0" to run the fused encoder without torch.compile (debugging, or a machine without Triton).
COMPILE_ENV = "BGE_CORE_COMPILE"

_allowed = False


def allow_compiling() -> None:
    """From now on, `Compiled` functions compile at their next call (a warm-up's calls).

    Example:
        >>> allow_compiling()
    """
    global _allowed
    _allowed = True


def compiling_allowed() -> bool:
    """Whether kernels may be compiled now: after `allow_compiling()`, unless BGE_CORE_COMPILE=0.

    Example:
        >>> isinstance(compiling_allowed(), bool)
        True
    """
    return _allowed and os.environ.get(COMPILE_ENV, "1") != "0"


class Compiled:
    """`torch.compile(fn, dynamic=True)`, made at the first call after `allow_compiling()` (`fn` runs
    eagerly before), that falls back to `fn` for good if compiling fails.

    Example:
        >>> add_one = Compiled(lambda x: x + 1)
        >>> add_one(torch.zeros(2))
        tensor([1., 1.])
    """

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn
        self.compiled: Callable[..., Any] | None = None
        self.failed = False

    def __call__(self, *args: Any) -> Any:
        if not self.failed and compiling_allowed():
            try:
                if self.compiled is None:
                    self.compiled = torch.compile(self.fn, dynamic=True)
                return self.compiled(*args)
            except torch.OutOfMemoryError:  # the engine splits the batch; compiling did not fail
                raise
            except Exception as error:  # noqa: BLE001 - any compiler failure means: run eagerly
                log.warning("torch.compile of %s failed (%s: %s); running eagerly", getattr(self.fn, "__name__", "?"),
                            type(error).__name__, str(error).splitlines()[0] if str(error) else "")
                self.failed = True
        return self.fn(*args)
