"""The one loader of converted datasets refuses what it cannot use with the fix, never a raw traceback."""

from __future__ import annotations

import pytest
from datasets import Dataset, DatasetDict

from velora.data import load_training_splits, open_dataset
from velora.errors import VeloraError


def test_a_split_saved_with_no_rows_is_refused_with_the_fix(tmp_path):
    folder = tmp_path / "made_elsewhere"  # datasets itself writes a 0-row split without a data file
    DatasetDict({"train": Dataset.from_dict({"hypothesis": ["a"]}),
                 "validation": Dataset.from_dict({"hypothesis": []})}).save_to_disk(str(folder))
    with pytest.raises(VeloraError, match=r"the validation split has no rows .* `velora convert`"):
        open_dataset(folder)


def test_an_empty_train_split_says_what_to_do(tmp_path):
    from velora.convert import features

    folder = tmp_path / "empty_train"
    empty = Dataset.from_dict({name: [] for name in features()}, features=features())
    DatasetDict({"train": empty, "validation": empty}).save_to_disk(str(folder), num_shards={"train": 1,
                                                                                             "validation": 1})
    with pytest.raises(VeloraError, match="train split is empty; convert more rows"):
        load_training_splits(folder)
