"""The wheel holds every file the packages need at run time, and `bge --version` reads the package metadata."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src"


def package_files() -> set[str]:
    """Every file of every package under src/ (a package: a folder with an __init__.py at src/'s top level)."""
    files = set()
    for package in sorted(p for p in SRC.iterdir() if (p / "__init__.py").is_file()):
        for path in package.rglob("*"):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
                files.add(path.relative_to(SRC).as_posix())
    return files


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    done = subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(out), str(ROOT)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    (built,) = out.glob("bge_plugins-*.whl")
    return built


def test_the_wheel_holds_every_file_of_every_package(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = package_files()
    assert {"bge_cli/data/demo_corpus.jsonl", "bge_core/tiny.py", "bge_core/py.typed"} <= expected
    missing = sorted(expected - names)
    assert not missing, f"files missing from {wheel.name}: {missing}"


def test_the_wheel_declares_the_console_script_and_the_project_version(wheel):
    archive = zipfile.ZipFile(wheel)
    (dist_info,) = {n.split("/")[0] for n in archive.namelist() if n.split("/")[0].endswith(".dist-info")}
    entry_points = archive.read(f"{dist_info}/entry_points.txt").decode()
    assert "bge = bge_cli.main:main" in entry_points
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    metadata = archive.read(f"{dist_info}/METADATA").decode()
    assert f"\nVersion: {version}\n" in metadata
    assert wheel.name.startswith(f"bge_plugins-{version}-")


def test_bge_version_prints_the_installed_package_version():
    script = Path(sys.executable).with_name("bge")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "bge_cli"]
    done = subprocess.run([*command, "--version"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"bge, version {importlib.metadata.version('bge-plugins')}"
