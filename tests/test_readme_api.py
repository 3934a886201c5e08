"""The README's Python API example, run as written (on a tiny model and a small dataset laid out as the guide's)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from conftest import REPO
from train_helpers import colour_csv

HUB_ID = "iic/ofa_visual-entailment_snli-ve_large_en"


def readme_example() -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    match = re.search(r"<!-- api-example[^>]*-->\s*```python\n(.*?)```", text, re.S)
    assert match, "the README's Python API example (marked <!-- api-example -->) is missing"
    return match.group(1)


def test_readme_python_api_example_runs(tiny_model_dir, tmp_path, monkeypatch, capsys):
    data = tmp_path / "data"
    csv_path = colour_csv(data)
    shutil.move(csv_path, data / "my_ve_data.csv")
    shutil.copy(data / "my_ve_data.csv", data / "test_set.csv")
    shutil.copy(data / "square_0.png", data / "test_product.jpg")  # a PNG named .jpg: content decides, as in velora
    monkeypatch.chdir(tmp_path)
    code = readme_example().replace(HUB_ID, str(tiny_model_dir))
    exec(compile(code, "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert re.search(r"validation accuracy \d+\.\d% -> \d+\.\d%", out)
    assert "Base model (adapter off) vs tuned:" in out
    assert out.strip().splitlines()[-1] in ("entailment", "contradiction", "neutral")
    for made in ("data/hf_dataset/dataset_dict.json", "lora_finetuned/adapter_config.json",
                 "data/hard_examples.csv", "merged_model/config.json"):
        assert Path(made).exists(), made
