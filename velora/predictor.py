"""The one Predictor: an OFA checkpoint (plus optional LoRA adapters) that turns (image, premise, hypothesis) into
entailment / contradiction / neutral probabilities. `velora predict`, `eval`, `mine`, `merge`, `export` and `serve`
all build it with `Predictor.from_pretrained` and score through it.

Each adapter keeps the processor it was trained with (image size, prompt, normalisation): examples scored with
adapter "x" are preprocessed by `processor_for("x")`, never by another adapter's settings.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from tqdm.auto import tqdm

from velora.adapters import attach_adapter
from velora.bundle import ModelBundle
from velora.errors import VeloraError
from velora.images import ImageSource, load_image
from velora.labels import LABELS
from velora.ofa.entailment import OFAForVisualEntailment
from velora.ofa.processor import OFAProcessor
from velora.quantize import QuantizationPlan, plan_for, quantize_model

BASE = "base"  # adapter name that means "the base model, adapters off"
DEFAULT_ADAPTER = "default"  # the adapter given as the model path


@dataclass
class Prediction:
    label: str
    confidence: float
    probabilities: dict[str, float]  # in LABELS order

    @classmethod
    def from_probs(cls, probs: Sequence[float]) -> "Prediction":
        best = max(range(len(LABELS)), key=lambda i: probs[i])
        return cls(LABELS[best], float(probs[best]), {label: float(p) for label, p in zip(LABELS, probs)})

    def to_dict(self) -> dict:
        return {"label": self.label, "confidence": self.confidence, "probabilities": self.probabilities}


def pick_device(device: str | torch.device = "auto") -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


def pick_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """fp32 on CPU; bf16 on a GPU that has it, else fp16."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        if device.type != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if dtype not in DTYPES:
        raise VeloraError(f"unknown dtype {dtype!r}; use auto, float32, bfloat16 or float16")
    return DTYPES[dtype]


def image_key(source: ImageSource) -> str:
    """Identity of an image within one call: rows with the same key share one ResNet pass."""
    if isinstance(source, (str, os.PathLike)):
        return "path:" + os.path.abspath(source)
    if isinstance(source, bytes):
        return "bytes:" + hashlib.blake2b(source, digest_size=16).hexdigest()
    return f"object:{id(source)}"


class Predictor:
    """Built once from a model directory, a LoRA adapter directory or a hub id (`from_pretrained`)."""

    def __init__(self, model: OFAForVisualEntailment, processors: dict[str, OFAProcessor], device: torch.device,
                 dtype: torch.dtype, peft_model=None, description: str = "", base_dir: Path | None = None,
                 image_size: int | None = None):
        self.model = model.eval()
        self.peft_model = peft_model
        self.processors = processors  # adapter name (BASE included) -> its preprocessing
        self.device = device
        self.dtype = dtype
        self.description = description
        self.base_dir = base_dir  # where the base weights came from (adapters added later must fit it)
        self.image_size = image_size  # a user override applied to every adapter's processor
        # oneDNN's convolutions get slower per image beyond a few images on CPU (caches); GPUs want them all at once
        self.image_batch = 4 if device.type == "cpu" else 64

    # -- construction ------------------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, model_path: str | os.PathLike, *, base_model: str | None = None,
                        device: str | torch.device = "auto", dtype: str | torch.dtype = "auto",
                        image_size: int | None = None, quantize: str | None = None,
                        fuse_resnet: bool = True) -> "Predictor":
        """`fuse_resnet` folds BatchNorm into the ResNet's convolutions (faster inference; the model's state_dict
        then no longer has the checkpoint layout, so leave it off to save or merge weights)."""
        return cls.from_bundle(ModelBundle.resolve(model_path, base_model=base_model, image_size=image_size),
                               device=device, dtype=dtype, quantize=quantize, fuse_resnet=fuse_resnet)

    @classmethod
    def from_bundle(cls, bundle: ModelBundle, *, device: str | torch.device = "auto",
                    dtype: str | torch.dtype = "auto", quantize: str | None = None,
                    fuse_resnet: bool = True) -> "Predictor":
        device = pick_device(device)
        dtype = pick_dtype(dtype, device)
        model = bundle.load_model()
        processors = {BASE: bundle.base_processor()}
        peft_model = None
        if bundle.adapter_dir is not None:
            peft_model = attach_adapter(model, bundle.adapter_dir, DEFAULT_ADAPTER, bundle.base_dir)
            processors[DEFAULT_ADAPTER] = bundle.processor
        description = bundle.description
        if quantize:  # an adapter is merged in first: the result scores with the adapter's preprocessing
            plan = plan_for(bundle.adapter_dir, bundle.base_dir)
            model, peft_model = _quantize(model, peft_model, quantize, device, plan)
            processors = {BASE: bundle.processor}
            description += f" ({plan.describe()})"
        model.to(device=device, dtype=dtype)
        if fuse_resnet:
            model.encoder.embed_images.fuse_for_inference_()
        return cls(model, processors, device, dtype, peft_model, description, bundle.base_dir, bundle.image_size)

    def load_adapter(self, name: str, adapter_dir: str | os.PathLike) -> None:
        """Add another LoRA adapter on the same base, selectable per call with `adapter=name`; it brings its own
        processor."""
        if name == BASE:
            raise VeloraError(f"adapter name {name!r} is reserved for the base model")
        if name in self.adapter_names:
            raise VeloraError(f"adapter name {name!r} is already loaded")
        bundle = ModelBundle.resolve(adapter_dir, base_model=str(self.base_dir), image_size=self.image_size)
        if bundle.adapter_dir is None:
            raise VeloraError(f"{adapter_dir}: not a LoRA adapter (no adapter_config.json)")
        self.peft_model = attach_adapter(self.model, bundle.adapter_dir, name, self.base_dir, self.peft_model)
        self.processors[name] = bundle.processor
        self.model.to(device=self.device, dtype=self.dtype)

    @property
    def adapter_names(self) -> list[str]:
        return list(self.peft_model.peft_config) if self.peft_model is not None else []

    def processor_for(self, adapter: str | None = None) -> OFAProcessor:
        """The preprocessing of `adapter` (None: the default one, as scoring picks it)."""
        return self.processors[self._adapter_name(adapter)]

    @property
    def processor(self) -> OFAProcessor:
        return self.processor_for(None)

    @property
    def answer_ids(self) -> torch.Tensor:
        return self.model.answer_ids

    # -- inference ---------------------------------------------------------------------------------------------

    def predict(self, image: ImageSource, premise: str | None, hypothesis: str, adapter: str | None = None
                ) -> Prediction:
        return self.predict_batch([image], [premise], [hypothesis], adapter=adapter)[0]

    def predict_batch(self, images: Sequence[ImageSource], premises: Sequence[str | None],
                      hypotheses: Sequence[str], adapter: str | None = None, batch_size: int = 16,
                      progress: bool = False) -> list[Prediction]:
        probs = self.probabilities(images, premises, hypotheses, adapter, batch_size, progress)
        return [Prediction.from_probs(row) for row in probs.tolist()]

    def probabilities(self, images: Sequence[ImageSource], premises: Sequence[str | None],
                      hypotheses: Sequence[str], adapter: str | None = None, batch_size: int = 16,
                      progress: bool = False) -> torch.Tensor:
        """(N, 3) float32 probabilities in LABELS order, identical to scoring each example alone."""
        if not (len(images) == len(premises) == len(hypotheses)):
            raise VeloraError(f"got {len(images)} images, {len(premises)} premises, {len(hypotheses)} hypotheses")
        processor = self.processor_for(adapter)
        prompts = [processor.encode_text(h, p) for p, h in zip(premises, hypotheses)]
        return self.score(images, prompts, adapter, batch_size, progress)

    def score(self, images: Sequence[ImageSource], prompts: Sequence[list[int]], adapter: str | None = None,
              batch_size: int = 16, progress: bool = False) -> torch.Tensor:
        """(N, 3) probabilities of prompts already encoded by `processor_for(adapter).encode_text` (the server
        encodes, and checks the limits, when a request is read). Rows sharing an image are batched together and
        its ResNet features computed once."""
        keys = [image_key(img) for img in images]
        first_seen = {k: i for i, k in reversed(list(enumerate(keys)))}
        order = sorted(range(len(prompts)), key=lambda i: (first_seen[keys[i]], len(prompts[i])))
        processor = self.processor_for(adapter)
        out = torch.empty(len(prompts), len(LABELS))
        with self._adapter(adapter), torch.inference_mode():
            bar = tqdm(total=len(order), desc="predict", unit="ex", disable=not progress)
            for start in range(0, len(order), batch_size):
                rows = order[start:start + batch_size]
                out[rows] = self._score_batch(processor, [images[i] for i in rows], [keys[i] for i in rows],
                                              [prompts[i] for i in rows])
                bar.update(len(rows))
            bar.close()
        return out

    def score_pixels(self, pixels: torch.Tensor, image_index: Sequence[int], prompts: Sequence[list[int]],
                     adapter: str | None = None) -> torch.Tensor:
        """(N, 3) probabilities of prompts encoded by `processor_for(adapter).encode_text`, on images already
        preprocessed: `pixels` is (U, 3, S, S) as `processor_for(adapter).image_tensor` makes them, and row i
        looks at pixels[image_index[i]]. One batch: each image's ResNet features are computed once, text grouped
        as in `score`. For callers that decode images elsewhere (`velora predict --input_file`, in workers)."""
        with self._adapter(adapter), torch.inference_mode():
            return self._score_pixels(self.processor_for(adapter), pixels, list(image_index), list(prompts))

    def _score_batch(self, processor: OFAProcessor, images: list[ImageSource], keys: list[str],
                     prompts: list[list[int]]) -> torch.Tensor:
        unique = list(dict.fromkeys(keys))
        first = {k: images[keys.index(k)] for k in unique}
        pixels = torch.stack([processor.image_tensor(load_image(first[k])) for k in unique])
        return self._score_pixels(processor, pixels, [unique.index(k) for k in keys], prompts)

    def _score_pixels(self, processor: OFAProcessor, pixels: torch.Tensor, image_index: list[int],
                      prompts: list[list[int]]) -> torch.Tensor:
        pixels = pixels.to(self.device, self.dtype)
        features = torch.cat([self.model.image_features(chunk)  # (U, RESNET_CHANNELS, h, w), one per image
                              for chunk in pixels.split(self.image_batch)])
        features = features[torch.tensor(image_index, device=self.device)]
        probs = torch.empty(len(prompts), len(LABELS))
        for rows in self._text_groups(prompts):
            text = processor.collate([prompts[i] for i in rows])
            logits = self.model(**text.model_inputs(self.device), image_features=features[rows])  # (b, 3)
            probs[rows] = logits.float().softmax(-1).cpu()
        return probs

    def _text_groups(self, prompts: list[list[int]]) -> list[list[int]]:
        """Rows scored together. On CPU, only prompts of one length: padding would cost a (B, H, S, S) attention
        mask per layer, while 900+ tokens per sample already keep the matrix units busy. GPUs want one batch."""
        if self.device.type != "cpu":
            return [list(range(len(prompts)))]
        groups: dict[int, list[int]] = {}
        for i, prompt in enumerate(prompts):
            groups.setdefault(len(prompt), []).append(i)
        return list(groups.values())

    def _adapter_name(self, name: str | None) -> str:
        """`name` checked: None = the default (first loaded adapter, else the base)."""
        if name is None:
            return self.adapter_names[0] if self.adapter_names else BASE
        if name != BASE and name not in self.adapter_names:
            loaded = ", ".join(self.adapter_names) or "none"
            raise VeloraError(f"unknown adapter {name!r}; loaded adapters: {loaded} ({BASE!r} = adapters off)")
        return name

    def _adapter(self, name: str | None):
        """Context selecting which adapter scores: None = the default (first loaded), BASE = adapters off."""
        name = self._adapter_name(name)
        if self.peft_model is None:
            return contextlib.nullcontext()
        if name == BASE:
            return self.peft_model.disable_adapter()
        self.peft_model.set_adapter(name)
        return contextlib.nullcontext()


def _quantize(model: OFAForVisualEntailment, peft_model, mode: str, device: torch.device, plan: QuantizationPlan):
    """int8 (CPU only) where `plan` says, fp32 elsewhere (velora.quantize); an adapter is merged in first."""
    if mode != "int8":
        raise VeloraError(f"unknown quantization {mode!r}; only 'int8' (CPU) is supported")
    if device.type != "cpu":
        raise VeloraError("int8 quantization runs on CPU only; drop --quantize or use --device cpu")
    if peft_model is not None:
        model = peft_model.merge_and_unload()
    return quantize_model(model, plan), None
