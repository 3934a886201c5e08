"""Choosing an int8 plan by measurement (see `velora.quantize`).

On a calibration set (a few dozen varied examples of the user's own kind), every layer group is quantized alone and
its largest effect on the three probabilities measured; then, from everything in int8, groups are put back to fp32
in order of harm per multiply-add until the largest probability change is within the tolerance. The ResNet's
activation scales are observed on the calibration images and stored in the plan.

    plan = calibrate("./merged_model", "data/calibration.csv", tolerance=0.005)   # -> ./merged_model/int8_plan.json
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from velora.bundle import ModelBundle
from velora.data import image_source, load_examples
from velora.errors import VeloraError
from velora.images import load_image
from velora.io import check_output_file
from velora.labels import LABELS
from velora.predictor import Predictor
from velora.quantize import ENGINE, GROUPS, PLAN_FILE, RESNET, QuantizationPlan, linear_groups, quantize_model, \
    resnet_scales


@dataclass
class Calibration:
    """Examples prepared once: each one's text inputs, its image (an index into `pixels`, one ResNet pass per distinct
    image), the fp32 ResNet features and probabilities, and the multiply-adds of each layer group over the set."""
    inputs: list[dict[str, torch.Tensor]]  # model inputs with the fp32 image_features
    image_index: list[int]
    pixels: list[torch.Tensor]  # (1, 3, H, W) normalised, per distinct image
    reference: torch.Tensor  # (N, 3) fp32 probabilities
    macs: dict[str, int]


def prepare_calibration(predictor, images: Sequence, premises: Sequence[str | None], hypotheses: Sequence[str]
                        ) -> Calibration:
    """`images` (paths, bytes or PIL images) with their texts, scored one by one by `predictor` (a float Predictor
    without adapters, or with its adapter merged)."""
    processor, model = predictor.processor, predictor.model
    keys: dict = {}
    pixels, image_index, texts = [], [], []
    for image, premise, hypothesis in zip(images, premises, hypotheses):
        key = os.fspath(image) if isinstance(image, (str, os.PathLike)) else id(image)
        if key not in keys:
            keys[key] = len(pixels)
            pixels.append(processor.image_tensor(load_image(image))[None].to(predictor.device, predictor.dtype))
        image_index.append(keys[key])
        texts.append(processor.collate([processor.encode_text(hypothesis, premise)]).model_inputs(predictor.device))
    macs = dict.fromkeys(GROUPS, 0)
    with _counting_macs(model, macs), torch.inference_mode():
        features = [model.image_features(x) for x in pixels]
        inputs = [{**text, "image_features": features[i]} for text, i in zip(texts, image_index)]
        reference = probabilities(model, inputs)
    return Calibration(inputs, image_index, pixels, reference, {g: n for g, n in macs.items() if n})


class _counting_macs:
    """Adds each Linear's and Conv2d's multiply-adds to `macs[group]` while active (forward hooks)."""

    def __init__(self, model: nn.Module, macs: dict[str, int]):
        self.group_of = {name: group for group, names in linear_groups(model).items() for name in names}
        self.model, self.macs, self.hooks = model, macs, []

    def __enter__(self):
        for name, module in self.model.named_modules():
            if name in self.group_of:
                self.hooks.append(module.register_forward_hook(self._linear(self.group_of[name])))
            elif isinstance(module, nn.Conv2d) and name.startswith("encoder.embed_images."):
                self.hooks.append(module.register_forward_hook(self._conv))
        return self

    def __exit__(self, *exc):
        for hook in self.hooks:
            hook.remove()

    def _linear(self, group: str):
        def count(module, args, out):
            self.macs[group] += args[0].numel() * module.out_features
        return count

    def _conv(self, module, args, out):
        kh, kw = module.kernel_size
        self.macs[RESNET] += out.numel() * module.in_channels // module.groups * kh * kw


def probabilities(model: nn.Module, inputs: Sequence[dict[str, torch.Tensor]]) -> torch.Tensor:
    """(N, 3) probabilities of prepared examples."""
    with torch.inference_mode():
        return torch.cat([model(**x).float().softmax(-1) for x in inputs])


def compare(reference: torch.Tensor, probs: torch.Tensor) -> dict[str, float]:
    """Largest and mean |probability change|, and the share of examples whose label changed."""
    diff = (probs - reference).abs()
    return {"max_abs_dp": diff.max().item(), "mean_abs_dp": diff.mean().item(),
            "changed_labels": (probs.argmax(-1) != reference.argmax(-1)).float().mean().item()}


def score_quantized(model: nn.Module, calibration: Calibration, plan: QuantizationPlan) -> torch.Tensor:
    """Probabilities of (a copy of) `model` quantized by `plan`; the ResNet reruns only when the plan quantizes it."""
    quantized = quantize_model(copy.deepcopy(model), plan)
    inputs = calibration.inputs
    if RESNET in plan.int8_groups:
        with torch.inference_mode():
            features = [quantized.image_features(x) for x in calibration.pixels]
        inputs = [{**x, "image_features": features[i]} for x, i in zip(inputs, calibration.image_index)]
    return probabilities(quantized, inputs)


def choose_plan(model: nn.Module, calibration: Calibration, tolerance: float = 0.005, engine: str = ENGINE,
                progress: bool = False, log: Callable[[str], None] = lambda line: None) -> QuantizationPlan:
    """The plan found greedily with the most work in int8 whose max |probability change| on the calibration set is
    within `tolerance`: each group alone, then everything, then groups back to fp32 by harm per multiply-add."""
    groups = [g for g in GROUPS if calibration.macs.get(g)]
    scales = resnet_scales(model, calibration.pixels, engine) if RESNET in groups else None

    def measure(int8: list[str]) -> dict[str, float]:
        plan = QuantizationPlan(int8, engine=engine, resnet_activations=scales if RESNET in int8 else None)
        return compare(calibration.reference, score_quantized(model, calibration, plan))

    total = sum(calibration.macs[g] for g in groups)
    bar = tqdm(total=2 * len(groups) + 1, desc="int8 plan", disable=not progress)
    alone = {}
    for group in groups:
        alone[group] = measure([group])
        log(f"{group} alone in int8 ({calibration.macs[group] / total:.0%} of the multiply-adds): "
            f"max |dp| {alone[group]['max_abs_dp']:.2e}")
        bar.update()
    steps = [{"fp32": [], **measure(groups)}]
    log(f"everything in int8: max |dp| {steps[-1]['max_abs_dp']:.2e}")
    fp32: list[str] = []
    for group in sorted(groups, key=lambda g: alone[g]["max_abs_dp"] / calibration.macs[g], reverse=True):
        bar.update()
        if steps[-1]["max_abs_dp"] <= tolerance:
            break
        fp32.append(group)
        steps.append({"fp32": list(fp32), **measure([g for g in groups if g not in fp32])})
        log(f"fp32 {', '.join(fp32)}: max |dp| {steps[-1]['max_abs_dp']:.2e}")
    bar.close()
    int8 = [g for g in groups if g not in fp32]
    return QuantizationPlan(int8, fp32, tolerance=tolerance, engine=engine,
                            resnet_activations=scales if RESNET in int8 else None, calibration={
                                "examples": len(calibration.inputs), "images": len(calibration.pixels),
                                "labels": list(LABELS), "macs": calibration.macs,
                                "int8_share_of_macs": sum(calibration.macs[g] for g in int8) / total,
                                "alone": alone, "steps": steps,
                                "within_tolerance": steps[-1]["max_abs_dp"] <= tolerance})


def calibrate(model_path: str | os.PathLike, examples_file: str | os.PathLike, *, split: str = "all",
              max_examples: int = 48, tolerance: float = 0.005, output: str | os.PathLike | None = None,
              overwrite: bool = False, progress: bool = True) -> QuantizationPlan:
    """Choose a plan for the model at `model_path` (a model folder, or an adapter, merged first) on the first
    `max_examples` rows of `examples_file` (CSV/JSONL or a `velora convert` dataset) and save it to `output`
    (default: int8_plan.json in the model or adapter folder, where `--quantize int8` finds it)."""
    bundle = ModelBundle.resolve(model_path)
    target = Path(output) if output is not None else (bundle.adapter_dir or bundle.base_dir) / PLAN_FILE
    check_output_file(target, "--output", overwrite=overwrite, suffixes=(".json",))
    examples = load_examples(examples_file, split)
    if len(examples) == 0:
        raise VeloraError(f"{examples_file}: no usable examples to calibrate on")
    predictor = Predictor.from_bundle(bundle, device="cpu", dtype=torch.float32, fuse_resnet=False)
    if predictor.peft_model is not None:
        predictor.model, predictor.peft_model = predictor.peft_model.merge_and_unload(), None
    rows = examples.rows(0, min(max_examples, len(examples)))
    images = [image_source(image) for image in rows["image"]]
    premises = rows.get("premise") or [None] * len(images)
    calibration = prepare_calibration(predictor, images, premises, rows["hypothesis"])
    plan = choose_plan(predictor.model, calibration, tolerance, progress=progress)
    plan.save(target)
    return plan
