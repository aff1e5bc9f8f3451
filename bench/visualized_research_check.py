"""Visualized-BGE: bge_core against the research code itself (FlagEmbedding research/visual_bge), run by hand.

The research package is third-party code that is never committed: unpack FlagEmbedding's `research/visual_bge`
somewhere (here: .research/visual_bge, git-ignored; it holds the `visual_bge` package with its bundled eva_clip)
and point --research at that folder. From the repo root:

    PYTHONPATH=src:. python bench/visualized_research_check.py --research .research/visual_bge
    PYTHONPATH=src:. python bench/visualized_research_check.py --dry-run   # no research code: the tests' oracle

It builds the tiny checkpoints of tests/visualized/fixtures.py in the key layouts of Visualized_base_en_v1.5.pth
(EVA02-CLIP-B-16 + BERT) and Visualized_m3.pth (EVA02-CLIP-L-14 + XLM-R), loads each into the research
`Visualized_BGE(model_name_bge=<text dir>, model_weight=<pth>)` and compares its `encode(image=...)`,
`encode(text=...)` and `encode(image=..., text=...)` with bge_core's `encode_images`, `encode` and
`encode_multimodal`, one input at a time, fp32. It prints the minimum cosine of each kind and exits 1 if any is
below 0.99999 (with $OUT set it also writes $OUT/visualized_research_check.json).

How the research code is driven, and the only three things changed around it (its computation is untouched):
- it picks the EVA tower by the text model's *name* ('bge-base-en-v1.5' -> EVA02-CLIP-B-16, 'bge-m3' ->
  EVA02-CLIP-L-14), so the tiny text models are written to folders whose names contain those strings;
- the EVA config it then reads (eva_clip/model_configs/*.json) is the real tower's size: its registry entry gets
  the tiny checkpoint's width, depth, head width, patch size and output size (every other flag - rope,
  pt_hw_seq_len, intp_freq, naiveswiglu, subln, xattn, mlp_ratio 2.6667 - stays as in the json);
- `visual_proj` is built as Linear(768, 768) / Linear(1024, 1024) by name; it is rebuilt with the checkpoint's
  shape just before the research `load_model` loads the .pth strictly.
It runs in eval mode under no_grad (as the README's examples), on --device (default cpu; TF32 off on CUDA).

Packages the research side imports: torch, transformers, timm, torchvision, einops, ftfy (+ wcwidth), regex,
Pillow, numpy, huggingface_hub, tqdm; xformers, deepspeed, apex, horovod are optional and not needed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [os.path.join(ROOT, "src"), ROOT]

from tests.fixtures import checkpoints  # noqa: E402
from tests.visualized.fixtures import build_visualized  # noqa: E402

from bge_core import Embedder  # noqa: E402

BOUND = 0.99999
TEXTS = [
    "a red dress",
    "",
    "The giant panda is a bear native to south central China.",
    "Make the background dark, as if the camera has taken the photo at night",
    "大熊猫是中国特有的熊科动物 🐼",
]
#: (name, text-model folder name the research code recognises, EVA config it then picks, patch size, seed)
LAYOUTS = [
    ("base", "bge-base-en-v1.5-tiny", "EVA02-CLIP-B-16", 16, 0),
    ("m3", "bge-m3-tiny", "EVA02-CLIP-L-14", 14, 1),
]
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def write_images(folder: str, research: str | None) -> list[str]:
    """Test images of several sizes and modes (as tests/visualized's), plus the research README's photos."""
    from PIL import Image

    rng = np.random.default_rng(0)
    specs = [((320, 240), "RGB", "jpg"), ((180, 400), "RGB", "png"), ((224, 224), "RGB", "png"),
             ((7, 5), "RGB", "png"), ((300, 300), "L", "png"), ((260, 230), "RGBA", "png"), ((250, 240), "P", "png")]
    paths = []
    for i, ((w, h), mode, ext) in enumerate(specs):
        base = rng.integers(0, 256, size=(max(h // 8, 1), max(w // 8, 1), 3), dtype=np.uint8)
        path = os.path.join(folder, f"noise{i}.{ext}")
        Image.fromarray(base).resize((w, h), Image.BILINEAR).convert(mode).save(path)
        paths.append(path)
    photos = os.path.join(research, "imgs") if research else ""
    if os.path.isdir(photos):
        paths += sorted(os.path.join(photos, n) for n in os.listdir(photos) if n.lower().endswith(IMAGE_SUFFIXES))
    return paths


def build(root: str, folder: str, patch: int, seed: int) -> tuple[str, str]:
    """(.pth, text dir) of one layout; the text dir's name selects the research code's EVA model."""
    text_dir = os.path.join(root, folder)
    if "m3" in folder:
        checkpoints.build_m3(text_dir)
    else:
        checkpoints.build_bert_dense(text_dir)
    pth_name = "Visualized_m3.pth" if "m3" in folder else "Visualized_base_en_v1.5.pth"
    return build_visualized(os.path.join(root, f"visualized-{folder}", pth_name), text_dir, patch, seed=seed), text_dir


class ResearchReference:
    """The research `Visualized_BGE` on a tiny checkpoint (see the module docstring for what is adjusted)."""

    def __init__(self, research: str, pth: str, text_dir: str, eva_name: str, device: str) -> None:
        if research not in sys.path:
            sys.path.insert(0, research)
        from visual_bge.eva_clip import factory
        from visual_bge.modeling import Visualized_BGE

        weights = torch.load(pth, map_location="cpu", weights_only=True)
        visual = "model_visual.visual."
        patch = weights[visual + "patch_embed.proj.weight"]
        width = patch.shape[0]
        cfg = factory._MODEL_CONFIGS[eva_name]
        hidden = weights[visual + "blocks.0.mlp.w1.weight"].shape[0]
        if int(width * cfg["vision_cfg"]["mlp_ratio"]) != hidden:
            raise SystemExit(f"mlp_ratio {cfg['vision_cfg']['mlp_ratio']} of {eva_name} does not give the "
                             f"checkpoint's MLP width {hidden} at width {width}")
        cfg["embed_dim"] = weights[visual + "head.weight"].shape[0]
        cfg["vision_cfg"].update(
            width=width, patch_size=patch.shape[-1], head_width=weights[visual + "rope.freqs_cos"].shape[1],
            layers=1 + max(int(k[len(visual):].split(".")[1]) for k in weights if k.startswith(visual + "blocks.")),
            image_size=round((weights[visual + "pos_embed"].shape[1] - 1) ** 0.5) * patch.shape[-1],
        )

        class TinyVisualizedBGE(Visualized_BGE):
            def load_model(self, model_weight):
                out_features, in_features = weights["visual_proj.weight"].shape
                self.visual_proj = torch.nn.Linear(in_features, out_features)  # sized by model name upstream
                super().load_model(model_weight)

        self.model = TinyVisualizedBGE(model_name_bge=text_dir, model_weight=pth)
        self.model.to(device)
        self.model.device = torch.device(device)  # the research code picks cuda whenever it is there
        self.model.eval()
        print(f"  research: {eva_name} tower {cfg['vision_cfg']}")

    @torch.no_grad()
    def image(self, path: str) -> np.ndarray:
        return self.model.encode(image=path).float().cpu().numpy()[0]

    @torch.no_grad()
    def multimodal(self, path: str, text: str) -> np.ndarray:
        return self.model.encode(image=path, text=text).float().cpu().numpy()[0]

    @torch.no_grad()
    def text(self, text: str) -> np.ndarray:
        return self.model.encode(text=text).float().cpu().numpy()[0]


class OracleReference:
    """--dry-run: the tests' hand-written oracle (tests/visualized/oracle.py) in place of the research code."""

    def __init__(self, pth: str, text_dir: str) -> None:
        from PIL import Image
        from tests.visualized.oracle import OracleVisualizedBGE

        self.open = Image.open
        self.oracle = OracleVisualizedBGE(pth, text_dir)

    def image(self, path: str) -> np.ndarray:
        return self.oracle.image(self.open(path)).numpy()

    def multimodal(self, path: str, text: str) -> np.ndarray:
        return self.oracle.multimodal(self.open(path), text).numpy()

    def text(self, text: str) -> np.ndarray:
        return self.oracle.text(text).numpy()


def compare(reference, ours: Embedder, images: list[str]) -> dict[str, float]:
    """Minimum cosine per kind between `reference` and bge_core, one input at a time."""
    worst: dict[str, float] = {}
    pairs = [(p, TEXTS[i % len(TEXTS)]) for i, p in enumerate(images)]
    for kind, inputs, ref, got in [
        ("image", images, reference.image, lambda p: ours.encode_images([p]).dense[0]),
        ("image+text", pairs, lambda pt: reference.multimodal(*pt),
         lambda pt: ours.encode_multimodal([pt[0]], [pt[1]]).dense[0]),
        ("text", TEXTS, reference.text, lambda t: ours.encode([t]).dense[0]),
    ]:
        cosines = [cosine(ref(x), got(x)) for x in inputs]
        worst[kind] = min(cosines)
        print(f"  {kind:<10} {len(cosines):>2} inputs  min cos {worst[kind]:.8f}", flush=True)
    return worst


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--research", help="folder holding the visual_bge package (FlagEmbedding research/visual_bge)")
    parser.add_argument("--dry-run", action="store_true", help="no research code: compare with the tests' oracle")
    parser.add_argument("--device", default="cpu", help="device of both models (cpu, cuda)")
    parser.add_argument("--keep", help="build the checkpoints and images here instead of a temporary folder")
    args = parser.parse_args(argv)
    if not args.dry_run and not args.research:
        parser.error("--research FOLDER is needed (or --dry-run)")
    if args.research:
        args.research = os.path.abspath(args.research)
        if not os.path.isfile(os.path.join(args.research, "visual_bge", "modeling.py")):
            parser.error(f"{args.research}/visual_bge/modeling.py not found")
    if args.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(0)

    root = args.keep or tempfile.mkdtemp(prefix="visualized-research-")
    os.makedirs(root, exist_ok=True)
    images = write_images(root, args.research)
    print(f"checkpoints and images in {root}; {len(images)} images, {len(TEXTS)} texts; "
          f"reference: {'tests oracle (dry run)' if args.dry_run else 'research ' + args.research}")
    results: dict[str, dict[str, float]] = {}
    for name, folder, eva_name, patch, seed in LAYOUTS:
        pth, text_dir = build(root, folder, patch, seed)
        print(f"{name}: {pth}")
        ours = Embedder(pth, text_model=text_dir, device=args.device, dtype="fp32")
        if args.dry_run:
            reference = OracleReference(pth, text_dir)
        else:
            reference = ResearchReference(args.research, pth, text_dir, eva_name, args.device)
        results[name] = compare(reference, ours, images)

    failed = [f"{name} {kind} {value:.8f}" for name, kinds in results.items() for kind, value in kinds.items()
              if not value >= BOUND]
    summary = {"reference": "oracle" if args.dry_run else "research", "device": args.device, "bound": BOUND,
               "images": len(images), "texts": len(TEXTS), "min_cos": results, "failed": failed,
               "versions": {"torch": torch.__version__, **_versions()}}
    if os.environ.get("OUT"):
        with open(os.path.join(os.environ["OUT"], "visualized_research_check.json"), "w") as f:
            json.dump(summary, f, indent=2)
    print(f"FAILED (below {BOUND}): {', '.join(failed)}" if failed else f"OK: every min cos >= {BOUND}")
    return 1 if failed else 0


def _versions() -> dict[str, str]:
    import importlib

    found = {}
    for module in ("transformers", "timm", "torchvision", "einops", "ftfy", "PIL"):
        try:
            found[module] = getattr(importlib.import_module(module), "__version__", "?")
        except Exception:  # noqa: BLE001 - a missing or broken package is just not listed
            found[module] = "absent"
    return found


if __name__ == "__main__":
    sys.exit(main())
