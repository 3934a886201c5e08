"""Builders for the translation tests: a tiny random-weight MarianMT model with a real sentencepiece tokenizer
(the files Helsinki-NLP/opus-mt-* ship), translation programs for `command:`, and a CSV with Chinese rows."""

from __future__ import annotations

import csv
import json
import re
import sys
from pathlib import Path

import sentencepiece as spm
import torch
from data_fixtures import jpeg, write_csv
from transformers import MarianConfig, MarianMTModel, MarianTokenizer

CHINESE = ["一台不锈钢咖啡机放在厨房台面上", "这台电器可以煮热饮", "桌子上有两个红色的杯子", "一只猫睡在沙发上",
           "这辆汽车是蓝色的", "图中没有人"]
ENGLISH = ["a stainless steel coffee maker on the kitchen counter", "this appliance brews hot drinks",
           "two red cups on the table", "a cat sleeps on the sofa", "the car is blue", "there is nobody here"]
_CJK = re.compile(r"[\u3000-\u9fff]")


def _train_spm(corpus: list[str], prefix: Path, model_type: str) -> Path:
    spm.SentencePieceTrainer.train(sentence_iterator=iter(corpus * 10), model_prefix=str(prefix), vocab_size=60,
                                   model_type=model_type, character_coverage=1.0, hard_vocab_limit=False,
                                   minloglevel=2)
    return Path(f"{prefix}.model").rename(f"{prefix}.spm")


def write_tiny_marian(folder: Path, seed: int = 0) -> Path:
    """A Marian zh->en model in the opus-mt layout (config, generation_config, safetensors, source/target.spm,
    vocab.json, tokenizer_config) with random weights: its output is meaningless English-word soup, never Chinese
    (the logits of Chinese pieces are pushed down) and never empty (min_length)."""
    folder.mkdir(parents=True, exist_ok=True)
    source = _train_spm(CHINESE + ENGLISH, folder / "source", "char")
    target = _train_spm(ENGLISH, folder / "target", "unigram")
    vocab: dict[str, int] = {}
    for model in (source, target):
        sp = spm.SentencePieceProcessor(model_file=str(model))
        for i in range(sp.get_piece_size()):
            vocab.setdefault(sp.id_to_piece(i), len(vocab))
    for special in ("</s>", "<unk>", "<pad>"):
        vocab.setdefault(special, len(vocab))
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    tokenizer = MarianTokenizer(str(source), str(target), str(folder / "vocab.json"), source_lang="zh",
                                target_lang="en")
    tokenizer.save_pretrained(folder)
    config = MarianConfig(vocab_size=len(vocab), d_model=16, encoder_layers=1, decoder_layers=1,
                          encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32,
                          decoder_ffn_dim=32, max_position_embeddings=128, pad_token_id=tokenizer.pad_token_id,
                          eos_token_id=tokenizer.eos_token_id, decoder_start_token_id=tokenizer.pad_token_id,
                          forced_eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(seed)
    model = MarianMTModel(config).eval()
    unwanted = [i for piece, i in vocab.items() if _CJK.search(piece) or piece in ("▁", "<unk>")]
    with torch.no_grad():
        model.final_logits_bias[:, unwanted] = -1e4
    model.generation_config.update(min_length=4, max_length=24, num_beams=2)
    model.save_pretrained(folder)
    return folder


def write_program(folder: Path, name: str, body: str) -> str:
    """A Python script in `folder`; returns the `command:` spec that runs it with this interpreter."""
    path = folder / name
    path.write_text("import sys\n" + body, encoding="utf-8")
    return f"command:{sys.executable} {path}"


# Translates the fixture sentences exactly (and glossary-replaced ones too), counts its calls in calls.txt.
DICTIONARY_PROGRAM = f"""
import json, pathlib
pairs = dict(zip({CHINESE!r}, {ENGLISH!r}))
calls = pathlib.Path(__file__).with_name("calls.txt")
calls.write_text(calls.read_text() + "x" if calls.exists() else "x")
for line in sys.stdin:
    text = line.rstrip("\\n")
    out = pairs.get(text, text.replace("不锈钢", "stainless steel").replace("咖啡机", "coffee machine"))
    print(out.replace("一台", "a ").replace("放在厨房台面上", " on the counter"))
"""


def chinese_csv(folder: Path, n: int = 6, english: int = 2) -> Path:
    """`n` rows with Chinese premises and hypotheses, then `english` rows in English, one image each."""
    labels = ("entailment", "contradiction", "neutral")
    rows = []
    for i in range(n + english):
        jpeg(folder / "images" / f"p{i}.jpg", seed=i)
        if i < n:
            premise, hypothesis = CHINESE[i % len(CHINESE)], CHINESE[(i + 1) % len(CHINESE)]
        else:
            premise, hypothesis = ENGLISH[i % len(ENGLISH)], ENGLISH[(i + 2) % len(ENGLISH)]
        rows.append([f"images/p{i}.jpg", premise, hypothesis, labels[i % 3]])
    return write_csv(folder / "pairs.csv", rows)


def english_twin(source: Path) -> Path:
    """english.csv beside a `chinese_csv`: the same rows with each Chinese text in its fixture translation."""
    to_english = dict(zip(CHINESE, ENGLISH))
    with source.open(encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))
    twin = source.with_name("english.csv")
    with twin.open("w", encoding="utf-8", newline="") as f:
        csv.writer(f).writerows([rows[0]] + [[r[0], to_english.get(r[1], r[1]), to_english.get(r[2], r[2]), r[3]]
                                             for r in rows[1:]])
    return twin
