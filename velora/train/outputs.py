"""OUTPUT_DIR of `velora train`: what a run writes there, and what it may do to what it finds there.

A run writes only OUTPUT_NAMES, `dataset/` (when it converts --train_file) and `checkpoint-N/`, and lists what it
wrote in `velora_run.json` ("outputs"), beside the run's identity and settings. So:
- a folder holding one of those names that no velora run wrote is refused (nothing the user made is overwritten);
- `--overwrite_output_dir` removes the previous run's listed entries and its checkpoints, never anything else and
  never one of this run's inputs;
- OUTPUT_DIR may not be, or lie inside, the base model's folder or the dataset's (checked with velora.io).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from velora.errors import VeloraError
from velora.io import check_output_dir, is_within, write_json_atomic
from velora.train.checkpoints import checkpoint_dirs

RUN_FILE = "velora_run.json"
CONVERTED_DATASET = "dataset"  # OUTPUT_DIR/dataset: --train_file converted
OUTPUT_NAMES = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin", "README.md", "vocab.json",
                "merges.txt", "configuration.json", "training_args.bin", "metrics.json", "training_curve.png",
                "trainer_state.json", "runs", RUN_FILE)
RESUME_HINT = "--resume_from_checkpoint auto to continue it"


def read_run_file(output_dir: Path) -> dict | None:
    try:
        return json.loads((output_dir / RUN_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, json.JSONDecodeError) as e:
        raise VeloraError(f"{output_dir / RUN_FILE}: unreadable ({e}); move it away to start a new run here") from None


def velora_entries(output_dir: Path) -> list[Path]:
    """Entries of OUTPUT_DIR with the names a training run writes."""
    if not output_dir.is_dir():
        return []
    named = [output_dir / name for name in (*OUTPUT_NAMES, CONVERTED_DATASET) if (output_dir / name).exists()]
    return named + checkpoint_dirs(output_dir)


def check_output(output_dir: Path, inputs: list[tuple[str, Path | None]], *, overwrite: bool,
                 continuing: bool) -> None:
    """Refuse, before anything is written: OUTPUT_DIR inside an input; velora's names that no velora run wrote; a
    previous run unless --overwrite_output_dir or this run continues it (`continuing`)."""
    check_output_dir(output_dir, "--output_dir", overwrite=True, owned=lambda _: True, inputs=inputs)
    entries = velora_entries(output_dir)
    if not entries:
        return
    if read_run_file(output_dir) is None:
        names = ", ".join(p.name for p in entries[:4]) + (" ..." if len(entries) > 4 else "")
        raise VeloraError(f"--output_dir {output_dir}: holds {names}, which velora did not write (no {RUN_FILE}); "
                          "velora does not overwrite them: choose a new or empty folder")
    if not overwrite and not continuing:
        raise VeloraError(f"--output_dir {output_dir} already holds a training run; pass --overwrite_output_dir to "
                          f"replace it (only the files velora wrote there are removed), or {RESUME_HINT}")


def clear_previous_run(output_dir: Path, inputs: list[Path], keep: tuple[str, ...] = ()) -> list[str]:
    """Remove what the previous run listed in its run file, and its checkpoints; never an entry holding one of
    `inputs` or named in `keep`. Returns the names removed."""
    previous = read_run_file(output_dir)
    if previous is None:
        return []
    listed = [output_dir / name for name in previous.get("outputs", OUTPUT_NAMES) if (output_dir / name).exists()]
    removed = []
    for entry in [*listed, *checkpoint_dirs(output_dir)]:
        if entry.name in keep or any(is_within(path, entry) for path in inputs if path is not None):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
        removed.append(entry.name)
    (output_dir / RUN_FILE).unlink(missing_ok=True)
    if removed:
        print(f"Removed the previous run's files from {output_dir}: {', '.join(sorted(removed))}")
    return removed


def write_run_file(output_dir: Path, identity: dict, config, converted: bool) -> None:
    """velora_run.json: the run's identity, every setting, and the entries it writes (for --overwrite_output_dir)."""
    outputs = [*OUTPUT_NAMES, *([CONVERTED_DATASET] if converted else [])]
    settings = {k: v for k, v in config.to_dict().items() if not k.startswith("_")}
    write_json_atomic(output_dir / RUN_FILE, {"run": identity, "outputs": outputs, "config": settings})
