"""`velora predict`: one image + premise + hypothesis through the Predictor, optionally beside the base model."""

from __future__ import annotations

from dataclasses import dataclass

from velora.errors import VeloraError
from velora.images import ImageSource, load_image
from velora.predictor import BASE, Prediction, Predictor


@dataclass
class PredictResult:
    image: str
    premise: str | None
    hypothesis: str
    prediction: Prediction
    base_prediction: Prediction | None = None

    def to_dict(self) -> dict:
        out = {"image": self.image, "premise": self.premise, "hypothesis": self.hypothesis,
               **self.prediction.to_dict()}
        if self.base_prediction is not None:
            out["base"] = self.base_prediction.to_dict()
        return out

    def to_text(self) -> str:
        p = self.prediction
        lines = [f"Image: {self.image}"]
        if self.premise:
            lines.append(f"Premise: {self.premise}")
        lines += [f"Hypothesis: {self.hypothesis}",
                  f"Result: {p.label} (confidence: {p.confidence:.3f})",
                  "  " + " | ".join(f"{k} {v:.3f}" for k, v in p.probabilities.items())]
        if self.base_prediction is not None:
            b = self.base_prediction
            change = "same answer" if b.label == p.label else f"{b.label} -> {p.label}"
            lines.append(f"Base model: {b.label} (confidence: {b.confidence:.3f}); adapter: {change}")
        return "\n".join(lines)


def predict(predictor: Predictor, image: ImageSource, premise: str | None, hypothesis: str,
            compare_base: bool = False, name: str | None = None) -> PredictResult:
    """Score one example; with `compare_base`, also with the adapter switched off."""
    if compare_base and not predictor.adapter_names:
        raise VeloraError("--compare_base needs a LoRA adapter as --model_path; this is a plain model")
    pixels = load_image(image)  # fail on a bad image before any scoring
    prediction = predictor.predict(pixels, premise, hypothesis)
    base = predictor.predict(pixels, premise, hypothesis, adapter=BASE) if compare_base else None
    return PredictResult(name or str(image), premise, hypothesis, prediction, base)
