"""One local Ray cluster for the whole test run (2 CPUs, no GPU, no dashboard, quiet), plus shared data."""

from __future__ import annotations

import contextlib

import pytest

ray = pytest.importorskip("ray")


@pytest.fixture(scope="session")
def ray_cluster():
    """Ray started once per test run: starting it costs seconds (Ray's testing tips), tests share it."""
    from ray.data import DataContext

    if not ray.is_initialized():
        ray.init(num_cpus=2, num_gpus=0, include_dashboard=False, log_to_driver=False,
                 configure_logging=False)
    context = DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def passages() -> list[dict]:
    """40 rows with ids, texts (multilingual, empty, long) and a metadata field."""
    from tests.conftest import PARITY_TEXTS
    from tests.fixtures.checkpoints import CORPUS

    texts = list(PARITY_TEXTS) + list(CORPUS) + [f"passage number {i} about pandas and vectors" for i in range(7)]
    return [{"id": f"doc-{i:03d}", "text": text, "lang": "en" if i % 2 else "xx"} for i, text in enumerate(texts)]


def release_lite(uri) -> None:
    """Stop a Milvus Lite server this process started for `uri` (milvus-lite 2 keeps one per file)."""
    with contextlib.suppress(ImportError):
        from milvus_lite.server_manager import server_manager_instance

        server_manager_instance.release_server(str(uri))
