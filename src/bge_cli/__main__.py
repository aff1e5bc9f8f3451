"""`python -m bge_cli …` is the `bge` command."""

from __future__ import annotations

from bge_cli.main import main

main()
