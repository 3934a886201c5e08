"""velora.translate on real components: a tiny random-weight MarianMT run by transformers (plumbing, batching,
device, cache - not translation quality), translation programs run as `command:`, and the DeepL package talking
HTTP to a local stand-in for the API."""

from __future__ import annotations

import json
import sqlite3
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch
from translate_helpers import CHINESE, DICTIONARY_PROGRAM, ENGLISH, write_program, write_tiny_marian

from velora.convert.quality import has_cjk
from velora.errors import VeloraError
from velora.predictor import pick_device
from velora.translate import Glossary, TranslationCache, load_translator, non_english_warning, translate_pairs
from velora.translate.cache import MAX_CACHED_CHARS


@pytest.fixture(scope="module")
def marian_dir(tmp_path_factory):
    return write_tiny_marian(tmp_path_factory.mktemp("marian") / "opus-mt-zh-en")


def spy_generate(backend) -> list[int]:
    """Batch sizes of every call of the real model's generate."""
    backend.load()
    sizes, generate = [], backend.model.generate

    def counted(**inputs):
        sizes.append(len(inputs["input_ids"]))
        return generate(**inputs)

    backend.model.generate = counted
    return sizes


def test_hf_model_translates_only_chinese_in_batches_on_the_device_and_caches(marian_dir, tmp_path):
    cache = tmp_path / "cache.sqlite3"
    translator = load_translator(str(marian_dir), cache=cache, batch_size=4)
    backend = translator.backend
    assert backend.device == pick_device("auto")  # OFA's rule for --device auto
    assert backend.model is None  # nothing loaded until a text needs it
    sizes = spy_generate(backend)
    assert next(backend.model.parameters()).device.type == backend.device.type
    results = translator.translate(CHINESE + ENGLISH[:2] + [CHINESE[0], ""])
    assert sizes == [4, 2]  # six distinct Chinese texts, batch_size 4; the repeat is translated once
    assert [r.translated for r in results] == [True] * 6 + [False, False, True, False]
    assert [r.text for r in results[6:8]] == ENGLISH[:2] and results[9].text == ""
    for r in results[:6]:
        assert r.text and not has_cjk(r.text) and r.original in CHINESE and r.error is None
    assert results[8].text == results[0].text
    assert translator.describe()["sent"] == 6 and translator.describe()["backend"] == "hf:opus-mt-zh-en"

    assert [r.text for r in translator.translate(CHINESE)] == [r.text for r in results[:6]]
    assert sizes == [4, 2] and translator.counts["from_cache"] == 6  # the re-run: cache only
    translator.close()

    again = load_translator(str(marian_dir), cache=cache)  # a new run: nothing translated, no weights loaded
    assert [r.from_cache for r in again.translate(CHINESE)] == [True] * 6
    assert again.backend.model is None
    with sqlite3.connect(cache) as db:
        assert db.execute("SELECT COUNT(*), MIN(backend) FROM translations").fetchone() == (
            6, translator.backend.identity)


def test_hf_model_on_an_explicit_device_and_missing_folders(marian_dir, tmp_path):
    translator = load_translator(str(marian_dir), device="cpu", cache=False)
    translator.load()
    assert {p.device for p in translator.backend.model.parameters()} == {torch.device("cpu")}
    for spec, message in [(str(tmp_path / "nowhere"), "no such model folder"),
                          (str(tmp_path), "not a translation model folder \\(no config.json\\); download it once")]:
        with pytest.raises(VeloraError, match=message) as error:
            load_translator(spec, cache=False)
        assert "\n" not in str(error.value)


def test_hub_id_that_cannot_be_fetched_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)  # read at import: HF_HUB_OFFLINE=1
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    translator = load_translator("Helsinki-NLP/opus-mt-zh-en", cache=False)
    with pytest.raises(VeloraError) as error:
        translator.translate(["一台咖啡机"])
    message = str(error.value)
    assert "\n" not in message and "cannot load it as a translation model" in message and "offline?" in message


def test_cache_is_bounded_and_never_writes_into_foreign_files(tmp_path):
    cache = TranslationCache(tmp_path / "c.sqlite3", max_entries=3)
    cache.put("b", [(f"t{i}", f"e{i}") for i in range(5)])
    cache.put("b", [("x" * (MAX_CACHED_CHARS + 1), "long"), ("short", "y" * (MAX_CACHED_CHARS + 1))])
    assert len(cache) == 3 and cache.get("b", ["t0", "t3", "t4"]) == {"t3": "e3", "t4": "e4"}
    assert cache.get("other backend", ["t4"]) == {}
    cache.close()
    foreign = tmp_path / "app.db"
    with sqlite3.connect(foreign) as db:
        db.execute("CREATE TABLE users (name TEXT)")
    text = tmp_path / "notes.txt"
    text.write_text("not a database " * 100)
    for path in (foreign, text):
        before = path.read_bytes()
        with pytest.raises(VeloraError, match="--translation_cache") as error:
            TranslationCache(path)
        assert "\n" not in str(error.value) and path.read_bytes() == before


def test_glossary_terms_go_in_before_and_are_checked_after(tmp_path):
    terms = tmp_path / "terms.csv"
    terms.write_text("source,english\n不锈钢,stainless steel\n不锈钢咖啡机,espresso machine\n", encoding="utf-8")
    glossary = Glossary.load(terms)
    assert glossary.apply("一台不锈钢咖啡机和不锈钢杯") == ("一台 espresso machine 和 stainless steel 杯",
                                                         ["不锈钢咖啡机", "不锈钢"])
    keeps = load_translator(write_program(tmp_path, "keep.py", DICTIONARY_PROGRAM), glossary=terms, cache=False)
    loses = load_translator(write_program(tmp_path, "lose.py", "for line in sys.stdin: print('a machine')"),
                            glossary=terms, cache=False)
    (kept,) = keeps.translate(["一台不锈钢咖啡机"])
    assert "espresso machine" in kept.text and kept.lost_terms == ()
    (lost,) = loses.translate(["一台不锈钢咖啡机"])
    assert lost.lost_terms == ("不锈钢咖啡机 -> espresso machine",)
    for body, message in [("a,b,c\n", "line 1: expected two cells"), ("x,\n", "line 1: expected two cells"),
                          ("a,b\na,c\n", "line 2: 'a' is given twice"), ("", "no terms")]:
        terms.write_text(body, encoding="utf-8")
        with pytest.raises(VeloraError, match=message):
            Glossary.load(terms)


def test_command_receives_only_the_texts_to_translate(tmp_path):
    log = tmp_path / "seen.txt"
    spec = write_program(tmp_path, "mt.py", f"""
lines = sys.stdin.read().splitlines()
open({str(log)!r}, "a", encoding="utf-8").write("\\n".join(lines) + "\\n")
for line in lines: print("EN " + str(len(line)))
""")
    translator = load_translator(spec, cache=tmp_path / "c.sqlite3")
    pairs = translate_pairs(translator, [CHINESE[0], None, "a cup"], [ENGLISH[1], CHINESE[2], CHINESE[0]])
    assert log.read_text(encoding="utf-8").splitlines() == [CHINESE[0], CHINESE[2]]  # once each, no English
    assert [(p.premise, p.hypothesis) for p in pairs] == [
        (f"EN {len(CHINESE[0])}", ENGLISH[1]), (None, f"EN {len(CHINESE[2])}"), ("a cup", f"EN {len(CHINESE[0])}")]
    assert [p.translated_by for p in pairs] == [spec] * 3 and pairs[1].premise_original is None
    assert pairs[2].to_dict()["hypothesis_original"] == CHINESE[0]


@pytest.mark.parametrize("body, message", [
    ("for line in sys.stdin: print(line.strip()); print('extra')", "wrote 2 lines for 1 input lines"),
    ("sys.stderr.write('model file missing\\n'); sys.exit(3)", "exited with code 3: model file missing"),
    ("import time; time.sleep(30)", "no answer within 1 s"),
    ("sys.stdout.write('x' * 50_000_000)", "wrote more than"),
    ("sys.stdout.buffer.write(b'\\xff\\n')", "not UTF-8"),
])
def test_command_failures_are_one_line(tmp_path, body, message):
    translator = load_translator(write_program(tmp_path, "bad.py", body), cache=False, timeout=1)
    with pytest.raises(VeloraError, match=message) as error:
        translator.translate(["一台咖啡机"])
    assert "\n" not in str(error.value)


def test_command_must_exist():
    with pytest.raises(VeloraError, match="program 'no-such-translator' not found"):
        load_translator("command:no-such-translator --to en", cache=False)


def test_warning_names_the_rows_and_translate():
    assert non_english_warning(["a red car"], ["it is red"]) is None
    single = non_english_warning([None], ["一台咖啡机"])
    assert single.startswith("the hypothesis has Chinese") and "--translate" in single
    many = non_english_warning(["a", "红色", "b"], ["c", "d", "咖啡"], names=[10, 11, 12])
    assert many.startswith("2 of 3 examples (rows 11, 12) have Chinese")


# --- DeepL: the official package, over HTTP, against a local stand-in for the API ---------------------------------

class FakeDeepL(BaseHTTPRequestHandler):
    requests: list[dict] = []
    status = 200

    def do_POST(self):  # noqa: N802 (http.server's name)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        FakeDeepL.requests.append({"path": self.path, "auth": self.headers["Authorization"], **body})
        if FakeDeepL.status != 200:
            payload = {"message": "Wrong endpoint or key"}
        else:
            payload = {"translations": [{"text": f"EN[{t}]", "detected_source_language": "ZH",
                                         "billed_characters": len(t)} for t in body["text"]]}
        data = json.dumps(payload).encode()
        self.send_response(FakeDeepL.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture()
def deepl_server(monkeypatch):
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeDeepL)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    FakeDeepL.requests, FakeDeepL.status = [], 200
    monkeypatch.setenv("DEEPL_AUTH_KEY", "test-key:fx")
    monkeypatch.setenv("DEEPL_SERVER_URL", f"http://127.0.0.1:{server.server_address[1]}")
    yield FakeDeepL
    server.shutdown()
    server.server_close()


def test_deepl_batches_of_50_with_the_key_and_cache(deepl_server, tmp_path):
    texts = [f"第{i}个杯子" for i in range(120)]
    translator = load_translator("deepl", cache=tmp_path / "c.sqlite3")
    results = translator.translate(texts + ["a cup"])
    assert [r.text for r in results] == [f"EN[{t}]" for t in texts] + ["a cup"]
    assert [len(r["text"]) for r in deepl_server.requests] == [50, 50, 20]
    assert {r["path"] for r in deepl_server.requests} == {"/v2/translate"}
    assert {r["auth"] for r in deepl_server.requests} == {"DeepL-Auth-Key test-key:fx"}
    assert {r["target_lang"] for r in deepl_server.requests} == {"EN-US"}
    translator.translate(texts)
    assert len(deepl_server.requests) == 3  # all from the cache


def test_deepl_refused_key_missing_key_and_offline_are_one_line(deepl_server, monkeypatch):
    deepl_server.status = 403
    with pytest.raises(VeloraError, match="DeepL refused the key in DEEPL_AUTH_KEY") as refused:
        load_translator("deepl", cache=False).translate(["一台咖啡机"])
    monkeypatch.setenv("DEEPL_SERVER_URL", "http://127.0.0.1:9")  # nothing listens on the discard port
    with pytest.raises(VeloraError, match="cannot reach the DeepL API") as offline:
        load_translator("deepl", cache=False).translate(["一台咖啡机"])
    monkeypatch.delenv("DEEPL_AUTH_KEY")
    with pytest.raises(VeloraError, match="no API key; set DEEPL_AUTH_KEY") as missing:
        load_translator("deepl", cache=False)
    assert all("\n" not in str(e.value) for e in (refused, offline, missing))
