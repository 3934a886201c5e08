"""The data stage: a user's CSV or JSONL of image-text pairs -> a checked Hugging Face dataset.

    reading       CSV / JSONL / SNLI-VE lines -> raw rows (a RowIssue for a line that cannot be read)
    rows          raw row -> Record, text and label checks (pure)
    image_checks  where each image is, a full decode, its sha256; in worker processes
    quality       duplicates, conflicting labels, the guide's data-quality warnings (pure)
    check         the stages above in order: check_input, validate
    split         grouped (by image) and stratified (by label) train/validation split
    report        ConversionReport: every dropped and flagged row, warnings, counts
    dataset       checked records -> datasets.Dataset with the images' bytes embedded
    writing       convert (atomic DatasetDict + report), load_records
    spreadsheet   CSVs safe to open in a spreadsheet (formula cells neutralised), read back losslessly
"""

from velora.convert.check import CheckedInput, check_input, validate
from velora.convert.dataset import KEEP_FORMATS, build_dataset, features
from velora.convert.issues import QualityWarning, RowIssue
from velora.convert.reading import FIELDS, read_input
from velora.convert.report import REPORT_NAME, ConversionReport
from velora.convert.rows import Record
from velora.convert.writing import convert, load_records, load_records_with_report

__all__ = [
    "FIELDS", "KEEP_FORMATS", "REPORT_NAME", "CheckedInput", "ConversionReport", "QualityWarning", "Record",
    "RowIssue", "build_dataset", "check_input", "convert", "features", "load_records", "load_records_with_report",
    "read_input", "validate",
]
