"""What `velora train` shows and writes while it runs: the guide's log lines, trainer_state.json kept current for
`tail -f`, validation metrics (the same scikit-learn metrics as `velora eval`), and the training curve."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np
from transformers import TrainerCallback
from transformers.trainer_callback import PrinterCallback, ProgressCallback

from velora.evaluate import compute_metrics
from velora.labels import LABELS


def write_json_atomic(path: Path, data: dict) -> None:
    """Readers see the old file or the new one, never half of it."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, sort_keys=True, default=str)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def compute_eval_metrics(eval_pred) -> dict[str, float]:
    """Trainer hook: accuracy, macro-F1 and per-class precision/recall/F1 of the (B, 3) answer logits."""
    logits, labels = eval_pred.predictions, eval_pred.label_ids
    logits = logits[0] if isinstance(logits, tuple) else logits
    y_true = [LABELS[i] for i in np.asarray(labels).tolist()]
    y_pred = [LABELS[i] for i in np.asarray(logits).argmax(-1).tolist()]
    m = compute_metrics(y_true, y_pred)
    out = {"accuracy": m.accuracy, "macro_f1": m.macro_avg["f1"], "weighted_f1": m.weighted_avg["f1"]}
    for label in LABELS:
        for name in ("precision", "recall", "f1"):
            out[f"{label}_{name}"] = m.per_class[label][name]
    return out


class VeloraLogCallback(ProgressCallback):
    """Progress bar plus the guide's lines: `Step 20/300 | Loss: 0.821 | LR: 2e-4 | Epoch: 0.67`."""

    @classmethod
    def install(cls, trainer) -> None:
        trainer.remove_callback(PrinterCallback)
        trainer.remove_callback(ProgressCallback)
        trainer.add_callback(cls())

    def on_prediction_step(self, args, state, control, eval_dataloader=None, **kwargs):
        pass  # no second progress bar for the short validation passes

    def on_evaluate(self, args, state, control, **kwargs):
        pass

    def _write(self, text: str) -> None:
        if self.training_bar is not None:
            self.training_bar.write(text)
        else:
            print(text, flush=True)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        step = f"Step {state.global_step}/{state.max_steps}"
        if "loss" in logs:
            self._write(f"{step} | Loss: {logs['loss']:.3f} | LR: {logs.get('learning_rate', 0):.2e} | "
                        f"Epoch: {logs.get('epoch', 0):.2f}")
        elif "eval_accuracy" in logs:
            which = " (base model)" if state.global_step == 0 else ""
            self._write(f"{step} | Accuracy (val): {logs['eval_accuracy']:.1%} | Macro-F1 (val): "
                        f"{logs['eval_macro_f1']:.3f} | Loss (val): {logs.get('eval_loss', float('nan')):.3f}{which}")
        elif "train_runtime" in logs:
            self._write(f"{step} | Training done in {logs['train_runtime']:.0f} s "
                        f"({logs.get('train_samples_per_second', 0):.2f} samples/s)")


class TrainerStateFileCallback(TrainerCallback):
    """OUTPUT/trainer_state.json rewritten (atomically) at every log, as the guide tails it."""

    def __init__(self, output_dir: Path):
        self.path = Path(output_dir) / "trainer_state.json"

    def on_log(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            tmp = self.path.with_name(f".{self.path.name}.tmp")
            state.save_to_json(str(tmp))
            os.replace(tmp, self.path)


def plot_training_curve(history: list[dict], path: Path) -> Path:
    """Training loss and validation accuracy / macro-F1 against the step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    losses = [(h["step"], h["loss"]) for h in history if "loss" in h]
    evals = [(h["step"], h["eval_accuracy"], h["eval_macro_f1"]) for h in history if "eval_accuracy" in h]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    if losses:
        ax_loss.plot(*zip(*losses), marker=".", label="train loss")
    ax_loss.set(xlabel="step", ylabel="loss", title="Training loss")
    if evals:
        steps, acc, f1 = zip(*evals)
        ax_acc.plot(steps, acc, marker="o", label="accuracy")
        ax_acc.plot(steps, f1, marker="s", label="macro-F1")
        ax_acc.legend()
    ax_acc.set(xlabel="step", ylabel="validation", title="Validation (step 0 = base model)", ylim=(0, 1))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
