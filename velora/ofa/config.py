"""OFAConfig: the architecture fields of the hub `config.json` (HF style, `model_type: "ofa"`).

Fields velora does not use (generation, ViT/OFASys variants, layerdrop...) are kept in `extra` so a config read
from a checkpoint is written back unchanged.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# resnet_type -> Bottleneck blocks in stages 1..3 (OFA uses only the first three stages: stride 16, 1024 channels).
# OFA's "resnet18" and "resnet34" are Bottleneck variants too, unlike torchvision's.
RESNET_LAYERS: dict[str, tuple[int, int, int]] = {
    "resnet18": (2, 2, 2),
    "resnet34": (3, 4, 6),
    "resnet50": (3, 4, 6),
    "resnet101": (3, 4, 23),
    "resnet152": (3, 8, 36),
}


# Sizes a config may ask for: generous bounds around the released models (OFA-huge: d_model 1280, 24 layers), so a
# corrupt or hostile config.json fails at once instead of allocating for minutes.
SIZE_LIMITS: dict[str, tuple[int, int]] = {
    "vocab_size": (8, 1_000_000), "d_model": (8, 8192), "max_position_embeddings": (8, 8192),
    "encoder_layers": (1, 96), "decoder_layers": (1, 96),
    "encoder_attention_heads": (1, 128), "decoder_attention_heads": (1, 128),
    "encoder_ffn_dim": (8, 65536), "decoder_ffn_dim": (8, 65536),
    "token_bucket_size": (2, 4096), "image_bucket_size": (2, 128), "code_image_size": (8, 4096),
}


@dataclass
class OFAConfig:
    vocab_size: int = 59457  # 50265 BART tokens + 8192 <code_i> + 1000 <bin_i>
    d_model: int = 1024
    encoder_layers: int = 12
    decoder_layers: int = 12
    encoder_attention_heads: int = 16
    decoder_attention_heads: int = 16
    encoder_ffn_dim: int = 4096
    decoder_ffn_dim: int = 4096
    activation_function: str = "gelu"
    dropout: float = 0.1  # on embeddings, attention block outputs and FFN outputs
    attention_dropout: float = 0.0
    activation_dropout: float = 0.0
    encoder_drop_path_rate: float = 0.0
    decoder_drop_path_rate: float = 0.0
    resnet_drop_path_rate: float = 0.0
    resnet_type: str = "resnet152"
    max_position_embeddings: int = 1024
    token_bucket_size: int = 256  # text relative-position buckets: 2*256-1 = 511
    image_bucket_size: int = 42  # image grid side covered by position tables: 42*42 positions
    code_image_size: int = 128  # only shapes the decoder's (unused for VE) image-code position index
    attn_scale_factor: float = 2.0  # attention scaling = (head_dim * attn_scale_factor) ** -0.5
    normformer: bool = True  # per-head c_attn, mid-attention and FFN LayerNorms
    encoder_normalize_before: bool = True
    decoder_normalize_before: bool = True
    layernorm_embedding: bool = True
    patch_layernorm_embedding: bool = True
    code_layernorm_embedding: bool = True
    add_type_embedding: bool = True
    scale_embedding: bool = False
    share_attn_bias: bool = False
    share_decoder_input_output_embed: bool = True
    init_std: float = 0.02
    pad_token_id: int = 1
    bos_token_id: int = 0
    eos_token_id: int = 2
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        for name, (low, high) in SIZE_LIMITS.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ValueError(f"{name} = {value!r}: must be a whole number in {low}..{high:,}")
        if self.resnet_type not in RESNET_LAYERS:
            raise ValueError(f"resnet_type {self.resnet_type!r} is not supported; expected one of "
                             f"{sorted(RESNET_LAYERS)}")
        for side in ("encoder", "decoder"):
            d, h = self.d_model, getattr(self, f"{side}_attention_heads")
            if d % h:
                raise ValueError(f"d_model {d} is not divisible by {side}_attention_heads {h}")
        if not (self.encoder_normalize_before and self.decoder_normalize_before):
            raise ValueError("only pre-norm OFA (encoder/decoder_normalize_before = true) is supported, as in every "
                             "released checkpoint")
        if self.code_image_size // 8 > self.image_bucket_size:
            raise ValueError(f"code_image_size {self.code_image_size} needs a grid of {self.code_image_size // 8} "
                             f"image codes a side, over image_bucket_size {self.image_bucket_size}")
        unsupported = {k: v for k, v in self.extra.items() if k in _UNSUPPORTED and v != _UNSUPPORTED[k]}
        if unsupported:
            raise ValueError(f"OFA variant not supported by velora (visual entailment with ResNet): {unsupported}")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "OFAConfig":
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        known = {k: v for k, v in values.items() if k in names}
        extra = {k: v for k, v in values.items() if k not in names}
        return cls(**known, extra=extra)

    @classmethod
    def from_json_file(cls, path: str | Path) -> "OFAConfig":
        with open(path, encoding="utf-8") as f:
            return cls.from_dict(json.load(f))

    @classmethod
    def from_pretrained(cls, model_dir: str | Path) -> "OFAConfig":
        """The config of a hub-layout directory (PEFT calls this to compare vocabulary sizes)."""
        return cls.from_json_file(Path(model_dir) / "config.json")

    def to_dict(self) -> dict[str, Any]:
        values = {k: v for k, v in dataclasses.asdict(self).items() if k != "extra"}
        return {"model_type": "ofa", **self.extra, **values}

    def to_json_string(self) -> str:  # the TensorBoard callback logs the model config with this
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def save(self, directory: str | Path) -> None:
        path = Path(directory) / "config.json"
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n", encoding="utf-8")

    def get(self, key: str, default: Any = None) -> Any:  # PEFT reads model.config like a dict
        return self.to_dict().get(key, default)


# Flags of OFA variants this port does not implement, with the value the VE checkpoints use.
_UNSUPPORTED: dict[str, Any] = {
    "use_ofasys": False,
    "entangle_position_embedding": False,
    "use_gamma_feature": False,
    "interpolate_position": False,
    "use_image_feature": True,
    "encoder_layerdrop": 0.0,
    "decoder_layerdrop": 0.0,
}
