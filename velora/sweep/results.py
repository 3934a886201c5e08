"""A sweep's results: one row per configuration (mean and spread over its seeds), the table as CSV and text, the
best configuration with the reason it was chosen, and `best/`, its adapter ready for `velora predict`.

The choice: the best validation macro-F1 (the mean over seeds); on a tie, the smaller LoRA rank (the guide: start
small), then the lower validation loss, then the earlier trial. With several seeds, whether the best two overlap
(mean +/- std) says whether the data can tell them apart at all.
"""

from __future__ import annotations

import math
import shutil
import statistics
from pathlib import Path
from typing import Any, Sequence

from optuna.trial import FrozenTrial, TrialState

from velora.convert.spreadsheet import write_rows
from velora.io import staged_dir, write_json_atomic
from velora.sweep.space import SWEPT, shown
from velora.train.outputs import OUTPUT_NAMES

RESULTS_FILE = "sweep_results.csv"
BEST_DIR = "best"
CHOICE_FILE = "sweep_choice.json"
STATES = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned", TrialState.FAIL: "failed"}
TIE = 1e-9


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def configuration_row(trial: FrozenTrial, swept: Sequence[str]) -> dict[str, Any]:
    """The table row of one configuration: its settings, seeds, scores (mean and std over seeds) and runs."""
    runs = trial.user_attrs.get("runs", [])
    row: dict[str, Any] = {"trial": trial.number, "state": STATES.get(trial.state, trial.state.name.lower()),
                           **{name: trial.params.get(name) for name in swept},
                           "seeds": ",".join(str(r["seed"]) for r in runs)}
    for split, prefix, metrics in (("validation", "val", ("macro_f1", "accuracy", "loss")),
                                   ("train", "train", ("macro_f1", "accuracy"))):
        for metric in metrics:
            row[f"{prefix}_{metric}"], row[f"{prefix}_{metric}_std"] = _mean_std(
                [(r.get(split) or {}).get(metric) for r in runs])
    both = row["train_macro_f1"] is not None and row["val_macro_f1"] is not None
    row["gap"] = row["train_macro_f1"] - row["val_macro_f1"] if both else None
    row["steps"] = ",".join(str(r["steps"]) for r in runs)
    row["pruned_at_step"] = next((r["pruned_at_step"] for r in runs if r.get("pruned_at_step") is not None), None)
    row["minutes"] = round(sum(r.get("seconds", 0) for r in runs) / 60, 2)
    row["error"] = trial.user_attrs.get("error", "")
    row["runs"] = " ".join(r["run"] for r in runs)
    row["_records"] = runs
    row["_settings"] = trial.user_attrs.get("settings", {})
    row["_validation_examples"] = max((r.get("validation_examples", 0) for r in runs), default=0)
    return row


def result_rows(trials: Sequence[FrozenTrial], swept: Sequence[str]) -> list[dict[str, Any]]:
    """Rows of the finished configurations (a trial cut off by an interruption is left out: it is run again)."""
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)
                or (t.state == TrialState.FAIL and t.user_attrs.get("error"))]
    return [configuration_row(t, swept) for t in sorted(finished, key=lambda t: t.number)]


def columns(swept: Sequence[str], seeds: int) -> list[str]:
    spread = seeds > 1
    scores = ["val_macro_f1", *(["val_macro_f1_std"] if spread else []), "val_accuracy",
              *(["val_accuracy_std"] if spread else []), "val_loss", "train_macro_f1",
              *(["train_macro_f1_std"] if spread else []), "train_accuracy", "gap"]
    return ["trial", "state", *swept, "seeds", *scores, "steps", "pruned_at_step", "minutes", "error", "runs"]


def write_table(rows: list[dict], path: Path, swept: Sequence[str], seeds: int) -> Path:
    """sweep_results.csv, spreadsheet-safe (velora.convert.spreadsheet), numbers left as numbers."""
    return write_rows(path, columns(swept, seeds), [{k: ("" if v is None else v) for k, v in r.items()}
                                                    for r in rows])


def _score(row: dict, name: str) -> str:
    value, spread = row.get(name), row.get(f"{name}_std")
    if value is None:
        return "-"
    return f"{value:.3f}" + (f" ± {spread:.3f}" if spread is not None else "")


def table_text(rows: list[dict], swept: Sequence[str]) -> str:
    """The table as printed: settings, validation (the choice), training split, and the gap between them."""
    header = ["trial", *swept, "state", "val macro-F1", "val acc", "val loss", "train macro-F1", "train acc",
              "gap (train-val)"]
    lines = [[str(r["trial"]), *(shown(r[name]) for name in swept),
              r["state"] + (f" @{r['pruned_at_step']}" if r["pruned_at_step"] is not None else ""),
              _score(r, "val_macro_f1"), _score(r, "val_accuracy"), _score(r, "val_loss"),
              _score(r, "train_macro_f1"), _score(r, "train_accuracy"),
              "-" if r["gap"] is None else f"{r['gap']:+.3f}"] for r in rows]
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *lines)]
    return "\n".join("  ".join(cell.rjust(w) for cell, w in zip(line, widths)) for line in [header, *lines])


def _rank_key(row: dict) -> tuple:
    return (-round(row["val_macro_f1"], 9), row.get("lora_r") or 0,
            row["val_loss"] if row["val_loss"] is not None else math.inf, row["trial"])


def choose_best(rows: list[dict], seeds: int) -> tuple[dict | None, str]:
    """The best complete configuration and, in words, why: its score, the ties it won, and how sure to be."""
    ranked = sorted([r for r in rows if r["state"] == "complete" and r["val_macro_f1"] is not None], key=_rank_key)
    if not ranked:
        return None, "No configuration has finished training yet, so none is chosen."
    best, others = ranked[0], ranked[1:]
    over = f" (mean of {len(best['_records'])} seeds)" if seeds > 1 else ""
    text = f"Best: trial {best['trial']} ({_describe(best)}): validation macro-F1 {best['val_macro_f1']:.3f}{over}"
    tied = [r for r in others if abs(r["val_macro_f1"] - best["val_macro_f1"]) <= TIE]
    if tied:
        text += (f", tied with trial{'s' if len(tied) > 1 else ''} {', '.join(str(r['trial']) for r in tied)}; kept "
                 f"for {_tie_reason(best, tied)}")
    if others:
        text += ". " + _certainty(best, others[0], seeds)
    return best, text + "."


def _describe(row: dict) -> str:
    return ", ".join(f"{k} {shown(row[k])}" for k in SWEPT if k in row) or "the one configuration"


def _tie_reason(best: dict, tied: list[dict]) -> str:
    """What set the best apart from the configurations it tied with: rank first, then validation loss."""
    rank = best.get("lora_r") or 0
    reasons = ["its smaller rank (the guide: start small)"] if any((r.get("lora_r") or 0) > rank for r in tied) else []
    same_rank = [r for r in tied if (r.get("lora_r") or 0) == rank]
    if same_rank:
        lower_loss = all(best["val_loss"] is not None and (r["val_loss"] is None or best["val_loss"] < r["val_loss"])
                         for r in same_rank)
        reasons.append(f"its lower validation loss ({best['val_loss']:.3f})" if lower_loss
                       else "being the earlier trial")
    return " and ".join(reasons)


def _certainty(best: dict, second: dict, seeds: int) -> str:
    """Whether the lead over the runner-up is more than run-to-run noise."""
    lead = best["val_macro_f1"] - second["val_macro_f1"]
    n = best["_validation_examples"]
    if seeds < 2 or best["val_macro_f1_std"] is None or second["val_macro_f1_std"] is None:
        return (f"One run per configuration: on {n} validation examples the lead of {lead:.3f} over trial "
                f"{second['trial']} may be noise; --seeds 3 repeats each configuration and measures it")
    spread = best["val_macro_f1_std"] + second["val_macro_f1_std"]
    if lead <= spread:
        return (f"The best two overlap: trial {best['trial']} {_score(best, 'val_macro_f1')} vs trial "
                f"{second['trial']} {_score(second, 'val_macro_f1')} (mean ± std over seeds); a lead of {lead:.3f} "
                f"is within their seed-to-seed spread, so on {n} validation examples this is noise: prefer the "
                "smaller rank, or add validation data")
    return (f"It leads trial {second['trial']} by {lead:.3f}, more than their seed-to-seed spread ({spread:.3f})")


def best_run(row: dict) -> dict:
    """The chosen configuration's run to keep: its seed with the best validation macro-F1 (the first on a tie)."""
    return max(row["_records"], key=lambda r: (r["validation"]["macro_f1"], -row["_records"].index(r)))


def write_best(row: dict, reason: str, runs_dir: Path, output: Path) -> Path:
    """`best/`: the chosen run's adapter and what `velora predict --model_path best` needs, its card and metrics,
    plus sweep_choice.json (the settings, seed and reason); swapped in whole."""
    run = best_run(row)
    source = runs_dir / run["run"]
    with staged_dir(output) as staged:
        for name in OUTPUT_NAMES:
            entry = source / name
            if entry.is_file():
                shutil.copy2(entry, staged / name)
        write_json_atomic(staged / CHOICE_FILE, {
            "trial": row["trial"], "settings": row["_settings"], "seed": run["seed"],
            "run": str(source), "reason": reason, "validation": run["validation"], "train": run["train"]})
    return output
