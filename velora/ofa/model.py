"""OFA (Wang et al., ICML 2022): a ResNet stem and a pre-norm transformer encoder-decoder.

Modules in forward order: ResNet stem (`velora.ofa.resnet`), attention, encoder layer, decoder layer, the image
bias cache, encoder, decoder, model. Position buckets live in `velora.ofa.positions`, the visual-entailment head in
`velora.ofa.entailment`. Module and parameter names follow the released checkpoints exactly, so a hub state_dict
loads key for key (see `velora.ofa.checkpoint`).

Shapes: B batch, L text tokens, P image tokens (h*w of the stride-16 feature map), S = P + L encoder length,
T decoder length, C d_model, H heads, hs head size.

What OFA adds to a BART-like transformer:
- positions are not added to the tokens; they become an attention bias from LayerNorm-ed position embeddings
  (`pos_q_linear`/`pos_k_linear`), plus learned relative-position bias tables per layer (text buckets and
  2-D image buckets);
- NormFormer: a per-head scale `c_attn` before `out_proj`, a LayerNorm after each attention block and one inside
  the FFN.

Padding: an attention mask is applied only when the caller passes one (`attention_mask` to `encode`; the decoder
follows the encoder). There is no data-dependent branch, so `torch.export` traces the model; `OFAModel.forward`
(the reference contract) always derives the mask from the pad ids.
"""

from __future__ import annotations

import contextlib
import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils.checkpoint import checkpoint

from velora.ofa.config import RESNET_LAYERS, OFAConfig
from velora.ofa.positions import (decoder_image_position_idx, image_position_ids, make_image_bucket_position,
                                  make_token_bucket_position, num_image_buckets, num_token_buckets, position_bias,
                                  position_qk, rel_bias)
from velora.ofa.resnet import RESNET_CHANNELS, DropPath, ResNet, drop_path_rates


def masked_bias(bias: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Additive attention mask: `bias` where allowed, the dtype's minimum where `mask` is True."""
    if mask is None:
        return bias
    return bias.masked_fill(mask, torch.finfo(bias.dtype).min)


class _SkipInit(TorchFunctionMode):
    """Turns `torch.nn.init` calls and tensors' in-place random fills into no-ops (this thread only)."""

    RANDOM_FILLS = {torch.Tensor.normal_, torch.Tensor.uniform_}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if getattr(func, "__module__", None) == "torch.nn.init" or func in self.RANDOM_FILLS:
            return args[0] if args else kwargs["tensor"]
        return func(*args, **kwargs)


@contextlib.contextmanager
def skip_init() -> Iterator[None]:
    """Modules built inside run no initialiser (torch's `reset_parameters` nor OFA's `_init_weights`): for a
    model built on the meta device whose every tensor a checkpoint then replaces. On meta, `normal_` alone goes
    through `torch._refs` and costs seconds for OFA-large."""
    with _SkipInit():
        yield


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
        y = y.transpose(1, 2)  # (B, T, H, hs)
        if torch.compiler.is_exporting():  # torch.export's decompositions mis-read the strides of CPU SDPA's output
            y = y.clone(memory_format=torch.contiguous_format)
        return self.out_proj(y.reshape(B, T, C))


ACTIVATIONS = {"gelu": F.gelu, "relu": F.relu, "gelu_new": lambda x: F.gelu(x, approximate="tanh")}


class _Layer(nn.Module):
    """What encoder and decoder layers share: the attention-block residual and the FFN block (fc1, activation,
    NormFormer's ffn_layer_norm, fc2) with its dropouts, final LayerNorm and drop-path."""

    def _init_ffn(self, config: OFAConfig, ffn_dim: int, drop_path: float) -> None:
        """Called after the attention modules, so parameters register in the checkpoint's order."""
        d = config.d_model
        assert config.activation_function in ACTIVATIONS, (
            f"activation_function {config.activation_function!r} not supported; expected one of {sorted(ACTIVATIONS)}")
        self.dropout = nn.Dropout(config.dropout)
        self.activation_fn = ACTIVATIONS[config.activation_function]
        self.activation_dropout = nn.Dropout(config.activation_dropout)
        self.fc1 = nn.Linear(d, ffn_dim)
        self.fc2 = nn.Linear(ffn_dim, d)
        self.ffn_layer_norm = nn.LayerNorm(ffn_dim) if config.normformer else None
        self.final_layer_norm = nn.LayerNorm(d)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def _attention_block(self, x: torch.Tensor, attn: OFAAttention, norm: nn.LayerNorm, mid_norm: nn.Module | None,
                         bias: torch.Tensor, kv: torch.Tensor | None = None) -> torch.Tensor:
        """x + drop_path(dropout(mid_norm(attn(norm(x)))))."""
        h = attn(norm(x), kv=kv, bias=bias)
        if mid_norm is not None:
            h = mid_norm(h)
        return x + self.drop_path(self.dropout(h))

    def _ffn_block(self, x: torch.Tensor) -> torch.Tensor:
        """x + drop_path(fc2(ffn_layer_norm(activation(fc1(final_layer_norm(x))))))."""
        h = self.activation_dropout(self.activation_fn(self.fc1(self.final_layer_norm(x))))
        if self.ffn_layer_norm is not None:
            h = self.ffn_layer_norm(h)
        return x + self.drop_path(self.dropout(self.fc2(h)))


def _attention(config: OFAConfig, heads: int) -> OFAAttention:
    return OFAAttention(config.d_model, heads, config.attention_dropout, config.attn_scale_factor,
                        scale_heads=config.normformer)


class EncoderLayer(_Layer):
    def __init__(self, config: OFAConfig, drop_path: float = 0.0):
        super().__init__()
        self.self_attn = _attention(config, config.encoder_attention_heads)
        self.self_attn_layer_norm = nn.LayerNorm(config.d_model)
        self.self_attn_mid_layer_norm = nn.LayerNorm(config.d_model) if config.normformer else None
        self._init_ffn(config, config.encoder_ffn_dim, drop_path)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        x = self._attention_block(x, self.self_attn, self.self_attn_layer_norm, self.self_attn_mid_layer_norm, bias)
        return self._ffn_block(x)


class DecoderLayer(_Layer):
    def __init__(self, config: OFAConfig, drop_path: float = 0.0):
        super().__init__()
        d, heads = config.d_model, config.decoder_attention_heads
        self.self_attn = _attention(config, heads)
        self.self_attn_layer_norm = nn.LayerNorm(d)
        self.self_attn_mid_layer_norm = nn.LayerNorm(d) if config.normformer else None
        self.cross_attn = _attention(config, heads)
        self.cross_attn_layer_norm = nn.LayerNorm(d)
        self.cross_attn_mid_layer_norm = nn.LayerNorm(d) if config.normformer else None
        self._init_ffn(config, config.decoder_ffn_dim, drop_path)

    def forward(self, x: torch.Tensor, memory: torch.Tensor, self_bias: torch.Tensor, cross_bias: torch.Tensor
                ) -> torch.Tensor:
        x = self._attention_block(x, self.self_attn, self.self_attn_layer_norm, self.self_attn_mid_layer_norm,
                                  self_bias)
        x = self._attention_block(x, self.cross_attn, self.cross_attn_layer_norm, self.cross_attn_mid_layer_norm,
                                  cross_bias, kv=memory)
        return self._ffn_block(x)


def _run_layer(layer: nn.Module, use_checkpoint: bool, *args: torch.Tensor) -> torch.Tensor:
    if use_checkpoint and torch.is_grad_enabled():
        return checkpoint(layer, *args, use_reentrant=False)
    return layer(*args)


def _relative_position_tables(config: OFAConfig, heads: int, layers: int) -> tuple[nn.ModuleList, nn.ModuleList]:
    """Per-layer (or one shared) learned relative-position bias tables: text buckets and 2-D image buckets."""
    tables = 1 if config.share_attn_bias else layers
    token = nn.ModuleList([nn.Embedding(num_token_buckets(config.token_bucket_size), heads) for _ in range(tables)])
    image = nn.ModuleList([nn.Embedding(num_image_buckets(config.image_bucket_size), heads) for _ in range(tables)])
    return token, image


# ----------------------------------------------------------------------------------------------------------------
# The image bias cache


class ImageBiasCache:
    """The encoder's text-independent image terms (image positions, their query/key projections and every layer's
    image-image bias block), kept per image grid: they hold layers x H x P x P floats and cost as much as the
    attention itself to rebuild, yet change only when the position weights do.

    The encoder owns the one instance and asks it for every forward; it decides here, and only here, whether
    an entry may be used:
      - never while tracing or exporting (the terms would be baked into the graph as constants);
      - never while the position modules are wrapped (e.g. by a LoRA adapter: the result depends on which adapter
        is active) or train with gradients on;
      - an entry is keyed by the grid, device, dtype and a checksum of the position weights, so an optimizer step
        or a merged adapter can never be served stale terms.
    """

    PLAIN = (nn.Embedding, nn.LayerNorm, nn.Linear, nn.ModuleList)

    def __init__(self, max_entries: int = 2):
        self.max_entries = max_entries
        self.entries: OrderedDict = OrderedDict()

    def key(self, modules: list[nn.Module], grid: tuple[int, int], device: torch.device) -> tuple | None:
        """The entry key for this call, or None when no cached value may be used or stored."""
        if torch.jit.is_tracing() or torch.compiler.is_compiling() or torch.onnx.is_in_onnx_export():
            return None
        if any(type(m) not in self.PLAIN for module in modules for m in module.modules()):
            return None
        params = [p for module in modules for p in module.parameters()]
        if torch.is_grad_enabled() and any(p.requires_grad for p in params):
            return None
        with torch.no_grad():
            checksum = tuple(torch.stack([p.detach().float().sum() for p in params]).tolist())
        return grid, device, params[0].dtype, torch.is_inference_mode_enabled(), checksum

    def get(self, key: tuple | None):
        if key is None or key not in self.entries:
            return None
        self.entries.move_to_end(key)
        return self.entries[key]

    def put(self, key: tuple | None, value) -> None:
        if key is None:
            return
        self.entries[key] = value
        while len(self.entries) > self.max_entries:
            self.entries.popitem(last=False)


# ----------------------------------------------------------------------------------------------------------------
# Encoder and decoder


@dataclass
class EncoderOutput:
    last_hidden_state: torch.Tensor  # (B, S, C)
    padding_mask: torch.Tensor | None  # (B, S) True where a token is padding (or a masked image); None: no padding
    position_embedding: torch.Tensor  # (S, C) LayerNorm-ed positions, image first; the decoder's cross bias uses them


class _Stack(nn.Module):
    """What the encoder and decoder share: the config, the shared token embedding, and the scalings."""

    def __init__(self, config: OFAConfig, embed_tokens: nn.Embedding, heads: int):
        super().__init__()
        self.config = config
        self.num_heads = heads
        self.embed_scale = math.sqrt(config.d_model) if config.scale_embedding else 1.0
        self.pos_scaling = (config.d_model / heads * config.attn_scale_factor) ** -0.5  # absolute-position bias
        self.gradient_checkpointing = False
        self.embed_tokens = embed_tokens

    def _init_positions(self) -> None:
        """Absolute text and image-grid position tables and their LayerNorms (the decoder's image ones serve OFA's
        image generation; they are kept so the checkpoint loads whole)."""
        d = self.config.d_model
        self.embed_positions = nn.Embedding(self.config.max_position_embeddings + 2, d)
        self.embed_image_positions = nn.Embedding(self.config.image_bucket_size ** 2 + 1, d)
        self.pos_ln = nn.LayerNorm(d)
        self.image_pos_ln = nn.LayerNorm(d)


class OFAEncoder(_Stack):
    def __init__(self, config: OFAConfig, embed_tokens: nn.Embedding):
        super().__init__(config, embed_tokens, config.encoder_attention_heads)
        d, heads = config.d_model, config.encoder_attention_heads
        self.image_bias_cache = ImageBiasCache()
        self.type_embedding = nn.Embedding(2, d) if config.add_type_embedding else None  # 0 text, 1 image
        self.embed_images = ResNet(RESNET_LAYERS[config.resnet_type], config.resnet_drop_path_rate)
        self.image_proj = nn.Linear(RESNET_CHANNELS, d)
        self.patch_layernorm_embedding = nn.LayerNorm(d) if config.patch_layernorm_embedding else None
        self._init_positions()
        self.pos_q_linear = nn.Linear(d, d)
        self.pos_k_linear = nn.Linear(d, d)
        rates = drop_path_rates(config.encoder_drop_path_rate, config.encoder_layers)
        self.layers = nn.ModuleList([EncoderLayer(config, rates[i]) for i in range(config.encoder_layers)])
        self.layer_norm = nn.LayerNorm(d)
        self.token_rel_pos_table_list, self.image_rel_pos_table_list = _relative_position_tables(
            config, heads, config.encoder_layers)
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

    def _table(self, layer: int) -> int:
        return 0 if self.config.share_attn_bias else layer

    def _image_position_terms(self, h: int, w: int, device: torch.device) -> tuple:
        """What no text changes: image positions (P, C), their query/key projections (H, P, hs) and the image-image
        block of every layer's bias (absolute + relative); memoised by `image_bias_cache`."""
        position_modules = [self.embed_image_positions, self.image_pos_ln, self.pos_q_linear, self.pos_k_linear,
                            self.image_rel_pos_table_list]
        key = self.image_bias_cache.key(position_modules, (h, w), device)
        terms = self.image_bias_cache.get(key)
        if terms is not None:
            return terms
        image_ids = image_position_ids(h, w, self.config.image_bucket_size, device)  # (P,)
        image_pos = self.image_pos_ln(self.embed_image_positions(image_ids))  # (P, C)
        q, k = position_qk(self.pos_q_linear, self.pos_k_linear, image_pos, self.num_heads, self.pos_scaling)
        abs_image = q @ k.transpose(1, 2)  # (H, P, P)
        buckets = self.image_rp_bucket[image_ids][:, image_ids]  # (P, P)
        tables = [self.image_rel_pos_table_list[self._table(i)] for i in range(len(self.layers))]
        terms = (image_pos, q, k, [abs_image + rel_bias(table, buckets) for table in tables])  # layers x (H, P, P)
        self.image_bias_cache.put(key, terms)
        return terms

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

    @staticmethod
    def _padding_mask(B: int, P: int, L: int, attention_mask: torch.Tensor | None,
                      patch_masks: torch.Tensor | None, device: torch.device) -> torch.Tensor | None:
        """(B, S) True at padding: text where attention_mask is 0, every image token of an image masked out by
        patch_masks. None when neither is given."""
        if attention_mask is None and patch_masks is None:
            return None
        image = torch.zeros(B, P, dtype=torch.bool, device=device)
        if patch_masks is not None:
            image = image | ~patch_masks.view(B, 1).to(torch.bool)
        text = ~attention_mask.to(torch.bool) if attention_mask is not None else image.new_zeros(B, L)
        return torch.cat([image, text], dim=1)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                patch_images: torch.Tensor | None = None, patch_masks: torch.Tensor | None = None,
                image_features: torch.Tensor | None = None) -> EncoderOutput:
        """input_ids (B, L) with attention_mask (B, L) (1 = token, 0 = padding; None = no padding); patch_images
        (B, 3, H, W) or precomputed `image_features` (B, RESNET_CHANNELS, h, w)."""
        if image_features is None:
            image_features = self.embed_images(patch_images)  # (B, RESNET_CHANNELS, h, w)
        B, L = input_ids.shape
        h, w = image_features.shape[-2:]

        x = torch.cat([self._embed_image(image_features), self._embed_text(input_ids)], dim=1)  # (B, S, C)
        x = F.dropout(x, self.config.dropout, self.training)
        padding_mask = self._padding_mask(B, h * w, L, attention_mask, patch_masks, x.device)  # (B, S) or None
        if padding_mask is not None:
            x = x.masked_fill(padding_mask.unsqueeze(-1), 0.0)

        biases, pos = self._self_attn_biases(h, w, L, x.device)
        key_mask = padding_mask[:, None, None, :] if padding_mask is not None else None  # (B, 1, 1, S)
        for layer, bias in zip(self.layers, biases):
            x = _run_layer(layer, self.gradient_checkpointing, x, masked_bias(bias.unsqueeze(0), key_mask))
        return EncoderOutput(self.layer_norm(x), padding_mask, pos)


class OFADecoder(_Stack):
    def __init__(self, config: OFAConfig, embed_tokens: nn.Embedding):
        super().__init__(config, embed_tokens, config.decoder_attention_heads)
        d, heads = config.d_model, config.decoder_attention_heads
        rates = drop_path_rates(config.decoder_drop_path_rate, config.decoder_layers)
        self.layers = nn.ModuleList([DecoderLayer(config, rates[i]) for i in range(config.decoder_layers)])
        self.layernorm_embedding = nn.LayerNorm(d) if config.layernorm_embedding else None
        self._init_positions()
        self.self_pos_q_linear = nn.Linear(d, d)
        self.self_pos_k_linear = nn.Linear(d, d)
        self.cross_pos_q_linear = nn.Linear(d, d)
        self.cross_pos_k_linear = nn.Linear(d, d)
        self.code_layernorm_embedding = nn.LayerNorm(d) if config.code_layernorm_embedding else None
        self.layer_norm = nn.LayerNorm(d)
        self.output_projection = nn.Linear(d, config.vocab_size, bias=False)
        if config.share_decoder_input_output_embed:
            self.output_projection.weight = self.embed_tokens.weight
        self.token_rel_pos_table_list, self.image_rel_pos_table_list = _relative_position_tables(
            config, heads, config.decoder_layers)
        self.register_buffer("image_position_idx", decoder_image_position_idx(config))
        self.register_buffer("image_rp_bucket", make_image_bucket_position(config.image_bucket_size))
        self.register_buffer("token_rp_bucket",
                             make_token_bucket_position(config.token_bucket_size, config.max_position_embeddings))

    def forward(self, input_ids: torch.Tensor, encoder_out: EncoderOutput) -> torch.Tensor:
        """input_ids (B, T) -> final hidden states (B, T, C), before the output projection. Padding is masked when
        the encoder's input had an attention mask (the decoder input is the encoder's text without its eos)."""
        B, T = input_ids.shape
        tgt_pos = self.pos_ln(self.embed_positions(torch.arange(T, device=input_ids.device)))  # (T, C)
        self_abs = position_bias(self.self_pos_q_linear, self.self_pos_k_linear, tgt_pos, tgt_pos,
                                 self.num_heads, self.pos_scaling)  # (H, T, T)
        cross_abs = position_bias(self.cross_pos_q_linear, self.cross_pos_k_linear, tgt_pos,
                                  encoder_out.position_embedding, self.num_heads, self.pos_scaling)  # (H, T, S)

        self_mask = torch.ones(T, T, dtype=torch.bool, device=input_ids.device).triu(1)  # (T, T) future
        cross_mask = None
        if encoder_out.padding_mask is not None:
            self_mask = self_mask | input_ids.eq(self.config.pad_token_id)[:, None, None, :]  # (B, 1, T, T)
            cross_mask = encoder_out.padding_mask[:, None, None, :]  # (B, 1, 1, S)
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
    """OFA encoder-decoder. `forward` mirrors the reference (full-vocabulary logits at every decoder position);
    `image_features` / `encode` / `decode` are the split path the visual-entailment head
    (`velora.ofa.entailment.OFAForVisualEntailment`) builds on."""

    def __init__(self, config: OFAConfig):
        super().__init__()
        self.config = config
        shared = nn.Embedding(config.vocab_size, config.d_model, padding_idx=config.pad_token_id)
        self.encoder = OFAEncoder(config, shared)
        self.decoder = OFADecoder(config, shared)
        if shared.weight.is_meta:  # nothing to initialise: the values are loaded next (see skip_init)
            return
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

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None) -> None:
        """Recompute each transformer layer's activations during backward instead of storing them."""
        self.encoder.gradient_checkpointing = self.decoder.gradient_checkpointing = True

    def gradient_checkpointing_disable(self) -> None:
        self.encoder.gradient_checkpointing = self.decoder.gradient_checkpointing = False

    @property
    def is_gradient_checkpointing(self) -> bool:
        return self.encoder.gradient_checkpointing

    def image_features(self, patch_images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalised images -> (B, RESNET_CHANNELS, H/16, W/16) ResNet features, reusable across
        texts."""
        return self.encoder.embed_images(patch_images)

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
               patch_images: torch.Tensor | None = None, patch_masks: torch.Tensor | None = None,
               image_features: torch.Tensor | None = None) -> EncoderOutput:
        return self.encoder(input_ids, attention_mask, patch_images, patch_masks, image_features)

    def decode(self, decoder_input_ids: torch.Tensor, encoder_out: EncoderOutput) -> torch.Tensor:
        return self.decoder(decoder_input_ids, encoder_out)

    def forward(self, input_ids: torch.Tensor, patch_images: torch.Tensor | None = None,
                patch_masks: torch.Tensor | None = None, decoder_input_ids: torch.Tensor | None = None,
                image_features: torch.Tensor | None = None) -> OFAOutput:
        """The reference contract: logits (B, T, vocab) for every decoder position; padding from the pad ids."""
        assert decoder_input_ids is not None, "decoder_input_ids is required (the VE prompt without its final eos)"
        attention_mask = input_ids.ne(self.config.pad_token_id)
        encoder_out = self.encode(input_ids, attention_mask, patch_images, patch_masks, image_features)
        hidden = self.decode(decoder_input_ids, encoder_out)
        return OFAOutput(logits=self.decoder.output_projection(hidden),
                         encoder_last_hidden_state=encoder_out.last_hidden_state)

    def train(self, mode: bool = True) -> "OFAModel":
        """BatchNorm stays in eval mode: its running statistics are part of the base model, not of an adapter."""
        super().train(mode)
        for module in self.encoder.embed_images.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.eval()
        return self
