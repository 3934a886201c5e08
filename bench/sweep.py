"""`velora sweep` vs the shell loop it replaces, on the demo task (task B) with the demo's small OFA base:

  separate   N `velora train` processes, one per configuration (what a user writes without the sweep)
  unshared   one `velora sweep --pruner none` process whose runs each compute the ResNet's image features again
             (velora.sweep's feature sharing switched off in that process): one start-up, no pruning
  shared     `velora sweep --pruner none`: the image features computed once for the whole sweep
  sweep      `velora sweep` (Optuna's median pruner): clearly losing runs stopped early as well

All four in the same run, on the same machine. The gains, as ratios of wall times and of CPU times (the rows'
processes' user + system seconds: steadier than wall time while other jobs share the cores): start-up (separate /
unshared), feature cache (unshared / shared), pruning (shared / sweep), all together (separate / sweep). Every
sweep also scores each finished run's training split (the overfitting column), work the separate runs do not do. A
configuration trained to the end must score exactly as its separate run (same seed, same data): checked, printed.

The base is the demo's small OFA (`velora demo`'s full recipe, cached in WORK/small_ofa: building it takes about
half an hour on 2 cores; a copy of another run's small_ofa/ with the same recipe is reused).

    python bench/sweep.py [--rows separate,sweep] [--steps 24] [--images 40]
"""

from __future__ import annotations

import argparse
import csv
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import CACHE, Report, add_report_arguments, machine_line  # noqa: E402

from velora.demo import PLANS, make_task, small_base  # noqa: E402

ROWS = ["separate", "unshared", "shared", "sweep"]
RANKS, RATES = (4, 8, 16), (3e-3, 3e-5)  # the slow learning rate is the clearly losing half
VELORA = [sys.executable, "-m", "velora"]

# `velora sweep` (or `velora train`) with each pass of the ResNet over the images timed on stderr; "unshared" also
# gives every run of the sweep its own pass (LoRARecipe's, as in `velora train`).
TIMED_CLI = """
import sys, time
from velora.train.data import ImageStore
compute = ImageStore.cache_features
def timed(self, *args, **kwargs):
    start = time.perf_counter()
    compute(self, *args, **kwargs)
    print(f"FEATURE_PASS {time.perf_counter() - start:.3f}", file=sys.stderr, flush=True)
ImageStore.cache_features = timed
if sys.argv[1] == "unshared":
    from velora.sweep import trial
    from velora.train.recipe import LoRARecipe
    trial.TrialRecipe.cache_image_features = LoRARecipe.cache_image_features
from velora.cli import cli
cli.main(sys.argv[2:], prog_name="velora")
"""


def base_and_data(work: Path, images: int) -> tuple[Path, Path]:
    """The demo's small OFA (random weights taught task A with `velora train` + `velora merge`, cached) and task B."""
    base = small_base(work, PLANS[("small", "full")])
    dataset = work / f"task_b_{images}" / "dataset"
    if not dataset.exists():
        make_task(dataset.parent, "B", images, seed=1, val_ratio=0.15)
    return base, dataset


def settings(base: Path, dataset: Path, steps: int) -> dict:
    every = max(steps // 3, 1)
    return {"model_name_or_path": str(base), "dataset_name": str(dataset), "max_steps": steps,
            "per_device_train_batch_size": 16, "save_steps": every, "logging_steps": every, "save_total_limit": 1,
            "lora_dropout": 0.0, "report_to": "none", "seed": 0, "disable_tqdm": True}


def flags(values: dict) -> list[str]:
    return [item for name, value in values.items() for item in (f"--{name}", str(value))]


def configurations() -> list[dict]:
    return [{"lora_r": r, "lora_alpha": 2 * r, "learning_rate": lr} for r in RANKS for lr in RATES]


def timed_cli(mode: str, argv: list[str]) -> list[float]:
    """Run velora with `argv`; the seconds of each ResNet pass over the images."""
    done = subprocess.run([sys.executable, "-c", TIMED_CLI, mode, *argv], capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"velora {' '.join(argv[:1])} failed:\n{done.stderr[-3000:]}")
    return [float(line.split()[1]) for line in done.stderr.splitlines() if line.startswith("FEATURE_PASS ")]


def separate_runs(common: dict, folder: Path) -> tuple[dict[tuple, float], int, list[float]]:
    """Validation macro-F1 of each configuration, each trained by its own `velora train` process."""
    scores, passes = {}, []
    for config in configurations():
        output = folder / f"r{config['lora_r']}_lr{config['learning_rate']}"
        passes += timed_cli("train", ["train", *flags({**common, **config, "output_dir": output,
                                                       "overwrite_output_dir": True})])
        metrics = json.loads((output / "metrics.json").read_text())
        scores[(config["lora_r"], config["learning_rate"])] = metrics["final"]["macro_f1"]
    return scores, 0, passes


def sweep_run(common: dict, folder: Path, mode: str) -> tuple[dict[tuple, float], int, list[float]]:
    """Validation macro-F1 of the configurations `velora sweep` trained to the end, and how many it pruned."""
    grid = ["--lora_r", ",".join(map(str, RANKS)), "--learning_rate", ",".join(map(str, RATES)), "--lora_alpha", "2r"]
    pruner = "median" if mode == "sweep" else "none"
    passes = timed_cli(mode, ["sweep", *flags({**common, "output_dir": folder, "overwrite_output_dir": True}), *grid,
                              "--pruner", pruner, "--prune_after", "2"])
    with open(folder / "sweep_results.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    done = {(int(r["lora_r"]), float(r["learning_rate"])): float(r["val_macro_f1"]) for r in rows
            if r["state"] == "complete"}
    return done, sum(r["state"] == "pruned" for r in rows), passes


def children_cpu_seconds() -> float:
    """User + system CPU time of the finished child processes so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def ratio(seconds: dict[str, float], slower: str, faster: str) -> str:
    if slower not in seconds or faster not in seconds:
        return "-"
    return f"{seconds[slower] / seconds[faster]:.2f}x"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=24, help="training steps per run (batch 16)")
    parser.add_argument("--images", type=int, default=40, help="task B pictures (about 6 rows each)")
    parser.add_argument("--work", type=Path, default=CACHE / "sweep")
    add_report_arguments(parser, ROWS)
    args = parser.parse_args()
    print(machine_line(), flush=True)
    base, dataset = base_and_data(args.work, args.images)
    common = settings(base, dataset, args.steps)
    report = Report("sweep", ["run", "configurations", "trained to the end", "pruned", "feature passes",
                              "feature s", "wall s", "CPU s", "vs separate (wall)", "vs separate (CPU)",
                              "same scores as separate"], args)
    n = len(configurations())
    reference: dict[tuple, float] = {}
    seconds: dict[str, float] = {}
    cpu: dict[str, float] = {}
    for name in report.selected:
        folder = args.work / "runs" / name
        start, cpu_start = time.perf_counter(), children_cpu_seconds()
        scores, pruned, passes = (separate_runs(common, folder) if name == "separate"
                                  else sweep_run(common, folder, name))
        seconds[name], cpu[name] = time.perf_counter() - start, children_cpu_seconds() - cpu_start
        reference = reference or (scores if name == "separate" else {})
        same = "-" if not reference else ("yes" if all(abs(reference[k] - v) < 1e-9 for k, v in scores.items())
                                          else "NO")
        report.row(name, {"run": name, "configurations": n, "trained to the end": len(scores), "pruned": pruned,
                          "feature passes": len(passes), "feature s": round(sum(passes), 1),
                          "wall s": round(seconds[name], 1), "CPU s": round(cpu[name], 1),
                          "same scores as separate": same, "vs separate (wall)": ratio(seconds, "separate", name),
                          "vs separate (CPU)": ratio(cpu, "separate", name)})
    gains = [("start-up", "separate", "unshared"), ("feature cache", "unshared", "shared"),
             ("pruning", "shared", "sweep"), ("all together", "separate", "sweep")]
    for times, kind in ((seconds, "wall"), (cpu, "CPU")):
        report.note(f"Gains ({kind} time): " + ", ".join(f"{what} {ratio(times, slower, faster)} ({slower} / {faster})"
                                                         for what, slower, faster in gains))
    report.note(f"{n} configurations: lora_r {RANKS} x learning_rate {RATES}, alpha 2r, {args.steps} steps of batch "
                f"16, evaluation every {max(args.steps // 3, 1)} steps; task B with {args.images} pictures; "
                f"work folder {args.work}")


if __name__ == "__main__":
    main()
