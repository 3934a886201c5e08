"""Cold start: a checkpoint is built on the meta device without running any initialiser, then takes the file's
tensors as they are; a model built normally is still initialised."""

from __future__ import annotations

import re

import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from torch.overrides import TorchFunctionMode

from velora.cli import cli
from velora.ofa.checkpoint import load_pretrained, read_state_dict
from velora.ofa.model import OFAModel, skip_init
from velora.predictor import Predictor

from conftest import tiny_config, write_tiny_model


class RecordInit(TorchFunctionMode):
    """Records every initialiser that reaches it (an inner skip_init answers them before they do)."""

    def __init__(self):
        super().__init__()
        self.calls: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if getattr(func, "__module__", None) == "torch.nn.init" or name in ("normal_", "uniform_"):
            self.calls.append(name)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("weights_format", ["safetensors", "bin"])
def test_loading_runs_no_initialiser_and_keeps_the_files_tensors(tmp_path, weights_format):
    model_dir = write_tiny_model(tmp_path / "model", weights_format=weights_format)
    with RecordInit() as recorder:
        model = load_pretrained(model_dir)
    assert recorder.calls == []
    stored = read_state_dict(model_dir)
    loaded = model.state_dict()
    assert stored and set(stored) <= set(loaded)
    for key, tensor in stored.items():
        assert torch.equal(loaded[key], tensor), key
    assert not any(t.is_meta for t in loaded.values())


def test_the_recorder_sees_initialisers_when_they_run():
    with RecordInit() as recorder:
        OFAModel(tiny_config())
    assert "normal_" in recorder.calls


def test_a_model_built_normally_is_initialised():
    torch.manual_seed(0)
    model = OFAModel(tiny_config())
    std = model.config.init_std
    fc1 = model.encoder.layers[0].fc1
    assert abs(fc1.weight.std().item() - std) < 0.3 * std
    assert torch.count_nonzero(fc1.bias) == 0
    assert torch.count_nonzero(model.encoder.token_rel_pos_table_list[0].weight) == 0
    assert torch.equal(model.encoder.layer_norm.weight, torch.ones_like(model.encoder.layer_norm.weight))


def test_skip_init_leaves_tensors_as_they_are_and_only_inside():
    t = torch.zeros(8)
    with skip_init():
        torch.nn.init.normal_(t)
        torch.nn.init.kaiming_uniform_(t.view(2, 4))
        t.uniform_()
    assert torch.count_nonzero(t) == 0
    torch.nn.init.normal_(t)
    assert torch.count_nonzero(t) == 8


def test_predict_verbose_reports_load_and_score_times(tiny_model_dir, tmp_path):
    image = tmp_path / "red.png"
    Image.new("RGB", (40, 30), (200, 30, 30)).save(image)
    result = CliRunner().invoke(cli, ["predict", "--model_path", str(tiny_model_dir), "--image", str(image),
                                      "--hypothesis", "it is red", "--device", "cpu", "--verbose"])
    assert result.exit_code == 0, result.output
    assert re.search(r"^Loaded in \d+\.\d\d s", result.stderr, re.M), result.stderr
    assert re.search(r"^Scored in \d+\.\d\d s", result.stderr, re.M), result.stderr
    assert "Result: " in result.stdout


def test_folded_batch_norm_computes_what_the_unfolded_resnet_does(tiny_model_dir):
    resnet = Predictor.from_pretrained(tiny_model_dir, device="cpu", fuse_resnet=False).model.encoder.embed_images
    torch.manual_seed(0)
    for bn in (m for m in resnet.modules() if isinstance(m, torch.nn.BatchNorm2d)):  # statistics a trained one has
        bn.running_mean.normal_(0, 0.5), bn.running_var.uniform_(0.5, 2), bn.weight.data.uniform_(0.5, 1.5)
        bn.bias.data.normal_(0, 0.5)
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        expected = resnet(x)
        folded = resnet.fuse_for_inference_()
        got = folded(x)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert folded.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(got, expected, atol=1e-4, rtol=1e-4)
