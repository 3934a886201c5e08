"""OFA's position machinery that no weight holds: relative-position bucket indices (text and 2-D image) and the
image-grid position ids, all derived from the config. The model registers them as buffers; checkpoints may or may
not carry them (`velora.ofa.checkpoint` checks those that do against these)."""

from __future__ import annotations

import functools
import math

import torch
import torch.nn as nn

from velora.ofa.config import OFAConfig

# The decoder's image-code position index (OFA's image generation; part of the checkpoint layout, unused for VE):
# one reserved entry, the code grid, then this many entries holding this id.
CODE_POSITION_TAIL, CODE_POSITION_TAIL_ID = 768, 1024
CODE_IMAGE_STRIDE = 8  # pixels per image code (OFA's VQGAN tokenizer): the code grid is code_image_size // 8 a side


def num_token_buckets(bucket_size: int) -> int:
    """Rows of a text relative-position table: distances -(b-1)..(b-1)."""
    return 2 * bucket_size - 1


def num_image_buckets(bucket_size: int) -> int:
    """Rows of an image relative-position table: every 2-D offset in a b x b grid, plus 3 special buckets."""
    return (2 * bucket_size - 1) ** 2 + 3


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
    num_buckets = num_image_buckets(bucket_size)
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
        f"image grid {h}x{w} exceeds image_bucket_size {bucket_size}: use a smaller image size"
    )
    rows = torch.arange(h, device=device)[:, None] * bucket_size
    return (rows + torch.arange(w, device=device)[None, :] + 1).flatten()


def decoder_image_position_idx(config: OFAConfig) -> torch.Tensor:
    """Image-code position index of the decoder (used by OFA's image generation; part of the checkpoint layout)."""
    window = config.code_image_size // CODE_IMAGE_STRIDE
    grid = image_position_ids(window, window, config.image_bucket_size, torch.device("cpu"))
    tail = torch.full((CODE_POSITION_TAIL,), CODE_POSITION_TAIL_ID, device="cpu")
    return torch.cat([torch.tensor([0], device="cpu"), grid, tail])


def derived_buffers(config: OFAConfig) -> dict[str, torch.Tensor]:
    """Every index buffer of the model, by state_dict name."""
    image = make_image_bucket_position(config.image_bucket_size)
    token = make_token_bucket_position(config.token_bucket_size, config.max_position_embeddings)
    return {
        "encoder.image_rp_bucket": image,
        "encoder.token_rp_bucket": token,
        "decoder.image_position_idx": decoder_image_position_idx(config),
        "decoder.image_rp_bucket": image,
        "decoder.token_rp_bucket": token,
    }


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
