"""Shared test fixtures: the reference fixtures in ../shared and small random OFA checkpoints in the hub layout."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from velora.bundle import save_model_dir
from velora.ofa.checkpoint import load_pretrained, randomize_
from velora.ofa.config import OFAConfig
from velora.ofa.model import OFAModel
from velora.ofa.processor import OFAProcessor

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("VELORA_SHARED", REPO.parent / "shared"))
PARITY = SHARED / "fixtures" / "ofa-parity"
ORACLE_PYTHON = Path(os.environ.get("ORACLE_VENV", REPO / ".oracle-venv")) / "bin" / "python"

TINY = dict(d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4,
            encoder_ffn_dim=64, decoder_ffn_dim=64, resnet_type="resnet18")
TINY_IMAGE = 64


def tiny_config(**overrides) -> OFAConfig:
    return OFAConfig(**{**TINY, **overrides})


def write_tiny_model(directory: Path, seed: int = 0, weights_format: str = "safetensors", **overrides) -> Path:
    torch.manual_seed(seed)
    model = randomize_(OFAModel(tiny_config(**overrides)), seed=seed)
    return save_model_dir(model.eval(), OFAProcessor.default(image_size=TINY_IMAGE), directory,
                          weights_format=weights_format)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A small random OFA in the hub layout (config.json, model.safetensors, BPE files, configuration.json)."""
    return write_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def parity_dir() -> Path:
    assert PARITY.exists(), f"reference fixtures not found at {PARITY} (set VELORA_SHARED)"
    return PARITY


@pytest.fixture(scope="session")
def oracle_python() -> Path:
    assert ORACLE_PYTHON.exists(), f"reference OFA venv missing at {ORACLE_PYTHON}: run `make oracle`"
    return ORACLE_PYTHON


def run_oracle(oracle_python: Path, out: Path, *args: str) -> Path:
    """Write a fresh reference fixture (model/, inputs.pt, expected.pt) with ModelScope's OFA implementation."""
    subprocess.run([str(oracle_python), str(SHARED / "oracle" / "ofa_oracle.py"), "make", str(out), *args],
                   check=True, capture_output=True, text=True)
    return out


def copy_model(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def write_tiny_adapter(model_dir: Path, directory: Path, seed: int = 0, r: int = 4) -> Path:
    """A LoRA adapter (PEFT layout, q_proj/v_proj) with non-zero weights on the model in `model_dir`."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    config = LoraConfig(r=r, lora_alpha=2 * r, lora_dropout=0.0, target_modules=["q_proj", "v_proj"])
    peft_model = get_peft_model(load_pretrained(model_dir), config)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                p.normal_(std=0.5)
    peft_model.peft_config["default"].base_model_name_or_path = str(model_dir)
    peft_model.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_adapter_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """A LoRA adapter for `tiny_model_dir` whose predictions clearly differ from the base model's."""
    return write_tiny_adapter(tiny_model_dir, tmp_path_factory.mktemp("adapter") / "lora")
