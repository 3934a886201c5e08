"""The adapter folder's README.md — a model card saying what was trained on what and how well — and the
end-of-training summary on the console."""

from __future__ import annotations

from pathlib import Path

from velora.labels import LABELS

ADAPTER_FILES = ("adapter_model.safetensors", "adapter_model.bin")


def adapter_file(output_dir: Path) -> Path:
    """The adapter weights PEFT saved (what the guide calls pytorch_model.bin)."""
    return next((output_dir / n for n in ADAPTER_FILES if (output_dir / n).exists()), output_dir / ADAPTER_FILES[0])


def size_text(path: Path) -> str:
    size = path.stat().st_size if path.exists() else 0
    return f"{size / 1e6:.1f} MB" if size >= 1e5 else f"{size / 1e3:.1f} kB"


def _metrics_rows(metrics: dict) -> list[str]:
    baseline, final = metrics.get("baseline"), metrics.get("final")
    if not final:
        return ["No validation split: the adapter was not evaluated during training."]
    rows = ["| validation | accuracy | macro-F1 | loss |", "|---|---|---|---|"]
    for name, entry in (("base model (step 0)", baseline), (f"this adapter (step {final.get('step')})", final)):
        if entry:
            rows.append(f"| {name} | {entry['accuracy']:.4f} | {entry['macro_f1']:.4f} | "
                        f"{entry.get('loss', float('nan')):.4f} |")
    return rows


def _data_rows(summary: dict[str, dict[str, int]]) -> list[str]:
    rows = ["| split | rows | " + " | ".join(LABELS) + " |", "|---|---|" + "---|" * len(LABELS)]
    for split, counts in summary.items():
        rows.append(f"| {split} | {sum(counts.values())} | " + " | ".join(str(counts[label]) for label in LABELS)
                    + " |")
    return rows


def model_card(output_dir: Path, *, base_model: str, data_source: str, data_summary: dict, config,
               metrics: dict, selection: str) -> str:
    """README.md for the adapter folder, with the Hub's metadata header (library_name, base_model)."""
    out = str(output_dir)
    lora = (f"rank {config.lora_r}, alpha {config.lora_alpha}, dropout {config.lora_dropout}, on "
            f"{', '.join(config.target_modules)}")
    lines = [
        "---", "library_name: peft", f"base_model: {base_model}",
        "tags: [velora, lora, ofa, visual-entailment]", "---", "",
        "# LoRA adapter for OFA visual entailment", "",
        f"Trained with `velora train` on `{base_model}`. Given an image, an optional premise and a hypothesis, it "
        f"says whether they entail, contradict or are neutral to the hypothesis ({', '.join(LABELS)}).", "",
        "## Data", "", f"`{data_source}`, rows per label:", "", *_data_rows(data_summary), "",
        "## Training", "",
        f"- LoRA: {lora}",
        f"- learning rate {float(config.learning_rate):g}, effective batch {config.effective_batch}, "
        f"{metrics.get('train_steps')} steps, seed {config.seed}",
        f"- image size {metrics.get('image_size')} px", f"- {selection}", "",
        "## Validation", "", *_metrics_rows(metrics), "",
        "## Use", "", "With velora:", "", "```bash",
        f"velora predict --model_path {out} --image IMG --premise \"...\" --hypothesis \"...\" --compare_base",
        f"velora eval --model_path {out} --test_file data/test_set.csv", "```", "", "```python",
        "from velora.predictor import Predictor", "",
        f"predictor = Predictor.from_pretrained({out!r})", "```", "",
        "With PEFT, on velora's OFA (or the reference `OFAModel`, whose module names it shares):", "", "```python",
        "from peft import PeftModel", "from velora.ofa.checkpoint import load_pretrained", "",
        f"model = PeftModel.from_pretrained(load_pretrained({base_model!r}), {out!r})", "```", "",
        f"`{adapter_file(output_dir).name}` holds the LoRA weights (what older guides call `pytorch_model.bin`); "
        "`vocab.json`, `merges.txt` and `configuration.json` hold the preprocessing.", "",
    ]
    return "\n".join(lines)


def summary_lines(output_dir: Path, metrics: dict, selection: str) -> list[str]:
    """What the console shows at the end: base vs tuned, the step kept and why, the adapter file and its size."""
    lines = []
    baseline, final, gain = metrics.get("baseline"), metrics.get("final"), metrics.get("gain")
    if baseline and final:
        lines.append(f"Validation accuracy: base {baseline['accuracy']:.1%} -> tuned {final['accuracy']:.1%} "
                     f"({100 * gain['accuracy']:+.1f} points); macro-F1 {baseline['macro_f1']:.3f} -> "
                     f"{final['macro_f1']:.3f}")
    lines.append(selection)
    weights = adapter_file(output_dir)
    lines += [f"Adapter: {weights} ({size_text(weights)}; this is what the guide calls pytorch_model.bin), with "
              "README.md (model card), metrics.json and training_curve.png beside it",
              f"Try: velora predict --model_path {output_dir} --image IMG --premise ... --hypothesis ..."]
    return lines
