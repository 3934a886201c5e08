"""What `velora train` shows and keeps while it runs: the guide's log lines, OUTPUT_DIR/trainer_state.json growing
in place (so `tail -f` follows it), the best checkpoint with ties broken, and the training curve."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path

from transformers import TrainerCallback
from transformers.trainer_callback import PrinterCallback, ProgressCallback

METRIC_NAMES = {"macro_f1": "macro-F1", "accuracy": "accuracy", "loss": "loss", "weighted_f1": "weighted-F1"}


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


# ----------------------------------------------------------------------------------------------------------------
# trainer_state.json for `tail -f`


def state_json(state) -> str:
    """The TrainerState as JSON with `log_history` last, so each update adds its newest entries at the end."""
    data = dataclasses.asdict(state)
    history = data.pop("log_history")
    return json.dumps({**dict(sorted(data.items())), "log_history": history}, indent=2, default=str) + "\n"


def rewrite_in_place(path: Path, text: str) -> None:
    """Overwrite `path` through the same inode (what `tail -f` follows); a reader may catch it mid-write. Resume never
    reads this file: it reads the copy the Trainer writes atomically into each checkpoint-N/."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
        f.truncate()


class TrainerStateFile(TrainerCallback):
    """OUTPUT_DIR/trainer_state.json rewritten at every log (the guide tails it)."""

    def __init__(self, output_dir: Path):
        self.path = Path(output_dir) / "trainer_state.json"

    def on_log(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            rewrite_in_place(self.path, state_json(state))


# ----------------------------------------------------------------------------------------------------------------
# The best checkpoint


def evaluations(history: list[dict], metric: str) -> list[dict]:
    """Validation results after training started (step 0 is the base model), with the selection metric."""
    return [h for h in history if h.get("step", 0) > 0 and f"eval_{metric}" in h]


def _rank(entry: dict, metric: str, greater_is_better: bool) -> tuple:
    value = entry[f"eval_{metric}"]
    loss = entry.get("eval_loss", math.inf)
    return value if greater_is_better else -value, -loss, entry["step"]


def best_evaluation(history: list[dict], metric: str, greater_is_better: bool = True) -> dict | None:
    """The best validation result: by `metric`, ties broken by the lower validation loss, then the later step."""
    found = evaluations(history, metric)
    return max(found, key=lambda h: _rank(h, metric, greater_is_better)) if found else None


class BestCheckpointTieBreak(TrainerCallback):
    """The Trainer keeps the earliest of equally good evaluations; this sets its best step by `best_evaluation`
    before the Trainer compares (its strict comparison then keeps what is set here)."""

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        metric = (args.metric_for_best_model or "").removeprefix("eval_")
        best = best_evaluation(state.log_history, metric, args.greater_is_better)
        if best is not None and args.load_best_model_at_end:
            state.best_metric, state.best_global_step = best[f"eval_{metric}"], best["step"]


def selection_reason(history: list[dict], step: int, metric: str, note: str | None = None) -> str:
    """Which step was kept, and why (the ties it won and on what)."""
    name = METRIC_NAMES.get(metric, metric)
    found = evaluations(history, metric)
    kept = next((h for h in found if h["step"] == step), None)
    if kept is None:
        return f"Kept step {step} (the last one: no validation result)"
    value, loss = kept[f"eval_{metric}"], kept.get("eval_loss", math.nan)
    text = f"Kept step {step}: best validation {name} {value:.3f}"
    ties = [h for h in found if h[f"eval_{metric}"] == value and h["step"] != step]
    if ties and metric != "loss":
        steps = ", ".join(str(h["step"]) for h in ties)
        same_loss = any(h.get("eval_loss") == loss for h in ties)
        text += (f", tied with step {steps}; kept for " +
                 ("being the later one at the same validation loss" if same_loss else
                  f"its lower validation loss {loss:.3f}"))
    return text + (f" ({note})" if note else "")


def plot_training_curve(history: list[dict], path: Path) -> Path:
    """Training loss and validation accuracy / macro-F1 against the step."""
    import matplotlib  # deferred: matplotlib takes ~1 s to import and is needed once, at the end

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # deferred: with matplotlib

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
