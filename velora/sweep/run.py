"""`velora sweep`: the guide's rank and learning-rate experiments (sections 5.2-5.3), run and compared for you.

    setup:  the base settings (a `velora train` config: file, dict, flags) -> the sweep folder (refusals, a lock,
            a rerun resumes) -> the data (--train_file converted once: every run validates on the same split) ->
            the Optuna study (a grid, enqueued in order, or TPE's suggestions)
    loop:   per configuration, a `velora train` run per seed (velora.sweep.trial), image features shared, losing
            runs pruned; after each, the table, the plot and best/ are rewritten
    result: sweep_results.csv + the printed table, sweep.png, best/ and why it was chosen (velora.sweep.results)

    SWEEP/
      sweep.json            the sweep's settings: the same command resumes, another one is refused
      study.db              the Optuna study (`optuna-dashboard sqlite:///SWEEP/study.db`)
      image_features/       the frozen ResNet's features, computed once
      dataset/              --train_file, converted once
      runs/NAME/            one `velora train` output per configuration and seed
      sweep_results.csv, sweep.png, best/

A configuration cut off by an interruption (kill, Ctrl-C, power loss) is run again when the same command runs
again: runs that finished are reused, a run cut off continues from its newest complete checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import optuna
from filelock import FileLock, Timeout
from optuna.trial import TrialState

from velora.convert import convert
from velora.data import load_training_splits
from velora.errors import VeloraError
from velora.io import check_output_dir, write_json_atomic
from velora.sweep.features import FOLDER as FEATURES_FOLDER, SharedImageFeatures
from velora.sweep.plot import plot_sweep
from velora.sweep.results import (BEST_DIR, RESULTS_FILE, choose_best, result_rows, table_text, write_best,
                                  write_table)
from velora.sweep.space import (DEFAULT_SEARCH, Dimension, describe, grid, run_name, run_settings,
                                space_from_mapping)
from velora.sweep.trial import RunSource, run_configuration
from velora.train.config import read_config_file

SETTINGS_FILE, STUDY_FILE, RUNS, DATASET, PLOT_FILE = "sweep.json", "study.db", "runs", "dataset", "sweep.png"
LOCK_FILE = ".velora-sweep.lock"
SWEEP_OUTPUTS = (SETTINGS_FILE, STUDY_FILE, RUNS, FEATURES_FOLDER, DATASET, BEST_DIR, RESULTS_FILE, PLOT_FILE)
STUDY_NAME = "velora-sweep"
MIN_ROWS_TO_PRUNE = 100  # validation rows below which --pruner auto does not prune
SWEEP_LEVEL = ("output_dir", "overwrite_output_dir")  # flags that mean the sweep's folder, not each run's


@dataclass
class SweepResult:
    output_dir: Path
    rows: list[dict]  # the table: one row per configuration (sweep_results.csv)
    best: dict | None  # the chosen row
    reason: str  # why it was chosen, and how sure to be

    @property
    def best_dir(self) -> Path | None:
        return self.output_dir / BEST_DIR if self.best else None


@dataclass
class Plan:
    space: dict[str, Dimension]
    trials: int | None  # None: the grid
    seeds: int
    pruning: bool | None  # None: on when the validation split has MIN_ROWS_TO_PRUNE rows or more
    prune_after: int

    @property
    def varying(self) -> list[str]:
        return [name for name, d in self.space.items() if d.varies]

    def identity(self, source: RunSource) -> dict:
        """What a rerun must repeat to resume this sweep (the number of trials may grow)."""
        config = str(Path(source.config).resolve()) if isinstance(source.config, (str, os.PathLike)) \
            else source.config
        return json.loads(json.dumps({
            "space": {n: d.to_json() for n, d in self.space.items()}, "search": "grid" if self.trials is None
            else "tpe", "seeds": self.seeds, "pruning": self.pruning, "prune_after": self.prune_after,
            "config": config, "flags": source.flags}, sort_keys=True, default=str))


def sweep(config: str | os.PathLike | Mapping[str, Any] | None = None,
          space: Mapping[str, Any] | None = None, *, overrides: Mapping[str, Any] | None = None,
          trials: int | None = None, seeds: int = 1, pruning: bool | None = None, prune_after: int = 3
          ) -> SweepResult:
    """Train a LoRA adapter per configuration of `space` ({"lora_r": [4, 8, 16, 32], "learning_rate": [1e-4, 2e-4]};
    with `trials`, ranges such as {"learning_rate": (5e-5, 5e-4)} too) on the `velora train` settings of `config` (a
    JSON config file or a dict) and `overrides` (flags), `seeds` runs each, and choose the best by validation
    macro-F1. The sweep's folder is the settings' output_dir (default ./sweep); running the same sweep again resumes
    it."""
    for name, value, least in (("--trials", trials, 1), ("--seeds", seeds, 1), ("--prune_after", prune_after, 0)):
        if value is not None and value < least:
            raise VeloraError(f"{name} {value}: at least {least}")
    flags = dict(overrides or {})
    if flags.get("resume_from_checkpoint") or (isinstance(config, Mapping) and config.get("resume_from_checkpoint")):
        raise VeloraError("--resume_from_checkpoint: a sweep resumes by itself; run the same command again")
    if not _given("output_dir", config, flags):
        flags["output_dir"] = "sweep"
    plan = Plan(_space(space, trials), trials, seeds, pruning, prune_after)
    base = RunSource(config, flags).load()
    out = Path(base.output_dir)
    run_config = {k: v for k, v in config.items() if k not in SWEEP_LEVEL} if isinstance(config, Mapping) else config
    source = RunSource(run_config, {k: v for k, v in flags.items() if k not in SWEEP_LEVEL})
    _check_space(plan, base)
    check_output_dir(out, "--output_dir", overwrite=True, owned=lambda p: (p / SETTINGS_FILE).exists(), what="sweep",
                     inputs=[("base model", base.model_name_or_path), *(("dataset", p) for p in base.data_sources)])
    out.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(out / LOCK_FILE))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise VeloraError(f"--output_dir {out}: another velora sweep is running there; wait for it to finish, or "
                          "choose another folder") from None
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # velora prints each trial itself
    try:
        if base.overwrite_output_dir:
            clear_sweep(out)
        _check_settings_file(out, plan.identity(source))
        datasets = base.dataset_name
        if base.train_file:
            datasets = _convert_once(base, out)
            source.flags.update(dataset_name=datasets, train_file=None)
        validation_rows = _check_validation_split(datasets)
        if plan.pruning is None:
            plan.pruning = _prune_by_default(validation_rows)
        return _run(plan, source, base.lora_r, base.seed, out)
    finally:
        optuna.logging.set_verbosity(verbosity)
        lock.release()


def _given(name: str, config, flags: Mapping) -> bool:
    if name in flags:
        return True
    if isinstance(config, Mapping):
        return name in config
    return config is not None and name in read_config_file(config)


def _space(space: Mapping[str, Any] | None, trials: int | None) -> dict[str, Dimension]:
    dims = space_from_mapping(space or {})
    if trials is not None and not any(d.varies for d in dims.values()):
        print("Searching the default space: " + ", ".join(f"--{n} {v}" for n, v in DEFAULT_SEARCH.items()))
        dims = space_from_mapping({**DEFAULT_SEARCH, **(space or {})})
    return dims


def _check_space(plan: Plan, base) -> None:
    if plan.trials is None:
        grid(plan.space)  # refuses ranges
        if not plan.varying and plan.seeds < 2:
            raise VeloraError("nothing to sweep: give several values (--lora_r 4,8,16,32 --learning_rate 1e-4,2e-4), "
                              "--trials N, or --seeds N to repeat one configuration")
    if "num_train_epochs" in plan.varying and base.max_steps > 0:
        raise VeloraError(f"--num_train_epochs is swept but --max_steps {base.max_steps} fixes every run's length; "
                          "drop one of them")


def clear_sweep(out: Path) -> None:
    """--overwrite_output_dir: remove what a previous sweep wrote there, nothing else."""
    removed = [name for name in SWEEP_OUTPUTS if (out / name).exists()]
    for name in removed:
        entry = out / name
        shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
    if removed:
        print(f"Removed the previous sweep's files from {out}: {', '.join(removed)}")


def _check_settings_file(out: Path, identity: dict) -> None:
    path = out / SETTINGS_FILE
    if not path.exists():
        write_json_atomic(path, identity)
        return
    saved = json.loads(path.read_text(encoding="utf-8"))
    for key in identity:
        if saved.get(key) != identity[key]:
            difference = _difference(saved.get(key), identity[key])
            raise VeloraError(f"--output_dir {out}: holds a sweep with other {key} ({difference}); "
                              "run the same command to resume it, choose another folder, or pass "
                              "--overwrite_output_dir to start over (only the sweep's files are removed)")
    print(f"Resuming the sweep in {out}")


def _difference(saved: Any, now: Any) -> str:
    if isinstance(saved, dict) and isinstance(now, dict):
        key = next(k for k in sorted({*saved, *now}) if saved.get(k) != now.get(k))
        return f"{key}: {saved.get(key)} there, {now.get(key)} now"
    return f"{saved} there, {now} now"


def _convert_once(base, out: Path) -> str:
    """--train_file converted into SWEEP/dataset (several: dataset/1, 2...) with the base seed, so that every run of
    every seed validates on the same rows."""
    files = base.data_sources
    paths = [out / DATASET] if len(files) == 1 else [out / DATASET / str(n) for n in range(1, len(files) + 1)]
    for file, path in zip(files, paths):
        if not path.exists():
            print(f"Converting {file} -> {path} (once, for every run)")
            print(convert(file, path, image_root=base.image_root, val_ratio=base.val_ratio, seed=base.seed,
                          progress=True).summary())
    return ",".join(map(str, paths))


def _prune_by_default(validation_rows: int) -> bool:
    """On a small validation split one run's early macro-F1 says little about its last, and the median pruner
    stops winners (bench/RESULTS.md measured it on 30 rows)."""
    if validation_rows >= MIN_ROWS_TO_PRUNE:
        return True
    print(f"Pruning off: {validation_rows} validation rows (fewer than {MIN_ROWS_TO_PRUNE}) are too few to judge a "
          "run early; --pruner median turns it on")
    return False


def _check_validation_split(datasets: str | None) -> int:
    """The number of validation rows of every dataset together; refuses data without any."""
    if not datasets:
        raise VeloraError("no training data: pass --dataset_name DIR (made by `velora convert`) or --train_file CSV")
    rows = 0
    for path in datasets.split(","):
        splits = load_training_splits(path)
        if "validation" not in splits or not len(splits["validation"]):
            raise VeloraError(f"{path}: a sweep compares runs on the validation split, and this dataset has none; "
                              "convert it with --val_ratio 0.2")
        rows += len(splits["validation"])
    return rows


# ----------------------------------------------------------------------------------------------------------------
# The study


def open_study(out: Path, plan: Plan, seed: int) -> optuna.Study:
    pruner = optuna.pruners.MedianPruner(n_startup_trials=plan.prune_after) if plan.pruning \
        else optuna.pruners.NopPruner()
    return optuna.create_study(study_name=STUDY_NAME, storage=f"sqlite:///{(out / STUDY_FILE).resolve()}",
                               load_if_exists=True, direction="maximize",
                               sampler=optuna.samplers.TPESampler(seed=seed), pruner=pruner)


def _key(configuration: Mapping) -> str:
    return json.dumps(configuration, sort_keys=True)


def queue_configurations(study: optuna.Study, plan: Plan) -> None:
    """Configurations cut off by an interruption (left running by a process that died: the lock says none is alive)
    are marked failed and queued again; in a grid, every point not yet run or queued is queued, in order."""
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study.tell(trial.number, state=TrialState.FAIL)
        configuration = trial.user_attrs.get("configuration", trial.params)
        print(f"Trial {trial.number} ({describe(configuration)}) was cut off: it runs again, reusing its finished "
              "runs and continuing the others from their last checkpoints")
        if plan.trials is not None:
            study.enqueue_trial(configuration, user_attrs={"configuration": configuration})
    if plan.trials is None:
        present = {_key(t.user_attrs.get("configuration", t.params)) for t in study.get_trials(deepcopy=False)
                   if t.state != TrialState.FAIL or t.user_attrs.get("error")}
        for point in grid(plan.space):
            if _key(point) not in present:
                study.enqueue_trial(point, user_attrs={"configuration": point})


def _finished(study: optuna.Study) -> int:
    """Configurations done: complete, pruned, or failed with an error (not those cut off by an interruption)."""
    return sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) or bool(t.user_attrs.get("error"))
               for t in study.get_trials(deepcopy=False))


def _more_to_run(study: optuna.Study, plan: Plan) -> bool:
    if plan.trials is None:
        return any(t.state == TrialState.WAITING for t in study.get_trials(deepcopy=False))
    return _finished(study) < plan.trials


def _run(plan: Plan, source: RunSource, base_rank: int, base_seed: int, out: Path) -> SweepResult:
    study = open_study(out, plan, base_seed)
    queue_configurations(study, plan)
    features = SharedImageFeatures(out / FEATURES_FOLDER)
    distributions = {name: plan.space[name].distribution() for name in plan.varying}
    seeds = [base_seed + i for i in range(plan.seeds)]
    while _more_to_run(study, plan):
        trial = study.ask(distributions)
        configuration = {name: trial.params[name] for name in plan.varying}
        settings = run_settings(configuration, plan.space, base_rank)
        trial.set_user_attr("configuration", configuration)
        trial.set_user_attr("settings", settings)
        total = len(grid(plan.space)) if plan.trials is None else plan.trials
        print(f"\n=== Trial {trial.number} (configuration {_finished(study) + 1} of {total}): "
              f"{describe(configuration)}; seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}")
        try:
            records = run_configuration(trial, source, settings, [run_name(configuration, s) for s in seeds], seeds,
                                        out / RUNS, features, plan.pruning)
        except VeloraError as e:
            trial.set_user_attr("error", str(e))
            study.tell(trial, state=TrialState.FAIL)
            print(f"Trial {trial.number} failed: {e}")
            continue
        trial.set_user_attr("runs", records)
        if any(r["pruned_at_step"] is not None for r in records):
            study.tell(trial, state=TrialState.PRUNED)
        else:
            study.tell(trial, statistics.fmean(r["validation"]["macro_f1"] for r in records))
        write_outputs(study, plan, out)
    return write_outputs(study, plan, out, final=True)


def write_outputs(study: optuna.Study, plan: Plan, out: Path, final: bool = False) -> SweepResult:
    """The table, the plot and best/ as they stand; at the end, printed too."""
    rows = result_rows(study.get_trials(deepcopy=False), plan.varying)
    best, reason = choose_best(rows, plan.seeds)
    if rows:
        write_table(rows, out / RESULTS_FILE, plan.varying, plan.seeds)
        plot_sweep(rows, plan.varying, out / PLOT_FILE, best["trial"] if best else None)
    if best is not None:
        write_best(best, reason, out / RUNS, out / BEST_DIR)
    if final:
        _report(rows, plan, out, best, reason)
    return SweepResult(out, rows, best, reason)


def _report(rows: list[dict], plan: Plan, out: Path, best: dict | None, reason: str) -> None:
    fixed = {n: d.values[0] for n, d in plan.space.items() if not d.varies}
    print(f"\nSweep results: {len(rows)} configuration(s) in {out}"
          + (f"; the same in every run: {describe(fixed)}" if fixed else ""))
    if rows:
        print(table_text(rows, plan.varying))
    print("gap = training-split macro-F1 minus validation macro-F1 (the guide's overfitting signal)")
    print(reason)
    errors = [r for r in rows if r["error"]]
    if not best and errors:
        raise VeloraError(f"every configuration failed; trial {errors[0]['trial']}: {errors[0]['error']}")
    print(f"Table: {out / RESULTS_FILE}; plot: {out / PLOT_FILE}; dashboard: optuna-dashboard "
          f"sqlite:///{out / STUDY_FILE}")
    if best:
        print(f"Adapter: {out / BEST_DIR} (velora predict --model_path {out / BEST_DIR} --image ... --premise ... "
              "--hypothesis ...)")
