"""The train/validation split: grouped by image (no image, by content, in both splits) and stratified by label,
with scikit-learn's StratifiedGroupKFold. One fold is the smaller side: the validation split for val_ratio up to
0.5 (5 folds for 0.2), the train split above it."""

from __future__ import annotations

import warnings
from typing import Hashable, Sequence

import numpy as np

MAX_UNITS = 1000  # groups (or bundles of groups) handed to StratifiedGroupKFold


def _codes(values: Sequence[Hashable]) -> np.ndarray:
    """Values -> integer codes by first appearance (group keys need not be sortable)."""
    index: dict[Hashable, int] = {}
    return np.array([index.setdefault(v, len(index)) for v in values], dtype=np.int64)


def _bundle(groups: np.ndarray, labels: np.ndarray, seed: int) -> np.ndarray:
    """Group codes -> bundle codes: above MAX_UNITS groups, groups with the same label counts (e.g. single rows of
    one label) are bundled B at a time, in seeded random order, so that scikit-learn places at most ~MAX_UNITS
    units (it costs ~0.25 ms per unit). A group stays whole, so no image is split; fold sizes move by <= B rows."""
    n_groups = int(groups.max()) + 1
    if n_groups <= MAX_UNITS:
        return groups
    per_group = np.zeros((n_groups, int(labels.max()) + 1), dtype=np.int64)
    np.add.at(per_group, (groups, labels), 1)
    kind = np.unique(per_group, axis=0, return_inverse=True)[1].ravel()  # groups alike in label counts
    order = np.random.default_rng(seed).permutation(n_groups)
    order = order[np.argsort(kind[order], kind="stable")]  # by kind, in seeded order within a kind
    sorted_kind = kind[order]
    rank = np.arange(n_groups) - np.searchsorted(sorted_kind, sorted_kind)  # position within its kind
    bundle = np.empty(n_groups, dtype=np.int64)
    bundle[order] = sorted_kind * n_groups + rank // -(-n_groups // MAX_UNITS)
    return _codes(bundle[groups].tolist())


def _folds(labels: np.ndarray, groups: np.ndarray, n_splits: int, seed: int) -> list[list[int]]:
    from sklearn.model_selection import StratifiedGroupKFold  # deferred: scikit-learn takes ~0.5 s to import

    folds = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "least populated class has fewer members than n_splits"
        return [sorted(test.tolist()) for _, test in folds.split(np.zeros(len(groups)), labels, groups)]


def grouped_stratified_split(
    labels: Sequence[Hashable], groups: Sequence[Hashable], val_ratio: float, seed: int
) -> tuple[list[int], list[int]]:
    """Split row indices into (train, validation): every group (image) lands wholly in one split, the validation
    split holds about `val_ratio` of the rows with the label mix of the whole, and the result depends only on the
    input order and `seed`. Train is never empty; validation is empty only for val_ratio 0 or a single image."""
    every = list(range(len(labels)))
    codes = _codes(groups)
    n_groups = int(codes.max(initial=-1)) + 1
    if val_ratio <= 0 or n_groups < 2:
        return every, []
    smaller = min(val_ratio, 1 - val_ratio)
    n_splits = min(n_groups, max(2, round(1 / smaller)))
    y = _codes(labels)
    if np.bincount(y).max() < n_splits:  # too few rows of every label to stratify (scikit-learn refuses):
        y = np.zeros_like(y)  # tiny data, split by image alone
    fold = next(f for f in _folds(y, _bundle(codes, y, seed), n_splits, seed) if 0 < len(f) < len(every))
    rest = sorted(set(every) - set(fold))
    return (rest, fold) if val_ratio <= 0.5 else (fold, rest)
