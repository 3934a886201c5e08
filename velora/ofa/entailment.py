"""The visual-entailment head on OFA: (B, K) logits of the K answer tokens (" yes", " no", " maybe") at each
example's answer position; softmax over them gives the label probabilities, cross-entropy over them is the
training loss. Training, the Predictor and ONNX export all call this one forward.

Only the answer position is decoded into logits, and only against the answer tokens' rows of the (tied) output
projection: the same numbers as slicing the full-vocabulary logits of `OFAModel.forward`, without projecting onto
59,457 tokens. The module tree is OFAModel's, so checkpoints and LoRA adapters are named exactly as on the
reference model.
"""

from __future__ import annotations

from typing import Sequence

import torch

from velora.ofa.config import OFAConfig
from velora.ofa.model import OFAModel


class OFAForVisualEntailment(OFAModel):
    def __init__(self, config: OFAConfig, answer_ids: Sequence[int]):
        super().__init__(config)
        # not part of the checkpoint: the tokenizer's ids of the answer words (velora.ofa.processor), kept on the CPU
        # here even when the model is built on the meta device
        self.register_buffer("answer_ids", torch.tensor(list(answer_ids), dtype=torch.long, device="cpu"),
                             persistent=False)

    def forward(self, input_ids: torch.Tensor, decoder_input_ids: torch.Tensor, answer_positions: torch.Tensor,
                attention_mask: torch.Tensor | None = None, patch_images: torch.Tensor | None = None,
                image_features: torch.Tensor | None = None) -> torch.Tensor:
        """input_ids (B, L) encoder prompt, decoder_input_ids (B, L-1) the same without its eos, answer_positions
        (B,) decoder position predicting the answer, attention_mask (B, L) or None when nothing is padded; the
        image as patch_images (B, 3, H, W) or precomputed image_features. Returns (B, K) answer logits."""
        encoder_out = self.encode(input_ids, attention_mask, patch_images, image_features=image_features)
        hidden = self.decode(decoder_input_ids, encoder_out)  # (B, T, C)
        at_answer = hidden[torch.arange(hidden.shape[0], device=hidden.device), answer_positions]  # (B, C)
        return at_answer @ self.decoder.output_projection.weight[self.answer_ids].t()  # (B, K)
