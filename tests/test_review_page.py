"""`velora review` in a real browser: headless Chromium (Playwright) drives the page with the keyboard through ten
examples (relabel, drop, undo, keep, skip, edit), the server is killed with SIGKILL midway and started again, and
the decisions file and the applied dataset are checked. Screenshots land in test-artifacts/ (review-page*.png).
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from click.testing import CliRunner

from eval_helpers import write_labelled_csv
from review_helpers import free_port, review_process
from serve_helpers import ARTIFACTS, REPO
from test_serve_page import CHROMIUM, CHROMIUM_ARGS
from translate_helpers import CHINESE
from velora.cli import cli
from velora.convert import convert
from velora.convert.spreadsheet import write_rows
from velora.data import load_examples
from velora.labels import LABELS
from velora.mine import list_hard
from velora.review import DecisionStore, decisions_path, load_review
from velora.review.app import create_review_app, serve_in_thread

playwright_api = pytest.importorskip("playwright.sync_api")
pytestmark = pytest.mark.skipif(shutil.which("chromium") is None,
                                reason="Debian chromium not installed (apt-get install chromium; `make install` does)")
KEYS = {label: str(i + 1) for i, label in enumerate(LABELS)}


@pytest.fixture()
def dataset(tmp_path):
    data = write_labelled_csv(tmp_path / "data", rows=14, images=5)
    convert(data, tmp_path / "data" / "hf_dataset", val_ratio=0.25)
    return tmp_path / "data" / "hf_dataset"


@pytest.fixture()
def browser(tmp_path):
    with playwright_api.sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1100, "height": 820})
        yield context
        context.close()


class Reviewer:
    """Presses keys on the page and waits for the server's answer to show."""

    def __init__(self, page):
        self.page = page

    @property
    def example(self) -> str:
        return self.page.evaluate("document.body.dataset.example")

    def label(self) -> str:
        return self.page.text_content("#label")  # inner_text would be capitalised by the stylesheet

    def press(self, key: str, expect_new: bool = True) -> str:
        before = self.example
        self.page.keyboard.press(key)
        self.page.wait_for_function("before => document.body.dataset.state === 'ready' && "
                                    "(document.body.dataset.example !== before)", arg=before if expect_new else "")
        return before

    def other_label(self) -> str:
        return next(label for label in LABELS if label != self.label())


def test_ten_examples_by_keyboard_with_a_server_crash_midway(dataset, browser, tiny_model_dir):
    port = free_port()
    args = [str(dataset), "--model_path", str(tiny_model_dir), "--reviewer", "tester"]
    page = browser.new_page()
    reviewer = Reviewer(page)
    done: dict[str, tuple] = {}  # example -> the decision expected in force
    ARTIFACTS.mkdir(exist_ok=True)
    with review_process(args, port, REPO) as server:
        page.goto(f"http://127.0.0.1:{port}/")
        page.wait_for_function("document.body.dataset.state === 'ready' && document.body.dataset.example")
        playwright_api.expect(page.locator("#progress-text")).to_contain_text("0 done · 14 left of 14")
        assert "1 / 2 / 3" in page.inner_text("#shortcuts") and page.is_visible("#image")
        page.wait_for_function("document.getElementById('image').complete")
        assert page.evaluate("document.getElementById('image').naturalWidth") == 48  # the 48 px picture, served
        page.screenshot(path=str(ARTIFACTS / "review-page.png"), full_page=True)

        new_label = reviewer.other_label()
        done[reviewer.press(KEYS[new_label])] = ("relabel", new_label)                  # 1: relabel
        dropped = reviewer.press("d")                                                    # 2: drop ...
        assert reviewer.press("u") != dropped and reviewer.example == dropped            # ... undone: shown again
        playwright_api.expect(page.locator("#status")).to_contain_text("back to undecided")
        done[reviewer.press("k")] = ("keep", None)                                       # 2: keep after all
        done[reviewer.press("s")] = ("skip", None)                                       # 3: skip
        page.keyboard.press("e")                                                         # 4: edit
        page.fill("#edit-hypothesis", "there are exactly two shapes.")
        page.screenshot(path=str(ARTIFACTS / "review-page-edit.png"), full_page=True)
        before = reviewer.example
        page.keyboard.press("Control+Enter")
        page.wait_for_function("b => document.body.dataset.example !== b && document.body.dataset.state === 'ready'",
                               arg=before)
        done[before] = ("edit", "there are exactly two shapes.")
        playwright_api.expect(page.locator("#progress-text")).to_contain_text("3 done · 11 left")

        server.kill()  # SIGKILL: no shutdown, no flush; every decision above was fsynced before it was shown
        server.wait(30)
        stuck = reviewer.example
        page.keyboard.press("k")                                                         # 5: not saved
        playwright_api.expect(page.locator("#error")).to_contain_text("cannot reach the server")
        page.screenshot(path=str(ARTIFACTS / "review-page-server-down.png"), full_page=True)

    with review_process(args, port, REPO):
        assert reviewer.press("k") == stuck                                              # 5: the retry lands
        done[stuck] = ("keep", None)
        assert page.is_hidden("#error")
        page.reload()  # a fresh page resumes at the first undecided example, undo stack kept
        page.wait_for_function("document.body.dataset.state === 'ready' && document.body.dataset.example")
        playwright_api.expect(page.locator("#progress-text")).to_contain_text("4 done · 10 left")  # skip: not done
        assert reviewer.example not in done
        for key in ("d", "k", "1", "d"):                                                 # 6-9
            label = LABELS[int(key) - 1] if key.isdigit() else None
            action = {"d": "drop", "k": "keep"}.get(key) or ("keep" if label == reviewer.label() else "relabel")
            done[reviewer.press(key)] = (action, label if action == "relabel" else None)
        last = reviewer.press("u", expect_new=True)                                      # 10: undo the last drop
        assert last != reviewer.example
        undone = reviewer.example
        del done[undone]
        done[reviewer.press("k")] = ("keep", None)
        page.screenshot(path=str(ARTIFACTS / "review-page-after-restart.png"), full_page=True)

    check_decisions_file(dataset, done)
    check_applied_dataset(dataset, done)


def test_a_translated_row_shows_what_the_user_wrote_under_the_english(browser, tmp_path):
    data = write_labelled_csv(tmp_path, rows=2, images=1)
    mined = list_hard(load_examples(data), torch.tensor([[0.5, 0.3, 0.2], [0.4, 0.3, 0.3]]), tmp_path / "hard.csv",
                      confidence_threshold=1.0, origin=data)
    first = dict(mined.rows[0], premise_original=CHINESE[0], hypothesis_original=CHINESE[1], translated_by="command:mt")
    path = write_rows(tmp_path / "hard.csv", list(first), [first, mined.rows[1]])
    page = browser.new_page()
    with serve_in_thread(create_review_app(load_review(path), DecisionStore(decisions_path(path)))) as url:
        page.goto(url)
        page.wait_for_function("document.body.dataset.state === 'ready' && document.body.dataset.example")
        playwright_api.expect(page.locator("#premise")).to_have_text(first["premise"])
        playwright_api.expect(page.locator("#premise-original")).to_have_text(f"original: {CHINESE[0]}")
        playwright_api.expect(page.locator("#hypothesis-original")).to_have_text(f"original: {CHINESE[1]}")
        playwright_api.expect(page.locator("#where")).to_contain_text("translated by command:mt")
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "review-page-translated.png"), full_page=True)
        Reviewer(page).press("k")
        playwright_api.expect(page.locator("#premise")).to_have_text(mined.rows[1]["premise"])
        assert page.is_hidden("#premise-original") and page.is_hidden("#hypothesis-original")


def check_decisions_file(dataset, done: dict[str, tuple]) -> None:
    path = decisions_path(dataset)
    events = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]  # every line whole
    assert len({e["id"] for e in events}) == len(events) == 13  # 11 decisions + 2 undos; the retry stored once
    assert [e["action"] for e in events].count("undo") == 2
    assert all(e.get("reviewer") == "tester" for e in events if e["action"] != "undo")
    current = DecisionStore(path).current()
    assert {k: (d.action, d.label or d.hypothesis) for k, d in current.items()} == done


def check_applied_dataset(dataset, done: dict[str, tuple]) -> None:
    from datasets import load_from_disk

    before = {row["source_row"]: row for split in load_from_disk(str(dataset)).values() for row in split}
    result = CliRunner().invoke(cli, ["review", str(dataset), "--apply"])
    assert result.exit_code == 0, result.output
    corrected = load_from_disk(str(dataset.with_name("hf_dataset-reviewed")))
    names = corrected["train"].features["label"].names
    after = {row["source_row"]: row for split in corrected.values() for row in split}
    dropped = {int(k) for k, (action, _) in done.items() if action == "drop"}
    assert set(after) == set(before) - dropped and dropped
    for example, (action, value) in done.items():
        row = int(example)
        if action == "relabel":
            assert names[after[row]["label"]] == value != names[before[row]["label"]]
        elif action == "edit":
            assert after[row]["hypothesis"] == value and after[row]["label"] == before[row]["label"]
        elif action != "drop":
            assert after[row] == before[row]
