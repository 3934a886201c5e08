"""What a model path means, resolved once: `ModelBundle.resolve(path)` turns a local directory, a LoRA adapter
directory or a hub id into the base model's directory, the adapter's (if any), the architecture config and the
processor the weights were trained with. Every command that takes a model goes through it.

    bundle = ModelBundle.resolve("./lora_finetuned")     # an adapter: its base comes from adapter_config.json
    model = bundle.load_model()                           # the base weights, as OFAForVisualEntailment
    bundle.processor                                      # the adapter's preprocessing, else the base's
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from velora.adapters import base_dir_for, is_adapter_dir
from velora.errors import VeloraError
from velora.hub import resolve_model_dir
from velora.ofa.checkpoint import load_pretrained, read_config, save_model
from velora.ofa.config import OFAConfig
from velora.ofa.entailment import OFAForVisualEntailment
from velora.ofa.model import OFAModel
from velora.ofa.processor import CONFIG_FILE, OFAProcessor
from velora.ofa.resnet import RESNET_STRIDE


@dataclass(frozen=True)
class ModelBundle:
    source: str  # as the user gave it (a path or a hub id)
    base_dir: Path  # full OFA checkpoint in the hub layout
    adapter_dir: Path | None  # LoRA adapter (PEFT layout) on base_dir, if the source is one
    config: OFAConfig  # the base's architecture
    processor: OFAProcessor  # the preprocessing these weights expect
    image_size: int | None = None  # the user's override of the image size, if any

    @classmethod
    def resolve(cls, path_or_id: str | os.PathLike, *, base_model: str | os.PathLike | None = None,
                image_size: int | None = None, flag: str = "--model_path") -> "ModelBundle":
        """Resolve `path_or_id` (hub ids are fetched, see velora.hub); an adapter's base is `base_model` or the one
        its adapter_config.json names. `image_size` overrides the processor's; `flag` names the option in errors."""
        model_dir = resolve_model_dir(path_or_id, flag=flag)
        adapter_dir = model_dir if is_adapter_dir(model_dir) else None
        base_dir = base_dir_for(adapter_dir, base_model) if adapter_dir is not None else model_dir
        config = read_config(base_dir)
        # an adapter records the preprocessing it was trained with; otherwise the base model's applies
        trained_with = adapter_dir if adapter_dir and (adapter_dir / CONFIG_FILE).exists() else base_dir
        processor = OFAProcessor.from_pretrained(
            trained_with, tokenizer_dirs=[d for d in (adapter_dir, base_dir) if d is not None],
            image_size=image_size, max_text_tokens=config.max_position_embeddings)
        check_image_size(processor.config.image_size, config)
        return cls(str(path_or_id), base_dir, adapter_dir, config, processor, image_size)

    @classmethod
    def resolve_base(cls, path_or_id: str | os.PathLike, *, advice: str, image_size: int | None = None,
                     flag: str = "--model_path") -> "ModelBundle":
        """Like `resolve`, for commands that need a full model: a LoRA adapter is refused with `advice`."""
        bundle = cls.resolve(path_or_id, image_size=image_size, flag=flag)
        if bundle.adapter_dir is not None:
            raise VeloraError(f"{flag} {path_or_id} is a LoRA adapter; {advice}")
        return bundle

    def load_model(self, device: str | torch.device | None = None,
                   dtype: torch.dtype | None = None) -> OFAForVisualEntailment:
        """The base weights with the visual-entailment head (no adapter attached)."""
        return load_pretrained(self.base_dir, OFAForVisualEntailment, device=device, dtype=dtype,
                               answer_ids=self.processor.answer_ids)

    def base_processor(self) -> OFAProcessor:
        """The base model's own preprocessing (what "adapters off" is scored with)."""
        if self.adapter_dir is None:
            return self.processor
        return OFAProcessor.from_pretrained(self.base_dir, image_size=self.image_size,
                                            max_text_tokens=self.config.max_position_embeddings)

    @property
    def base_reference(self) -> str:
        """How an adapter trained on this base names it: the hub id as given, else the absolute directory."""
        given = str(self.source)
        return given if not Path(given).expanduser().exists() else str(self.base_dir.resolve())

    @property
    def description(self) -> str:
        if self.adapter_dir is None:
            return str(self.base_dir)
        return f"LoRA adapter {self.adapter_dir} on {self.base_dir}"


def check_image_size(image_size: int, config: OFAConfig) -> None:
    """The image grid must fit the model's image position table."""
    largest = RESNET_STRIDE * config.image_bucket_size
    if image_size > largest:
        raise VeloraError(f"image size {image_size} px is over this model's limit of {largest} px "
                          f"(image_bucket_size {config.image_bucket_size} x {RESNET_STRIDE} px)")


def save_model_dir(model: OFAModel, processor: OFAProcessor, directory: str | os.PathLike,
                   dtype: torch.dtype | None = None, weights_format: str = "safetensors",
                   like: Path | None = None) -> Path:
    """A complete hub-layout model folder: config.json, the weights (in the layout of the checkpoint `like`, if
    given; see velora.ofa.checkpoint.save_model), configuration.json and the tokenizer files."""
    save_model(model, directory, dtype=dtype, weights_format=weights_format, like=like)
    return processor.save_pretrained(directory)
