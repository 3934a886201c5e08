"""Everything between the user's (image, premise, hypothesis) and the model's tensors, in one place so convert,
train, predict and serve all see the same thing: image size and normalisation, OFA's caption cleaning, the VE
prompt templates, BART BPE ids, and batch collation with the answer position.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from velora.errors import VeloraError
from velora.labels import ANSWER_WORDS, LABELS

PROMPT_WITH_PREMISE = ' can image and text1 " {} " imply text2 " {} "?'
PROMPT_WITHOUT_PREMISE = ' does the image describe " {} "?'
BOS, PAD, EOS = 0, 1, 2
MAX_TEXT_POSITIONS = 1024  # encoder/decoder position tables hold 1024 (+2) entries


@dataclass
class PreprocessConfig:
    """Preprocessing of a model directory: ModelScope's `configuration.json` (`model.*`) where it says, else the
    official VE recipe."""

    image_size: int = 480  # bicubic resize to a square, aspect not kept (as OFA was trained)
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    prompt_with_premise: str = PROMPT_WITH_PREMISE
    prompt_without_premise: str = PROMPT_WITHOUT_PREMISE
    max_src_length: int = 80  # words kept of each text after cleaning (official recipe)

    def __post_init__(self) -> None:
        if not 16 <= self.image_size <= 16 * 42 or self.image_size % 16:
            raise VeloraError(f"image size {self.image_size} not usable: OFA needs a multiple of 16 in 16..672 px")
        if self.prompt_with_premise.count("{}") != 2 or self.prompt_without_premise.count("{}") != 1:
            raise VeloraError("prompt templates need two '{}' (premise, hypothesis) and one '{}' (hypothesis)")

    @classmethod
    def from_model_dir(cls, model_dir: str | Path, **overrides) -> "PreprocessConfig":
        values: dict = {}
        path = Path(model_dir) / "configuration.json"
        if path.exists():
            try:
                model_cfg = json.loads(path.read_text(encoding="utf-8")).get("model", {}) or {}
            except json.JSONDecodeError as e:
                raise VeloraError(f"{path}: invalid JSON ({e})") from None
            if "patch_image_size" in model_cfg:
                values["image_size"] = int(model_cfg["patch_image_size"])
            if "max_src_length" in model_cfg:
                values["max_src_length"] = int(model_cfg["max_src_length"])
            prompt = model_cfg.get("prompt")
            if isinstance(prompt, str):  # ModelScope uses one `prompt` key for whichever form it serves
                key = "prompt_with_premise" if prompt.count("{}") == 2 else "prompt_without_premise"
                values[key] = prompt
            for key in ("prompt_with_premise", "prompt_without_premise"):  # velora's own, one per form
                if isinstance(model_cfg.get(key), str):
                    values[key] = model_cfg[key]
            for key in ("mean", "std"):
                if key in model_cfg:
                    values[key] = tuple(float(v) for v in model_cfg[key])
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def save(self, directory: str | Path) -> None:
        """Write (or update) the ModelScope-style `configuration.json` carrying these settings."""
        path = Path(directory) / "configuration.json"
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


# ----------------------------------------------------------------------------------------------------------------
# Images


def image_to_tensor(image: Image.Image, config: PreprocessConfig) -> torch.Tensor:
    """RGB image -> (3, size, size) float tensor: bicubic resize, scale to [0, 1], normalise."""
    size = config.image_size
    resized = image.convert("RGB").resize((size, size), resample=Image.BICUBIC)
    pixels = torch.from_numpy(np.asarray(resized, dtype=np.float32) / 255.0).permute(2, 0, 1)  # (3, size, size)
    mean = torch.tensor(config.mean).view(3, 1, 1)
    std = torch.tensor(config.std).view(3, 1, 1)
    return (pixels - mean) / std


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


def build_prompt(hypothesis: str, premise: str | None, config: PreprocessConfig) -> str:
    """The encoder text of the released model: with a premise (SNLI-VE `--add-caption`) or without one."""
    hypothesis = clean_caption(hypothesis, config.max_src_length)
    if premise is not None and premise.strip():
        return config.prompt_with_premise.format(clean_caption(premise, config.max_src_length), hypothesis)
    return config.prompt_without_premise.format(hypothesis)


def load_tokenizer(*directories: str | Path):
    """BART BPE tokenizer from the first directory holding `vocab.json` + `merges.txt`."""
    from transformers import BartTokenizer

    for directory in directories:
        if directory is None:
            continue
        vocab, merges = Path(directory) / "vocab.json", Path(directory) / "merges.txt"
        if vocab.exists() and merges.exists():
            return BartTokenizer(str(vocab), str(merges))  # positional: the keyword names changed in transformers 5
    searched = ", ".join(str(d) for d in directories if d is not None)
    raise VeloraError(f"no tokenizer files (vocab.json + merges.txt) in {searched}")


def answer_token_ids(tokenizer) -> list[int]:
    """Token id of each label's answer word, in LABELS order (" yes", " no", " maybe" -> 4420, 117, 2085)."""
    ids = []
    for label in LABELS:
        tokens = tokenizer(ANSWER_WORDS[label], add_special_tokens=False)["input_ids"]
        if len(tokens) != 1:
            raise VeloraError(f"tokenizer splits the answer {ANSWER_WORDS[label]!r} into {len(tokens)} tokens")
        ids.append(tokens[0])
    return ids


def encode_prompt(tokenizer, hypothesis: str, premise: str | None, config: PreprocessConfig) -> list[int]:
    """[bos] + BPE(prompt) + [eos]."""
    if hypothesis is None or not str(hypothesis).strip():
        raise VeloraError("hypothesis is empty: give the statement to check against the image")
    ids = tokenizer(build_prompt(str(hypothesis), premise, config), add_special_tokens=False)["input_ids"]
    ids = [BOS, *ids, EOS]
    if len(ids) > MAX_TEXT_POSITIONS:
        raise VeloraError(f"text too long: {len(ids)} tokens after cleaning (limit {MAX_TEXT_POSITIONS})")
    return ids


@dataclass
class TextBatch:
    input_ids: torch.Tensor  # (B, L) encoder ids, right-padded
    decoder_input_ids: torch.Tensor  # (B, L-1) the same without eos ("prev_output" prompt)
    answer_positions: torch.Tensor  # (B,) decoder position whose output predicts the answer (the "?")


def collate_prompts(sequences: list[list[int]]) -> TextBatch:
    lengths = torch.tensor([len(s) for s in sequences])
    L = int(lengths.max())
    input_ids = torch.full((len(sequences), L), PAD, dtype=torch.long)
    decoder_input_ids = torch.full((len(sequences), L - 1), PAD, dtype=torch.long)
    for row, seq in enumerate(sequences):
        input_ids[row, : len(seq)] = torch.tensor(seq)
        decoder_input_ids[row, : len(seq) - 1] = torch.tensor(seq[:-1])
    return TextBatch(input_ids, decoder_input_ids, lengths - 2)
