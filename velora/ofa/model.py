"""OFA (Wang et al., ICML 2022) for visual entailment: a ResNet stem and a pre-norm transformer encoder-decoder.

Modules in forward order: ResNet stem (`velora.ofa.resnet`), position buckets, attention, encoder layer, decoder layer, encoder,
decoder, model. Module and parameter names follow the released checkpoints exactly, so a hub state_dict loads
key for key (see `velora.ofa.checkpoint`).

Shapes: B batch, L text tokens, P image tokens (h*w of the stride-16 feature map), S = P + L encoder length,
T decoder length, C d_model, H heads, hs head size.

What OFA adds to a BART-like transformer:
- positions are not added to the tokens; they become an attention bias from LayerNorm-ed position embeddings
  (`pos_q_linear`/`pos_k_linear`), plus learned relative-position bias tables per layer (text buckets and
  2-D image buckets);
- NormFormer: a per-head scale `c_attn` before `out_proj`, a LayerNorm after each attention block and one inside
  the FFN.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from velora.ofa.config import RESNET_LAYERS, OFAConfig
from velora.ofa.resnet import DropPath, ResNet, drop_path_rates

# ----------------------------------------------------------------------------------------------------------------
# Relative-position buckets (derived from the config; checkpoints may or may not carry them)


@functools.lru_cache(maxsize=8)
def make_token_bucket_position(bucket_size: int, max_position: int) -> torch.Tensor:
    """(max_position, max_position) bucket index of each text (query, key) pair: exact near, log-spaced far.
    Computed on the CPU once per size (also under a meta-device context) and shared; never modified in place."""
    positions = torch.arange(max_position, device="cpu")
    relative = positions[:, None] - positions[None, :]
    sign = torch.sign(relative)
    mid = bucket_size // 2
    abs_pos = torch.where((relative < mid) & (relative > -mid), torch.full_like(relative, mid - 1), relative.abs())
    log_pos = torch.ceil(torch.log(abs_pos / mid) / math.log((max_position - 1) / mid) * (mid - 1)) + mid
    bucket = torch.where(abs_pos.le(mid), relative, log_pos.int() * sign).long()
    return bucket + bucket_size - 1


@functools.lru_cache(maxsize=8)
def make_image_bucket_position(bucket_size: int) -> torch.Tensor:
    """(N+1, N+1) bucket index of each pair of image grid cells (N = bucket_size**2; row/col 0 are special).
    Computed on the CPU once per size and shared, like the token buckets."""
    num_buckets = (2 * bucket_size - 1) ** 2 + 3
    axis = torch.arange(bucket_size, device="cpu")
    coords = torch.stack(torch.meshgrid(axis, axis, indexing="ij"))
    coords = coords.flatten(1)  # (2, N)
    relative = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (bucket_size - 1)  # (N, N, 2)
    n = bucket_size * bucket_size
    index = torch.zeros(n + 1, n + 1, dtype=torch.long, device="cpu")
    index[1:, 1:] = relative[..., 0] * (2 * bucket_size - 1) + relative[..., 1]
    index[0, :] = num_buckets - 3
    index[:, 0] = num_buckets - 2
    index[0, 0] = num_buckets - 1
    return index


def image_position_ids(h: int, w: int, bucket_size: int, device: torch.device | None = None) -> torch.Tensor:
    """(h*w,) index of each image token into the (bucket_size**2 + 1) image position table; 0 is reserved."""
    assert h <= bucket_size and w <= bucket_size, (
        f"image grid {h}x{w} exceeds image_bucket_size {bucket_size}: use an image size <= {16 * bucket_size} px"
    )
    rows = torch.arange(h, device=device)[:, None] * bucket_size
    return (rows + torch.arange(w, device=device)[None, :] + 1).flatten()


def decoder_image_position_idx(config: OFAConfig) -> torch.Tensor:
    """Image-code position index of the decoder (used by OFA's image generation; part of the checkpoint layout)."""
    window = config.code_image_size // 8
    grid = image_position_ids(window, window, config.image_bucket_size, torch.device("cpu"))
    return torch.cat([torch.tensor([0], device="cpu"), grid, torch.full((768,), 1024, device="cpu")])


def position_qk(q_linear: nn.Linear, k_linear: nn.Linear, pos: torch.Tensor, num_heads: int, scaling: float
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, C) position embeddings -> scaled queries and keys (H, N, hs) of OFA's absolute-position bias."""
    N = pos.shape[0]
    q = q_linear(pos).view(N, num_heads, -1).transpose(0, 1) * scaling
    k = k_linear(pos).view(N, num_heads, -1).transpose(0, 1)
    return q, k


def position_bias(q_linear: nn.Linear, k_linear: nn.Linear, q_pos: torch.Tensor, k_pos: torch.Tensor,
                  num_heads: int, scaling: float) -> torch.Tensor:
    """OFA's absolute-position attention bias: (T, C) and (S, C) position embeddings -> (H, T, S)."""
    T, S = q_pos.shape[0], k_pos.shape[0]
    q = q_linear(q_pos).view(T, num_heads, -1).transpose(0, 1) * scaling  # (H, T, hs)
    k = k_linear(k_pos).view(S, num_heads, -1).transpose(0, 1)  # (H, S, hs)
    return q @ k.transpose(1, 2)


def rel_bias(table: nn.Embedding, buckets: torch.Tensor) -> torch.Tensor:
    """(T, S) bucket indices -> (H, T, S) learned bias (gathered head-major, so the result is contiguous)."""
    return table.weight.t()[:, buckets]


def masked_bias(bias: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Additive attention mask: `bias` where allowed, the dtype's minimum where `mask` is True."""
    if mask is None:
        return bias
    return bias.masked_fill(mask, torch.finfo(bias.dtype).min)


# ----------------------------------------------------------------------------------------------------------------
# Attention and layers


class OFAAttention(nn.Module):
    """Multi-head attention with an additive bias and NormFormer's per-head output scale."""

    def __init__(self, embed_dim: int, num_heads: int, dropout: float, scale_factor: float, scale_heads: bool):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.scaling = (self.head_dim * scale_factor) ** -0.5
        self.dropout = dropout
        self.c_attn = nn.Parameter(torch.ones(num_heads)) if scale_heads else None
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.out_proj = nn.Linear(embed_dim, embed_dim)

    def forward(self, x: torch.Tensor, kv: torch.Tensor | None = None, bias: torch.Tensor | None = None
                ) -> torch.Tensor:
        """x (B, T, C) attends to kv (B, S, C) (itself if None); bias broadcasts to (B, H, T, S)."""
        kv = x if kv is None else kv
        B, T, C = x.shape
        S = kv.shape[1]
        q = self.q_proj(x).view(B, T, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, T, hs)
        k = self.k_proj(kv).view(B, S, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, S, hs)
        v = self.v_proj(kv).view(B, S, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, S, hs)
        if bias is not None:
            bias = bias.to(q.dtype)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.scaling,
                                           dropout_p=self.dropout if self.training else 0.0)  # (B, H, T, hs)
        if self.c_attn is not None:
            y = y * self.c_attn.view(1, -1, 1, 1).to(y.dtype)
        return self.out_proj(y.transpose(1, 2).reshape(B, T, C))


def _ffn(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """fc1 -> activation -> (NormFormer ffn_layer_norm) -> fc2 -> dropout, on an encoder or decoder layer."""
    x = layer.activation_dropout(layer.activation_fn(layer.fc1(x)))
    if layer.ffn_layer_norm is not None:
        x = layer.ffn_layer_norm(x)
    return layer.dropout(layer.fc2(x))


def _activation(name: str):
    activations = {"gelu": F.gelu, "relu": F.relu, "gelu_new": lambda x: F.gelu(x, approximate="tanh")}
    assert name in activations, f"activation_function {name!r} not supported; expected one of {sorted(activations)}"
    return activations[name]


class EncoderLayer(nn.Module):
    def __init__(self, config: OFAConfig, drop_path: float = 0.0):
        super().__init__()
        d, ffn = config.d_model, config.encoder_ffn_dim
        self.self_attn = OFAAttention(d, config.encoder_attention_heads, config.attention_dropout,
                                      config.attn_scale_factor, scale_heads=config.normformer)
        self.self_attn_layer_norm = nn.LayerNorm(d)
        self.self_attn_mid_layer_norm = nn.LayerNorm(d) if config.normformer else None
        self.dropout = nn.Dropout(config.dropout)
        self.activation_fn = _activation(config.activation_function)
        self.activation_dropout = nn.Dropout(config.activation_dropout)
        self.fc1 = nn.Linear(d, ffn)
        self.fc2 = nn.Linear(ffn, d)
        self.ffn_layer_norm = nn.LayerNorm(ffn) if config.normformer else None
        self.final_layer_norm = nn.LayerNorm(d)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        h = self.self_attn(self.self_attn_layer_norm(x), bias=bias)
        if self.self_attn_mid_layer_norm is not None:
            h = self.self_attn_mid_layer_norm(h)
        x = x + self.drop_path(self.dropout(h))
        return x + self.drop_path(_ffn(self, self.final_layer_norm(x)))


class DecoderLayer(nn.Module):
    def __init__(self, config: OFAConfig, drop_path: float = 0.0):
        super().__init__()
        d, heads, ffn = config.d_model, config.decoder_attention_heads, config.decoder_ffn_dim
        self.self_attn = OFAAttention(d, heads, config.attention_dropout, config.attn_scale_factor,
                                      scale_heads=config.normformer)
        self.dropout = nn.Dropout(config.dropout)
        self.activation_fn = _activation(config.activation_function)
        self.activation_dropout = nn.Dropout(config.activation_dropout)
        self.self_attn_layer_norm = nn.LayerNorm(d)
        self.self_attn_mid_layer_norm = nn.LayerNorm(d) if config.normformer else None
        self.cross_attn = OFAAttention(d, heads, config.attention_dropout, config.attn_scale_factor,
                                       scale_heads=config.normformer)
        self.cross_attn_layer_norm = nn.LayerNorm(d)
        self.cross_attn_mid_layer_norm = nn.LayerNorm(d) if config.normformer else None
        self.fc1 = nn.Linear(d, ffn)
        self.fc2 = nn.Linear(ffn, d)
        self.ffn_layer_norm = nn.LayerNorm(ffn) if config.normformer else None
        self.final_layer_norm = nn.LayerNorm(d)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def forward(self, x: torch.Tensor, memory: torch.Tensor, self_bias: torch.Tensor, cross_bias: torch.Tensor
                ) -> torch.Tensor:
        h = self.self_attn(self.self_attn_layer_norm(x), bias=self_bias)
        if self.self_attn_mid_layer_norm is not None:
            h = self.self_attn_mid_layer_norm(h)
        x = x + self.drop_path(self.dropout(h))
        h = self.cross_attn(self.cross_attn_layer_norm(x), kv=memory, bias=cross_bias)
        if self.cross_attn_mid_layer_norm is not None:
            h = self.cross_attn_mid_layer_norm(h)
        x = x + self.drop_path(self.dropout(h))
        return x + self.drop_path(_ffn(self, self.final_layer_norm(x)))


def _run_layer(layer: nn.Module, use_checkpoint: bool, *args: torch.Tensor) -> torch.Tensor:
    if use_checkpoint and torch.is_grad_enabled():
        return checkpoint(layer, *args, use_reentrant=False)
    return layer(*args)


# ----------------------------------------------------------------------------------------------------------------
# Encoder and decoder


@dataclass
class EncoderOutput:
    last_hidden_state: torch.Tensor  # (B, S, C)
    padding_mask: torch.Tensor  # (B, S) True where a token is padding (or a masked image)
    position_embedding: torch.Tensor  # (S, C) LayerNorm-ed positions, image first; the decoder's cross bias uses them


class OFAEncoder(nn.Module):
    def __init__(self, config: OFAConfig, embed_tokens: nn.Embedding):
        super().__init__()
        d, heads = config.d_model, config.encoder_attention_heads
        self.config = config
        self.num_heads = heads
        self.embed_scale = math.sqrt(d) if config.scale_embedding else 1.0
        self.pos_scaling = (d / heads * config.attn_scale_factor) ** -0.5
        self.gradient_checkpointing = False
        self.image_bias_cache: dict | None = None  # None: off; see _image_position_terms

        self.embed_tokens = embed_tokens
        self.type_embedding = nn.Embedding(2, d) if config.add_type_embedding else None  # 0 text, 1 image
        self.embed_images = ResNet(RESNET_LAYERS[config.resnet_type], config.resnet_drop_path_rate)
        self.image_proj = nn.Linear(1024, d)
        self.patch_layernorm_embedding = nn.LayerNorm(d) if config.patch_layernorm_embedding else None
        self.embed_positions = nn.Embedding(config.max_position_embeddings + 2, d)
        self.embed_image_positions = nn.Embedding(config.image_bucket_size ** 2 + 1, d)
        self.pos_ln = nn.LayerNorm(d)
        self.image_pos_ln = nn.LayerNorm(d)
        self.pos_q_linear = nn.Linear(d, d)
        self.pos_k_linear = nn.Linear(d, d)
        rates = drop_path_rates(config.encoder_drop_path_rate, config.encoder_layers)
        self.layers = nn.ModuleList([EncoderLayer(config, rates[i]) for i in range(config.encoder_layers)])
        self.layer_norm = nn.LayerNorm(d)
        tables = 1 if config.share_attn_bias else config.encoder_layers
        self.token_rel_pos_table_list = nn.ModuleList(
            [nn.Embedding(2 * config.token_bucket_size - 1, heads) for _ in range(tables)])
        self.image_rel_pos_table_list = nn.ModuleList(
            [nn.Embedding((2 * config.image_bucket_size - 1) ** 2 + 3, heads) for _ in range(tables)])
        self.register_buffer("image_rp_bucket", make_image_bucket_position(config.image_bucket_size))
        self.layernorm_embedding = nn.LayerNorm(d) if config.layernorm_embedding else None
        self.register_buffer("token_rp_bucket",
                             make_token_bucket_position(config.token_bucket_size, config.max_position_embeddings))

    def _embed_text(self, input_ids: torch.Tensor) -> torch.Tensor:
        x = self.embed_scale * self.embed_tokens(input_ids)  # (B, L, C)
        if self.type_embedding is not None:
            x = x + self.type_embedding.weight[0]
        if self.layernorm_embedding is not None:
            x = self.layernorm_embedding(x)
        return x

    def _embed_image(self, image_features: torch.Tensor) -> torch.Tensor:
        x = self.embed_scale * self.image_proj(image_features.flatten(2).transpose(1, 2))  # (B, P, C)
        if self.type_embedding is not None:
            x = x + self.type_embedding.weight[1]
        if self.patch_layernorm_embedding is not None:
            x = self.patch_layernorm_embedding(x)
        return x

    def _image_position_terms(self, h: int, w: int, device: torch.device) -> tuple:
        """What no text changes: image positions (P, C), their query/key projections (H, P, hs) and the image-image
        block of every layer's bias (absolute + relative). Kept in `image_bias_cache` when that is enabled and
        these weights are not training (LoRA training, inference); it holds layers x H x P x P floats."""
        use_cache = self.image_bias_cache is not None and not (
            torch.is_grad_enabled() and any(p.requires_grad for p in self._image_position_parameters()))
        key = (h, w, device, self.embed_image_positions.weight.dtype)
        if use_cache and key in self.image_bias_cache:
            return self.image_bias_cache[key]
        image_ids = image_position_ids(h, w, self.config.image_bucket_size, device)  # (P,)
        image_pos = self.image_pos_ln(self.embed_image_positions(image_ids))  # (P, C)
        q, k = position_qk(self.pos_q_linear, self.pos_k_linear, image_pos, self.num_heads, self.pos_scaling)
        abs_image = q @ k.transpose(1, 2)  # (H, P, P)
        buckets = self.image_rp_bucket[image_ids][:, image_ids]  # (P, P)
        tables = [self.image_rel_pos_table_list[self._table(i)] for i in range(len(self.layers))]
        blocks = [abs_image + rel_bias(table, buckets) for table in tables]  # layers x (H, P, P)
        terms = (image_pos, q, k, blocks)
        if use_cache:
            self.image_bias_cache[key] = terms
        return terms

    def _image_position_parameters(self):
        for module in (self.embed_image_positions, self.image_pos_ln, self.pos_q_linear, self.pos_k_linear,
                       self.image_rel_pos_table_list):
            yield from module.parameters()

    def _table(self, layer: int) -> int:
        return 0 if self.config.share_attn_bias else layer

    def _self_attn_biases(self, h: int, w: int, L: int, device: torch.device
                          ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """One (H, S, S) bias per layer: absolute-position bias, plus relative biases on the image-image and
        text-text blocks; and the positions (S, C) the decoder's cross-attention bias reads."""
        image_pos, q_image, k_image, image_blocks = self._image_position_terms(h, w, device)
        text_pos = self.pos_ln(self.embed_positions(torch.arange(L, device=device)))  # (L, C)
        q_text, k_text = position_qk(self.pos_q_linear, self.pos_k_linear, text_pos, self.num_heads,
                                     self.pos_scaling)
        image_text = q_image @ k_text.transpose(1, 2)  # (H, P, L)
        text_image = q_text @ k_image.transpose(1, 2)  # (H, L, P)
        text_text = q_text @ k_text.transpose(1, 2)  # (H, L, L)
        P, biases = image_pos.shape[0], []
        for i, image_block in enumerate(image_blocks):
            bias = text_text.new_empty(self.num_heads, P + L, P + L)
            bias[:, :P, :P] = image_block
            bias[:, :P, P:] = image_text
            bias[:, P:, :P] = text_image
            bias[:, P:, P:] = text_text + rel_bias(self.token_rel_pos_table_list[self._table(i)],
                                                   self.token_rp_bucket[:L, :L])
            biases.append(bias)
        return biases, torch.cat([image_pos, text_pos], dim=0)

    def forward(self, input_ids: torch.Tensor, patch_images: torch.Tensor | None = None,
                patch_masks: torch.Tensor | None = None, image_features: torch.Tensor | None = None
                ) -> EncoderOutput:
        """input_ids (B, L); patch_images (B, 3, H, W) or precomputed `image_features` (B, 1024, h, w)."""
        if image_features is None:
            image_features = self.embed_images(patch_images)  # (B, 1024, h, w)
        B, L = input_ids.shape
        h, w = image_features.shape[-2:]
        P = h * w

        x = torch.cat([self._embed_image(image_features), self._embed_text(input_ids)], dim=1)  # (B, S, C)
        x = F.dropout(x, self.config.dropout, self.training)
        image_padding = torch.zeros(B, P, dtype=torch.bool, device=x.device)
        if patch_masks is not None:
            image_padding = image_padding | ~patch_masks.view(B, 1).to(torch.bool)
        padding_mask = torch.cat([image_padding, input_ids.eq(self.config.pad_token_id)], dim=1)  # (B, S)
        has_padding = bool(padding_mask.any())
        if has_padding:
            x = x.masked_fill(padding_mask.unsqueeze(-1), 0.0)

        biases, pos = self._self_attn_biases(h, w, L, x.device)
        key_mask = padding_mask[:, None, None, :] if has_padding else None  # (B, 1, 1, S)
        for layer, bias in zip(self.layers, biases):
            x = _run_layer(layer, self.gradient_checkpointing, x, masked_bias(bias.unsqueeze(0), key_mask))
        return EncoderOutput(self.layer_norm(x), padding_mask, pos)


class OFADecoder(nn.Module):
    def __init__(self, config: OFAConfig, embed_tokens: nn.Embedding):
        super().__init__()
        d, heads = config.d_model, config.decoder_attention_heads
        self.config = config
        self.num_heads = heads
        self.embed_scale = math.sqrt(d) if config.scale_embedding else 1.0
        self.pos_scaling = (d / heads * config.attn_scale_factor) ** -0.5
        self.gradient_checkpointing = False

        self.embed_tokens = embed_tokens
        rates = drop_path_rates(config.decoder_drop_path_rate, config.decoder_layers)
        self.layers = nn.ModuleList([DecoderLayer(config, rates[i]) for i in range(config.decoder_layers)])
        self.layernorm_embedding = nn.LayerNorm(d) if config.layernorm_embedding else None
        self.embed_positions = nn.Embedding(config.max_position_embeddings + 2, d)
        # image_* and code_* modules serve OFA's image generation; they are kept so the checkpoint loads whole.
        self.embed_image_positions = nn.Embedding(config.image_bucket_size ** 2 + 1, d)
        self.pos_ln = nn.LayerNorm(d)
        self.image_pos_ln = nn.LayerNorm(d)
        self.self_pos_q_linear = nn.Linear(d, d)
        self.self_pos_k_linear = nn.Linear(d, d)
        self.cross_pos_q_linear = nn.Linear(d, d)
        self.cross_pos_k_linear = nn.Linear(d, d)
        self.code_layernorm_embedding = nn.LayerNorm(d) if config.code_layernorm_embedding else None
        self.layer_norm = nn.LayerNorm(d)
        self.output_projection = nn.Linear(d, config.vocab_size, bias=False)
        if config.share_decoder_input_output_embed:
            self.output_projection.weight = self.embed_tokens.weight
        tables = 1 if config.share_attn_bias else config.decoder_layers
        self.token_rel_pos_table_list = nn.ModuleList(
            [nn.Embedding(2 * config.token_bucket_size - 1, heads) for _ in range(tables)])
        self.register_buffer("image_position_idx", decoder_image_position_idx(config))
        self.image_rel_pos_table_list = nn.ModuleList(
            [nn.Embedding((2 * config.image_bucket_size - 1) ** 2 + 3, heads) for _ in range(tables)])
        self.register_buffer("image_rp_bucket", make_image_bucket_position(config.image_bucket_size))
        self.register_buffer("token_rp_bucket",
                             make_token_bucket_position(config.token_bucket_size, config.max_position_embeddings))

    def forward(self, input_ids: torch.Tensor, encoder_out: EncoderOutput) -> torch.Tensor:
        """input_ids (B, T) -> final hidden states (B, T, C), before the output projection."""
        B, T = input_ids.shape
        tgt_pos = self.pos_ln(self.embed_positions(torch.arange(T, device=input_ids.device)))  # (T, C)
        self_abs = position_bias(self.self_pos_q_linear, self.self_pos_k_linear, tgt_pos, tgt_pos,
                                 self.num_heads, self.pos_scaling)  # (H, T, T)
        cross_abs = position_bias(self.cross_pos_q_linear, self.cross_pos_k_linear, tgt_pos,
                                  encoder_out.position_embedding, self.num_heads, self.pos_scaling)  # (H, T, S)

        future = torch.ones(T, T, dtype=torch.bool, device=input_ids.device).triu(1)  # (T, T)
        padding = input_ids.eq(self.config.pad_token_id)
        self_mask = future | padding[:, None, None, :] if bool(padding.any()) else future  # (B|1, 1, T, T)
        memory_padding = encoder_out.padding_mask
        cross_mask = memory_padding[:, None, None, :] if bool(memory_padding.any()) else None  # (B, 1, 1, S)
        cross_bias = masked_bias(cross_abs.unsqueeze(0), cross_mask)

        x = self.embed_scale * self.embed_tokens(input_ids)  # (B, T, C)
        if self.layernorm_embedding is not None:
            x = self.layernorm_embedding(x)
        x = F.dropout(x, self.config.dropout, self.training)
        memory = encoder_out.last_hidden_state
        for i, layer in enumerate(self.layers):
            table = self.token_rel_pos_table_list[0 if self.config.share_attn_bias else i]
            self_bias = masked_bias((self_abs + rel_bias(table, self.token_rp_bucket[:T, :T])).unsqueeze(0),
                                    self_mask)
            x = _run_layer(layer, self.gradient_checkpointing, x, memory, self_bias, cross_bias)
        return self.layer_norm(x)


# ----------------------------------------------------------------------------------------------------------------
# Model


@dataclass
class OFAOutput:
    logits: torch.Tensor  # (B, T, vocab)
    encoder_last_hidden_state: torch.Tensor  # (B, S, C)


class OFAModel(nn.Module):
    """OFA encoder-decoder. `forward` mirrors the reference; `encode` / `decode` / `answer_logits` are the split
    path the Predictor and the training loss share (only the answer position and the answer tokens are scored)."""

    def __init__(self, config: OFAConfig):
        super().__init__()
        self.config = config
        shared = nn.Embedding(config.vocab_size, config.d_model, padding_idx=config.pad_token_id)
        self.encoder = OFAEncoder(config, shared)
        self.decoder = OFADecoder(config, shared)
        self.apply(self._init_weights)
        for table in [*self.encoder.token_rel_pos_table_list, *self.encoder.image_rel_pos_table_list,
                      *self.decoder.token_rel_pos_table_list, *self.decoder.image_rel_pos_table_list]:
            nn.init.zeros_(table.weight)

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.init_std
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=std)
            if module.padding_idx is not None:
                with torch.no_grad():
                    module.weight[module.padding_idx].zero_()
        elif isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    @classmethod
    def from_pretrained(cls, path: str, **kwargs) -> "OFAModel":
        """Load a hub-layout directory (or hub id); see `velora.ofa.checkpoint.load_pretrained`."""
        from velora.ofa.checkpoint import load_pretrained

        return load_pretrained(path, **kwargs)

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None) -> None:
        """Recompute each transformer layer's activations during backward instead of storing them."""
        self.encoder.gradient_checkpointing = self.decoder.gradient_checkpointing = True

    def gradient_checkpointing_disable(self) -> None:
        self.encoder.gradient_checkpointing = self.decoder.gradient_checkpointing = False

    @property
    def is_gradient_checkpointing(self) -> bool:
        return self.encoder.gradient_checkpointing

    def image_features(self, patch_images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalised images -> (B, 1024, H/16, W/16) ResNet features, reusable across texts."""
        return self.encoder.embed_images(patch_images)

    def encode(self, input_ids: torch.Tensor, patch_images: torch.Tensor | None = None,
               patch_masks: torch.Tensor | None = None, image_features: torch.Tensor | None = None) -> EncoderOutput:
        return self.encoder(input_ids, patch_images, patch_masks, image_features)

    def decode(self, decoder_input_ids: torch.Tensor, encoder_out: EncoderOutput) -> torch.Tensor:
        return self.decoder(decoder_input_ids, encoder_out)

    def forward_head(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.decoder.output_projection(hidden)  # (..., vocab)

    def answer_logits(self, hidden: torch.Tensor, answer_positions: torch.Tensor, answer_ids: torch.Tensor
                      ) -> torch.Tensor:
        """Logits of the candidate answer tokens at each sample's answer position.

        hidden (B, T, C), answer_positions (B,), answer_ids (K,) -> (B, K). Same numbers as slicing the full
        vocabulary logits, without projecting onto all of it.
        """
        B = hidden.shape[0]
        at_answer = hidden[torch.arange(B, device=hidden.device), answer_positions]  # (B, C)
        return at_answer @ self.decoder.output_projection.weight[answer_ids].t()  # (B, K)

    def score_answers(self, input_ids: torch.Tensor, decoder_input_ids: torch.Tensor,
                      answer_positions: torch.Tensor, answer_ids: torch.Tensor,
                      patch_images: torch.Tensor | None = None, patch_masks: torch.Tensor | None = None,
                      image_features: torch.Tensor | None = None) -> torch.Tensor:
        """Visual-entailment scoring: (B, K) logits of the K answer tokens; softmax gives the label probabilities.
        The training loss is cross-entropy over the same logits."""
        encoder_out = self.encode(input_ids, patch_images, patch_masks, image_features)
        return self.answer_logits(self.decode(decoder_input_ids, encoder_out), answer_positions, answer_ids)

    def forward(self, input_ids: torch.Tensor, patch_images: torch.Tensor | None = None,
                patch_masks: torch.Tensor | None = None, decoder_input_ids: torch.Tensor | None = None,
                image_features: torch.Tensor | None = None, answer_positions: torch.Tensor | None = None,
                answer_ids: torch.Tensor | None = None) -> OFAOutput:
        """Reference behaviour: logits (B, T, vocab) for every decoder position. Given `answer_positions` and
        `answer_ids`, only the answers are scored: logits (B, K) (the training path, through DDP/PEFT wrappers)."""
        assert decoder_input_ids is not None, "decoder_input_ids is required (the VE prompt without its final eos)"
        encoder_out = self.encode(input_ids, patch_images, patch_masks, image_features)
        hidden = self.decode(decoder_input_ids, encoder_out)
        if answer_positions is not None and answer_ids is not None:
            logits = self.answer_logits(hidden, answer_positions, answer_ids)
        else:
            logits = self.forward_head(hidden)
        return OFAOutput(logits=logits, encoder_last_hidden_state=encoder_out.last_hidden_state)

    def train(self, mode: bool = True) -> "OFAModel":
        """BatchNorm stays in eval mode: its running statistics are part of the base model, not of an adapter."""
        super().train(mode)
        for module in self.encoder.embed_images.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.eval()
        return self
