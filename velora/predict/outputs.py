"""The output of `velora predict --input_file`: every input row once, in input order — its input columns, then
predicted_label, confidence, prob_entailment, prob_contradiction, prob_neutral and error (why the row could not be
scored, naming the field; empty when it was). An input column with one of those names is kept as original_NAME.
With --translate, premise_original, hypothesis_original and translated_by come after the input's columns, and a
translated row's premise and hypothesis hold the English text scored (velora.predict.translation).

The format follows the output's suffix: CSV (UTF-8, cells a spreadsheet would run as formulas neutralised as in
velora.convert.spreadsheet, so `velora convert` reads them back unchanged), JSON Lines, or Parquet (a Parquet
input's column types are kept; a CSV's columns are text; a JSONL key whose values are all of one JSON type gets that
type, other keys hold JSON text).
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
from pathlib import Path
from typing import Any, Iterator

from velora.convert.spreadsheet import neutralise
from velora.labels import LABELS
from velora.predict.inputs import InputPlan

PREDICTION_COLUMNS = ("predicted_label", "confidence", *(f"prob_{label}" for label in LABELS), "error")
SUFFIXES = (".csv", ".jsonl", ".parquet")
PARQUET_GROUP_ROWS = 8192  # rows per Parquet row group


def output_names(columns: tuple[str, ...] | list[str]) -> dict[str, str]:
    """Input column -> its output name (original_NAME where it would shadow a prediction column)."""
    return {c: f"original_{c}" if c in PREDICTION_COLUMNS else c for c in columns}


def prediction_values(result: dict[str, Any]) -> dict[str, Any]:
    """A row's prediction columns from its chunk-file line ({"probs": [...]} or {"code", "error"})."""
    probs = result.get("probs")
    if probs is None:
        return {**dict.fromkeys(PREDICTION_COLUMNS), "error": result["error"]}
    best = max(range(len(LABELS)), key=probs.__getitem__)
    return {"predicted_label": LABELS[best], "confidence": probs[best],
            **{f"prob_{label}": p for label, p in zip(LABELS, probs)}, "error": None}


def _json_default(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray)):
        return f"<{len(value)} bytes>"
    return str(value)  # dates, decimals...


def text_cell(value: Any) -> str:
    """A value as the text of a CSV cell (JSON for numbers, lists, objects; empty for null)."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, default=_json_default)


class CsvOutput:
    def __init__(self, f, columns: list[str]):
        self.columns, self.writer = columns, csv.writer(f)
        self.writer.writerow([neutralise(c) for c in columns])

    def write(self, rows: list[dict[str, Any]]) -> None:
        self.writer.writerows([neutralise(text_cell(row.get(c))) for c in self.columns] for row in rows)


class JsonlOutput:
    def __init__(self, f, columns: list[str]):
        self.f = f

    def write(self, rows: list[dict[str, Any]]) -> None:
        self.f.write("".join(json.dumps(row, ensure_ascii=False, default=_json_default) + "\n" for row in rows))


class ParquetOutput:
    def __init__(self, path: str, schema, text_columns: set[str]):
        import pyarrow.parquet as pq  # deferred: pyarrow takes ~0.3 s to import, only Parquet outputs need it

        self.schema, self.text_columns = schema, text_columns  # text_columns: values written as JSON text
        self.writer = pq.ParquetWriter(path, schema)
        self.pending: list[dict[str, Any]] = []

    def write(self, rows: list[dict[str, Any]]) -> None:
        for row in rows:
            for c in self.text_columns.intersection(row):
                row[c] = None if row[c] is None else text_cell(row[c])
        self.pending.extend(rows)
        if len(self.pending) >= PARQUET_GROUP_ROWS:
            self.flush()

    def flush(self) -> None:
        import pyarrow as pa  # deferred: as above

        if self.pending:
            self.writer.write_table(pa.Table.from_pylist(self.pending, schema=self.schema))
            self.pending = []

    def close(self) -> None:
        self.flush()
        self.writer.close()


def parquet_schema(plan: InputPlan, reader, names: dict[str, str], extra: tuple[str, ...] = ()):
    """The output's Parquet schema and the columns written as JSON text; `extra`: text columns after the input's."""
    import pyarrow as pa  # deferred: as above

    types = dict(plan.json_types)
    by_json = {"int": pa.int64(), "float": pa.float64(), "bool": pa.bool_()}
    if plan.format == "parquet":
        fields = [reader.schema.field(i).with_name(names[c]) for i, c in enumerate(plan.columns)]
    else:
        fields = [pa.field(names[c], by_json.get(types.get(c), pa.string())) for c in plan.columns]
    fields += [pa.field(c, pa.string()) for c in extra]
    text = {names[c] for c, kind in types.items() if kind == "json"} if plan.format != "parquet" else set()
    predictions = [pa.field("predicted_label", pa.string()), pa.field("confidence", pa.float32()),
                   *(pa.field(f"prob_{label}", pa.float32()) for label in LABELS), pa.field("error", pa.string())]
    return pa.schema(fields + predictions), text


@contextlib.contextmanager
def open_output(path: Path, kind: str, plan: InputPlan, reader, names: dict[str, str], extra: tuple[str, ...] = ()
                ) -> Iterator:
    """A writer of `kind` (the final output's suffix) into `path`, with the `extra` columns (--translate's) after
    the input's; the file is synced when the block ends."""
    if kind == ".parquet":
        out = ParquetOutput(str(path), *parquet_schema(plan, reader, names, extra))
        yield out
        out.close()
    else:
        with open(path, "w", encoding="utf-8", newline="") as f:
            yield (CsvOutput if kind == ".csv" else JsonlOutput)(f, [*names.values(), *extra, *PREDICTION_COLUMNS])
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
