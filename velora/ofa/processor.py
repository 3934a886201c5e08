"""OFAProcessor: everything between a user's (image, premise, hypothesis) and the model's tensors, in one object
that training, prediction, export and the server all call (the `transformers` processor idea).

It holds what must match the weights: the BART BPE tokenizer, OFA's caption cleaning and VE prompt templates, the
text limits (words kept per text; tokens the position tables hold), the answer token ids, and the image transform
(bicubic resize to a square, scale, normalise). `save_pretrained` writes them beside the weights — ModelScope's
`configuration.json` (`model.patch_image_size`, `model.prompt`, `model.max_src_length`...) and the tokenizer's
`vocab.json` + `merges.txt` — and `from_pretrained` reads them back, so a folder is enough to reproduce the
preprocessing.
"""

from __future__ import annotations

import json
import re
import shutil
import unicodedata
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from transformers import BartTokenizer

from velora.errors import VeloraError
from velora.images import ImageSource, load_image
from velora.labels import ANSWER_WORDS, LABELS
from velora.ofa.resnet import RESNET_STRIDE

PROMPT_WITH_PREMISE = ' can image and text1 " {} " imply text2 " {} "?'
PROMPT_WITHOUT_PREMISE = ' does the image describe " {} "?'
CONFIG_FILE = "configuration.json"  # ModelScope's task configuration
TOKENIZER_FILES = ("vocab.json", "merges.txt")  # the BPE files the hub layout and the reference loader use
MAX_IMAGE_SIZE = RESNET_STRIDE * 42  # the released checkpoints' position tables cover a 42 x 42 token grid
BART_FILES = Path(__file__).resolve().parent.parent / "assets" / "bart"  # the BART BPE files every OFA uses


class TextError(VeloraError):
    """A premise or hypothesis the model cannot take; `field` names which."""

    def __init__(self, field: str, message: str, code: str):
        super().__init__(message)
        self.field = field
        self.code = code


@dataclass(frozen=True)
class ProcessorConfig:
    """The preprocessing settings of a model folder: its `configuration.json` where it says, else the official VE
    recipe."""

    image_size: int = 480  # bicubic resize to a square, aspect not kept (as OFA was trained)
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    prompt_with_premise: str = PROMPT_WITH_PREMISE
    prompt_without_premise: str = PROMPT_WITHOUT_PREMISE
    max_src_length: int = 80  # words kept of each text after cleaning (official recipe)
    max_text_tokens: int = 1024  # [bos] + prompt + [eos]: the model's text position table (max_position_embeddings)

    def __post_init__(self) -> None:
        if not RESNET_STRIDE <= self.image_size <= MAX_IMAGE_SIZE or self.image_size % RESNET_STRIDE:
            raise VeloraError(f"image size {self.image_size} not usable: OFA needs a multiple of {RESNET_STRIDE} in "
                              f"{RESNET_STRIDE}..{MAX_IMAGE_SIZE} px")
        if self.prompt_with_premise.count("{}") != 2 or self.prompt_without_premise.count("{}") != 1:
            raise VeloraError("prompt templates need two '{}' (premise, hypothesis) and one '{}' (hypothesis)")

    @classmethod
    def from_model_dir(cls, model_dir: str | Path, **overrides) -> "ProcessorConfig":
        """Settings from `model_dir/configuration.json` (missing file: the defaults), then `overrides` (None values
        are ignored)."""
        values: dict = {}
        path = Path(model_dir) / CONFIG_FILE
        if path.exists():
            values = _read_task_config(path)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def save(self, directory: str | Path) -> None:
        """Write (or update) the ModelScope-style `configuration.json` carrying these settings."""
        path = Path(directory) / CONFIG_FILE
        data = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {
            "framework": "pytorch", "task": "visual-entailment", "model": {"type": "ofa"}}
        model_cfg = data.setdefault("model", {})
        model_cfg.update(patch_image_size=self.image_size, max_src_length=self.max_src_length,
                         prompt_type="prev_output", mean=list(self.mean), std=list(self.std))
        for key, default in (("prompt_with_premise", PROMPT_WITH_PREMISE),
                             ("prompt_without_premise", PROMPT_WITHOUT_PREMISE)):
            if getattr(self, key) != default:
                model_cfg[key] = getattr(self, key)
        path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")

    def to_dict(self) -> dict:
        return asdict(self)


def _read_task_config(path: Path) -> dict:
    """ProcessorConfig fields from a ModelScope `configuration.json`."""
    try:
        model_cfg = json.loads(path.read_text(encoding="utf-8")).get("model", {}) or {}
    except (json.JSONDecodeError, AttributeError) as e:
        raise VeloraError(f"{path}: not a valid configuration.json ({e})") from None
    values: dict = {}
    if "patch_image_size" in model_cfg:
        values["image_size"] = int(model_cfg["patch_image_size"])
    if "max_src_length" in model_cfg:
        values["max_src_length"] = int(model_cfg["max_src_length"])
    prompt = model_cfg.get("prompt")
    if isinstance(prompt, str):  # ModelScope uses one `prompt` key for whichever form it serves
        values["prompt_with_premise" if prompt.count("{}") == 2 else "prompt_without_premise"] = prompt
    for key in ("prompt_with_premise", "prompt_without_premise"):  # velora's own, one per form
        if isinstance(model_cfg.get(key), str):
            values[key] = model_cfg[key]
    for key in ("mean", "std"):
        if key in model_cfg:
            values[key] = tuple(float(v) for v in model_cfg[key])
    return values


# ----------------------------------------------------------------------------------------------------------------
# Text


def clean_caption(text: str, max_words: int | None) -> str:
    """OFA's caption cleaning: lowercase, strip leading punctuation, '-' and '/' to spaces, collapse whitespace,
    keep the first `max_words` words."""
    text = text.lower().lstrip(",.!?*#:;~").replace("-", " ").replace("/", " ").replace("<person>", "person")
    text = re.sub(r"\s{2,}", " ", text).rstrip("\n").strip(" ")
    words = text.split(" ")
    if max_words is not None and len(words) > max_words:
        text = " ".join(words[:max_words])
    return text


def is_blank(text: str | None) -> bool:
    """No visible character: empty, whitespace, or only control/format characters (NUL, zero-width space...)."""
    return text is None or all(ch.isspace() or unicodedata.category(ch) in ("Cc", "Cf") for ch in str(text))


@dataclass
class TextBatch:
    input_ids: torch.Tensor  # (B, L) encoder ids, right-padded
    attention_mask: torch.Tensor | None  # (B, L) 1 = token, 0 = padding; None when no row is padded
    decoder_input_ids: torch.Tensor  # (B, L-1) the same without eos ("prev_output" prompt)
    answer_positions: torch.Tensor  # (B,) decoder position whose output predicts the answer (the "?")

    def model_inputs(self, device: torch.device | str | None = None) -> dict[str, torch.Tensor | None]:
        """The text keyword arguments of `OFAForVisualEntailment.forward`."""
        move = (lambda t: t.to(device)) if device is not None else (lambda t: t)
        return {"input_ids": move(self.input_ids), "decoder_input_ids": move(self.decoder_input_ids),
                "answer_positions": move(self.answer_positions),
                "attention_mask": move(self.attention_mask) if self.attention_mask is not None else None}


# ----------------------------------------------------------------------------------------------------------------
# The processor


class OFAProcessor:
    """Tokenizer + prompt + limits + answer ids + image transform of one model folder."""

    def __init__(self, tokenizer, config: ProcessorConfig, tokenizer_dir: Path):
        self.tokenizer = tokenizer
        self.config = config
        self.tokenizer_dir = Path(tokenizer_dir)  # where vocab.json + merges.txt came from (save_pretrained copies them)
        self.bos_id, self.pad_id, self.eos_id = tokenizer.bos_token_id, tokenizer.pad_token_id, tokenizer.eos_token_id
        self.answer_ids = self._answer_ids()

    @classmethod
    def from_pretrained(cls, directory: str | Path, *, tokenizer_dirs: Sequence[str | Path] = (),
                        **overrides) -> "OFAProcessor":
        """The processor saved in `directory`: its configuration.json (else the defaults) with `overrides`
        (e.g. image_size, max_text_tokens); the tokenizer from the first of `directory`, *tokenizer_dirs holding
        vocab.json + merges.txt."""
        config = ProcessorConfig.from_model_dir(directory, **overrides)
        candidates = [Path(directory), *map(Path, tokenizer_dirs)]
        tokenizer_dir = next((d for d in candidates if all((d / name).exists() for name in TOKENIZER_FILES)), None)
        if tokenizer_dir is None:
            raise VeloraError(f"no tokenizer files ({' + '.join(TOKENIZER_FILES)}) in "
                              f"{', '.join(str(d) for d in candidates)}")
        return cls(BartTokenizer.from_pretrained(str(tokenizer_dir)), config, tokenizer_dir)

    @classmethod
    def default(cls, **overrides) -> "OFAProcessor":
        """The official VE preprocessing with the BART tokenizer shipped in velora (for models built from scratch)."""
        return cls.from_pretrained(BART_FILES, **overrides)

    def save_pretrained(self, directory: str | Path) -> Path:
        """configuration.json + the tokenizer files into `directory`."""
        self.save_tokenizer(directory)
        self.config.save(directory)
        return Path(directory)

    def save_tokenizer(self, directory: str | Path) -> None:
        """vocab.json + merges.txt into `directory`. (transformers 5's tokenizer `save_pretrained` writes only
        tokenizer.json, which neither the hub layout nor the reference OFA loader reads, so the BPE files are copied
        from where they were loaded.)"""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        for name in TOKENIZER_FILES:
            if (self.tokenizer_dir / name).resolve() != (directory / name).resolve():
                shutil.copyfile(self.tokenizer_dir / name, directory / name)

    def with_overrides(self, **overrides) -> "OFAProcessor":
        """The same tokenizer with some settings replaced (None values are ignored)."""
        values = {**self.config.to_dict(), **{k: v for k, v in overrides.items() if v is not None}}
        return OFAProcessor(self.tokenizer, ProcessorConfig(**values), self.tokenizer_dir)

    def same_preprocessing(self, other: "OFAProcessor") -> bool:
        """Whether both turn the same input into the same tensors (so their examples could share a batch)."""
        return self.config == other.config and all(
            (self.tokenizer_dir / n).read_bytes() == (other.tokenizer_dir / n).read_bytes() for n in TOKENIZER_FILES)

    def _answer_ids(self) -> list[int]:
        """Token id of each label's answer word, in LABELS order (" yes", " no", " maybe" -> 4420, 117, 2085)."""
        ids = []
        for label in LABELS:
            tokens = self.tokenizer(ANSWER_WORDS[label], add_special_tokens=False)["input_ids"]
            if len(tokens) != 1:
                raise VeloraError(f"tokenizer splits the answer {ANSWER_WORDS[label]!r} into {len(tokens)} tokens")
            ids.append(tokens[0])
        return ids

    # -- text -----------------------------------------------------------------------------------------------------

    def prompt(self, hypothesis: str, premise: str | None = None) -> str:
        """The encoder text of the released model: with a premise (SNLI-VE `--add-caption`) or without one."""
        c = self.config
        hypothesis = clean_caption(hypothesis, c.max_src_length)
        if not is_blank(premise):
            return c.prompt_with_premise.format(clean_caption(premise, c.max_src_length), hypothesis)
        return c.prompt_without_premise.format(hypothesis)

    def encode_text(self, hypothesis: str | None, premise: str | None = None) -> list[int]:
        """[bos] + BPE(prompt) + [eos]; TextError naming the field for an empty hypothesis or a prompt over the
        token limit."""
        if is_blank(hypothesis):
            raise TextError("hypothesis", "hypothesis is empty: give the statement to check against the image",
                            "empty_text")
        ids = [self.bos_id, *self._bpe(self.prompt(str(hypothesis), premise)), self.eos_id]
        if len(ids) > self.config.max_text_tokens:
            field = self._longer_field(hypothesis, premise)
            raise TextError(field, f"{field} too long: the prompt is {len(ids):,} tokens after cleaning, over the "
                                   f"model's limit of {self.config.max_text_tokens:,}; shorten the text",
                            "text_too_long")
        return ids

    def _bpe(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _longer_field(self, hypothesis: str, premise: str | None) -> str:
        if is_blank(premise):
            return "hypothesis"
        limit = self.config.max_src_length
        sizes = {name: len(self._bpe(clean_caption(str(text), limit)))
                 for name, text in (("premise", premise), ("hypothesis", hypothesis))}
        return max(sizes, key=sizes.get)

    def collate(self, prompts: Sequence[Sequence[int]]) -> TextBatch:
        """Right-pad encoded prompts into a batch; the answer is predicted at each prompt's last position before
        eos."""
        lengths = torch.tensor([len(p) for p in prompts])
        L = int(lengths.max())
        input_ids = torch.full((len(prompts), L), self.pad_id, dtype=torch.long)
        decoder_input_ids = torch.full((len(prompts), L - 1), self.pad_id, dtype=torch.long)
        for row, prompt in enumerate(prompts):
            input_ids[row, : len(prompt)] = torch.tensor(prompt)
            decoder_input_ids[row, : len(prompt) - 1] = torch.tensor(prompt[:-1])
        padded = bool((lengths < L).any())
        attention_mask = torch.arange(L)[None, :] < lengths[:, None] if padded else None
        return TextBatch(input_ids, attention_mask, decoder_input_ids, lengths - 2)

    # -- images ---------------------------------------------------------------------------------------------------

    def resize(self, image: Image.Image) -> Image.Image:
        """RGB, bicubic-resized to the model's square input (aspect not kept, as OFA was trained)."""
        size = self.config.image_size
        image = image.convert("RGB")
        return image if image.size == (size, size) else image.resize((size, size), resample=Image.BICUBIC)

    def image_tensor(self, image: Image.Image) -> torch.Tensor:
        """RGB image -> (3, size, size) float tensor: bicubic resize, scale to [0, 1], normalise."""
        pixels = np.asarray(self.resize(image), dtype=np.float32) / 255.0
        pixels = torch.from_numpy(pixels).permute(2, 0, 1)  # (3, size, size)
        mean = torch.tensor(self.config.mean).view(3, 1, 1)
        std = torch.tensor(self.config.std).view(3, 1, 1)
        return (pixels - mean) / std

    def pixel_values(self, images: Sequence[ImageSource]) -> torch.Tensor:
        """(B, 3, size, size) from files, bytes or Pillow images (decoded safely by velora.images)."""
        return torch.stack([self.image_tensor(load_image(image)) for image in images])

    # -- both -----------------------------------------------------------------------------------------------------

    def __call__(self, images: Sequence[ImageSource], premises: Sequence[str | None],
                 hypotheses: Sequence[str]) -> dict[str, torch.Tensor | None]:
        """The keyword arguments of `OFAForVisualEntailment.forward` for a batch of examples."""
        if not len(images) == len(premises) == len(hypotheses):
            raise VeloraError(f"got {len(images)} images, {len(premises)} premises, {len(hypotheses)} hypotheses")
        text = self.collate([self.encode_text(h, p) for p, h in zip(premises, hypotheses)])
        return {**text.model_inputs(), "patch_images": self.pixel_values(images)}
