"""The review page's HTTP API on a real server: order and progress, decisions, the images it may show (and those it
may not), and its limits."""

from __future__ import annotations

import io

import httpx
import pytest
import torch
from PIL import Image

from eval_helpers import read_csv_rows, write_labelled_csv
from translate_helpers import CHINESE, DICTIONARY_PROGRAM, ENGLISH, chinese_csv, write_program
from velora.convert import convert
from velora.convert.spreadsheet import write_rows
from velora.data import load_examples
from velora.labels import LABELS
from velora.mine import AMBIGUOUS, MISLABELED, list_hard
from velora.review import DecisionStore, decisions_path, load_review
from velora.review.app import MAX_BODY, create_review_app, serve_in_thread
from velora.translate import load_translator

E, C, N = LABELS


@pytest.fixture(scope="module")
def mined(tmp_path_factory):
    """A `velora mine` CSV of 6 rows with known probabilities: rows 0 and 4 confidently contradict their labels."""
    folder = tmp_path_factory.mktemp("review-api")
    data = write_labelled_csv(folder, rows=6, images=3)
    examples = load_examples(data)
    probs = torch.tensor([[0.02, 0.96, 0.02], [0.5, 0.3, 0.2], [0.34, 0.33, 0.33], [0.4, 0.35, 0.25],
                          [0.05, 0.03, 0.92], [0.7, 0.2, 0.1]])
    result = list_hard(examples, probs, folder / "hard.csv", confidence_threshold=1.0, origin=data)
    return folder / "hard.csv", result


@pytest.fixture()
def server(mined):
    path, _ = mined
    decisions_path(path).unlink(missing_ok=True)
    store = DecisionStore(decisions_path(path))
    with serve_in_thread(create_review_app(load_review(path), store)) as url:
        yield httpx.Client(base_url=url, timeout=30)


def test_the_mined_order_is_kept_and_progress_counts_per_reason(server, mined):
    _, result = mined
    ids = [item["id"] for item in server.get("/api/examples").json()["examples"]]
    assert ids == [str(row["source_row"]) for row in result.rows]
    reasons = [item["reason"] for item in server.get("/api/examples").json()["examples"]]
    assert reasons[:2] == [MISLABELED, MISLABELED] and set(reasons[2:]) == {AMBIGUOUS}
    first = server.get("/api/next").json()
    assert first["example"]["id"] == ids[0] and first["example"]["probs"]["contradiction"] == pytest.approx(0.96)
    assert first["summary"]["by_reason"][MISLABELED] | {"why": None} == {"done": 0, "left": 2, "why": None}

    answer = server.post("/api/decisions", json={"example": ids[0], "action": "relabel", "label": C}).json()
    assert answer["summary"]["by_reason"][MISLABELED]["done"] == 1 and answer["summary"]["left"] == 5
    skipped = server.post("/api/decisions", json={"example": ids[1], "action": "skip"}).json()
    assert skipped["summary"]["left"] == 5  # a skip decides nothing
    after = server.get("/api/next", params={"after": ids[1]}).json()["example"]
    assert after["id"] == ids[2]  # undecided examples before the skipped one
    for example in ids[2:]:
        server.post("/api/decisions", json={"example": example, "action": "keep"})
    assert server.get("/api/next", params={"after": ids[-1]}).json()["example"]["id"] == ids[1]  # skipped: last


def test_a_decision_on_a_stale_view_is_kept_and_reported(server, mined):
    ids = [item["id"] for item in server.get("/api/examples").json()["examples"]]
    first = server.post("/api/decisions", json={"example": ids[2], "action": "drop", "reviewer": "ana"}).json()
    late = server.post("/api/decisions", json={"example": ids[2], "action": "keep", "reviewer": "bo"}).json()
    assert late["overtaken"]["id"] == first["decision"]["id"] and late["overtaken"]["reviewer"] == "ana"
    assert server.get(f"/api/examples/{ids[2]}").json()["decision"]["reviewer"] == "bo"


def test_images_only_of_examples_under_review(server, mined, tmp_path):
    path, result = mined
    ok = server.get(f"/api/examples/{result.rows[0]['source_row']}/image")
    assert ok.status_code == 200 and ok.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(ok.content)).size == (48, 48)
    for bad in ("999", "..%2F..%2Fetc%2Fpasswd", "%2Fetc%2Fpasswd"):
        assert server.get(f"/api/examples/{bad}/image").status_code == 404


def test_a_row_pointing_outside_the_csv_folder_is_left_out(mined, tmp_path):
    _, result = mined
    rows = [dict(result.rows[0], image_path="../../../etc/passwd"), dict(result.rows[1], image_path="/etc/hosts")]
    rows.append(dict(result.rows[2]))
    path = write_rows(tmp_path / "hard.csv", list(result.rows[0]), rows)
    (tmp_path / result.rows[2]["image_path"]).parent.mkdir(parents=True, exist_ok=True)
    review = load_review(path)
    assert [item.id for item in review.items] == [str(result.rows[2]["source_row"])]
    assert all("leaves the CSV's folder" in note for note in review.notes) and len(review.notes) == 2


def test_limits_and_refusals(server, mined):
    example = server.get("/api/next").json()["example"]["id"]
    assert server.post("/api/decisions", content=b"{" + b" " * MAX_BODY + b"}",
                       headers={"content-type": "application/json"}).status_code == 413
    too_long = server.post("/api/decisions", json={"example": example, "action": "edit", "hypothesis": "x" * 2001})
    assert too_long.status_code == 422
    as_text = server.post("/api/decisions", content=f'{{"example": "{example}", "action": "drop"}}'.encode(),
                          headers={"content-type": "text/plain"})
    assert as_text.status_code == 422  # what a page elsewhere can send without asking is not read
    assert server.get(f"/api/examples/{example}").json()["decision"] is None
    assert server.post("/api/decisions", json={"example": "nope", "action": "keep"}).status_code == 404
    bad_label = server.post("/api/decisions", json={"example": example, "action": "relabel", "label": "sure"})
    assert bad_label.status_code == 400 and "label" in bad_label.json()["detail"]
    assert server.get("/api/summary", headers={"host": "attacker.example"}).status_code == 400  # DNS rebinding


def test_the_page_and_its_files_come_from_the_server(server):
    page = server.get("/").text
    assert "/static/review.js" in page and "/static/review.css" in page
    script = server.get("/static/review.js").text
    assert "http://" not in page + script and "https://" not in page + script  # no CDN, nothing fetched elsewhere


def test_a_whole_dataset_without_a_model_is_shown_in_its_order(tmp_path):
    data = write_labelled_csv(tmp_path, rows=5, images=2)
    review = load_review(data)
    assert [item.id for item in review.items] == [str(line) for line in range(2, 7)]  # CSV lines
    assert {item.reason for item in review.items} == {"unscored"} and review.origin == data
    assert len(read_csv_rows(data)) == 5


def test_translated_rows_of_a_mined_csv_show_the_originals(mined):
    path, result = mined
    translated = {"premise_original": CHINESE[0], "hypothesis_original": CHINESE[1], "translated_by": "command:mt"}
    rows = [dict(result.rows[0], **translated), dict(result.rows[1])]
    columns = list(dict.fromkeys(key for row in rows for key in row))
    zh = write_rows(path.with_name("hard_zh.csv"), columns, rows)  # beside the images, as `velora mine` writes
    store = DecisionStore(decisions_path(zh))
    with serve_in_thread(create_review_app(load_review(zh), store)) as url:
        shown = httpx.get(f"{url}/api/examples", timeout=30).json()["examples"]
    assert {k: shown[0][k] for k in translated} == translated
    assert shown[0]["premise"] == result.rows[0]["premise"]  # the English text the model scored, as before
    assert [shown[1][k] for k in translated] == [None, None, None]  # nothing was translated in this row


def test_a_translated_dataset_shows_the_originals_of_its_translated_rows_only(tmp_path):
    source = chinese_csv(tmp_path, n=3, english=2)
    translator = load_translator(write_program(tmp_path, "mt.py", DICTIONARY_PROGRAM), cache=False)
    convert(source, tmp_path / "ds", val_ratio=0.4, translator=translator)
    items = {item.premise: item.to_dict() for item in load_review(tmp_path / "ds").items}
    for i in range(3):  # the Chinese rows: English text, the user's Chinese beside it
        assert items[ENGLISH[i]]["premise_original"] == CHINESE[i]
        assert items[ENGLISH[i]]["hypothesis_original"] == CHINESE[i + 1]
        assert items[ENGLISH[i]]["translated_by"].startswith("command:")
    assert [items[ENGLISH[i]]["translated_by"] for i in (3, 4)] == [None, None]
