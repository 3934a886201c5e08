"""Row-level data checks that do not reject anything: duplicates, conflicting labels, and the guide's data-quality
advice (label balance, vague premises, reused hypotheses, non-English text).

Everything here is pure: it takes checked records (anything with the attributes used below) and returns findings.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from typing import Protocol, Sequence

from velora.convert.issues import QualityWarning, RowIssue, examples, plural
from velora.labels import LABELS


class CheckedRow(Protocol):
    line: int
    premise: str
    hypothesis: str
    label: str
    image_key: str  # identifies the image by content (sha256 of its bytes)


def _norm_text(text: str) -> str:
    """Case-, whitespace- and final-punctuation-insensitive form, for comparing sentences."""
    return " ".join(text.casefold().split()).rstrip(" .!?")


def find_duplicates(rows: Sequence[CheckedRow]) -> tuple[list[int], list[RowIssue]]:
    """Exact duplicates (same image content, premise, hypothesis and label): returns the indices to keep (first
    occurrence of each) and one `duplicate` issue per removed row, pointing at the line that was kept."""
    first: dict[tuple, CheckedRow] = {}
    keep: list[int] = []
    issues: list[RowIssue] = []
    for i, row in enumerate(rows):
        key = (row.image_key, row.premise, row.hypothesis, row.label)
        if key in first:
            kept = first[key]
            issues.append(
                RowIssue(
                    row.line, "row", "duplicate",
                    f"exact duplicate of line {kept.line} (same image, premise, hypothesis and label); kept once",
                    related_lines=(kept.line,),
                )
            )
        else:
            first[key] = row
            keep.append(i)
    return keep, issues


def find_conflicts(rows: Sequence[CheckedRow]) -> list[RowIssue]:
    """Rows with the same image and hypothesis but different labels: one `conflicting_labels` issue per row involved.
    All of them are kept (only the user can say which label is right)."""
    groups: dict[tuple, list[CheckedRow]] = defaultdict(list)
    for row in rows:
        groups[(row.image_key, _norm_text(row.hypothesis))].append(row)
    issues = []
    for members in groups.values():
        if len({r.label for r in members}) < 2:
            continue
        for row in members:
            others = [r for r in members if r is not row and r.label != row.label]
            described = ", ".join(f"line {r.line} says {r.label}" for r in others)
            issues.append(
                RowIssue(
                    row.line, "label", "conflicting_labels",
                    f"same image and hypothesis labelled {row.label} here but {described}; fix the wrong one",
                    value=row.label, related_lines=tuple(r.line for r in others),
                )
            )
    return sorted(issues, key=lambda issue: issue.line)


# --- data-quality warnings (the guide, sections 3.1, 5.1 and 5.4) -------------------------------------------------

MIN_PREMISE_WORDS = 3
IMBALANCE_RATIO = 1 / 3  # rarest label below a third of the most common one
_CJK = re.compile(r"[\u3000-\u303f\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff\uff00-\uffef]")
# Scripts written without spaces between words, with roughly how many characters make a word: Han and kana
# (Chinese ~1.7 characters a word), Thai, Lao, Khmer and Myanmar (~4). Hangul is written with spaces.
_UNSPACED = (
    (re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]"), 2),
    (re.compile(r"[\u0e00-\u0eff\u1000-\u109f\u1780-\u17ff]"), 4),
)
_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)*")  # letters and digits of any script, with inner apostrophes
_STOPWORDS = frozenset(
    "a an the this that these those it its is are was were be been being of in on at to for with and or very "
    "really quite some there here looks look looking seems seem appears appear".split()
)
_VAGUE_WORDS = frozenset(
    "object objects thing things item items stuff something product products image picture photo photograph pic "
    "shows showing nice good great fine ok okay beautiful pretty cool bad normal interesting".split()
)


def count_words(text: str) -> tuple[list[str], int]:
    """(the words written with spaces between them, casefolded; how many words the text in scripts written without
    spaces amounts to, estimated from its characters)."""
    unspaced = 0
    for script, chars_per_word in _UNSPACED:
        chars = len(script.findall(text))
        if chars:
            unspaced += -(-chars // chars_per_word)
            text = script.sub(" ", text)
    return _WORD.findall(text.casefold()), unspaced


def is_vague_premise(premise: str) -> bool:
    """Very short (< MIN_PREMISE_WORDS words, in any script), or nothing concrete in it ('The object looks
    nice'; the list of vague words is English)."""
    if not premise.strip():
        return False
    words, unspaced = count_words(premise)
    if len(words) + unspaced < MIN_PREMISE_WORDS:
        return True
    return not unspaced and all(w in _STOPWORDS or w in _VAGUE_WORDS for w in words)


# How to get English text: named by every warning about Chinese text (validate, convert, predict, eval, serve).
TRANSLATE_HINT = ("pass --translate with a local translation model folder (e.g. ./opus-mt-zh-en), deepl, or "
                  "command:CMD - see docs/chinese.md")


def has_cjk(text: str) -> bool:
    """Chinese, Japanese or Korean characters (or full-width forms) in `text`: OFA reads English only."""
    return bool(_CJK.search(text))


def quality_warnings(rows: Sequence[CheckedRow]) -> list[QualityWarning]:
    """The guide's data-quality advice, checked on the rows that will be kept."""
    found: list[QualityWarning] = []
    if not rows:
        return found
    n = len(rows)

    counts = Counter(r.label for r in rows)
    missing = [label for label in LABELS if counts[label] == 0]
    shares = ", ".join(f"{label} {counts[label]} ({counts[label] / n:.0%})" for label in LABELS)
    if missing:
        found.append(QualityWarning(
            "label_imbalance",
            f"no {' or '.join(missing)} rows ({shares}); the model will rarely predict a label it never sees in "
            "training - add examples of every label",
        ))
    elif min(counts.values()) < IMBALANCE_RATIO * max(counts.values()):
        rare = min(LABELS, key=lambda label: counts[label])
        found.append(QualityWarning(
            "label_imbalance",
            f"labels are imbalanced ({shares}); add {rare} examples, or expect weaker {rare} recall",
        ))

    cjk = [r.line for r in rows if has_cjk(r.premise) or has_cjk(r.hypothesis)]
    if cjk:
        found.append(QualityWarning(
            "non_english_text",
            f"{plural(len(cjk), 'row')} with Chinese/Japanese/Korean text ({examples(cjk)}); OFA only understands "
            f"English - translate premises and hypotheses to English, as the guide advises: `velora convert` can, "
            f"{TRANSLATE_HINT}",
            cjk,
        ))

    vague = [r.line for r in rows if r.premise and is_vague_premise(r.premise)]
    if vague:
        found.append(QualityWarning(
            "vague_premise",
            f"{plural(len(vague), 'premise')} ({len(vague) / n:.0%}) very short or vague ({examples(vague)}); "
            "describe what is visible - colour, position, count, material - rather than 'The object looks nice'",
            vague,
        ))

    empty = [r.line for r in rows if not r.premise]
    if empty:
        found.append(QualityWarning(
            "empty_premise",
            f"{plural(len(empty), 'row')} without a premise ({examples(empty)}): kept, using the model's "
            "image-only prompt - fill the premise in if that was not intended",
            empty,
        ))

    same = [r.line for r in rows if r.premise and _norm_text(r.premise) == _norm_text(r.hypothesis)]
    if same:
        found.append(QualityWarning(
            "hypothesis_equals_premise",
            f"{plural(len(same), 'hypothesis', 'hypotheses')} repeating the premise ({examples(same)}); "
            "they teach the model nothing about the image",
            same,
        ))

    by_hypothesis: dict[str, list[CheckedRow]] = defaultdict(list)
    for r in rows:
        by_hypothesis[_norm_text(r.hypothesis)].append(r)
    reused = [group for group in by_hypothesis.values() if len({r.label for r in group}) > 1]
    if reused:
        lines = sorted(r.line for group in reused for r in group)
        example = reused[0]
        by_label = "; ".join(
            f"{label} on {examples([r.line for r in example if r.label == label], 3)}"
            for label in LABELS if any(r.label == label for r in example)
        )
        found.append(QualityWarning(
            "hypothesis_across_labels",
            f"{plural(len(reused), 'hypothesis', 'hypotheses')} used with different labels "
            f"(e.g. \"{example[0].hypothesis}\": "
            f"{by_label}); that is right only if the images really differ - these rows are where labelling "
            "mistakes hide, check them",
            lines,
        ))
    return found
