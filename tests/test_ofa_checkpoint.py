"""The module tree matches OFA-large key for key, and checkpoints load in every released shape."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from conftest import SHARED, copy_model, write_tiny_model
from velora.errors import VeloraError
from velora.ofa import OFAConfig, OFAModel
from velora.bundle import ModelBundle
from velora.ofa.checkpoint import load_pretrained, read_state_dict
from velora.ofa.positions import derived_buffers

LARGE_KEYS = SHARED / "fixtures" / "ofa-large-state-dict.tsv"
LARGE_CONFIG = SHARED / "fixtures" / "ofa-large-config.json"


def read_key_table() -> tuple[dict[str, tuple[list[int], str]], int]:
    table, total = {}, None
    for line in LARGE_KEYS.read_text().splitlines():
        if line.startswith("# parameters:"):
            total = int(line.split(":")[1])
        if not line or line.startswith("#"):
            continue
        key, shape, dtype = line.split("\t")
        table[key] = (json.loads(shape), dtype)
    return table, total


def test_large_module_tree_matches_reference_key_list_on_meta_device():
    config = OFAConfig.from_json_file(LARGE_CONFIG)
    with torch.device("meta"):
        model = OFAModel(config)
    expected, total_params = read_key_table()
    actual = {k: (list(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in model.state_dict().items()}
    assert sorted(set(expected) - set(actual)) == []
    assert sorted(set(actual) - set(expected)) == []
    mismatched = {k: (actual[k], expected[k]) for k in expected if actual[k] != expected[k]}
    assert mismatched == {}
    assert sum(p.numel() for p in model.parameters()) == total_params == 472_977_152
    assert all(p.is_meta for p in model.parameters())


def test_embeddings_are_one_tied_parameter_after_loading(tiny_model_dir):
    model = load_pretrained(tiny_model_dir)
    shared = model.encoder.embed_tokens.weight
    assert model.decoder.embed_tokens.weight is shared
    assert model.decoder.output_projection.weight is shared


@pytest.mark.parametrize("weights_format", ["bin", "safetensors"])
def test_loads_with_and_without_derived_buffers(tmp_path, weights_format):
    with_buffers = write_tiny_model(tmp_path / "with", weights_format=weights_format)
    reference = load_pretrained(with_buffers)
    state = read_state_dict(with_buffers)
    has_buffers = "encoder.token_rp_bucket" in state
    assert has_buffers == (weights_format == "bin")

    stripped = copy_model(with_buffers, tmp_path / "without")
    if weights_format == "bin":
        derived = derived_buffers(reference.config)
        state = {k: v for k, v in state.items() if k not in derived}
        torch.save(state, stripped / "pytorch_model.bin")
    model = load_pretrained(stripped)
    for key, value in reference.state_dict().items():
        torch.testing.assert_close(model.state_dict()[key], value, rtol=0, atol=0)


def test_prefixed_and_wrapped_state_dicts_load(tmp_path):
    src = write_tiny_model(tmp_path / "src", weights_format="bin")
    state = torch.load(src / "pytorch_model.bin", weights_only=True)
    wrapped = copy_model(src, tmp_path / "wrapped")
    torch.save({"model": {f"model.{k}": v for k, v in state.items()}}, wrapped / "pytorch_model.bin")
    a, b = load_pretrained(src), load_pretrained(wrapped)
    torch.testing.assert_close(a.encoder.pos_q_linear.weight, b.encoder.pos_q_linear.weight, rtol=0, atol=0)


def _corrupt(tmp_path, edit) -> str:
    src = write_tiny_model(tmp_path / "src", weights_format="bin")
    state = torch.load(src / "pytorch_model.bin", weights_only=True)
    edit(state)
    torch.save(state, src / "pytorch_model.bin")
    with pytest.raises(VeloraError) as info:
        load_pretrained(src)
    return str(info.value)


def test_missing_keys_are_listed(tmp_path):
    message = _corrupt(tmp_path, lambda s: (s.pop("encoder.layers.1.fc1.weight"), s.pop("decoder.layer_norm.bias")))
    assert "2 missing key(s)" in message
    assert "encoder.layers.1.fc1.weight" in message and "decoder.layer_norm.bias" in message


def test_unexpected_keys_are_listed(tmp_path):
    message = _corrupt(tmp_path, lambda s: s.update({"encoder.extra_head.weight": torch.zeros(2)}))
    assert "1 unexpected key(s): encoder.extra_head.weight" in message


def test_shape_mismatch_is_named(tmp_path):
    message = _corrupt(tmp_path, lambda s: s.update({"decoder.layers.0.fc2.bias": torch.zeros(7)}))
    assert "decoder.layers.0.fc2.bias: checkpoint (7,) vs model (32,)" in message


def test_inconsistent_derived_buffer_is_refused(tmp_path):
    message = _corrupt(tmp_path, lambda s: s["encoder.token_rp_bucket"].add_(1))
    assert "encoder.token_rp_bucket differs" in message


def test_model_dir_errors(tmp_path, tiny_model_dir):
    with pytest.raises(VeloraError, match="no such model directory"):
        ModelBundle.resolve(tmp_path / "nope")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(VeloraError, match="no config.json"):
        load_pretrained(empty)
    no_weights = tmp_path / "no_weights"
    shutil.copytree(tiny_model_dir, no_weights)
    (no_weights / "model.safetensors").unlink()
    with pytest.raises(VeloraError, match="no model weights found"):
        load_pretrained(no_weights)
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(VeloraError, match="cannot read weights"):
        load_pretrained(broken)


def test_hub_id_offline_says_how_to_pass_a_local_directory(monkeypatch):
    monkeypatch.setenv("VELORA_OFFLINE", "1")
    monkeypatch.setenv("MODELSCOPE_CACHE", "/nonexistent-cache")
    monkeypatch.setenv("HF_HUB_CACHE", "/nonexistent-cache")
    with pytest.raises(VeloraError) as info:
        ModelBundle.resolve("iic/ofa_visual-entailment_snli-ve_large_en")
    message = str(info.value)
    assert "cannot fetch model 'iic/ofa_visual-entailment_snli-ve_large_en'" in message
    assert "modelscope: unreachable" in message and "--model_path DIR" in message
