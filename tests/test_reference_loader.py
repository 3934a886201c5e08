"""What velora writes loads in the reference OFA implementation (ModelScope's OFAModel, in the oracle venv) and
scores the same: merged models (fp32 and fp16, in the base checkpoint's own layout) and LoRA adapters through plain
PEFT. The base is the shared fixture written by the reference itself (`pytorch_model.bin`, every key)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import SHARED, write_tiny_adapter
from velora.merge import merge_lora
from velora.ofa.checkpoint import stored_keys
from velora.ofa.positions import derived_buffers
from velora.predictor import Predictor

IMAGES = [Image.fromarray(np.random.default_rng(s).integers(0, 256, (40, 56, 3), dtype=np.uint8)) for s in (1, 2, 3)]
PREMISES = ["a cat on a sofa", None, "three people walk along a long sandy beach at sunset"]
HYPOTHESES = ["an animal is indoors.", "it is raining.", "nobody is outside."]
SCORE = Path(__file__).parent / "oracle" / "score.py"  # runs in the reference venv


def reference_probs(oracle_python, tmp_path, predictor: Predictor, model_dir, adapter_dir=None) -> dict:
    """Probabilities of ModelScope's OFAModel on the tensors velora's processor makes for the test examples."""
    batch = predictor.processor(IMAGES, PREMISES, HYPOTHESES)
    inputs = tmp_path / "inputs.pt"
    torch.save({**{k: batch[k] for k in ("input_ids", "decoder_input_ids", "answer_positions", "patch_images")},
                "answer_ids": predictor.processor.answer_ids}, inputs)
    payload = {"model_dir": str(model_dir), "adapter_dir": str(adapter_dir) if adapter_dir else None,
               "inputs": str(inputs)}
    result = subprocess.run([str(oracle_python), str(SCORE)], input=json.dumps(payload), capture_output=True,
                            text=True, env={"PYTHONPATH": str(SHARED / "oracle"), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    out["probs"] = torch.tensor(out["probs"], dtype=torch.float64)
    return out


@pytest.fixture(scope="module")
def base_and_adapter(parity_dir, tmp_path_factory):
    base = shutil.copytree(parity_dir / "model", tmp_path_factory.mktemp("ref") / "base")
    adapter = write_tiny_adapter(base, tmp_path_factory.mktemp("ref") / "lora", seed=5)
    return base, adapter


def velora_probs(path) -> torch.Tensor:
    return Predictor.from_pretrained(path).probabilities(IMAGES, PREMISES, HYPOTHESES).double()


def test_adapter_loads_on_the_reference_model_with_plain_peft(oracle_python, base_and_adapter, tmp_path):
    base, adapter = base_and_adapter
    predictor = Predictor.from_pretrained(adapter)
    reference = reference_probs(oracle_python, tmp_path, predictor, base, adapter)
    torch.testing.assert_close(reference["probs"], velora_probs(adapter), atol=1e-5, rtol=0)
    assert (velora_probs(adapter) - velora_probs(base)).abs().max() > 1e-2  # the adapter matters


@pytest.mark.parametrize("dtype, tolerance", [("float32", 1e-5), ("float16", 2e-2)])
def test_merged_model_loads_in_the_reference_implementation(oracle_python, base_and_adapter, tmp_path, dtype,
                                                            tolerance):
    base, adapter = base_and_adapter
    merged = merge_lora(adapter, tmp_path / f"merged_{dtype}", dtype=dtype).output_dir
    assert (merged / "pytorch_model.bin").exists() and not (merged / "model.safetensors").exists()  # as the base
    assert set(stored_keys(merged)) == set(stored_keys(base))  # tied embeddings written out, like the original
    assert {"config.json", "configuration.json", "vocab.json", "merges.txt"} <= {p.name for p in merged.iterdir()}
    predictor = Predictor.from_pretrained(merged)
    reference = reference_probs(oracle_python, tmp_path, predictor, merged)
    # nothing the loader would initialise at random: only the index buffers it derives itself (the base has none)
    assert set(reference["missing_keys"]) <= set(derived_buffers(predictor.model.config))
    assert reference["unexpected_keys"] == []
    torch.testing.assert_close(reference["probs"], velora_probs(merged), atol=1e-5, rtol=0)  # same weights
    torch.testing.assert_close(reference["probs"], velora_probs(adapter), atol=tolerance, rtol=0)  # = the adapter
