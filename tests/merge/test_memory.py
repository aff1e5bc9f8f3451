"""Peak memory of a merge is about one model plus one tensor, whatever the number of models."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from transformers import BertConfig, BertModel

MODELS = 4
MARGIN_MB = 40  # allocator slack, a few tensors in flight, Python objects

# Runs in a fresh process. Importing torch and transformers peaks higher than a small merge, so the
# process's high-water mark (VmHWM) is reset after the imports (Linux: "5" > /proc/self/clear_refs) and
# the merge's peak is the new high-water mark minus the resident set at that moment.
SCRIPT = textwrap.dedent("""
    import json, re, sys
    import bge_core.merge
    import safetensors.torch, torch

    def status(key):
        with open("/proc/self/status") as fh:
            return int(re.search(key + r":\\s+(\\d+)", fh.read()).group(1))

    models, out = json.loads(sys.argv[1]), sys.argv[2]
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
    before = status("VmRSS")
    bge_core.merge.mix_models(models, [1 / len(models)] * len(models), out, model_type="encoder")
    print(json.dumps({"rise_kb": status("VmHWM") - before}))
""")


@pytest.mark.skipif(not os.access("/proc/self/clear_refs", os.W_OK), reason="needs Linux's resettable peak RSS")
def test_peak_rss_of_merging_four_models_is_about_one_model(tmp_path):
    config = BertConfig(vocab_size=8000, hidden_size=384, num_hidden_layers=6, num_attention_heads=6,
                        intermediate_size=1536, max_position_embeddings=512)
    models = []
    for seed in range(MODELS):
        torch.manual_seed(seed)
        path = tmp_path / f"model{seed}"
        BertModel(config).save_pretrained(path)
        models.append(str(path))
    size_mb = os.path.getsize(os.path.join(models[0], "model.safetensors")) / 2**20
    assert 40 < size_mb < 80  # large enough that holding all four models (~4x) could not pass
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(models), str(tmp_path / "out")],
                         capture_output=True, text=True, timeout=300, env=env, check=False)
    assert run.returncode == 0, run.stderr[-2000:]
    rise_mb = json.loads(run.stdout.strip().splitlines()[-1])["rise_kb"] / 1024
    print(f"merge of {MODELS} x {size_mb:.0f} MB: peak RSS rose {rise_mb:.0f} MB")
    bound = 1.5 * size_mb + MARGIN_MB
    assert rise_mb < bound, f"peak RSS rose {rise_mb:.0f} MB merging {MODELS} models of {size_mb:.0f} MB"
    assert MODELS * size_mb > bound  # the bound excludes loading every model at once
    assert os.path.getsize(tmp_path / "out" / "model.safetensors") == os.path.getsize(
        os.path.join(models[0], "model.safetensors"))
