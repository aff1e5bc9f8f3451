"""The real `bge serve` process on 127.0.0.1 (port 0, the printed address parsed), and the in-process
models its answers are compared with."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from bge_core import Embedder, Reranker

LISTENING = re.compile(r"bge serve: listening on (http://\S+)")


@dataclass
class Server:
    """A running `bge serve` process and everything it printed."""

    url: str
    process: subprocess.Popen
    output: list[str] = field(default_factory=list)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise

    def log(self) -> str:
        return "".join(self.output)


def start_server(*args: str, env: dict[str, str] | None = None, timeout: float = 180) -> Server:
    """Start `python -m bge_cli serve ARGS --port 0` and wait for its listening line."""
    command = [sys.executable, "-m", "bge_cli", "serve", "--host", "127.0.0.1", "--port", "0", "--device", "cpu",
               *args]
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **(env or {})}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=full_env)
    output: list[str] = []
    found: queue.Queue[str | None] = queue.Queue()

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            output.append(line)
            match = LISTENING.search(line)
            if match:
                found.put(match.group(1))
        found.put(None)

    threading.Thread(target=read, daemon=True).start()
    try:
        url = found.get(timeout=timeout)
    except queue.Empty:
        process.kill()
        raise RuntimeError("bge serve printed no address:\n" + "".join(output)) from None
    if url is None:
        raise RuntimeError(f"bge serve exited with {process.wait()}:\n" + "".join(output))
    return Server(url, process, output)


@pytest.fixture(scope="session", params=["engine-in-server", "engine-process"])
def server(request: pytest.FixtureRequest, m3_path: str, dense_path: str, cross_encoder_path: str) -> Iterator[Server]:
    """A server of BGE-M3 (bge-m3), a dense BGE (bge-small) and a cross-encoder (reranker); every test that
    uses it runs against both layouts: the engine on threads of the HTTP process, and the engine in its
    own host process behind the HTTP process."""
    running = start_server(
        "--model", m3_path, "--served-model-name", "bge-m3", "--model", dense_path, "--served-model-name", "bge-small",
        "--reranker", cross_encoder_path, "--served-model-name", "reranker", f"--{request.param}",
    )
    yield running
    assert running.stop() == 0, running.log()


@pytest.fixture(scope="session")
def m3(m3_path: str) -> Embedder:
    return Embedder(m3_path, device="cpu")


@pytest.fixture(scope="session")
def dense(dense_path: str) -> Embedder:
    return Embedder(dense_path, device="cpu")


@pytest.fixture(scope="session")
def reranker(cross_encoder_path: str) -> Reranker:
    return Reranker(cross_encoder_path, device="cpu")
