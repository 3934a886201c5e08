"""Reading released OFA checkpoints (a local directory in the hub layout) into `OFAModel`, and writing them back.

A hub directory holds `config.json` and `pytorch_model.bin` or `model.safetensors` (plus tokenizer files and
ModelScope's `configuration.json`, which `velora.ofa.processor` reads). Foreign state_dicts go through one
`checkpoint_filter_fn`, timm-style. Hub ids are resolved before this module (`velora.hub`, `velora.bundle`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import split_torch_state_dict_into_shards
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from velora.errors import VeloraError
from velora.ofa.config import OFAConfig
from velora.ofa.model import OFAModel, skip_init
from velora.ofa.positions import derived_buffers

SAFETENSORS, BIN = "model.safetensors", "pytorch_model.bin"
WEIGHT_FILES = (SAFETENSORS, BIN)
INDEX_SUFFIX = ".index.json"  # a sharded checkpoint: {"weight_map": {key: shard file}} beside the shards
MAX_SHARD_SIZE = "5GB"  # as transformers' save_pretrained

# Prefixes other exports put before the bare OFAModel names (HF/ModelScope wrappers, fairseq).
PREFIXES = ("module.", "model.")

# (old, new) renames applied to every key, in order.
SWAPS: list[tuple[str, str]] = []

# One matrix, three names: encoder input, decoder input and output projection (share_decoder_input_output_embed).
TIED_EMBEDDINGS = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight", "decoder.output_projection.weight")


def _format_keys(keys: list[str], limit: int = 12) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" ... (+{len(keys) - limit} more)" if len(keys) > limit else "")


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: OFAModel) -> dict[str, torch.Tensor]:
    """Map a foreign OFA state_dict onto `model`'s names, filling tied and derived entries, checking every shape.

    Raises VeloraError naming missing keys, unexpected keys and shape mismatches.
    """
    if isinstance(state_dict.get("model"), dict):
        state_dict = state_dict["model"]
    if all(k.startswith(PREFIXES) for k in state_dict):
        prefix = next(p for p in PREFIXES if all(k.startswith(p) for k in state_dict))
        state_dict = {k[len(prefix):]: v for k, v in state_dict.items()}
    for old, new in SWAPS:
        state_dict = {k.replace(old, new): v for k, v in state_dict.items()}
    state_dict = dict(state_dict)

    if model.config.share_decoder_input_output_embed:
        present = [k for k in TIED_EMBEDDINGS if k in state_dict]
        if present:
            for key in TIED_EMBEDDINGS:
                state_dict.setdefault(key, state_dict[present[0]])

    for key, value in derived_buffers(model.config).items():
        if key not in state_dict:
            state_dict[key] = value
        elif not torch.equal(state_dict[key].to(value.dtype), value):
            raise VeloraError(f"checkpoint buffer {key} differs from the one derived from config.json: "
                              "the config does not describe this checkpoint")

    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    mismatched = [f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(expected[k].shape)}"
                  for k in expected if k in state_dict and state_dict[k].shape != expected[k].shape]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s): {_format_keys(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): {_format_keys(unexpected)}")
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatch(es): {_format_keys(mismatched, 6)}")
    if problems:
        raise VeloraError("checkpoint does not match config.json; " + "; ".join(problems))
    return state_dict


def weights_file(model_dir: Path) -> Path:
    """The weights of a hub-layout directory: a single file or a shard index, safetensors first."""
    for name in WEIGHT_FILES:
        for candidate in (model_dir / name, model_dir / (name + INDEX_SUFFIX)):
            if candidate.exists():
                return candidate
    raise VeloraError(f"{model_dir}: no model weights found (expected one of {', '.join(WEIGHT_FILES)}, or a sharded "
                      f"checkpoint with its {INDEX_SUFFIX} file)")


def _load_file(path: Path) -> dict[str, torch.Tensor]:
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path))
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # legacy (non-zip) serialization cannot be memory-mapped
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise VeloraError(f"{path}: cannot read weights ({type(e).__name__}: {e})") from None


def _shards(index: Path) -> list[Path]:
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise VeloraError(f"{index}: not a shard index ({e})") from None
    return [index.parent / name for name in dict.fromkeys(weight_map.values())]


def read_state_dict(model_dir: Path) -> dict[str, torch.Tensor]:
    path = weights_file(model_dir)
    if not path.name.endswith(INDEX_SUFFIX):
        return _load_file(path)
    state: dict[str, torch.Tensor] = {}
    for shard in _shards(path):
        state.update(_load_file(shard))
    return state


def stored_keys(model_dir: Path) -> list[str]:
    """The tensor names a checkpoint's weight file(s) hold, without loading a safetensors file's data."""
    path = weights_file(model_dir)
    files = _shards(path) if path.name.endswith(INDEX_SUFFIX) else [path]
    keys: list[str] = []
    for file in files:
        if file.suffix == ".safetensors":
            with safe_open(str(file), framework="pt") as f:
                keys += list(f.keys())
        else:
            keys += list(_load_file(file))
    return keys


def read_config(model_dir: Path) -> OFAConfig:
    path = model_dir / "config.json"
    if not path.exists():
        raise VeloraError(f"{model_dir}: no config.json - not an OFA model directory in the hub layout")
    try:
        config = OFAConfig.from_json_file(path)
    except (json.JSONDecodeError, TypeError, ValueError, AssertionError) as e:
        raise VeloraError(f"{path}: not a valid OFA config ({e})") from None
    model_type = config.extra.get("model_type", "ofa")
    if model_type != "ofa":
        raise VeloraError(f"{path}: model_type is {model_type!r}, expected 'ofa'")
    return config


def tie_weights(model: OFAModel) -> None:
    """Make the three embedding names one Parameter again (loading with assign=True gives each its own)."""
    model.decoder.embed_tokens = model.encoder.embed_tokens
    if model.config.share_decoder_input_output_embed:
        model.decoder.output_projection.weight = model.encoder.embed_tokens.weight


def build_model(config: OFAConfig, state_dict: dict[str, torch.Tensor], model_cls: type[OFAModel] = OFAModel,
                **init_kwargs: Any) -> OFAModel:
    """A `model_cls` holding `state_dict`'s tensors, built on the meta device first (no initialiser, no copy)."""
    with torch.device("meta"), skip_init():
        model = model_cls(config, **init_kwargs)
    state_dict = checkpoint_filter_fn(state_dict, model)
    model.load_state_dict(state_dict, strict=True, assign=True)
    tie_weights(model)
    return model.eval()


def load_pretrained(model_dir: str | Path, model_cls: type[OFAModel] = OFAModel, *,
                    device: str | torch.device | None = None, dtype: torch.dtype | None = None,
                    **init_kwargs: Any) -> OFAModel:
    """`model_cls` (OFAModel or a head on it) from a local hub-layout directory, in eval mode, on `device` (default
    CPU) and in `dtype` (default: as stored)."""
    model_dir = Path(model_dir)
    model = build_model(read_config(model_dir), read_state_dict(model_dir), model_cls, **init_kwargs)
    if device is not None or dtype is not None:
        model = model.to(device=device, dtype=dtype)
    return model


def save_model(model: OFAModel, directory: str | Path, dtype: torch.dtype | None = None,
               like: Path | None = None, weights_format: str = "safetensors") -> Path:
    """config.json + the weights in the hub layout.

    With `like` (the base checkpoint a merge started from), the weights take its layout: the same file kind
    (`pytorch_model.bin` or `model.safetensors`), the same keys (tied embeddings and derived buffers written out
    when it has them, as the released checkpoints do; any OFA loader then finds every weight it expects) and
    shards with an index when it was sharded. Without, `weights_format` picks the kind: safetensors stores the tied
    embedding once and no derived buffers; "bin" stores every key. Either is sharded past MAX_SHARD_SIZE."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model.config.save(directory)
    state = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v)
             for k, v in model.state_dict().items()}
    sharded = False
    if like is not None:
        base_file = weights_file(like)
        weights_format = "safetensors" if base_file.name.startswith(SAFETENSORS) else "bin"
        sharded = base_file.name.endswith(INDEX_SUFFIX)
        keep = set(stored_keys(like))
        state = {k: v for k, v in state.items() if k in keep}
    elif weights_format == "safetensors":
        drop = set(derived_buffers(model.config))
        if model.config.share_decoder_input_output_embed:
            drop |= set(TIED_EMBEDDINGS[1:])
        state = {k: v for k, v in state.items() if k not in drop}
    _write_weights(state, directory, weights_format, sharded)
    return directory


def _unshared(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors refuses tensors that share memory (the tied embeddings): each repeat is stored as a copy."""
    seen: set[int] = set()
    out = {}
    for key, tensor in state.items():
        out[key] = (tensor.clone() if tensor.data_ptr() in seen else tensor).contiguous()
        seen.add(tensor.data_ptr())
    return out


def _write_weights(state: dict[str, torch.Tensor], directory: Path, weights_format: str, sharded: bool) -> None:
    name = SAFETENSORS if weights_format == "safetensors" else BIN
    stem, suffix = name.rsplit(".", 1)
    split = split_torch_state_dict_into_shards(state, filename_pattern=stem + "{suffix}." + suffix,
                                               max_shard_size=MAX_SHARD_SIZE)
    if sharded and not split.is_sharded:  # one shard, still in the base's sharded layout
        split.filename_to_tensors = {f"{stem}-00001-of-00001.{suffix}": list(state)}
        split.tensor_to_filename = {k: f"{stem}-00001-of-00001.{suffix}" for k in state}
    for filename, keys in split.filename_to_tensors.items():
        part = {k: state[k] for k in keys}
        if weights_format == "safetensors":
            save_file(_unshared(part), str(directory / filename), metadata={"format": "pt"})
        else:
            torch.save(part, directory / filename)
    if sharded or split.is_sharded:
        total = sum(v.numel() * v.element_size() for v in state.values())
        index = {"metadata": {"total_size": total}, "weight_map": split.tensor_to_filename}
        (directory / (name + INDEX_SUFFIX)).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n",
                                                      encoding="utf-8")


@torch.no_grad()
def randomize_(model: OFAModel, seed: int, embed_std: float = 0.5) -> OFAModel:
    """Random but non-trivial values where initialisation leaves constants (norm scales near 1, small biases,
    BatchNorm statistics, relative-position tables), as the reference fixtures are made: for tests and benchmarks."""
    generator = torch.Generator().manual_seed(seed)

    def randn_like(t: torch.Tensor) -> torch.Tensor:
        return torch.randn(t.shape, generator=generator, dtype=t.dtype)

    for name, p in model.named_parameters():
        if p.dim() == 1 and ("norm" in name or name.endswith("c_attn") or ".bn" in name):
            p.copy_(1.0 + 0.1 * randn_like(p))
        elif p.dim() == 1:
            p.copy_(0.05 * randn_like(p))
        elif "embed_tokens" in name:
            p.copy_(embed_std * randn_like(p))
        elif "rel_pos_table" in name:  # zero at init; random here so the relative biases are exercised
            p.copy_(0.5 * randn_like(p))
        elif p.dim() == 2:  # linear layers at 1/sqrt(fan_in), so every layer moves the output, whatever d_model
            p.copy_(randn_like(p) * p.shape[1] ** -0.5)
    for name, b in model.named_buffers():
        if name.endswith("running_mean"):
            b.copy_(0.1 * randn_like(b))
        elif name.endswith("running_var"):
            b.copy_(1.0 + 0.1 * torch.rand(b.shape, generator=generator))
    return model
