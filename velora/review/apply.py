"""`velora review --apply`: the decisions of a review written into a corrected copy of the data reviewed.

Relabels and edits replace the original row (found by its `source_row`), drops remove it, every other row is
copied unchanged; keep and skip change nothing. The original is never touched: the corrected version appears
beside it (`data/hf_dataset` -> `data/hf_dataset-reviewed`, `data/pairs.csv` -> `data/pairs-reviewed.csv`), whole
or not at all (velora.io), with `review_report.json` saying what changed.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from velora.convert import read_input
from velora.convert.issues import RowIssue
from velora.convert.reading import map_columns
from velora.convert.dataset import quiet_datasets
from velora.convert.spreadsheet import write_rows
from velora.data import open_dataset
from velora.errors import VeloraError
from velora.io import check_output_dir, check_output_file, staged_dir, write_atomic, write_json_atomic
from velora.labels import normalize_label
from velora.review.items import is_mined_csv, load_mined
from velora.review.store import Decision, DecisionStore, decisions_path

REPORT_NAME = "review_report.json"
CHANGES = ("relabel", "edit", "drop")


@dataclass
class ApplyReport:
    source: str  # what was reviewed
    origin: str  # the data corrected
    output: str
    decisions_file: str
    actions: dict[str, int]  # keep / relabel / edit / drop / skip: examples whose decision in force is that
    rows_before: int = 0
    rows_after: int = 0
    changes: list[dict] = field(default_factory=list)  # {example, split, action, before, after} per changed row
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        a = self.actions
        lines = [f"Applied the review of {self.source} ({self.decisions_file}) to {self.origin}:",
                 f"  {a.get('relabel', 0)} relabelled, {a.get('edit', 0)} edited, {a.get('drop', 0)} dropped, "
                 f"{a.get('keep', 0)} confirmed as they were, {a.get('skip', 0)} skipped (unchanged)",
                 f"  {self.rows_before} rows -> {self.rows_after} rows in {self.output} (the original is unchanged)"]
        relabels = Counter(f"{c['before']['label']} -> {c['after']['label']}" for c in self.changes
                           if c["action"] != "drop" and c["before"]["label"] != c["after"]["label"])
        if relabels:
            lines.append("  labels changed: " + ", ".join(f"{k} ({n})" for k, n in relabels.most_common()))
        lines += [f"  note: {note}" for note in self.notes]
        lines.append(f"Next: velora train --dataset_name {self.output} ... (what changed: "
                     f"{Path(self.output) / REPORT_NAME if Path(self.output).is_dir() else self.report_path})")
        return "\n".join(lines)

    @property
    def report_path(self) -> Path:
        output = Path(self.output)
        return output / REPORT_NAME if output.is_dir() else output.with_name(f"{output.stem}.{REPORT_NAME}")


def apply_review(source: str | os.PathLike, *, decisions_file: str | os.PathLike | None = None,
                 origin: str | os.PathLike | None = None, output: str | os.PathLike | None = None,
                 overwrite: bool = False) -> ApplyReport:
    """Write the corrected copy of the data behind the review of `source` (a mined CSV, whose `mined_from` names
    that data unless `origin` does; a dataset folder; a CSV/JSONL). Returns what changed."""
    source = Path(source)
    if origin is None:
        origin = load_mined(source).origin if is_mined_csv(source) else source
    origin = Path(origin)
    decisions_file = Path(decisions_file) if decisions_file else decisions_path(source)
    if not decisions_file.is_file():
        raise VeloraError(f"{decisions_file}: no decisions file; review first with `velora review {source}`")
    decisions = DecisionStore(decisions_file).current()
    target = Path(output) if output else default_output(origin)
    if not origin.exists():
        raise VeloraError(f"{origin}: the data reviewed is not there (pass --data_dir to say where it is)")
    if target.resolve() == origin.resolve():
        raise VeloraError(f"--output {target}: is the data reviewed; the corrected copy goes beside it")
    report = ApplyReport(str(source), str(origin), str(target), str(decisions_file),
                         dict(Counter(d.action for d in decisions.values())))
    changed = {k: d for k, d in decisions.items() if d.action in CHANGES}
    if origin.is_dir():
        apply_to_dataset(origin, target, changed, report, overwrite)
    else:
        apply_to_table(origin, target, changed, report, overwrite)
    return report


def default_output(origin: Path) -> Path:
    return origin.with_name(f"{origin.name}-reviewed") if origin.is_dir() else origin.with_name(
        f"{origin.stem}-reviewed{origin.suffix}")


def _after(decision: Decision, before: dict) -> dict | None:
    """A row's values once `decision` is applied (None: dropped)."""
    if decision.action == "drop":
        return None
    after = dict(before)
    if decision.label:
        after["label"] = decision.label
    for name in ("premise", "hypothesis"):
        if getattr(decision, name) is not None:
            after[name] = getattr(decision, name)
    return after


def _unknown(changed: dict[str, Decision], found: set[str], origin: Path) -> None:
    missing = sorted(set(changed) - found, key=lambda k: (len(k), k))
    if missing:
        raise VeloraError(f"{origin}: the decisions name source row(s) {', '.join(missing[:5])}"
                          f"{' ...' if len(missing) > 5 else ''} that it does not hold; were they reviewed on other "
                          "data? Pass --data_dir with the data the review was made on")


def apply_to_dataset(origin: Path, target: Path, changed: dict[str, Decision], report: ApplyReport,
                     overwrite: bool) -> None:
    from datasets import Dataset, DatasetDict, Image  # deferred: datasets takes ~1 s to import

    check_output_dir(target, "--output", overwrite=overwrite, what="reviewed dataset",
                     owned=lambda p: (p / REPORT_NAME).exists(), inputs=[("data reviewed", origin)])
    loaded = open_dataset(origin)
    splits = dict(loaded.items()) if isinstance(loaded, DatasetDict) else {None: loaded}
    found: set[str] = set()
    with staged_dir(target) as staged, tempfile.TemporaryDirectory(prefix=".velora-apply-", dir=target.parent) as tmp, \
            quiet_datasets():
        corrected = {}
        for name, split in splits.items():
            split = split.cast_column("image", Image(decode=False))
            corrected[name] = _corrected_split(split, name, changed, report, found, Path(tmp)).cast_column(
                "image", Image())
        _unknown(changed, found, origin)
        result = corrected[None] if None in corrected else DatasetDict(corrected)
        shards = {} if isinstance(result, Dataset) else {n: 1 for n, d in corrected.items() if len(d) == 0}
        result.save_to_disk(str(staged), **({"num_shards": shards} if shards else {}))
        write_json_atomic(staged / REPORT_NAME, report.to_dict())


def _corrected_split(split, name: str | None, changed: dict[str, Decision], report: ApplyReport, found: set[str],
                     tmp: Path):
    rows = [str(r) for r in split["source_row"]]
    label_names = split.features["label"].names
    hits = [i for i, r in enumerate(rows) if r in changed]
    found.update(rows[i] for i in hits)
    texts = split.select_columns(["premise", "hypothesis", "label"]).select(hits)
    for i, values in zip(hits, texts):
        before = {**values, "label": label_names[values["label"]]}
        after = _after(changed[rows[i]], before)
        report.changes.append({"example": rows[i], "split": name, "action": changed[rows[i]].action,
                               "before": before, "after": after})
    kept = [i for i, r in enumerate(rows) if not (r in changed and changed[r].action == "drop")]
    report.rows_before += len(rows)
    report.rows_after += len(kept)

    def correct(source_rows, premises, hypotheses, labels):
        out = {"premise": list(premises), "hypothesis": list(hypotheses), "label": list(labels)}
        for j, row in enumerate(source_rows):
            decision = changed.get(str(row))
            if decision is not None:
                before = {"premise": premises[j], "hypothesis": hypotheses[j], "label": label_names[labels[j]]}
                after = _after(decision, before)
                out["premise"][j], out["hypothesis"][j] = after["premise"], after["hypothesis"]
                out["label"][j] = label_names.index(after["label"])
        return out

    return split.select(kept).map(correct, batched=True, input_columns=["source_row", "premise", "hypothesis", "label"],
                                  features=split.features, cache_file_name=str(tmp / f"{name or 'data'}.arrow"),
                                  desc=None)


def apply_to_table(origin: Path, target: Path, changed: dict[str, Decision], report: ApplyReport,
                   overwrite: bool) -> None:
    """A CSV/JSONL rewritten row by row (its columns and every other value as read)."""
    check_output_file(target, "--output", overwrite=overwrite)
    table = read_input(origin)
    fields = {name: table.columns[i] for name, i in map_columns(table.columns)[0].items()} \
        if table.format == "csv" else {}
    rows, found, unreadable = [], set(), 0
    for raw in table.rows:
        if isinstance(raw, RowIssue):
            unreadable += 1
            continue
        example = str(raw.line)
        before = {name: raw.values.get(name) for name in ("premise", "hypothesis", "label")}
        after = before
        if example in changed:
            found.add(example)
            after = _after(changed[example], {**before, "label": normalize_label(before["label"]) or before["label"]})
            report.changes.append({"example": example, "split": None, "action": changed[example].action,
                                   "before": before, "after": after})
        if after is not None:
            values = {**raw.values, **after}
            rows.append({**raw.metadata, **{fields.get(name, name): value for name, value in values.items()}})
    _unknown(changed, found, origin)
    report.rows_before, report.rows_after = len(table.rows) - unreadable, len(rows)
    if unreadable:
        report.notes.append(f"{unreadable} line(s) of {origin} could not be read and are not in the copy "
                            f"(`velora validate {origin}` lists them)")
    if table.format == "csv":
        write_rows(target, table.columns, rows)
    else:
        write_atomic(target, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    write_json_atomic(report.report_path, report.to_dict())

