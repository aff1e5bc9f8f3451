"""Finding checkpoints and keeping one loaded copy per (checkpoint, family, device, dtype)."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from bge_core.engine.runner import Engine
from bge_core.errors import ModelLoadError
from bge_core.families.base import Family
from bge_core.memo import OutputMemo
from bge_core.models.fp8 import FP8
from bge_core.registry import FAMILY_DEFAULTS, ModelSpec, detect_spec

if TYPE_CHECKING:
    from bge_core.engine.workers import ProcessDevicePool

# Files a BGE checkpoint never needs: other frameworks' weights.
_IGNORE = ["*.onnx", "onnx/*", "*.h5", "*.msgpack", "*.ot", "flax_model*", "tf_model*", "openvino/*", "*.gguf"]

_DTYPES = {
    "fp32": torch.float32, "float32": torch.float32, "float": torch.float32,
    "fp16": torch.float16, "float16": torch.float16, "half": torch.float16,
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
    # Opt-in: E4M3 linear layers in BERT / XLM-R encoders, the rest in bf16 (models/fp8.py).
    "fp8": FP8, "float8": FP8, "fp8_e4m3": FP8,
}
#: Half-precision dtypes the packed (padding-free) CUDA path runs.
_PACKED_DTYPES = (torch.float16, torch.bfloat16, FP8)


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None`` → the first CUDA device when there is one, else CPU.

    Example:
        >>> resolve_device("cpu")
        device(type='cpu')
    """
    if device is None:
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    if isinstance(device, int):
        return torch.device(f"cuda:{device}")
    resolved = torch.device(device)
    if resolved.type == "cuda" and resolved.index is None:
        resolved = torch.device("cuda:0")
    return resolved


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """``None`` → bfloat16 on CUDA, float32 elsewhere (half precision on CPU is slow and lossy).

    Example:
        >>> resolve_dtype("fp16", torch.device("cuda"))
        torch.float16
    """
    if dtype is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return _DTYPES[str(dtype).lower()]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; expected one of {sorted(_DTYPES)}") from None


def _weights_dtype(torch_dtype: torch.dtype) -> torch.dtype:
    """The dtype a checkpoint's weights are loaded in: fp8 models load in bf16 (the engine quantizes the
    encoder's linear layers; the rest runs in bf16)."""
    return torch.bfloat16 if torch_dtype == FP8 else torch_dtype


def check_fp8_device(device: torch.device) -> None:
    """Refuse ``dtype="fp8"`` where there are no FP8 tensor cores (CPU, or CUDA below compute capability 8.9).

    Example:
        >>> check_fp8_device(torch.device("cpu"))
        Traceback (most recent call last):
        ValueError: dtype='fp8' needs FP8 tensor cores (a CUDA GPU of compute capability 8.9+); got cpu
    """
    need = "dtype='fp8' needs FP8 tensor cores (a CUDA GPU of compute capability 8.9+)"
    if device.type != "cuda":
        raise ValueError(f"{need}; got {device}")
    major, minor = torch.cuda.get_device_capability(device)
    if (major, minor) < (8, 9):
        raise ValueError(f"{need}; {torch.cuda.get_device_name(device)} ({device}) has {major}.{minor}")


def half_precision_dtype(device: Any, use_fp16: bool, use_bf16: bool = False) -> str:
    """FlagEmbedding's and pymilvus-model's precision switches as a dtype: half precision only
    where it is fast and supported (a GPU); always fp32 on CPU.

    Example:
        >>> half_precision_dtype("cuda:0", use_fp16=True), half_precision_dtype("cpu", use_fp16=True)
        ('fp16', 'fp32')
    """
    on_cpu = str(resolve_device(device[0] if isinstance(device, (list, tuple)) and device else device)).startswith(
        "cpu")
    if on_cpu or not (use_fp16 or use_bf16):
        return "fp32"
    return "bf16" if use_bf16 else "fp16"


def resolve_path(
    name_or_path: str, *, revision: str | None = None, cache_dir: str | None = None, token: str | None = None
) -> str:
    """A local directory holding the checkpoint: the path itself, or a hub snapshot.

    A path is used exactly as given (``..`` and symlinks resolve as the OS resolves them).
    Hub ids are downloaded and cached by huggingface_hub.

    Raises:
        ModelLoadError: the directory does not exist, or the hub id cannot be had.

    Example:
        >>> resolve_path("./my-bge-checkpoint")
        './my-bge-checkpoint'
    """
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise TypeError(f"model must be a hub id or a path, got {type(name_or_path).__name__}")
    name = os.fspath(name_or_path)
    if os.path.isdir(name):
        if not os.path.exists(os.path.join(name, "config.json")):
            raise ModelLoadError(f"{name}: not a checkpoint directory (no config.json)")
        return name
    # Hub ids are "name" or "org/name"; anything else is a path that does not exist.
    if name.startswith((".", "/", "~")) or name.count("/") > 1 or os.path.exists(name):
        raise ModelLoadError(f"{name}: no such model directory")
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(name, revision=revision, cache_dir=cache_dir, token=token, ignore_patterns=_IGNORE)
    except Exception as error:  # noqa: BLE001 - every hub failure becomes one clear message
        raise ModelLoadError(
            f"{name}: cannot load from the Hugging Face hub ({type(error).__name__}); "
            "pass a local checkpoint directory when offline"
        ) from error


@dataclass
class LoadedModel:
    """A model in memory: its family (tokenizer + weights + head), engine and defaults."""

    path: str
    spec: ModelSpec
    family: Family
    engine: Engine | ProcessDevicePool
    memo: OutputMemo
    #: Seconds the first handle's `warm_up` took (None: not warmed yet); later handles skip it.
    warmed_up_s: float | None = None

    @property
    def device(self) -> torch.device:
        return self.engine.device

    def spec_for(self, name_or_path: str) -> ModelSpec:
        """Defaults for a handle opened under `name_or_path`: the same files may be reached through
        a name the registry knows (``…/bge-small-en-v1.5``) and through one it does not."""
        if self.spec.family == "visualized":  # a .pth file: nothing else to read
            return self.spec
        spec = detect_spec(name_or_path, self.path)
        return spec if spec.family == self.spec.family else self.spec


_CACHE: dict[tuple[str, str, str, str, bool], LoadedModel] = {}
_CACHE_LOCK = threading.Lock()


def family_class(name: str) -> type[Family]:
    """The family implementation registered under `name` (imported lazily)."""
    if name in ("dense", "llm_embedder"):
        from bge_core.families.dense import DenseFamily as cls
    elif name == "m3":
        from bge_core.families.m3 import M3Family as cls
    elif name == "icl":
        from bge_core.families.icl import ICLFamily as cls
    elif name == "cross_encoder":
        from bge_core.families.cross_encoder import CrossEncoderFamily as cls
    elif name == "llm_reranker":
        from bge_core.families.llm_reranker import LLMRerankerFamily as cls
    elif name == "layerwise_reranker":
        from bge_core.families.layerwise import LayerwiseRerankerFamily as cls
    elif name == "lightweight_reranker":
        from bge_core.families.lightweight import LightweightRerankerFamily as cls
    elif name == "visualized":
        from bge_core.families.visualized import VisualizedFamily as cls
    else:
        raise ValueError(f"unknown model family {name!r}")
    return cls


def load_model(
    name_or_path: str,
    *,
    device: str | torch.device | list[str | torch.device] | None = None,
    dtype: str | torch.dtype | None = None,
    family: str | None = None,
    revision: str | None = None,
    cache_dir: str | None = None,
    token: str | None = None,
    packed: bool | None = None,
    worker_process: bool = False,
    text_model: str | None = None,
) -> LoadedModel:
    """Load (or reuse) a checkpoint. Every caller naming the same checkpoint, device and dtype
    gets the same weights in memory. `token` is a Hugging Face token for private or gated hub ids.
    `packed` forces padding-free batches on (or off); by default they are used wherever the
    device supports them (CUDA with half precision). A list of devices loads one replica on each
    and spreads every call over all of them, each in a worker process. `worker_process=True` does the
    same for a single device: the model runs in its own process, so Python work in this one (an HTTP
    server's event loop, say) never competes with the model's kernel launches for the GIL.

    Example:
        >>> m = load_model("BAAI/bge-m3", device="cpu")
        >>> m is load_model("BAAI/bge-m3", device="cpu")
        True

    A Visualized-BGE ``.pth`` file loads with its BGE text model (`text_model`: hub id or directory; default:
    the ``.pth``'s own directory when it holds a config.json), on one device.
    """
    if _is_visualized(name_or_path):
        if worker_process or (isinstance(device, (list, tuple)) and len(device) > 1):
            raise ValueError("Visualized-BGE models run in this process on one device")
        device = device[0] if isinstance(device, (list, tuple)) and device else device
        if resolve_dtype(dtype, resolve_device(device)) == FP8:
            raise ValueError("dtype='fp8' runs BERT / XLM-R text encoders (dense, BGE-M3, cross-encoders); "
                             "Visualized-BGE runs in fp32, fp16 or bf16")
        return _load_visualized(os.fspath(name_or_path), text_model, device=device, dtype=dtype, revision=revision,
                                cache_dir=cache_dir, token=token)
    if (isinstance(device, (list, tuple)) and len(device) > 1) or worker_process:
        devices = list(device) if isinstance(device, (list, tuple)) and device else [device]
        return _load_on_devices(name_or_path, devices, dtype=dtype, family=family, revision=revision,
                                cache_dir=cache_dir, token=token, packed=packed)
    if isinstance(device, (list, tuple)):
        device = device[0] if device else None
    path = resolve_path(name_or_path, revision=revision, cache_dir=cache_dir, token=token)
    try:
        spec = detect_spec(name_or_path, path)
    except ValueError:  # an unreadable config.json: say which file
        check_files(path)
        raise
    if family is not None and family != spec.family:
        spec = FAMILY_DEFAULTS[family]  # the caller knows better than the file layout
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    if torch_dtype == FP8:
        check_fp8_device(torch_device)
    if packed is None:  # the engine's own choice, made explicit so equal choices share one copy
        packed = torch_device.type == "cuda" and torch_dtype in _PACKED_DTYPES
    key = (os.path.realpath(path), spec.family, str(torch_device), str(torch_dtype), packed)
    with _CACHE_LOCK:
        loaded = _CACHE.get(key)
        if loaded is None:
            check_files(path)
            try:
                fam = family_class(spec.family).load(path, spec, torch_device, _weights_dtype(torch_dtype),
                                                    packed=packed)
            except ModelLoadError:
                raise
            except (OSError, ValueError, RuntimeError, KeyError) as error:
                # e.g. a checkpoint that needs its own code (never run here), or weights of the wrong shape
                weights = ", ".join(f for f in sorted(os.listdir(path)) if f.endswith((".safetensors", ".bin")))
                raise ModelLoadError(
                    f"{path}: cannot load this checkpoint from {weights or 'its files'} "
                    f"({type(error).__name__}: {error}); custom-code checkpoints are not supported"
                ) from error
            engine = Engine(fam, torch_device, packed=packed, fp8=torch_dtype == FP8)
            loaded = LoadedModel(path=path, spec=spec, family=fam, engine=engine, memo=OutputMemo())
            _CACHE[key] = loaded
    return loaded


def _is_visualized(name_or_path: Any) -> bool:
    return isinstance(name_or_path, (str, os.PathLike)) and os.fspath(name_or_path).endswith(".pth")


def _load_visualized(pth: str, text_model: str | None, *, device: Any, dtype: Any, **hub: Any) -> LoadedModel:
    """A Visualized-BGE ``.pth`` and its text model's config/tokenizer, cached like any model."""
    from bge_core.registry import _position_limit, _read_json

    if not os.path.isfile(pth):
        raise ModelLoadError(f"{pth}: no such Visualized-BGE checkpoint file")
    if text_model is None:
        if not os.path.exists(os.path.join(os.path.dirname(os.path.abspath(pth)), "config.json")):
            raise ModelLoadError(f"{pth}: pass text_model= (the BGE model it was trained from: hub id or directory)")
        text_model = os.path.dirname(os.path.abspath(pth))
    text_dir = resolve_path(text_model, **hub)
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    config = _read_json(os.path.join(text_dir, "config.json"))
    spec = FAMILY_DEFAULTS["visualized"]
    spec = spec.with_overrides(max_length=min(8192 if config.get("model_type") == "xlm-roberta" else 512,
                                              _position_limit(config)))
    key = (os.path.realpath(pth) + "|" + os.path.realpath(text_dir), spec.family, str(torch_device), str(torch_dtype),
           False)
    with _CACHE_LOCK:
        loaded = _CACHE.get(key)
        if loaded is None:
            check_files(text_dir)
            fam = family_class("visualized").load(pth, spec, torch_device, torch_dtype, text_model=text_dir)
            loaded = LoadedModel(path=pth, spec=spec, family=fam, engine=Engine(fam, torch_device, packed=False),
                                 memo=OutputMemo())
            _CACHE[key] = loaded
    return loaded


def check_files(path: str) -> None:
    """Read the JSON files and the safetensors headers of a checkpoint first, so that a truncated or
    damaged file (an interrupted download) is reported by name instead of deep inside a library.

    Raises:
        ModelLoadError: naming the damaged file.
    """
    import json

    from safetensors import safe_open

    for name in sorted(os.listdir(path)):
        full = os.path.join(path, name)
        try:
            if name.endswith(".json"):
                with open(full, encoding="utf-8") as fh:
                    json.load(fh)
            elif name.endswith(".safetensors"):
                with safe_open(full, framework="pt") as weights:
                    for key in weights.keys():
                        weights.get_slice(key)  # every tensor's header entry must lie inside the file
        except Exception as error:  # noqa: BLE001 - any failure to read is reported with the file name
            raise ModelLoadError(f"{full}: damaged or unreadable ({type(error).__name__}: {error})") from error


def _load_on_devices(name_or_path: str, devices: list[Any], **kwargs: Any) -> LoadedModel:
    """One worker process per device behind a `ProcessDevicePool` (cached like a single model).

    This process keeps a CPU copy in the workers' dtype to tokenize, form batches and answer
    questions about the model (dimensions, tokenizer); it never runs it.
    """
    from bge_core.engine.runner import DEFAULT_TOKEN_BUDGET
    from bge_core.engine.workers import ProcessDevicePool

    torch_devices = [resolve_device(d) for d in devices]
    torch_dtype = resolve_dtype(kwargs.get("dtype"), torch_devices[0])
    packed = kwargs.get("packed")
    if packed is None:  # what each worker's engine chooses by default
        packed = all(d.type == "cuda" for d in torch_devices) and torch_dtype in _PACKED_DTYPES
    if torch_dtype == FP8:
        for d in torch_devices:
            check_fp8_device(d)
    # the scheduler's copy never runs, so fp8 (which has no CPU kernels) is held in its weights' bf16
    scheduler = load_model(name_or_path, **{**kwargs, "dtype": _weights_dtype(torch_dtype), "packed": packed},
                           device="cpu")
    key = (scheduler.path, scheduler.spec.family, tuple(map(str, torch_devices)), str(torch_dtype), packed)
    with _CACHE_LOCK:
        loaded = _POOLS.get(key)
        if loaded is None or loaded.engine.closed:  # never loaded, or a worker died: start afresh
            load_kwargs = dict(name_or_path=scheduler.path, dtype=torch_dtype, family=scheduler.spec.family,
                               packed=packed)
            budget = DEFAULT_TOKEN_BUDGET.get(torch_devices[0].type, 16384)
            pool = ProcessDevicePool(scheduler.engine, load_engine, load_kwargs, [str(d) for d in torch_devices],
                                     packed, budget)
            loaded = LoadedModel(path=scheduler.path, spec=scheduler.spec, family=scheduler.family, engine=pool,
                                 memo=OutputMemo())
            _POOLS[key] = loaded
    return loaded


def load_engine(name_or_path: str, **kwargs: Any) -> Engine:
    """The engine of `load_model(name_or_path, **kwargs)`: what a device worker process runs.

    Example:
        >>> engine = load_engine("BAAI/bge-small-en-v1.5", device="cuda:1", dtype="bf16")
    """
    return load_model(name_or_path, **kwargs).engine


_POOLS: dict[tuple, LoadedModel] = {}


def clear_cache() -> None:
    """Forget every loaded model (their memory is freed once no handle refers to them)."""
    with _CACHE_LOCK:
        _CACHE.clear()
        for pool in _POOLS.values():
            pool.engine.close()
        _POOLS.clear()

