"""Loading and security: broken checkpoint files are errors naming the file; no checkpoint code ever runs;
nothing is installed at run time; paths are used exactly as the user gave them.

Head files (colbert_linear.pt, sparse_linear.pt) missing, truncated, wrong-shape or pickled are covered
by tests/core/test_loading.py; the colbert cases are added here, and the other files of a checkpoint
(weights, config, tokenizer) are held to the same rule.
"""

from __future__ import annotations

import ast
import builtins
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from bge_core import Embedder, ModelLoadError, Reranker, clear_cache, load_model

SRC = Path(__file__).resolve().parents[2] / "src"


# -- broken files -----------------------------------------------------------------------------------


def _truncate(path: Path, size: int) -> None:
    with open(path, "r+b") as fh:
        fh.truncate(size)


@pytest.mark.parametrize("problem", ["truncated", "empty", "wrong shape", "not a Linear"])
def test_a_broken_colbert_head_is_an_error_naming_the_file(m3_path, tmp_path, problem):
    copy = Path(shutil.copytree(m3_path, tmp_path / "m3"))
    head = copy / "colbert_linear.pt"
    if problem == "truncated":
        _truncate(head, 60)
    elif problem == "empty":
        _truncate(head, 0)
    elif problem == "wrong shape":
        torch.save(torch.nn.Linear(7, 32).state_dict(), head)
    else:
        torch.save({"weight": torch.zeros(32, 32)}, head)
    with pytest.raises(ModelLoadError, match="colbert_linear.pt"):
        load_model(str(copy), device="cpu")


def _break_weights(path: Path) -> None:
    _truncate(path / "model.safetensors", 100)


def _wrong_shape_weights(path: Path) -> None:
    from safetensors.torch import load_file, save_file

    state = load_file(path / "model.safetensors")
    name = next(k for k in state if "word_embeddings" in k)
    state[name] = state[name][:, :16].contiguous()
    save_file(state, path / "model.safetensors")


BROKEN_FILES = {
    "model.safetensors truncated (an interrupted download)": ("model.safetensors", _break_weights),
    "model.safetensors with a wrong-shape tensor": ("model.safetensors", _wrong_shape_weights),
    "config.json truncated": ("config.json", lambda p: _truncate(p / "config.json", 20)),
    "tokenizer.json truncated": ("tokenizer.json", lambda p: _truncate(p / "tokenizer.json", 50)),
}


@pytest.mark.parametrize("family", ["m3", "dense", "cross_encoder"])
@pytest.mark.parametrize("case", sorted(BROKEN_FILES))
def test_a_broken_checkpoint_file_is_a_model_load_error_naming_it(m3_path, dense_path, cross_encoder_path, tmp_path,
                                                                  family, case):
    source = {"m3": m3_path, "dense": dense_path, "cross_encoder": cross_encoder_path}[family]
    copy = Path(shutil.copytree(source, tmp_path / family))
    name, damage = BROKEN_FILES[case]
    damage(copy)
    with pytest.raises(ModelLoadError, match=re.escape(name)):
        load_model(str(copy), device="cpu")


# -- trust_remote_code ------------------------------------------------------------------------------


def test_no_source_file_turns_trust_remote_code_on():
    offenders = []
    for path in SRC.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        for match in re.finditer(r"trust_remote_code\W{1,4}(True|1)\b", text):
            offenders.append(f"{path.relative_to(SRC)}: {match.group(0)}")
    assert not offenders, offenders


@pytest.fixture
def from_pretrained_calls(monkeypatch):
    """Every call of transformers' Auto* ``from_pretrained`` (and of the tokenizer classes') with its keyword
    arguments."""
    import transformers

    calls: list[tuple[str, dict]] = []

    def record(owner: type) -> None:
        original = owner.__dict__["from_pretrained"].__func__

        def from_pretrained(cls, *args, **kwargs):
            calls.append((f"{cls.__name__}.from_pretrained", dict(kwargs)))
            return original(cls, *args, **kwargs)

        monkeypatch.setattr(owner, "from_pretrained", classmethod(from_pretrained))

    # Each AutoModel* class carries its own copy of from_pretrained.
    autos = [getattr(transformers, name) for name in dir(transformers) if name.startswith("Auto")]
    for owner in autos:
        if isinstance(owner, type) and "from_pretrained" in owner.__dict__:
            record(owner)
    # The tokenizer classes `load_tokenizer` opens directly (plain encoders skip AutoTokenizer).
    from transformers.tokenization_utils_base import PreTrainedTokenizerBase

    record(PreTrainedTokenizerBase)
    clear_cache()  # load every model afresh, so that from_pretrained is really called
    yield calls
    clear_cache()


@pytest.fixture(scope="module")
def llm_reranker_dirs(tmp_path_factory):
    from tests.fixtures import llm_rerankers

    root = tmp_path_factory.mktemp("security-llm-rerankers")
    return {
        "llm_reranker": llm_rerankers.build_gemma_reranker(root / "gemma"),
        "layerwise_reranker": llm_rerankers.build_layerwise_reranker(root / "layerwise"),
        "lightweight_reranker": llm_rerankers.build_lightweight_reranker(root / "lightweight"),
    }


def load_every_family(m3_path, dense_path, cross_encoder_path, llm_embedder_path, llm_reranker_dirs) -> list:
    """One model of each family, each used once, through core, compat and the Milvus functions."""
    from bge_core import compat
    from bge_milvus import BGEM3EmbeddingFunction, BGERerankFunction

    loaded = [
        Embedder(dense_path, device="cpu"), Embedder(m3_path, device="cpu"), Embedder(llm_embedder_path, device="cpu"),
        Embedder(llm_embedder_path, device="cpu", family="icl"), Reranker(cross_encoder_path, device="cpu"),
        *[Reranker(path, device="cpu", family=family) for family, path in llm_reranker_dirs.items()],
    ]
    for model in loaded:
        if isinstance(model, Embedder):
            assert np.isfinite(model.encode(["hello"]).dense).all()
        else:
            assert np.isfinite(model.score([("hello", "world")])).all()
    # A user may pass trust_remote_code=True to the FlagEmbedding / pymilvus-model surfaces: it is
    # accepted for compatibility and never forwarded.
    clear_cache()
    compat.FlagModel(dense_path, devices="cpu", trust_remote_code=True).encode(["hello"])
    BGEM3EmbeddingFunction(m3_path, device="cpu", trust_remote_code=True)(["hello"])
    BGERerankFunction(cross_encoder_path, device="cpu", trust_remote_code=True)("hello", ["world"])
    return loaded


def test_trust_remote_code_is_never_passed_true(from_pretrained_calls, m3_path, dense_path, cross_encoder_path,
                                                llm_embedder_path, llm_reranker_dirs):
    load_every_family(m3_path, dense_path, cross_encoder_path, llm_embedder_path, llm_reranker_dirs)
    names = {name for name, _ in from_pretrained_calls}
    assert {"AutoTokenizer.from_pretrained", "AutoConfig.from_pretrained"} <= names
    assert any(n.startswith("AutoModel") for n in names), names
    assert any(not n.startswith("Auto") and "Token" in n for n in names), names  # a direct tokenizer load
    assert all(kwargs.get("trust_remote_code") is not True for _, kwargs in from_pretrained_calls), [
        c for c in from_pretrained_calls if c[1].get("trust_remote_code")
    ]


@pytest.fixture
def custom_code_checkpoint(dense_path, tmp_path) -> tuple[str, Path]:
    """A checkpoint whose config names model code of its own (``auto_map``); running it writes a marker file."""
    path = Path(shutil.copytree(dense_path, tmp_path / "custom-code"))
    marker = tmp_path / "custom code ran"
    config = json.loads((path / "config.json").read_text())
    config.update(model_type="custombert", architectures=["CustomModel"],
                  auto_map={"AutoConfig": "custom.CustomConfig", "AutoModel": "custom.CustomModel"})
    (path / "config.json").write_text(json.dumps(config))
    (path / "custom.py").write_text(
        f"open({str(marker)!r}, 'w').write('ran')\n"
        "from transformers import BertConfig, BertModel\n"
        "class CustomConfig(BertConfig):\n    model_type = 'custombert'\n"
        "class CustomModel(BertModel):\n    config_class = CustomConfig\n"
    )
    return str(path), marker


def test_a_checkpoint_that_needs_its_own_code_is_refused_without_asking(custom_code_checkpoint, monkeypatch):
    path, marker = custom_code_checkpoint
    prompts: list[str] = []
    monkeypatch.setattr(builtins, "input", lambda prompt="": prompts.append(prompt) or "y")
    clear_cache()
    try:
        with pytest.raises(ModelLoadError, match="custom-code"):
            Embedder(path, device="cpu")
    finally:
        clear_cache()
        assert not prompts, "the user was asked whether to run checkpoint code"
        assert not marker.exists(), "the checkpoint's own code ran"


def test_a_checkpoint_whose_code_is_not_needed_loads_without_running_it(custom_code_checkpoint, monkeypatch):
    """``auto_map`` next to a model type transformers knows: the library's class is used, the file never runs."""
    path, marker = custom_code_checkpoint
    config = json.loads(Path(path, "config.json").read_text())
    config.update(model_type="bert", architectures=["BertModel"])
    Path(path, "config.json").write_text(json.dumps(config))
    monkeypatch.setattr(builtins, "input", lambda prompt="": pytest.fail(f"asked: {prompt}"))
    clear_cache()
    try:
        model = Embedder(path, device="cpu")
        assert type(model.loaded.family.model).__module__.startswith("transformers.models.bert")
        assert np.isfinite(model.encode(["hello"]).dense).all()
    finally:
        clear_cache()
    assert not marker.exists()


# -- nothing installed at run time ------------------------------------------------------------------

#: Calls that start programs (pip, a shell) or install packages.
_FORBIDDEN_CALLS = {
    "subprocess.run", "subprocess.call", "subprocess.check_call", "subprocess.check_output", "subprocess.Popen",
    "os.system", "os.popen", "os.execv", "os.execvp", "os.execl", "os.spawnv", "pip.main", "ensurepip.bootstrap",
}
_FORBIDDEN_IMPORTS = {"subprocess", "pip", "ensurepip", "setuptools", "pkg_resources"}


def _dotted(node: ast.AST) -> str:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
    return ".".join(reversed(parts))


def test_no_source_file_installs_packages_or_starts_programs():
    offenders = []
    for path in SRC.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            where = f"{path.relative_to(SRC)}:{getattr(node, 'lineno', '?')}"
            if isinstance(node, ast.Import):
                offenders += [f"{where}: import {a.name}" for a in node.names if a.name.split(".")[0] in
                              _FORBIDDEN_IMPORTS]
            elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in _FORBIDDEN_IMPORTS:
                offenders.append(f"{where}: from {node.module} import …")
            elif isinstance(node, ast.Call) and _dotted(node.func) in _FORBIDDEN_CALLS:
                offenders.append(f"{where}: {_dotted(node.func)}(…)")
            elif isinstance(node, ast.Call) and _dotted(node.func).endswith("import_module"):
                offenders.append(f"{where}: dynamic import")
    assert not offenders, offenders


def test_loading_and_running_every_family_starts_no_program(monkeypatch, m3_path, dense_path, cross_encoder_path,
                                                            llm_embedder_path, llm_reranker_dirs):
    started: list[str] = []

    def refuse(*args, **kwargs):
        started.append(repr(args[:2]))
        raise AssertionError(f"a program was started at run time: {args[:2]!r}")

    monkeypatch.setattr(subprocess.Popen, "__init__", refuse)
    monkeypatch.setattr(os, "system", refuse)
    monkeypatch.setattr(os, "popen", refuse)
    clear_cache()
    try:
        load_every_family(m3_path, dense_path, cross_encoder_path, llm_embedder_path, llm_reranker_dirs)
    finally:
        clear_cache()
    assert not started


# -- paths are used as given ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_checkpoints(tmp_path_factory):
    """Two dense checkpoints with different weights: ``a`` (seed 0) and ``b`` (seed 1)."""
    from tests.fixtures import checkpoints

    root = tmp_path_factory.mktemp("paths")
    return {
        "a": checkpoints.build_bert_dense(str(root / "a"), seed=0),
        "b": checkpoints.build_bert_dense(str(root / "b"), seed=1),
    }


TEXTS = ["where do pandas live?", "BGE turns text into vectors."]


def vectors(path: str) -> np.ndarray:
    return Embedder(path, device="cpu").encode(TEXTS).dense


def test_paths_load_exactly_the_files_they_point_at(two_checkpoints, tmp_path, monkeypatch):
    a, b = vectors(two_checkpoints["a"]), vectors(two_checkpoints["b"])
    assert not np.allclose(a, b)  # the two checkpoints are told apart by their vectors

    # A symlink outside any cache, pointing at b.
    (tmp_path / "elsewhere").mkdir()
    link = tmp_path / "elsewhere" / "my-model"
    link.symlink_to(two_checkpoints["b"], target_is_directory=True)
    np.testing.assert_array_equal(vectors(str(link)), b)

    # "..": resolved by the OS, as `open` resolves it. Here "shortcut/../b" names real/b (the parent of
    # the symlink's target), while a string normalisation would give tmp/b: a different checkpoint.
    (tmp_path / "real" / "sub").mkdir(parents=True)
    shutil.copytree(two_checkpoints["b"], tmp_path / "real" / "b")
    shutil.copytree(two_checkpoints["a"], tmp_path / "b")
    (tmp_path / "shortcut").symlink_to(tmp_path / "real" / "sub", target_is_directory=True)
    dotted = str(tmp_path / "shortcut" / ".." / "b")
    assert json.loads(Path(dotted, "config.json").read_text()) == json.loads(
        (tmp_path / "real" / "b" / "config.json").read_text())
    model = Embedder(dotted, device="cpu")
    assert model.name == dotted and model.loaded.path == dotted  # kept as given
    np.testing.assert_array_equal(model.encode(TEXTS).dense, b)
    np.testing.assert_array_equal(vectors(os.path.normpath(dotted)), a)  # the other reading: other files

    # A checkpoint whose weight file is a symlink into a blob store (the Hugging Face cache's layout).
    blobs = tmp_path / "blobs"
    blobs.mkdir()
    snapshot = Path(shutil.copytree(two_checkpoints["b"], tmp_path / "snapshot"))
    shutil.move(snapshot / "model.safetensors", blobs / "0123abcd")
    (snapshot / "model.safetensors").symlink_to(Path("..") / "blobs" / "0123abcd")
    np.testing.assert_array_equal(vectors(str(snapshot)), b)

    # A relative directory shaped like a hub id is that directory (as transformers reads it), not the hub.
    monkeypatch.chdir(tmp_path)
    shutil.copytree(two_checkpoints["a"], tmp_path / "BAAI" / "bge-small-en-v1.5")
    np.testing.assert_array_equal(Embedder("BAAI/bge-small-en-v1.5", device="cpu").encode(TEXTS).dense, a)


def test_two_paths_to_different_files_never_share_a_loaded_model(two_checkpoints, tmp_path):
    """The cache key is the resolved directory: same name, different files → two models."""
    for name, source in two_checkpoints.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "model").symlink_to(source, target_is_directory=True)
    first = Embedder(str(tmp_path / "a" / "model"), device="cpu")
    second = Embedder(str(tmp_path / "b" / "model"), device="cpu")
    assert first.loaded is not second.loaded
    assert not np.allclose(first.encode(TEXTS).dense, second.encode(TEXTS).dense)
