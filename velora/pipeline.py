"""`velora.pipeline("visual-entailment", model=PATH)`: the shape of the guide's serving snippet (a transformers-style
`pipeline(...)` returning a callable), backed by the one Predictor.

    ve = velora.pipeline("visual-entailment", model="./lora_finetuned")
    ve(image.file, premise, hypothesis)                          # the guide's call
    ve({"image": "a.jpg", "text": hypothesis, "text2": premise})   # ModelScope's pipeline input names
    # -> {"label": "entailment", "score": 0.93, "scores": {"entailment": 0.93, "contradiction": 0.02, "neutral": 0.05}}

Why not `transformers.pipeline(...)` itself: its custom-pipeline registry (`PIPELINE_REGISTRY.register_pipeline`)
wants a `transformers.Pipeline` subclass driving a `PreTrainedModel` that `AutoConfig`/`AutoModel` can load from the
folder; OFA is not a transformers model type, so that would mean registering a fake model class. This function keeps
the call shape without pretending.
"""

from __future__ import annotations

import os
from typing import Any

from velora.errors import VeloraError
from velora.images import ImageSource
from velora.predictor import Predictor

TASKS = ("visual-entailment", "visual_entailment")


class VisualEntailmentPipeline:
    def __init__(self, predictor: Predictor):
        self.predictor = predictor

    def __call__(self, image: ImageSource | dict | None = None, premise: str | None = None,
                 hypothesis: str | None = None, *, text: str | None = None, text2: str | None = None,
                 adapter: str | None = None) -> dict[str, Any]:
        """`(image, premise, hypothesis)` as the guide calls it, or keyword `text` (hypothesis) / `text2` (premise),
        or one dict with ModelScope's input names {"image", "text", "text2"} (the guide's names work as keys too)."""
        if isinstance(image, dict):
            fields = image
            image = fields.get("image")
            premise = fields.get("premise", fields.get("text2", premise))
            hypothesis = fields.get("hypothesis", fields.get("text", hypothesis))
        hypothesis = hypothesis if hypothesis is not None else text
        premise = premise if premise is not None else text2
        if image is None:
            raise VeloraError("no image: call with (image, premise, hypothesis) or {'image': ..., 'text': ...}")
        prediction = self.predictor.predict(image, premise, hypothesis, adapter=adapter)
        return {"label": prediction.label, "score": prediction.confidence, "scores": prediction.probabilities}


def pipeline(task: str = "visual-entailment", model: str | os.PathLike | None = None, *,
             base_model: str | None = None, device: str = "auto", dtype: str = "auto",
             **predictor_options: Any) -> VisualEntailmentPipeline:
    """A callable scoring one example; `model` is anything `Predictor.from_pretrained` takes (model folder, LoRA
    adapter folder, hub id; default $VELORA_MODEL). The guide's `tokenizer=` argument is accepted and unused: the
    tokenizer always comes from the model folder."""
    if task not in TASKS:
        raise VeloraError(f"task {task!r}: velora.pipeline serves 'visual-entailment'")
    predictor_options.pop("tokenizer", None)
    model = model or os.environ.get("VELORA_MODEL")
    if model is None:
        raise VeloraError("no model: pass model=PATH (a folder from `velora train`/`velora merge`, or a hub id)")
    return VisualEntailmentPipeline(Predictor.from_pretrained(model, base_model=base_model, device=device,
                                                              dtype=dtype, **predictor_options))
