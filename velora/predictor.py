"""The one Predictor: an OFA checkpoint (plus optional LoRA adapters) that turns (image, premise, hypothesis) into
entailment / contradiction / neutral probabilities. `velora predict`, `eval`, `mine` and `serve` all use it.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from tqdm.auto import tqdm

from velora.errors import VeloraError
from velora.adapters import attach_adapter, base_dir_for, is_adapter_dir
from velora.hub import resolve_model_dir
from velora.images import ImageSource, load_image
from velora.labels import LABELS
from velora.ofa.checkpoint import load_pretrained
from velora.ofa.model import OFAModel
from velora.ofa.preprocess import (PreprocessConfig, answer_token_ids, collate_prompts, encode_prompt,
                                   image_to_tensor, load_tokenizer)

_POSITION_MODULES = ("pos_q_linear", "pos_k_linear", "pos_ln", "image_pos_ln", "embed_image_positions",
                     "image_rel_pos_table_list")
BASE = "base"  # adapter name that means "the base model, adapters off"
DEFAULT_ADAPTER = "default"


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


def pick_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """fp32 on CPU; bf16 on a GPU that has it, else fp16."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        if device.type != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    names = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    if dtype not in names:
        raise VeloraError(f"unknown dtype {dtype!r}; use auto, float32, bfloat16 or float16")
    return names[dtype]


def _image_key(source: ImageSource) -> str:
    if isinstance(source, (str, os.PathLike)):
        return "path:" + os.path.abspath(source)
    if isinstance(source, bytes):
        return "bytes:" + hashlib.blake2b(source, digest_size=16).hexdigest()
    return f"object:{id(source)}"


class Predictor:
    """Built once from a model directory or hub id; a LoRA adapter directory works too (its base is read from
    `adapter_config.json` unless `base_model` is given)."""

    def __init__(self, model: OFAModel, tokenizer, preprocess: PreprocessConfig, device: torch.device,
                 dtype: torch.dtype, peft_model=None, description: str = "", base_dir: Path | None = None):
        self.model = model.eval()
        self.peft_model = peft_model
        self.tokenizer = tokenizer
        self.preprocess = preprocess
        self.device = device
        self.dtype = dtype
        self.answer_ids = torch.tensor(answer_token_ids(tokenizer), device=device)
        self.description = description
        self.base_dir = base_dir  # where the base weights came from (adapters added later must fit it)
        # oneDNN's convolutions get slower per image beyond a few images on CPU (caches); GPUs want them all at once
        self.image_batch = 4 if device.type == "cpu" else 64
        if self.peft_model is not None:
            self._check_bias_cache()

    # -- construction ------------------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, model_path: str | os.PathLike, *, base_model: str | None = None,
                        device: str | torch.device = "auto", dtype: str | torch.dtype = "auto",
                        image_size: int | None = None, quantize: str | None = None,
                        fuse_resnet: bool = True) -> "Predictor":
        """`fuse_resnet` folds BatchNorm into the ResNet's convolutions (faster inference; the model's state_dict
        then no longer has the checkpoint layout, so leave it off to save or merge weights)."""
        model_dir = resolve_model_dir(model_path)
        device = pick_device(device)
        dtype = pick_dtype(dtype, device)
        adapter_dir = model_dir if is_adapter_dir(model_dir) else None
        base_dir = base_dir_for(adapter_dir, base_model) if adapter_dir is not None else model_dir
        model = load_pretrained(base_dir)
        peft_model = None
        description = f"{base_dir}"
        if adapter_dir is not None:
            peft_model = attach_adapter(model, adapter_dir, DEFAULT_ADAPTER, base_dir)
            description = f"LoRA adapter {adapter_dir} on {base_dir}"
        if quantize:
            model, peft_model = _quantize(model, peft_model, quantize, device)
            description += f" ({quantize} dynamic quantization)"
        model.to(device=device, dtype=dtype)
        if fuse_resnet:
            model.encoder.embed_images.fuse_for_inference_()
        model.encoder.image_bias_cache = {}  # the image-image attention bias, computed once per image size
        # an adapter records the preprocessing it was trained with; otherwise the base model's applies
        trained_with = adapter_dir if adapter_dir and (adapter_dir / "configuration.json").exists() else base_dir
        preprocess = PreprocessConfig.from_model_dir(trained_with, image_size=image_size)
        tokenizer = load_tokenizer(adapter_dir, base_dir)
        return cls(model, tokenizer, preprocess, device, dtype, peft_model, description, base_dir)

    def load_adapter(self, name: str, adapter_dir: str | os.PathLike) -> None:
        """Add another LoRA adapter on the same base, selectable per call with `adapter=name`."""
        if name in (BASE,):
            raise VeloraError(f"adapter name {name!r} is reserved for the base model")
        adapter_dir = resolve_model_dir(adapter_dir)
        if name in self.adapter_names:
            raise VeloraError(f"adapter name {name!r} is already loaded")
        self.peft_model = attach_adapter(self.model, adapter_dir, name, self.base_dir, self.peft_model)
        self.model.to(device=self.device, dtype=self.dtype)
        self._check_bias_cache()

    def _check_bias_cache(self) -> None:
        """The cached position bias is valid only while no adapter changes the position modules."""
        if any(".lora_" in name and any(f".{m}" in name for m in _POSITION_MODULES)
               for name, _ in self.model.named_modules()):
            self.model.encoder.image_bias_cache = None

    @property
    def adapter_names(self) -> list[str]:
        return list(self.peft_model.peft_config) if self.peft_model is not None else []

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
        """(N, 3) float32 probabilities in LABELS order, identical to scoring each example alone.

        Rows sharing an image are batched together and its ResNet features computed once."""
        if not (len(images) == len(premises) == len(hypotheses)):
            raise VeloraError(f"got {len(images)} images, {len(premises)} premises, {len(hypotheses)} hypotheses")
        prompts = [encode_prompt(self.tokenizer, h, p, self.preprocess) for p, h in zip(premises, hypotheses)]
        keys = [_image_key(img) for img in images]
        first_seen = {k: i for i, k in reversed(list(enumerate(keys)))}
        order = sorted(range(len(prompts)), key=lambda i: (first_seen[keys[i]], len(prompts[i])))
        out = torch.empty(len(prompts), len(LABELS))
        with self._adapter(adapter), torch.inference_mode():
            bar = tqdm(total=len(order), desc="predict", unit="ex", disable=not progress)
            for start in range(0, len(order), batch_size):
                rows = order[start:start + batch_size]
                out[rows] = self._score([images[i] for i in rows], [keys[i] for i in rows],
                                        [prompts[i] for i in rows])
                bar.update(len(rows))
            bar.close()
        return out

    def _score(self, images: list[ImageSource], keys: list[str], prompts: list[list[int]]) -> torch.Tensor:
        unique = list(dict.fromkeys(keys))
        first = {k: images[keys.index(k)] for k in unique}
        pixels = torch.stack([image_to_tensor(load_image(first[k]), self.preprocess) for k in unique])
        pixels = pixels.to(self.device, self.dtype)
        features = torch.cat([self.model.image_features(chunk)  # (U, 1024, h, w), one per distinct image
                              for chunk in pixels.split(self.image_batch)])
        features = features[torch.tensor([unique.index(k) for k in keys], device=self.device)]  # (B, 1024, h, w)
        probs = torch.empty(len(prompts), self.answer_ids.numel())
        for rows in self._text_groups(prompts):
            text = collate_prompts([prompts[i] for i in rows])
            logits = self.model.score_answers(text.input_ids.to(self.device), text.decoder_input_ids.to(self.device),
                                              text.answer_positions.to(self.device), self.answer_ids,
                                              image_features=features[rows])
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

    def _adapter(self, name: str | None):
        """Context selecting which adapter scores: None = the default (first loaded), BASE = adapters off."""
        import contextlib

        if self.peft_model is None:
            if name not in (None, BASE):
                raise VeloraError(f"unknown adapter {name!r}: this model has no adapters")
            return contextlib.nullcontext()
        if name == BASE:
            return self.peft_model.disable_adapter()
        name = name or self.adapter_names[0]
        if name not in self.adapter_names:
            raise VeloraError(f"unknown adapter {name!r}; loaded: {', '.join(self.adapter_names)}")
        self.peft_model.set_adapter(name)
        return contextlib.nullcontext()


def _quantize(model: OFAModel, peft_model, mode: str, device: torch.device):
    """int8 dynamic quantization of every Linear (CPU only); an adapter is merged in first."""
    if mode != "int8":
        raise VeloraError(f"unknown quantization {mode!r}; only 'int8' (dynamic, CPU) is supported")
    if device.type != "cpu":
        raise VeloraError("int8 dynamic quantization runs on CPU only; drop --quantize or use --device cpu")
    if peft_model is not None:
        model = peft_model.merge_and_unload()
    from torch.ao.quantization import default_dynamic_qconfig, quantize_dynamic

    # the output projection stays float: it is the tied embedding matrix, read row-wise for the answer tokens
    linears = {name: default_dynamic_qconfig for name, module in model.named_modules()
               if isinstance(module, torch.nn.Linear) and name != "decoder.output_projection"}
    return quantize_dynamic(model, linears, dtype=torch.qint8), None
