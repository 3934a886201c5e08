"""Numerical parity with the reference OFA implementation (ModelScope's OFAModel)."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import run_oracle
from velora.ofa import OFAForVisualEntailment, OFAModel
from velora.ofa.checkpoint import load_pretrained


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual - expected).norm() / expected.norm())


def check_against(fixture_dir) -> None:
    model = load_pretrained(fixture_dir / "model", OFAModel)
    inputs = torch.load(fixture_dir / "inputs.pt", weights_only=False)
    expected = torch.load(fixture_dir / "expected.pt", weights_only=False)
    answer_ids = torch.tensor(inputs["answer_ids"])
    head = load_pretrained(fixture_dir / "model", OFAForVisualEntailment, answer_ids=inputs["answer_ids"])
    assert bool(inputs["patch_masks"].all()), "every fixture example has its image (the VE head assumes one)"

    with torch.no_grad():  # batched, right-padded
        logits = model(input_ids=inputs["input_ids"], patch_images=inputs["patch_images"],
                       patch_masks=inputs["patch_masks"], decoder_input_ids=inputs["decoder_input_ids"]).logits
    assert logits.shape == (*inputs["decoder_input_ids"].shape, model.config.vocab_size)
    assert relative_error(logits[..., expected["vocab_ids"]], expected["logits"]) < 1e-4
    assert relative_error(logits.norm(dim=-1), expected["logits_norm"]) < 1e-4

    for i in range(len(inputs["input_ids"])):  # alone, unpadded, scored through the split path
        n = int(inputs["input_ids"][i].ne(1).sum())
        with torch.no_grad():
            single = model(input_ids=inputs["input_ids"][i:i + 1, :n], patch_images=inputs["patch_images"][i:i + 1],
                           patch_masks=inputs["patch_masks"][i:i + 1],
                           decoder_input_ids=inputs["decoder_input_ids"][i:i + 1, :n - 1]).logits
            scores = head(inputs["input_ids"][i:i + 1, :n], inputs["decoder_input_ids"][i:i + 1, :n - 1],
                          torch.tensor([n - 2]), patch_images=inputs["patch_images"][i:i + 1])
        assert relative_error(single[0, :, expected["vocab_ids"]], expected["logits"][i, : n - 1]) < 1e-4
        full_probs = single[0, -1, answer_ids].double().softmax(-1)
        torch.testing.assert_close(full_probs, expected["probs"][i], atol=1e-5, rtol=0)
        torch.testing.assert_close(scores[0].double().softmax(-1), expected["probs"][i], atol=1e-5, rtol=0)


def test_parity_with_shared_reference_fixture(parity_dir):
    check_against(parity_dir)


ORACLE_CONFIGS = {
    # name: oracle flags (depth, heads, resnet type, image size all differ from the shared fixture)
    "resnet50-128px-6heads": ["--d-model", "48", "--layers", "3", "--heads", "6", "--ffn", "96",
                              "--resnet", "resnet50", "--image", "128", "--embed-std", "1.0", "--seed", "1"],
    "1layer-2heads-96px": ["--d-model", "16", "--layers", "1", "--heads", "2", "--ffn", "32",
                           "--resnet", "resnet18", "--image", "96", "--embed-std", "2.0", "--seed", "2"],
}

SAMPLES = [
    ["Two Dogs play in the snow!", "the animals are sleeping inside a warm house near the fire place"],
    ["a child / a kite - on the beach", "someone is outside."],
    ["x", "a much longer hypothesis that says many things about the scene: colours, counts, places and time"],
    ["an old man sits on a bench.", "a man is sitting."],
]


@pytest.mark.parametrize("name", sorted(ORACLE_CONFIGS))
def test_parity_with_reference_on_other_configs(name, oracle_python, tmp_path):
    samples = tmp_path / "samples.json"
    samples.write_text(json.dumps(SAMPLES))
    fixture = run_oracle(oracle_python, tmp_path / name, *ORACLE_CONFIGS[name], "--samples", str(samples))
    check_against(fixture)
